//! The Sans-IO media engine of one worker.
//!
//! It owns every peer (one str0m `Rtc` in RTP mode each) and every room placed
//! on its worker. It knows no sockets, no threads and no clock: the driver
//! feeds it datagrams ([`Engine::handle_receive`]), commands
//! ([`Engine::handle_command`]), messages from other engines
//! ([`Engine::handle_relay`]) and timeouts, each with the current `Instant`,
//! and drains one [`Output`] at a time from [`Engine::poll_output`] until it
//! says [`Output::Timeout`]. After touching an `Rtc` the engine drains that
//! `Rtc`'s `poll_output` to its next timeout before touching it again.
//!
//! - `peers`: demux, admission, ICE patches, removal, driving str0m;
//! - `rooms`: rooms, their sources and which viewer watches which;
//! - `layers`: simulcast layer selection and keyframe requests;
//! - `forward`: the packet path (fan-out, header rewrite);
//! - `mirror`: rooms spread across engines (the `relay` protocol);
//! - `ingest`: sources fed with RTP from outside (RTMP encoders);
//! - `hls`: the hand-off to the LL-HLS room packager (`hls_bridge::room`);
//! - `state`: what is kept per room, peer, source and viewer.

mod forward;
mod hls;
mod ingest;
mod layers;
mod mirror;
mod peers;
mod rewrite;
mod rooms;
pub mod sdp;
mod state;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hls_bridge::room::{HlsTap, TapConfig};
use hls_bridge::runner::{CodecHost, InlineHost};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use relay::{Message, SourceId};
use rustc_hash::FxHashMap;
use str0m::config::DtlsCert;
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpPacket;
use str0m::{Event as RtcEvent, Input};
use tracing::{Span, debug, trace};
use wave_vocab::{Codec, IcePatch, IceRestartAnswer, LayerPref, MediaError, RoomId, RoomInfo, SessionId};

pub use crate::stats::EngineStats;
pub use hls_bridge::SenderReport;
pub use hls_bridge::room::HlsUpdate;
pub use ingest::{INGEST_AUDIO_PT, INGEST_VIDEO_PT, IngestAac, IngestItem, IngestOpen, IngestPacket};
pub use relay::WorkerId;
pub use rewrite::{Rewriter, Rewritten, Vp8Rewriter};
pub use wave_vocab::PeerId;

use peers::NewPeer;
use sdp::Intent;
use state::{Ingest, Mirror, Peer, Role, Room};

/// Keyframe requests to one layer are merged: at most one per this interval
/// (PLI storms from many viewers would otherwise make the publisher send
/// nothing but keyframes). A request that finds the layer throttled is sent
/// the moment the interval ends, not at the next tick. A browser publisher
/// ignores intra requests less than 300 ms after the last one it honoured
/// (libwebrtc's `kMinKeyframeSendIntervalMs`), so a shorter interval would
/// only lose requests; the 30 ms above it absorb the variation in delay
/// between two requests on their way to the publisher (at exactly 300 ms a
/// request that travels faster than the previous one is dropped there, and
/// its viewers wait a second interval). Longer would make joining viewers
/// wait for nothing.
pub const KEYFRAME_THROTTLE: Duration = Duration::from_millis(330);
/// A peer that sends nothing for this long is gone (str0m has no ICE failed
/// state; RFC 7675 consent expires after 30 s).
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A viewer moves up a layer only after the estimate has allowed it this long.
pub const UPSWITCH_HOLD: Duration = Duration::from_secs(2);
/// How often layer bitrates are measured and viewers' layers re-evaluated.
const TICK: Duration = Duration::from_millis(250);
/// A layer with no packet for this long is inactive (paused by the publisher's BWE).
const LAYER_ACTIVE: Duration = Duration::from_millis(1500);
/// RTX history per viewer stream: NACKs arrive within a few RTTs; older
/// packets are useless to the decoder anyway (a keyframe request follows).
const RTX_CACHE_AGE: Duration = Duration::from_millis(1000);
const RTX_CACHE_PACKETS: usize = 512;
/// At most this share of a stream's bytes may be retransmissions (str0m's default).
const RTX_RATIO_CAP: f32 = 0.15;
/// Share of the bandwidth estimate a viewer's video may use (the rest is audio, RTX, headroom).
const BWE_USABLE: f64 = 0.85;

/// Static configuration of one engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Local addresses advertised as host candidates; datagrams arrive on these.
    pub candidates: Vec<SocketAddr>,
    /// ICE-lite (the server answers checks, never sends its own), as mediasoup and Janus do.
    pub ice_lite: bool,
    /// Peers this engine accepts before answering 503.
    pub max_peers: usize,
    /// Peers one room accepts before answering 429.
    pub max_room_peers: usize,
    /// Bandwidth estimate a viewer starts from before TWCC feedback.
    pub initial_bwe_bps: u64,
    /// Seed of the engine's RNG (sequence number origins).
    pub seed: u64,
    /// LL-HLS for every room with an H.264 publisher; `None` disables it.
    pub hls: Option<hls_bridge::HlsConfig>,
    /// How long an ended room's playlists stay served before its HLS
    /// state is removed.
    pub hls_linger: Duration,
    /// Transcode an ABR ladder for publishers that send one H.264 layer.
    pub hls_ladder: bool,
    /// Where the LL-HLS codecs (AAC, ladder) run: the node's driver gives a
    /// thread per codec; the default runs them inline (simulated time).
    pub hls_codecs: Arc<dyn CodecHost>,
    /// Wall-clock time (since the UNIX epoch) at the `now` given to
    /// [`Engine::new`]: HLS dates media without reading a clock.
    pub wall_clock: Duration,
    /// A viewer starting on a layer is written the layer's latest
    /// keyframe-started group ([`gop`]) instead of asking for a keyframe.
    pub keyframe_cache: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            candidates: Vec::new(),
            ice_lite: true,
            max_peers: 10_000,
            max_room_peers: 5_000,
            initial_bwe_bps: 2_500_000,
            seed: 0,
            hls: None,
            hls_linger: Duration::from_secs(60),
            hls_ladder: false,
            hls_codecs: Arc::new(InlineHost),
            keyframe_cache: true,
            wall_clock: Duration::ZERO,
        }
    }
}

/// A control-plane request to the engine.
#[derive(Debug)]
pub enum Command {
    Publish {
        room: RoomId,
        session: SessionId,
        identity: Option<String>,
        offer: String,
    },
    Play {
        room: RoomId,
        session: SessionId,
        identity: Option<String>,
        offer: String,
        publisher: Option<String>,
        max_layer: Option<LayerPref>,
        /// Other engines with publishers of the room (its own worker, the
        /// relay gateway): the viewer is fed mirrors of theirs too.
        homes: Vec<WorkerId>,
        /// The video codecs of the source the viewer would get, as the
        /// room's own worker told ([`Command::RoomVideo`]), for an engine
        /// that has no mirror of it yet; empty when not known.
        room_video: Vec<Codec>,
    },
    /// The video codecs the source a viewer of `room` (pinned to
    /// `publisher`) would get sends, when this engine knows them:
    /// [`Reply::RoomVideo`].
    RoomVideo {
        room: RoomId,
        publisher: Option<String>,
    },
    Patch {
        session: SessionId,
        patch: IcePatch,
    },
    SetLayer {
        session: SessionId,
        layer: Option<LayerPref>,
    },
    Delete {
        session: SessionId,
    },
    Rooms,
    /// The room's publishers turned out to be on another engine (the relay
    /// gateway, for a room published on another node): viewers waiting
    /// here are fed from there.
    Mirror {
        room: RoomId,
        home: WorkerId,
    },
    /// A source fed from outside (an RTMP encoder) becomes the room's
    /// publisher; removed with [`Command::Delete`] of its session.
    Ingest(IngestOpen),
    /// Packets (and AAC access units) of an ingest source, in order.
    IngestMedia {
        session: SessionId,
        packets: Vec<IngestItem>,
    },
    /// Close every peer (RTCP BYE + DTLS close_notify) for shutdown.
    CloseAll,
}

/// The engine's answer to a [`Command`].
#[derive(Debug)]
pub enum Reply {
    Answer(String),
    Patched(Option<IceRestartAnswer>),
    Done,
    Rooms(Vec<RoomInfo>),
    RoomVideo(Vec<Codec>),
}

/// What the engine wants done, drained by [`Engine::poll_output`].
#[derive(Debug)]
pub enum Output {
    /// A datagram to send.
    Transmit(Transmit),
    /// A message for another worker's engine (the `relay` protocol).
    Relay(WorkerId, Message),
    /// A change of the node's LL-HLS store.
    Hls(HlsUpdate),
    /// Something the control plane should know.
    Event(Event),
    /// Nothing more for now: call [`Engine::handle_timeout`] at this
    /// instant (or sooner, with new input).
    Timeout(Instant),
}

/// A datagram to send.
#[derive(Debug)]
pub struct Transmit {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// Something the driver should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A session ended inside the engine (idle timeout, DTLS close, error).
    SessionClosed { session: SessionId, room: RoomId },
}

/// The media engine of one worker.
pub struct Engine {
    config: EngineConfig,
    cert: DtlsCert,
    rng: SmallRng,
    next_peer: u64,
    /// Boxed: a `Peer` (its `Rtc` inline) is ~10 KB, and a map of values
    /// keeps up to half its slots empty after growing. Fx-hashed: looked up
    /// per viewer per forwarded packet, and the keys are our own counter
    /// (no one outside chooses them, so no hash flooding).
    peers: FxHashMap<PeerId, Box<Peer>>,
    by_session: HashMap<SessionId, PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
    by_ufrag: HashMap<String, PeerId>,
    rooms: BTreeMap<RoomId, Room>,
    /// Each peer's next str0m timeout, for `poll_timeout` without a scan.
    timers: BTreeSet<(Instant, PeerId)>,
    next_tick: Instant,
    /// When the earliest throttled keyframe request may be sent.
    keyframe_retry: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: EngineStats,
    /// Reused between calls so the packet path does not allocate.
    scratch_packets: Vec<RtpPacket>,
    scratch_events: Vec<RtcEvent>,
    scratch_due: Vec<PeerId>,
    /// Viewers written to since the last flush (see `Peer::dirty`).
    dirty: Vec<PeerId>,
    /// The time of the last datagram, when dirty viewers are due.
    last_input: Instant,
    hls: Option<HlsTap>,
    /// Sources of rooms homed on other engines, fed by relay messages;
    /// their ids come from the same counter as peers'.
    mirrors: FxHashMap<PeerId, Box<Mirror>>,
    /// (home, the source's id there) → the mirror's id here.
    mirror_ids: HashMap<(WorkerId, SourceId), PeerId>,
    relays: VecDeque<(WorkerId, Message)>,
    /// Sources fed from outside (RTMP); ids from the peers' counter.
    ingests: FxHashMap<PeerId, Box<Ingest>>,
}

impl Engine {
    pub fn new(config: EngineConfig, now: Instant) -> Result<Engine, MediaError> {
        // Every Rtc built from RtcConfig finds the provider here; a second install is a no-op.
        str0m::crypto::from_feature_flags().install_process_default();
        let provider = str0m::crypto::from_feature_flags();
        let cert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| MediaError::Internal("DTLS certificate generation failed".into()))?;
        let hls = config.hls.map(|c| {
            let tap = TapConfig {
                hls: c,
                linger: config.hls_linger,
                ladder: config.hls_ladder,
            };
            HlsTap::new(tap, config.hls_codecs.clone(), now, config.wall_clock)
        });
        Ok(Engine {
            rng: SmallRng::seed_from_u64(config.seed),
            config,
            cert,
            next_peer: 1,
            peers: FxHashMap::default(),
            by_session: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            rooms: BTreeMap::new(),
            timers: BTreeSet::new(),
            next_tick: now + TICK,
            keyframe_retry: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: EngineStats::default(),
            scratch_packets: Vec::new(),
            scratch_events: Vec::new(),
            scratch_due: Vec::new(),
            dirty: Vec::new(),
            last_input: now,
            hls,
            mirrors: FxHashMap::default(),
            mirror_ids: HashMap::new(),
            relays: VecDeque::new(),
            ingests: FxHashMap::default(),
        })
    }

    pub fn stats(&self) -> EngineStats {
        let hls = self.hls.as_ref().map(HlsTap::stats).unwrap_or_default();
        EngineStats {
            // A room is counted where it is published (or, with no
            // publisher yet, where nothing feeds it); mirrors not at all.
            rooms: self
                .rooms
                .values()
                .filter(|r| r.homes.is_empty() || self.local_publishers(r) > 0)
                .count() as u64,
            publishers: self.rooms.values().map(|r| self.local_publishers(r) as u64).sum(),
            viewers: self.rooms.values().map(|r| r.viewers.len() as u64).sum(),
            hls_rooms: hls.rooms,
            hls_parts: hls.parts,
            hls_segments: hls.segments,
            hls_aac_dropped: hls.aac_dropped,
            hls_aac_transcoders: hls.aac_transcoders,
            hls_aac_passthrough: hls.aac_passthrough,
            hls_aac_passthrough_dropped: hls.aac_passthrough_dropped,
            index_entries: self.index_entries(),
            ..self.stats
        }
    }

    /// The room's publishers on this engine (not mirrors of others').
    fn local_publishers(&self, r: &state::Room) -> usize {
        r.publishers
            .iter()
            .filter(|p| !self.mirrors.contains_key(p))
            .count()
    }

    /// Entries in every table a session adds to: all 0 once the last
    /// session and its room are gone (a leak otherwise).
    pub fn index_entries(&self) -> u64 {
        let relayed: usize = self.rooms.values().map(|r| r.watchers.len()).sum();
        [
            self.peers.len(),
            self.by_session.len(),
            self.by_addr.len(),
            self.by_ufrag.len(),
            self.rooms.len(),
            relayed,
            self.timers.len(),
            self.mirrors.len(),
            self.mirror_ids.len(),
            self.ingests.len(),
            self.dirty.len(),
        ]
        .iter()
        .sum::<usize>() as u64
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// A datagram arrived on `to` from `from`.
    pub fn handle_receive(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        self.stats.packets_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        let Some(id) = self.demux(from, bytes) else {
            self.stats.dropped_datagrams += 1;
            trace!(len = bytes.len(), "datagram for no peer");
            return;
        };
        let Ok(receive) = Receive::new(Protocol::Udp, from, to, bytes) else {
            self.stats.dropped_datagrams += 1;
            debug!(len = bytes.len(), "unparseable datagram");
            return;
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let input = Input::Receive(now, receive);
        if !peer.rtc.accepts(&input) {
            self.stats.dropped_datagrams += 1;
            return;
        }
        peer.last_rx = now;
        if !peer.addrs.contains(&from) {
            peer.addrs.push(from);
            self.by_addr.insert(from, id);
        }
        if let Err(e) = peer.rtc.handle_input(input) {
            debug!(session = %peer.session, error = %e, "rtc rejected input");
        }
        self.drive(now, id);
        self.last_input = now;
    }

    /// Lets every viewer written to send what it was given: one str0m
    /// timeout per viewer per batch of input, however many packets it got.
    /// Datagrams only mark viewers dirty; `poll_timeout` then asks for an
    /// immediate `handle_timeout`, so a driver that reads a batch of
    /// datagrams pays this once per batch, not once per datagram.
    fn flush_dirty(&mut self, now: Instant) {
        while let Some(id) = self.dirty.pop() {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            peer.dirty = false;
            if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                debug!(session = %peer.session, error = %e, "rtc timeout failed");
            }
            self.drive(now, id);
        }
    }

    /// Executes a control-plane command.
    pub fn handle_command(&mut self, now: Instant, cmd: Command) -> Result<Reply, MediaError> {
        let span = match &cmd {
            Command::Patch { session, .. }
            | Command::SetLayer { session, .. }
            | Command::Delete { session } => self
                .by_session
                .get(session)
                .and_then(|id| self.peers.get(id))
                .map_or_else(Span::none, |p| p.span.clone()),
            _ => Span::none(),
        };
        let _entered = span.enter();
        let reply = self.command(now, cmd);
        self.flush_dirty(now);
        reply
    }

    fn command(&mut self, now: Instant, cmd: Command) -> Result<Reply, MediaError> {
        match cmd {
            Command::Publish {
                room,
                session,
                identity,
                offer,
            } => self.add_peer(
                now,
                NewPeer {
                    room,
                    session,
                    identity,
                    offer,
                    intent: Intent::Publish,
                    pin: None,
                    max_layer: None,
                    room_video: Vec::new(),
                },
            ),
            Command::Play {
                room,
                session,
                identity,
                offer,
                publisher,
                max_layer,
                homes,
                room_video,
            } => {
                for home in homes {
                    self.watch(room.clone(), home);
                }
                let new = NewPeer {
                    room: room.clone(),
                    session,
                    identity,
                    offer,
                    intent: Intent::Play,
                    pin: publisher,
                    max_layer,
                    room_video,
                };
                let reply = self.add_peer(now, new);
                if reply.is_err() {
                    self.remove_room_if_empty(&room);
                }
                reply
            }
            Command::Patch { session, patch } => self.patch(now, &session, patch).map(Reply::Patched),
            Command::SetLayer { session, layer } => {
                let id = *self.by_session.get(&session).ok_or(MediaError::NotFound)?;
                let peer = self.peers.get_mut(&id).ok_or(MediaError::NotFound)?;
                let Role::Viewer(v) = &mut peer.role else {
                    return Err(MediaError::BadRequest(
                        "layer selection applies to WHEP sessions".into(),
                    ));
                };
                v.max_layer = layer;
                v.up_since = None;
                v.forced = true;
                self.select_layer(now, id);
                Ok(Reply::Done)
            }
            Command::Delete { session } => {
                let id = *self.by_session.get(&session).ok_or(MediaError::NotFound)?;
                if self.ingests.contains_key(&id) {
                    self.remove_ingest(now, id, "deleted");
                } else {
                    self.remove_peer(now, id, "deleted");
                }
                Ok(Reply::Done)
            }
            Command::Rooms => Ok(Reply::Rooms(self.rooms_info())),
            Command::RoomVideo { room, publisher } => {
                Ok(Reply::RoomVideo(self.room_video(&room, publisher.as_deref())))
            }
            Command::Mirror { room, home } => {
                self.watch(room, home);
                Ok(Reply::Done)
            }
            Command::Ingest(open) => self.add_ingest(now, open),
            Command::IngestMedia { session, packets } => self.ingest_media(now, &session, packets),
            Command::CloseAll => {
                let ids: Vec<PeerId> = self.peers.keys().copied().collect();
                for id in ids {
                    self.remove_peer(now, id, "shutdown");
                }
                let ingests: Vec<PeerId> = self.ingests.keys().copied().collect();
                for id in ingests {
                    self.remove_ingest(now, id, "shutdown");
                }
                Ok(Reply::Done)
            }
        }
    }

    /// Time has advanced to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Each due peer is driven once: str0m may ask for `now` again, and
        // that waits for the next call instead of spinning here.
        let mut due = std::mem::take(&mut self.scratch_due);
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(peer) = self.peers.get_mut(&id) {
                peer.timer = None;
            }
            due.push(id);
        }
        for id in due.drain(..) {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                debug!(session = %peer.session, error = %e, "rtc timeout failed");
            }
            self.drive(now, id);
        }
        self.scratch_due = due;
        if let Some(tap) = &mut self.hls {
            tap.handle_timeout(now);
        }
        self.hls_keyframe_requests(now);
        if self.keyframe_retry.is_some_and(|at| at <= now) {
            self.keyframe_retry = None;
            self.retry_keyframes(now);
        }
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            self.tick(now);
        }
        self.update_demand();
        self.flush_dirty(now);
    }

    /// What the engine wants done next: messages for other engines first
    /// (so they fan out a packet while this one does), then datagrams,
    /// LL-HLS changes and events; [`Output::Timeout`] once nothing is left.
    pub fn poll_output(&mut self) -> Output {
        if let Some((to, msg)) = self.relays.pop_front() {
            return Output::Relay(to, msg);
        }
        if let Some(t) = self.transmits.pop_front() {
            return Output::Transmit(t);
        }
        if let Some(update) = self.hls.as_mut().and_then(HlsTap::poll_update) {
            return Output::Hls(update);
        }
        if let Some(e) = self.events.pop_front() {
            return Output::Event(e);
        }
        Output::Timeout(self.next_timeout())
    }

    /// When the engine next needs `handle_timeout`.
    fn next_timeout(&self) -> Instant {
        if !self.dirty.is_empty() {
            return self.last_input;
        }
        let mut next = match self.timers.first() {
            Some(&(at, _)) => at.min(self.next_tick),
            None => self.next_tick,
        };
        if let Some(at) = self.keyframe_retry {
            next = next.min(at);
        }
        match self.hls.as_ref().and_then(|h| h.poll_timeout()) {
            Some(at) => next.min(at),
            None => next,
        }
    }

    /// Every [`TICK`]: bitrates measured, idle peers removed, wanted
    /// keyframes asked again, every viewer's layer re-evaluated.
    fn tick(&mut self, now: Instant) {
        let mut idle = Vec::new();
        let mut keyframes = Vec::new();
        for (&id, peer) in &mut self.peers {
            if now.saturating_duration_since(peer.last_rx) > PEER_IDLE_TIMEOUT {
                idle.push(id);
                continue;
            }
            match &mut peer.role {
                Role::Publisher(p) => p.measure(now, id, &mut keyframes),
                Role::Viewer(v) => {
                    for t in [v.audio.as_mut(), v.video.as_mut()].into_iter().flatten() {
                        t.bitrate.tick(now);
                    }
                }
            }
        }
        for (&id, m) in &mut self.mirrors {
            m.publisher.measure(now, id, &mut keyframes);
        }
        // An ingest source is measured; nobody can ask it for a keyframe.
        for (&id, i) in &mut self.ingests {
            i.publisher.measure(now, id, &mut Vec::new());
        }
        for id in idle {
            self.remove_peer(now, id, "idle timeout");
        }
        for (pid, li) in keyframes {
            self.want_keyframe(now, pid, li);
        }
        let viewers: Vec<PeerId> = self
            .rooms
            .values()
            .flat_map(|r| r.viewers.iter().copied())
            .collect();
        self.tell_layer_rates(now);
        for vid in viewers {
            self.select_layer(now, vid);
        }
    }
}
