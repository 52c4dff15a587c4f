//! The Sans-IO media engine of one worker.
//!
//! It owns every peer (one str0m `Rtc` in RTP mode each) and every room placed
//! on its worker. It knows no sockets, no tokio and no clock: the driver feeds
//! it datagrams, commands and timeouts with the current `Instant`, and drains
//! transmits and events. After touching an `Rtc` the engine drains that
//! `Rtc`'s `poll_output` to its next timeout before touching it again.

mod aac;
mod hls;
mod ladder;
mod relay;
mod rewrite;
mod runner;
pub mod sdp;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rustc_hash::FxHashMap;
use signaling::media::{PublisherInfo, RoomInfo, TrackInfo, ViewerInfo};
use signaling::{IcePatch, IceRestartAnswer, LayerPref, MediaError, RoomId, SessionId};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::format::{Codec, PayloadParams};
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{Extension, ExtensionMap, RtpPacket, RtpWrite, SeqNo, Ssrc};
use str0m::{Candidate, Event as RtcEvent, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tracing::{Span, debug, info, info_span, trace, warn};

pub use hls::HlsUpdate;
pub use relay::{Relay, RelayPacket, RelayTrack, WorkerId};
pub use rewrite::{Rewriter, Rewritten, Vp8Rewriter};
use sdp::Intent;

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

/// A peer's id inside one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

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
    /// Wall-clock time (since the UNIX epoch) at the `now` given to
    /// [`Engine::new`]: HLS dates media without reading a clock.
    pub wall_clock: Duration,
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
        /// The room's publishers are on another engine (its home): the
        /// viewer is fed through a mirror of them ([`Relay`]).
        home: Option<WorkerId>,
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

/// Counters for `/metrics`; monotonic unless named as a gauge.
#[derive(Debug, Default, Clone, Copy)]
pub struct EngineStats {
    pub rooms: u64,
    pub publishers: u64,
    pub viewers: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub rtp_forwarded: u64,
    pub layer_switches: u64,
    pub keyframe_requests: u64,
    pub nacks_received: u64,
    pub nacks_sent: u64,
    pub dropped_datagrams: u64,
    /// Gauge: rooms packaged as LL-HLS.
    pub hls_rooms: u64,
    pub hls_parts: u64,
    pub hls_segments: u64,
    /// Opus frames the AAC transcoder threads were too far behind to take.
    pub hls_aac_dropped: u64,
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
    hls: Option<hls::HlsTap>,
    /// Keyframes the HLS tap asked for, sent after the packet path.
    hls_keyframes: Vec<(PeerId, usize)>,
    /// Sources of rooms homed on other engines, fed by [`Relay`]; their
    /// ids come from the same counter as peers'.
    mirrors: FxHashMap<PeerId, Box<Mirror>>,
    /// (home, the source's id there) → the mirror's id here.
    mirror_ids: HashMap<(WorkerId, PeerId), PeerId>,
    relays: VecDeque<(WorkerId, Relay)>,
}

#[derive(Default)]
struct Room {
    /// Publishers, or on a mirrored room the mirrors of the home's.
    publishers: Vec<PeerId>,
    viewers: BTreeSet<PeerId>,
    /// Set when the room's publishers are on another engine: this one
    /// holds only viewers, fed through mirrors.
    home: Option<WorkerId>,
    /// On the home: engines with viewers of the room (handed every packet).
    watchers: BTreeSet<WorkerId>,
}

impl Room {
    /// Nothing keeps the room: a mirrored room lives as long as its viewers.
    fn unused(&self) -> bool {
        match self.home {
            Some(_) => self.viewers.is_empty(),
            None => self.publishers.is_empty() && self.viewers.is_empty() && self.watchers.is_empty(),
        }
    }
}

/// A publisher of another engine as this engine's viewers see it.
struct Mirror {
    home: WorkerId,
    /// The source's id on its home.
    remote: PeerId,
    session: SessionId,
    identity: Option<String>,
    params: Vec<PayloadParams>,
    publisher: Publisher,
}

struct Peer {
    session: SessionId,
    room: RoomId,
    identity: Option<String>,
    rtc: Rtc,
    /// The remote offer, kept so an ICE restart PATCH can be replayed as an offer.
    offer: String,
    local_ufrag: String,
    addrs: Vec<SocketAddr>,
    /// The peer's entry in `Engine::timers`; `None` while it has none
    /// (new, or popped as due and not yet driven).
    timer: Option<Instant>,
    last_rx: Instant,
    role: Role,
    /// RTP was written since the last drive: str0m timestamps and sends
    /// written packets on its next `handle_input`.
    dirty: bool,
    /// Stats counters from str0m, to turn its absolute values into deltas.
    nacks_seen: HashMap<(Mid, Option<Rid>), u64>,
    /// `peer{room session peer role}`: entered for the peer's control-plane
    /// work (commands, str0m events, removal), not per forwarded packet.
    span: Span,
}

enum Role {
    Publisher(Publisher),
    Viewer(Box<Viewer>),
}

#[derive(Default)]
struct Publisher {
    tracks: Vec<SourceTrack>,
}

struct SourceTrack {
    mid: Mid,
    kind: MediaKind,
    /// Simulcast layers in SDP order; one rid-less layer without simulcast.
    layers: Vec<SourceLayer>,
    /// Viewers forwarded this track when it is audio.
    subscribers: Vec<PeerId>,
}

struct SourceLayer {
    rid: Option<Rid>,
    ssrc: Option<Ssrc>,
    codec: Option<Codec>,
    /// Viewers whose current or target layer this is.
    subscribers: Vec<PeerId>,
    bytes_window: u64,
    window_start: Option<Instant>,
    bitrate_bps: u64,
    last_packet: Option<Instant>,
    keyframe_wanted: bool,
    last_keyframe_request: Option<Instant>,
    size: Option<(u32, u32)>,
}

struct Viewer {
    /// The publisher currently forwarded.
    source: Option<PeerId>,
    /// `?publisher=`: an identity or session the viewer asked for.
    pin: Option<String>,
    max_layer: Option<LayerPref>,
    audio: Option<OutTrack>,
    video: Option<OutTrack>,
    bwe_bps: Option<u64>,
    current: Option<usize>,
    target: Option<usize>,
    up_since: Option<Instant>,
    /// The viewer (or a new source) changed the layer wanted: skip the upswitch hold once.
    forced: bool,
    desired_bps: u64,
}

struct OutTrack {
    ssrc: Ssrc,
    /// Payload types this viewer negotiated, to map the publisher's onto.
    params: Vec<PayloadParams>,
    /// (publisher pt, viewer pt) for the current source.
    pt_map: Vec<(Pt, Pt)>,
    rewriter: Rewriter,
    vp8: Vp8Rewriter,
    /// Rebase on the next packet forwarded (new source or new layer).
    rebase: bool,
    bitrate: RateMeter,
}

#[derive(Default)]
struct RateMeter {
    bytes: u64,
    start: Option<Instant>,
    bps: u64,
}

impl RateMeter {
    fn add(&mut self, now: Instant, bytes: usize) {
        self.start.get_or_insert(now);
        self.bytes += bytes as u64;
    }

    fn tick(&mut self, now: Instant) {
        let Some(start) = self.start else { return };
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= Duration::from_secs(1) {
            self.bps = self.bytes * 8 * 1000 / elapsed.as_millis().max(1) as u64;
            self.bytes = 0;
            self.start = Some(now);
        }
    }
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
            let tap = hls::TapConfig {
                hls: c,
                linger: config.hls_linger,
                ladder: config.hls_ladder,
            };
            hls::HlsTap::new(tap, now, config.wall_clock)
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
            hls_keyframes: Vec::new(),
            mirrors: FxHashMap::default(),
            mirror_ids: HashMap::new(),
            relays: VecDeque::new(),
        })
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            // A mirrored room is counted on its home, its mirrors not at all.
            rooms: self.rooms.values().filter(|r| r.home.is_none()).count() as u64,
            publishers: self
                .rooms
                .values()
                .filter(|r| r.home.is_none())
                .map(|r| r.publishers.len() as u64)
                .sum(),
            viewers: self.rooms.values().map(|r| r.viewers.len() as u64).sum(),
            hls_rooms: self.hls.as_ref().map_or(0, |h| h.stats().rooms),
            hls_parts: self.hls.as_ref().map_or(0, |h| h.stats().parts),
            hls_segments: self.hls.as_ref().map_or(0, |h| h.stats().segments),
            hls_aac_dropped: self.hls.as_ref().map_or(0, |h| h.stats().aac_dropped),
            ..self.stats
        }
    }

    /// The next LL-HLS change for the driver's HLS store.
    pub fn poll_hls(&mut self) -> Option<HlsUpdate> {
        self.hls.as_mut()?.poll_update()
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
            } => self.add_peer(now, room, session, identity, offer, Intent::Publish, None, None),
            Command::Play {
                room,
                session,
                identity,
                offer,
                publisher,
                max_layer,
                home,
            } => {
                if let Some(home) = home {
                    self.watch(room.clone(), home)?;
                }
                let reply = self.add_peer(
                    now,
                    room.clone(),
                    session,
                    identity,
                    offer,
                    Intent::Play,
                    publisher,
                    max_layer,
                );
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
                self.remove_peer(now, id, "deleted");
                Ok(Reply::Done)
            }
            Command::Rooms => Ok(Reply::Rooms(self.rooms_info())),
            Command::CloseAll => {
                let ids: Vec<PeerId> = self.peers.keys().copied().collect();
                for id in ids {
                    self.remove_peer(now, id, "shutdown");
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
            let wanted = tap.timeout(now);
            self.hls_keyframes.extend(wanted);
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
        self.flush_dirty(now);
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When the engine next needs `handle_timeout`.
    pub fn poll_timeout(&self) -> Instant {
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

    // ---- demux -------------------------------------------------------------

    /// O(1): by remote address, else by the local ufrag in a STUN USERNAME.
    fn demux(&self, from: SocketAddr, bytes: &[u8]) -> Option<PeerId> {
        if let Some(id) = self.by_addr.get(&from) {
            return Some(*id);
        }
        // RFC 7983: STUN starts with 0..=3.
        if !matches!(bytes.first(), Some(0..=3)) {
            return None;
        }
        let msg = str0m::ice::StunMessage::parse(bytes).ok()?;
        let (local, _remote) = msg.split_username()?;
        self.by_ufrag.get(local).copied()
    }

    // ---- peers -------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn add_peer(
        &mut self,
        now: Instant,
        room: RoomId,
        session: SessionId,
        identity: Option<String>,
        offer: String,
        intent: Intent,
        pin: Option<String>,
        max_layer: Option<LayerPref>,
    ) -> Result<Reply, MediaError> {
        if self.peers.len() >= self.config.max_peers {
            return Err(MediaError::Overloaded { retry_after_secs: 5 });
        }
        let in_room = self
            .rooms
            .get(&room)
            .map_or(0, |r| r.publishers.len() + r.viewers.len());
        if in_room >= self.config.max_room_peers {
            return Err(MediaError::RoomFull {
                room,
                retry_after_secs: 5,
            });
        }
        if self.by_session.contains_key(&session) {
            return Err(MediaError::BadRequest("session id already in use".into()));
        }
        if intent == Intent::Publish && self.rooms.get(&room).is_some_and(|r| r.home.is_some()) {
            return Err(MediaError::Internal(format!(
                "room {room} is homed on another worker"
            )));
        }
        sdp::check_offer(&offer, intent)?;
        let sdp_offer =
            SdpOffer::from_sdp_string(&offer).map_err(|e| MediaError::BadRequest(format!("SDP: {e}")))?;

        // A viewer pinned to the lowest layer has nothing to choose: without
        // the estimator str0m drains its queue in one poll instead of one
        // pacer timeout per packet (~25 % of the per-packet cost), and its
        // answer drops the feedback extensions (below).
        let bwe = intent == Intent::Play && max_layer != Some(LayerPref::Low);
        let feedback = bwe || intent == Intent::Publish;
        let mut rtc = self.rtc_config(bwe, feedback).build(now);
        for addr in &self.config.candidates {
            match Candidate::host(*addr, "udp") {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => warn!(%addr, error = %e, "cannot use candidate address"),
            }
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(sdp_offer)
            .map_err(|e| MediaError::Unprocessable(format!("offer not acceptable: {e}")))?;
        let answer = answer.to_sdp_string();
        sdp::check_answer(&offer, &answer)?;

        let local_ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        let id = PeerId(self.next_peer);
        self.next_peer += 1;
        let role = match intent {
            Intent::Publish => Role::Publisher(Publisher::default()),
            Intent::Play => Role::Viewer(Box::new(Viewer {
                source: None,
                pin,
                max_layer,
                audio: None,
                video: None,
                bwe_bps: None,
                current: None,
                target: None,
                up_since: None,
                forced: true,
                desired_bps: 0,
            })),
        };
        let span = info_span!("peer", %room, %session, peer = id.0, role = ?intent);
        span.in_scope(|| info!("peer added"));
        self.by_session.insert(session.clone(), id);
        self.by_ufrag.insert(local_ufrag.clone(), id);
        self.rooms.entry(room.clone()).or_default();
        self.peers.insert(
            id,
            Box::new(Peer {
                session,
                room: room.clone(),
                identity,
                rtc,
                offer,
                local_ufrag,
                addrs: Vec::new(),
                timer: None,
                last_rx: now,
                role,
                dirty: false,
                nacks_seen: HashMap::new(),
                span,
            }),
        );
        // MediaAdded events describe the negotiated tracks.
        self.drive(now, id);
        let room_entry = self.rooms.entry(room.clone()).or_default();
        match intent {
            Intent::Publish => {
                room_entry.publishers.push(id);
                self.announce(id);
                self.attach_waiting_viewers(now, &room);
            }
            Intent::Play => {
                room_entry.viewers.insert(id);
                self.attach_viewer(now, id);
            }
        }
        Ok(Reply::Answer(sdp::with_end_of_candidates(&answer)))
    }

    /// The codec order is the answer's: str0m lists the offered codecs it
    /// accepts in this order, and a browser sends the first codec of the
    /// answer. H.264 comes first (str0m's list starts with constrained
    /// baseline, packetization-mode=1), so every room whose publisher can
    /// send H.264 gets LL-HLS; a VP8-only offer still gets VP8.
    ///
    /// Without `feedback` the session negotiates no transport-wide sequence
    /// numbers and no abs-send-time: a viewer whose layer nothing estimates
    /// would only send feedback nobody reads, and str0m would keep a
    /// 1,000-record send register per viewer for it (~88 KB) and stamp every
    /// packet. A publisher keeps them: its browser's estimator needs the
    /// node's transport feedback.
    fn rtc_config(&self, bwe: bool, feedback: bool) -> RtcConfig {
        let mut config = RtcConfig::new()
            .set_crypto_provider(crate::dtls::crypto_provider())
            .set_rtp_mode(true)
            .set_ice_lite(self.config.ice_lite)
            .set_dtls_cert(self.cert.clone())
            .clear_codecs()
            .enable_opus(true, false)
            .enable_h264(true)
            .enable_vp8(true)
            .enable_vp9(true)
            .enable_av1(true)
            .set_stats_interval(Some(Duration::from_secs(2)));
        if bwe {
            config = config.enable_bwe(Some(Bitrate::bps(self.config.initial_bwe_bps)));
        }
        if !feedback {
            let mut exts = ExtensionMap::empty();
            for (id, ext) in ExtensionMap::standard().iter() {
                if !matches!(
                    ext,
                    Extension::TransportSequenceNumber | Extension::AbsoluteSendTime
                ) {
                    exts.set(id, ext.clone());
                }
            }
            config = config.set_extension_map(exts);
        }
        config
    }

    fn patch(
        &mut self,
        now: Instant,
        session: &SessionId,
        patch: IcePatch,
    ) -> Result<Option<IceRestartAnswer>, MediaError> {
        let id = *self.by_session.get(session).ok_or(MediaError::NotFound)?;
        let peer = self.peers.get_mut(&id).ok_or(MediaError::NotFound)?;
        match patch {
            IcePatch::Trickle { candidates, .. } => {
                for c in candidates {
                    match Candidate::from_sdp_string(&c) {
                        Ok(c) => peer.rtc.add_remote_candidate(c),
                        Err(e) => debug!(%session, error = %e, "dropping trickled candidate"),
                    }
                }
                self.drive(now, id);
                Ok(None)
            }
            IcePatch::Restart {
                ufrag,
                pwd,
                candidates,
            } => {
                let offer = sdp::with_ice_credentials(&peer.offer, &ufrag, &pwd, &candidates);
                let sdp_offer = SdpOffer::from_sdp_string(&offer)
                    .map_err(|e| MediaError::BadRequest(format!("restart fragment: {e}")))?;
                let answer = peer
                    .rtc
                    .sdp_api()
                    .accept_offer(sdp_offer)
                    .map_err(|e| MediaError::Unprocessable(format!("ICE restart refused: {e}")))?;
                let creds = peer.rtc.direct_api().local_ice_credentials();
                let answer = answer.to_sdp_string();
                let candidates = answer
                    .lines()
                    .filter_map(|l| l.trim_end().strip_prefix("a="))
                    .filter(|l| l.starts_with("candidate:"))
                    .map(str::to_owned)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                peer.offer = offer;
                let old = std::mem::replace(&mut peer.local_ufrag, creds.ufrag.clone());
                self.by_ufrag.remove(&old);
                self.by_ufrag.insert(creds.ufrag.clone(), id);
                info!("ICE restarted");
                self.drive(now, id);
                Ok(Some(IceRestartAnswer {
                    ufrag: creds.ufrag,
                    pwd: creds.pass,
                    candidates,
                    ice_lite: self.config.ice_lite,
                }))
            }
        }
    }

    fn remove_peer(&mut self, now: Instant, id: PeerId, reason: &str) {
        let Some(mut peer) = self.peers.remove(&id) else {
            return;
        };
        let span = peer.span.clone();
        let _entered = span.enter();
        info!(reason, "peer removed");
        // RTCP BYE and DTLS close_notify go out before the state is dropped.
        if peer.rtc.close().is_ok() {
            for _ in 0..64 {
                match peer.rtc.poll_output() {
                    Ok(Output::Transmit(t)) => push_transmit(&mut self.stats, &mut self.transmits, t),
                    Ok(Output::Event(_)) => {}
                    Ok(Output::Timeout(_)) | Err(_) => break,
                }
            }
        }
        if let Some(at) = peer.timer {
            self.timers.remove(&(at, id));
        }
        self.by_session.remove(&peer.session);
        self.by_ufrag.remove(&peer.local_ufrag);
        for addr in &peer.addrs {
            if self.by_addr.get(addr) == Some(&id) {
                self.by_addr.remove(addr);
            }
        }
        match &peer.role {
            Role::Viewer(v) => {
                if let Some(source) = v.source {
                    self.unsubscribe(source, id);
                }
                if let Some(room) = self.rooms.get_mut(&peer.room) {
                    room.viewers.remove(&id);
                }
            }
            Role::Publisher(_) => {
                if let Some(tap) = &mut self.hls {
                    tap.publisher_left(now, id);
                }
                if let Some(room) = self.rooms.get(&peer.room) {
                    for &w in &room.watchers {
                        self.relays.push_back((
                            w,
                            Relay::SourceGone {
                                room: peer.room.clone(),
                                source: id,
                            },
                        ));
                    }
                }
                self.source_left(now, &peer.room, id);
            }
        }
        self.remove_room_if_empty(&peer.room);
        self.events.push_back(Event::SessionClosed {
            session: peer.session,
            room: peer.room,
        });
    }

    // ---- driving str0m -----------------------------------------------------

    /// Drains one peer's `Rtc` to its next timeout and handles what came out.
    fn drive(&mut self, now: Instant, id: PeerId) {
        let mut packets = std::mem::take(&mut self.scratch_packets);
        let mut events = std::mem::take(&mut self.scratch_events);
        let mut alive = true;
        if let Some(peer) = self.peers.get_mut(&id) {
            loop {
                match peer.rtc.poll_output() {
                    Ok(Output::Timeout(at)) => {
                        // Most drives leave the deadline where it was: no
                        // BTreeSet remove and insert then.
                        if peer.timer != Some(at) {
                            if let Some(old) = peer.timer {
                                self.timers.remove(&(old, id));
                            }
                            peer.timer = Some(at);
                            self.timers.insert((at, id));
                        }
                        break;
                    }
                    Ok(Output::Transmit(t)) => push_transmit(&mut self.stats, &mut self.transmits, t),
                    Ok(Output::Event(RtcEvent::RtpPacket(p))) => packets.push(p),
                    Ok(Output::Event(e)) => events.push(e),
                    Err(e) => {
                        warn!(session = %peer.session, error = %e, "rtc failed");
                        alive = false;
                        break;
                    }
                }
            }
            if !peer.rtc.is_alive() {
                alive = false;
            }
        }
        for e in events.drain(..) {
            self.handle_rtc_event(now, id, e);
        }
        for p in packets.drain(..) {
            self.forward(now, id, p);
        }
        self.hls_keyframe_requests(now);
        self.scratch_packets = packets;
        self.scratch_events = events;
        if !alive {
            self.remove_peer(now, id, "closed");
        }
    }

    fn handle_rtc_event(&mut self, now: Instant, id: PeerId, event: RtcEvent) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let span = peer.span.clone();
        let _entered = span.enter();
        match event {
            RtcEvent::MediaAdded(m) => match &mut peer.role {
                Role::Publisher(p) => {
                    let rids: Vec<Option<Rid>> = match &m.simulcast {
                        Some(s) if !s.recv.is_empty() => s.recv.iter().map(|l| Some(l.rid)).collect(),
                        _ => vec![None],
                    };
                    debug!(mid = %m.mid, kind = ?m.kind, layers = rids.len(), "track");
                    p.tracks.push(SourceTrack {
                        mid: m.mid,
                        kind: m.kind,
                        layers: rids.into_iter().map(SourceLayer::new).collect(),
                        subscribers: Vec::new(),
                    });
                    self.announce(id);
                }
                Role::Viewer(v) => {
                    let mut api = peer.rtc.direct_api();
                    let stream = api.stream_tx_by_mid(m.mid, None);
                    // RTX history bounded to what a NACK can still use (a few RTTs),
                    // not str0m's 3 s default: it is most of a viewer's memory.
                    let ssrc = stream.map(|s| {
                        s.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, Some(RTX_RATIO_CAP));
                        s.ssrc()
                    });
                    let Some(ssrc) = ssrc else {
                        warn!(mid = %m.mid, "no send stream for viewer track");
                        return;
                    };
                    let params: Vec<PayloadParams> = {
                        let pts = peer
                            .rtc
                            .media(m.mid)
                            .map(|md| md.remote_pts().to_vec())
                            .unwrap_or_default();
                        peer.rtc
                            .codec_config()
                            .params()
                            .iter()
                            .filter(|p| pts.contains(&p.pt()))
                            .cloned()
                            .collect()
                    };
                    let clock = if m.kind == MediaKind::Audio {
                        48_000
                    } else {
                        90_000
                    };
                    let first_seq: u16 = self.rng.random();
                    let track = OutTrack {
                        ssrc,
                        params,
                        pt_map: Vec::new(),
                        rewriter: Rewriter::new(clock, first_seq),
                        vp8: Vp8Rewriter::default(),
                        rebase: true,
                        bitrate: RateMeter::default(),
                    };
                    match m.kind {
                        MediaKind::Audio => v.audio = Some(track),
                        MediaKind::Video => v.video = Some(track),
                    }
                    // str0m reports a viewer's tracks once negotiated; (re)attach so
                    // the new track gets its payload type map and subscription.
                    if v.source.is_some() || self.rooms.contains_key(&peer.room) {
                        let source = v.source.take();
                        if let Some(pid) = source {
                            self.unsubscribe(pid, id);
                        }
                        self.attach_viewer(now, id);
                    }
                }
            },
            RtcEvent::KeyframeRequest(req) => {
                // A viewer lost a picture: ask its source layer, merged and throttled.
                let Role::Viewer(v) = &peer.role else { return };
                let (Some(source), Some(layer)) = (v.source, v.current.or(v.target)) else {
                    return;
                };
                trace!(kind = ?req.kind, "viewer keyframe request");
                self.want_keyframe(now, source, layer);
            }
            RtcEvent::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                if let Role::Viewer(v) = &mut peer.role {
                    v.bwe_bps = Some(estimate.as_u64());
                }
            }
            RtcEvent::IceConnectionStateChange(state) => {
                debug!(?state, "ice");
                if state == IceConnectionState::Disconnected {
                    // Consent lost; the idle timeout reaps it if it does not come back.
                    trace!("ice disconnected");
                }
            }
            RtcEvent::Connected => {
                info!("connected");
                if matches!(peer.role, Role::Viewer(_)) {
                    self.select_layer(now, id);
                }
            }
            RtcEvent::MediaEgressStats(s) => {
                let seen = peer.nacks_seen.entry((s.mid, s.rid)).or_default();
                self.stats.nacks_received += s.nacks.saturating_sub(*seen);
                *seen = s.nacks;
            }
            RtcEvent::MediaIngressStats(s) => {
                let seen = peer.nacks_seen.entry((s.mid, s.rid)).or_default();
                self.stats.nacks_sent += s.nacks.saturating_sub(*seen);
                *seen = s.nacks;
            }
            RtcEvent::StreamPaused(p) => {
                debug!(mid = %p.mid, rid = ?p.rid, paused = p.paused, "layer paused");
            }
            RtcEvent::Closed => {}
            _ => {}
        }
    }

    // ---- relays between engines ---------------------------------------------

    /// A message from the engine of worker `from` (see [`Relay`]).
    pub fn handle_relay(&mut self, now: Instant, from: WorkerId, relay: Relay) {
        match relay {
            Relay::Media {
                source,
                track,
                layer,
                codec,
                packet,
            } => {
                let Some(&id) = self.mirror_ids.get(&(from, source)) else {
                    trace!(from = from.0, source = source.0, "media for no mirror");
                    return;
                };
                self.fan_out(now, id, track, layer, codec, &packet);
                self.last_input = now;
            }
            Relay::Keyframe { source, layer } => {
                if matches!(self.peers.get(&source).map(|p| &p.role), Some(Role::Publisher(_))) {
                    self.want_keyframe(now, source, layer);
                }
            }
            Relay::Watch { room, watching } => {
                if watching {
                    let r = self.rooms.entry(room.clone()).or_default();
                    if r.home.is_some() {
                        warn!(%room, from = from.0, "watch for a room this engine mirrors");
                        return;
                    }
                    r.watchers.insert(from);
                    debug!(%room, watcher = from.0, "room watched");
                    for pid in r.publishers.clone() {
                        self.announce_to(pid, from);
                    }
                } else {
                    if let Some(r) = self.rooms.get_mut(&room) {
                        r.watchers.remove(&from);
                        debug!(%room, watcher = from.0, "room unwatched");
                    }
                    self.remove_room_if_empty(&room);
                }
            }
            Relay::Source {
                room,
                source,
                session,
                identity,
                params,
                tracks,
            } => {
                let Some(r) = self.rooms.get_mut(&room) else {
                    // The last viewer left; the unwatch is on its way.
                    return;
                };
                if r.home != Some(from) {
                    warn!(%room, from = from.0, "source from an engine that is not the room's home");
                    return;
                }
                let id = match self.mirror_ids.get(&(from, source)) {
                    Some(&id) => id,
                    None => {
                        let id = PeerId(self.next_peer);
                        self.next_peer += 1;
                        self.mirror_ids.insert((from, source), id);
                        self.mirrors.insert(
                            id,
                            Box::new(Mirror {
                                home: from,
                                remote: source,
                                session: session.clone(),
                                identity: identity.clone(),
                                params: Vec::new(),
                                publisher: Publisher::default(),
                            }),
                        );
                        r.publishers.push(id);
                        debug!(%room, mirror = id.0, home = from.0, source = source.0, "mirror added");
                        id
                    }
                };
                let Some(m) = self.mirrors.get_mut(&id) else {
                    return;
                };
                m.session = session;
                m.identity = identity;
                m.params = params;
                let added = tracks.len() > m.publisher.tracks.len();
                // Tracks only ever get added; the ones known keep their state.
                for t in tracks.into_iter().skip(m.publisher.tracks.len()) {
                    m.publisher.tracks.push(SourceTrack {
                        mid: t.mid,
                        kind: t.kind,
                        layers: t.rids.into_iter().map(SourceLayer::new).collect(),
                        subscribers: Vec::new(),
                    });
                }
                // Viewers attached before a track was known get it now.
                let viewers: Vec<PeerId> = match self.rooms.get(&room) {
                    Some(r) if added => r.viewers.iter().copied().collect(),
                    _ => Vec::new(),
                };
                for vid in viewers {
                    let Some(Role::Viewer(v)) = self.peers.get_mut(&vid).map(|p| &mut p.role) else {
                        continue;
                    };
                    if v.source == Some(id) {
                        v.source = None;
                        self.unsubscribe(id, vid);
                    }
                }
                self.attach_waiting_viewers(now, &room);
            }
            Relay::SourceGone { room, source } => {
                let Some(id) = self.mirror_ids.remove(&(from, source)) else {
                    return;
                };
                self.mirrors.remove(&id);
                debug!(%room, mirror = id.0, "mirror removed");
                self.source_left(now, &room, id);
            }
        }
    }

    /// The next message for another engine.
    pub fn poll_relay(&mut self) -> Option<(WorkerId, Relay)> {
        self.relays.pop_front()
    }

    /// Makes `room` a room whose publishers live on `home`.
    fn watch(&mut self, room: RoomId, home: WorkerId) -> Result<(), MediaError> {
        let r = self.rooms.entry(room.clone()).or_default();
        match r.home {
            Some(h) if h == home => Ok(()),
            None if r.publishers.is_empty() && r.viewers.is_empty() && r.watchers.is_empty() => {
                r.home = Some(home);
                debug!(%room, home = home.0, "mirroring room");
                self.relays
                    .push_back((home, Relay::Watch { room, watching: true }));
                Ok(())
            }
            _ => {
                self.remove_room_if_empty(&room);
                Err(MediaError::Internal(format!(
                    "room {room} is not homed on worker {}",
                    home.0
                )))
            }
        }
    }

    /// Tells every engine watching the publisher's room about it.
    fn announce(&mut self, pid: PeerId) {
        let Some(peer) = self.peers.get(&pid) else { return };
        let watchers: Vec<WorkerId> = self
            .rooms
            .get(&peer.room)
            .map(|r| r.watchers.iter().copied().collect())
            .unwrap_or_default();
        for w in watchers {
            self.announce_to(pid, w);
        }
    }

    fn announce_to(&mut self, pid: PeerId, to: WorkerId) {
        let Some(peer) = self.peers.get(&pid) else { return };
        let Role::Publisher(p) = &peer.role else { return };
        let relay = Relay::Source {
            room: peer.room.clone(),
            source: pid,
            session: peer.session.clone(),
            identity: peer.identity.clone(),
            params: peer.rtc.codec_config().params().to_vec(),
            tracks: p
                .tracks
                .iter()
                .map(|t| RelayTrack {
                    mid: t.mid,
                    kind: t.kind,
                    rids: t.layers.iter().map(|l| l.rid).collect(),
                })
                .collect(),
        };
        self.relays.push_back((to, relay));
    }

    /// A source (publisher or mirror) of `room` is gone: its viewers move
    /// to another source of the room, or wait for one.
    fn source_left(&mut self, now: Instant, room_id: &RoomId, id: PeerId) {
        let viewers: Vec<PeerId> = match self.rooms.get_mut(room_id) {
            Some(room) => {
                room.publishers.retain(|p| *p != id);
                room.viewers.iter().copied().collect()
            }
            None => Vec::new(),
        };
        for vid in viewers {
            let Some(Role::Viewer(v)) = self.peers.get_mut(&vid).map(|p| &mut p.role) else {
                continue;
            };
            if v.source == Some(id) {
                v.source = None;
                v.current = None;
                v.target = None;
                self.attach_viewer(now, vid);
            }
        }
    }

    /// Removes a room nothing keeps; a mirrored room also drops its mirrors
    /// and tells its home it no longer watches.
    fn remove_room_if_empty(&mut self, room_id: &RoomId) {
        if !self.rooms.get(room_id).is_some_and(Room::unused) {
            return;
        }
        let Some(room) = self.rooms.remove(room_id) else {
            return;
        };
        if let Some(home) = room.home {
            for id in room.publishers {
                if let Some(m) = self.mirrors.remove(&id) {
                    self.mirror_ids.remove(&(m.home, m.remote));
                }
            }
            debug!(room = %room_id, home = home.0, "mirrored room ended");
            self.relays.push_back((
                home,
                Relay::Watch {
                    room: room_id.clone(),
                    watching: false,
                },
            ));
        }
    }

    /// A publisher's tracks, whether it is a local peer or a mirror.
    fn source(&self, pid: PeerId) -> Option<&Publisher> {
        match self.peers.get(&pid) {
            Some(peer) => match &peer.role {
                Role::Publisher(p) => Some(p),
                Role::Viewer(_) => None,
            },
            None => self.mirrors.get(&pid).map(|m| &m.publisher),
        }
    }

    fn source_mut(&mut self, pid: PeerId) -> Option<&mut Publisher> {
        match self.peers.get_mut(&pid) {
            Some(peer) => match &mut peer.role {
                Role::Publisher(p) => Some(p),
                Role::Viewer(_) => None,
            },
            None => self.mirrors.get_mut(&pid).map(|m| &mut m.publisher),
        }
    }

    /// Whether a source matches a viewer's `?publisher=` (identity or session).
    fn source_matches(&self, pid: PeerId, pin: &str) -> bool {
        let (session, identity) = match self.peers.get(&pid) {
            Some(p) => (&p.session, p.identity.as_deref()),
            None => match self.mirrors.get(&pid) {
                Some(m) => (&m.session, m.identity.as_deref()),
                None => return false,
            },
        };
        identity == Some(pin) || session.as_str() == pin
    }

    fn source_params(&self, pid: PeerId) -> Vec<PayloadParams> {
        match self.peers.get(&pid) {
            Some(p) => p.rtc.codec_config().params().to_vec(),
            None => self
                .mirrors
                .get(&pid)
                .map(|m| m.params.clone())
                .unwrap_or_default(),
        }
    }

    // ---- subscriptions -----------------------------------------------------

    /// Attaches every viewer of `room` that has no source (a new publisher arrived).
    fn attach_waiting_viewers(&mut self, now: Instant, room: &RoomId) {
        let Some(r) = self.rooms.get(room) else { return };
        let waiting: Vec<PeerId> = r
            .viewers
            .iter()
            .copied()
            .filter(
                |v| matches!(self.peers.get(v).map(|p| &p.role), Some(Role::Viewer(v)) if v.source.is_none()),
            )
            .collect();
        for vid in waiting {
            self.attach_viewer(now, vid);
        }
    }

    /// Picks a publisher for a viewer (its pin, else the room's first) and subscribes.
    fn attach_viewer(&mut self, now: Instant, vid: PeerId) {
        let Some(peer) = self.peers.get(&vid) else { return };
        let Role::Viewer(v) = &peer.role else { return };
        let Some(room) = self.rooms.get(&peer.room) else {
            return;
        };
        let chosen = room.publishers.iter().copied().find(|&pid| match &v.pin {
            Some(pin) => self.source_matches(pid, pin),
            None => self.source(pid).is_some(),
        });
        let Some(pid) = chosen else { return };
        let pub_params = self.source_params(pid);
        let audio_layer_subscribe;
        {
            let Some(Role::Viewer(v)) = self.peers.get_mut(&vid).map(|p| &mut p.role) else {
                return;
            };
            v.source = Some(pid);
            v.current = None;
            v.target = None;
            v.up_since = None;
            v.forced = true;
            for track in [v.audio.as_mut(), v.video.as_mut()].into_iter().flatten() {
                track.pt_map = map_payload_types(&pub_params, &track.params);
                track.rebase = true;
            }
            audio_layer_subscribe = v.audio.is_some();
        }
        if audio_layer_subscribe
            && let Some(p) = self.source_mut(pid)
            && let Some(t) = p.tracks.iter_mut().find(|t| t.kind == MediaKind::Audio)
            && !t.subscribers.contains(&vid)
        {
            t.subscribers.push(vid);
        }
        debug!(viewer = vid.0, publisher = pid.0, "viewer attached");
        self.select_layer(now, vid);
    }

    fn unsubscribe(&mut self, publisher: PeerId, vid: PeerId) {
        let Some(p) = self.source_mut(publisher) else {
            return;
        };
        for t in &mut p.tracks {
            t.subscribers.retain(|v| *v != vid);
            for l in &mut t.layers {
                l.subscribers.retain(|v| *v != vid);
            }
        }
    }

    /// Re-evaluates which layer a viewer should get, and starts a switch if it changed.
    fn select_layer(&mut self, now: Instant, vid: PeerId) {
        let Some(Role::Viewer(v)) = self.peers.get(&vid).map(|p| &p.role) else {
            return;
        };
        let Some(pid) = v.source else { return };
        if v.video.is_none() {
            return;
        }
        let Some(p) = self.source(pid) else {
            return;
        };
        let Some(track) = p.tracks.iter().find(|t| t.kind == MediaKind::Video) else {
            return;
        };
        let ranked = ranked_layers(track, now);
        if ranked.is_empty() {
            return;
        }
        let cap = match &v.max_layer {
            None | Some(LayerPref::High) => ranked.len() - 1,
            Some(LayerPref::Mid) => 1.min(ranked.len() - 1),
            Some(LayerPref::Low) => 0,
            Some(LayerPref::Rid(rid)) => ranked
                .iter()
                .position(|&i| track.layers[i].rid.as_ref().is_some_and(|r| &**r == rid.as_str()))
                .unwrap_or(ranked.len() - 1),
        };
        // Two thresholds (hysteresis): a layer is chosen when it fits BWE_USABLE
        // of the estimate, and kept while the whole estimate still covers it.
        let mut best = cap;
        if let Some(bwe) = v.bwe_bps {
            let budget = (bwe as f64 * BWE_USABLE) as u64;
            best = (0..=cap)
                .rev()
                .find(|&r| track.layers[ranked[r]].bitrate_bps <= budget)
                .unwrap_or(0);
            let current = v.current.and_then(|l| ranked.iter().position(|&i| i == l));
            if let Some(cur) = current
                && cur <= cap
                && cur > best
                && track.layers[ranked[cur]].bitrate_bps <= bwe
            {
                best = cur;
            }
        }
        // Ask the estimator to probe well above the cap layer's rate, or the
        // estimate settles just under what the cap layer needs.
        let cap_bps = track.layers[ranked[cap]].bitrate_bps.max(300_000);
        let desired_bps = (cap_bps as f64 / BWE_USABLE * 1.25) as u64 + 64_000;
        let best_layer = ranked[best];
        let current_rank = v
            .target
            .or(v.current)
            .and_then(|l| ranked.iter().position(|&i| i == l));

        let Some(Role::Viewer(v)) = self.peers.get_mut(&vid).map(|p| &mut p.role) else {
            return;
        };
        // Hysteresis: down at once, up only after the estimate held for UPSWITCH_HOLD.
        let choose = match current_rank {
            Some(cur) if best > cur && v.bwe_bps.is_some() && v.target == v.current && !v.forced => {
                let since = *v.up_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= UPSWITCH_HOLD {
                    best_layer
                } else {
                    ranked[cur]
                }
            }
            _ => {
                v.up_since = None;
                best_layer
            }
        };
        // Re-arm the estimator only on a real change (> 10%), not on every tick's noise.
        if desired_bps.abs_diff(v.desired_bps) * 10 > v.desired_bps {
            v.desired_bps = desired_bps;
            if let Some(peer) = self.peers.get_mut(&vid) {
                peer.rtc
                    .bwe()
                    .set_bitrate(Bitrate::bps(150_000), Bitrate::bps(desired_bps));
            }
        }
        let Some(Role::Viewer(v)) = self.peers.get_mut(&vid).map(|p| &mut p.role) else {
            return;
        };
        v.forced = false;
        if v.target == Some(choose) {
            return;
        }
        let old_target = v.target.replace(choose);
        v.up_since = None;
        let current = v.current;
        debug!(viewer = vid.0, from = ?current, to = choose, "layer target");
        if let Some(p) = self.source_mut(pid)
            && let Some(track) = p.tracks.iter_mut().find(|t| t.kind == MediaKind::Video)
        {
            if let Some(old) = old_target
                && Some(old) != current
            {
                track.layers[old].subscribers.retain(|x| *x != vid);
            }
            if !track.layers[choose].subscribers.contains(&vid) {
                track.layers[choose].subscribers.push(vid);
            }
        }
        if current != Some(choose) {
            self.want_keyframe(now, pid, choose);
        }
    }

    /// Asks a publisher's layer for a keyframe, merged and throttled per layer.
    /// Sends the keyframe requests the HLS tap made (all layers at once).
    fn hls_keyframe_requests(&mut self, now: Instant) {
        if self.hls_keyframes.is_empty() {
            return;
        }
        for (pid, layer) in std::mem::take(&mut self.hls_keyframes) {
            self.want_keyframe(now, pid, layer);
        }
    }

    fn want_keyframe(&mut self, now: Instant, publisher: PeerId, layer: usize) {
        if let Some(m) = self.mirrors.get_mut(&publisher) {
            // Asked of the home, which merges it with its own requests.
            let Some(l) = m
                .publisher
                .tracks
                .iter_mut()
                .find(|t| t.kind == MediaKind::Video)
                .and_then(|t| t.layers.get_mut(layer))
            else {
                return;
            };
            l.keyframe_wanted = true;
            if let Some(until) = l.throttled_until(now) {
                self.retry_keyframe_at(until);
            } else {
                l.last_keyframe_request = Some(now);
                let relay = Relay::Keyframe {
                    source: m.remote,
                    layer,
                };
                self.relays.push_back((m.home, relay));
            }
            return;
        }
        let Some(peer) = self.peers.get_mut(&publisher) else {
            return;
        };
        let Role::Publisher(p) = &mut peer.role else {
            return;
        };
        let Some(track) = p.tracks.iter_mut().find(|t| t.kind == MediaKind::Video) else {
            return;
        };
        let Some(l) = track.layers.get_mut(layer) else {
            return;
        };
        l.keyframe_wanted = true;
        if let Some(until) = l.throttled_until(now) {
            self.retry_keyframe_at(until);
            return;
        }
        let Some(ssrc) = l.ssrc else { return };
        let mut api = peer.rtc.direct_api();
        let Some(stream) = api.stream_rx(&ssrc) else {
            return;
        };
        stream.request_keyframe(KeyframeRequestKind::Pli);
        l.last_keyframe_request = Some(now);
        self.stats.keyframe_requests += 1;
        trace!(publisher = publisher.0, layer, "PLI sent upstream");
        self.drive(now, publisher);
    }

    /// Wakes the engine when a throttled keyframe request may be sent.
    fn retry_keyframe_at(&mut self, at: Instant) {
        self.keyframe_retry = Some(self.keyframe_retry.map_or(at, |r| r.min(at)));
    }

    /// Sends the keyframe requests that waited for their layer's throttle:
    /// every layer someone still waits a keyframe of.
    fn retry_keyframes(&mut self, now: Instant) {
        let mut wanted = Vec::new();
        for room in self.rooms.values() {
            for &pid in &room.publishers {
                let source = match self.peers.get(&pid).map(|p| &p.role) {
                    Some(Role::Publisher(p)) => p,
                    _ => match self.mirrors.get(&pid) {
                        Some(m) => &m.publisher,
                        None => continue,
                    },
                };
                source.wanted_keyframes(pid, &mut wanted);
            }
        }
        for (pid, layer) in wanted {
            self.want_keyframe(now, pid, layer);
        }
    }

    // ---- the packet path ---------------------------------------------------

    /// One RTP packet from a publisher: fan it out to the viewers of its layer.
    fn forward(&mut self, now: Instant, pid: PeerId, packet: RtpPacket) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        let Role::Publisher(p) = &mut peer.role else {
            return;
        };
        let ssrc = packet.header.ssrc;
        // Find the track and layer by SSRC; learn the SSRC on the first packet.
        let mut found = None;
        for (ti, t) in p.tracks.iter().enumerate() {
            if let Some(li) = t.layers.iter().position(|l| l.ssrc == Some(ssrc)) {
                found = Some((ti, li));
                break;
            }
        }
        if found.is_none() {
            let (mid, rid) = {
                let mut api = peer.rtc.direct_api();
                match api.stream_rx(&ssrc) {
                    Some(s) => (s.mid(), s.rid()),
                    None => return,
                }
            };
            if let Some(ti) = p.tracks.iter().position(|t| t.mid == mid)
                && let Some(li) = p.tracks[ti]
                    .layers
                    .iter()
                    .position(|l| l.rid == rid || l.rid.is_none())
            {
                p.tracks[ti].layers[li].ssrc = Some(ssrc);
                found = Some((ti, li));
            }
        }
        let Some((ti, li)) = found else { return };
        let codec = {
            let pt = packet.header.payload_type;
            peer.rtc
                .codec_config()
                .params()
                .iter()
                .find(|pp| pp.pt() == pt)
                .map(|pp| pp.spec().codec)
        };
        if let Some(tap) = &mut self.hls {
            let seed = self.config.seed ^ pid.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let t = &p.tracks[ti];
            let wanted = tap.packet(
                now,
                &peer.room,
                pid,
                t.kind,
                li,
                t.layers.len(),
                codec,
                seed,
                &packet,
            );
            self.hls_keyframes.extend(wanted.into_iter().map(|l| (pid, l)));
        }
        let relay = RelayPacket::of(&packet);
        if let Some(room) = self.rooms.get(&peer.room)
            && !room.watchers.is_empty()
        {
            for &w in &room.watchers {
                self.relays.push_back((
                    w,
                    Relay::Media {
                        source: pid,
                        track: ti,
                        layer: li,
                        codec,
                        packet: relay.clone(),
                    },
                ));
            }
        }
        self.fan_out(now, pid, ti, li, codec, &relay);
    }

    /// Writes one packet of a source's track and layer to every viewer of
    /// it here (the source is a local publisher or a mirror).
    fn fan_out(
        &mut self,
        now: Instant,
        pid: PeerId,
        ti: usize,
        li: usize,
        codec: Option<Codec>,
        packet: &RelayPacket,
    ) {
        let Some(track) = self.source_mut(pid).and_then(|p| p.tracks.get_mut(ti)) else {
            return;
        };
        let kind = track.kind;
        let Some(layer) = track.layers.get_mut(li) else {
            return;
        };
        layer.last_packet = Some(now);
        layer.codec = codec;
        layer.bytes_window += packet.payload.len() as u64;
        layer.window_start.get_or_insert(now);
        let keyframe = kind == MediaKind::Video && is_keyframe_start(codec, &packet.payload);
        if keyframe {
            layer.keyframe_wanted = false;
            if let Some(size) = vp8_keyframe_size(codec, &packet.payload) {
                layer.size = Some(size);
            }
        }
        let subscribers = match kind {
            MediaKind::Audio => std::mem::take(&mut track.subscribers),
            MediaKind::Video => std::mem::take(&mut layer.subscribers),
        };
        let mut leave_old: Vec<(PeerId, usize)> = Vec::new();
        for &vid in &subscribers {
            let Some(viewer) = self.peers.get_mut(&vid) else {
                continue;
            };
            let Role::Viewer(v) = &mut viewer.role else {
                continue;
            };
            let out = match kind {
                MediaKind::Audio => v.audio.as_mut(),
                MediaKind::Video => {
                    if v.current != Some(li) {
                        // Waiting to switch to this layer: only at its keyframe.
                        if v.target != Some(li) || !keyframe {
                            continue;
                        }
                        if let Some(old) = v.current {
                            leave_old.push((vid, old));
                            self.stats.layer_switches += 1;
                        }
                        v.current = Some(li);
                        if let Some(t) = v.video.as_mut() {
                            t.rebase = true;
                        }
                    }
                    // else: still on this layer until the target's keyframe arrives.
                    v.video.as_mut()
                }
            };
            let Some(out) = out else { continue };
            let Some(&(_, out_pt)) = out.pt_map.iter().find(|(i, _)| *i == packet.pt) else {
                continue;
            };
            if out.rebase {
                out.rewriter.rebase(packet.seq, packet.rtp_ts, now);
                out.vp8.rebase();
                out.rebase = false;
            }
            let Some(rw) = out.rewriter.rewrite(packet.seq, packet.rtp_ts, now) else {
                continue;
            };
            let vp8_patch = if codec == Some(Codec::Vp8) {
                out.vp8.rewrite(&packet.payload)
            } else {
                None
            };
            out.bitrate.add(now, packet.payload.len());
            let write = RtpWrite::new(
                out_pt,
                SeqNo::from(rw.seq),
                rw.ts,
                packet.arrival,
                packet.payload.clone(),
            )
            .marker(packet.marker)
            .ext_vals(packet.ext.clone())
            .nackable(kind == MediaKind::Video);
            let write = match vp8_patch {
                Some(p) => write.vp8_patch(p),
                None => write,
            };
            let ssrc = out.ssrc;
            let mut api = viewer.rtc.direct_api();
            let Some(stream) = api.stream_tx(&ssrc) else {
                continue;
            };
            stream.write_rtp(write);
            self.stats.rtp_forwarded += 1;
            if !viewer.dirty {
                viewer.dirty = true;
                self.dirty.push(vid);
            }
        }
        let Some(track) = self.source_mut(pid).and_then(|p| p.tracks.get_mut(ti)) else {
            return;
        };
        match kind {
            MediaKind::Audio => restore(&mut track.subscribers, subscribers),
            MediaKind::Video => restore(&mut track.layers[li].subscribers, subscribers),
        }
        for (vid, old) in leave_old {
            if old != li {
                track.layers[old].subscribers.retain(|x| *x != vid);
            }
        }
    }

    // ---- periodic work -----------------------------------------------------

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
        for vid in viewers {
            self.select_layer(now, vid);
        }
    }

    fn rooms_info(&self) -> Vec<RoomInfo> {
        self.rooms
            .iter()
            .map(|(room_id, room)| RoomInfo {
                room: room_id.clone(),
                publishers: room
                    .publishers
                    .iter()
                    .filter_map(|id| self.peers.get(id))
                    .map(|peer| PublisherInfo {
                        session: peer.session.clone(),
                        identity: peer.identity.clone(),
                        tracks: match &peer.role {
                            Role::Publisher(p) => p
                                .tracks
                                .iter()
                                .flat_map(|t| {
                                    t.layers.iter().map(move |l| TrackInfo {
                                        kind: format!("{:?}", t.kind).to_lowercase(),
                                        codec: l.codec.map(|c| c.to_string()).unwrap_or_default(),
                                        rid: l.rid.map(|r| r.to_string()),
                                        bitrate_bps: l.bitrate_bps,
                                        width: l.size.map(|s| s.0),
                                        height: l.size.map(|s| s.1),
                                    })
                                })
                                .collect(),
                            Role::Viewer(_) => Vec::new(),
                        },
                    })
                    .collect(),
                viewers: room
                    .viewers
                    .iter()
                    .filter_map(|id| self.peers.get(id))
                    .filter_map(|peer| {
                        let Role::Viewer(v) = &peer.role else { return None };
                        let layer = v.source.and_then(|pid| {
                            let p = self.source(pid)?;
                            let t = p.tracks.iter().find(|t| t.kind == MediaKind::Video)?;
                            t.layers.get(v.current?)?.rid.map(|r| r.to_string())
                        });
                        let bitrate_bps = [v.audio.as_ref(), v.video.as_ref()]
                            .into_iter()
                            .flatten()
                            .map(|t| t.bitrate.bps)
                            .sum();
                        Some(ViewerInfo {
                            session: peer.session.clone(),
                            identity: peer.identity.clone(),
                            layer,
                            bitrate_bps,
                        })
                    })
                    .collect(),
            })
            .collect()
    }
}

impl Publisher {
    /// Measures every layer's bitrate; lists the layers a keyframe is still
    /// wanted of (someone waits for it) as `(id, layer)`.
    fn measure(&mut self, now: Instant, id: PeerId, keyframes: &mut Vec<(PeerId, usize)>) {
        for t in &mut self.tracks {
            for l in &mut t.layers {
                l.measure(now);
            }
        }
        self.wanted_keyframes(id, keyframes);
    }

    /// The layers a keyframe is still wanted of (someone waits for it), as
    /// `(id, layer)`.
    fn wanted_keyframes(&self, id: PeerId, keyframes: &mut Vec<(PeerId, usize)>) {
        for t in &self.tracks {
            for (li, l) in t.layers.iter().enumerate() {
                if l.keyframe_wanted && !l.subscribers.is_empty() {
                    keyframes.push((id, li));
                }
            }
        }
    }
}

impl SourceLayer {
    fn new(rid: Option<Rid>) -> SourceLayer {
        SourceLayer {
            rid,
            ssrc: None,
            codec: None,
            subscribers: Vec::new(),
            bytes_window: 0,
            window_start: None,
            bitrate_bps: 0,
            last_packet: None,
            keyframe_wanted: false,
            last_keyframe_request: None,
            size: None,
        }
    }

    fn measure(&mut self, now: Instant) {
        let Some(start) = self.window_start else { return };
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= Duration::from_secs(1) {
            let bps = self.bytes_window * 8 * 1000 / elapsed.as_millis().max(1) as u64;
            // Smooth: a keyframe second must not look like the layer's rate.
            self.bitrate_bps = if self.bitrate_bps == 0 {
                bps
            } else {
                (self.bitrate_bps * 3 + bps) / 4
            };
            self.bytes_window = 0;
            self.window_start = Some(now);
        }
        if self
            .last_packet
            .is_some_and(|t| now.saturating_duration_since(t) > LAYER_ACTIVE)
        {
            self.bitrate_bps = 0;
            self.window_start = None;
        }
    }

    /// When a keyframe was asked of this layer less than [`KEYFRAME_THROTTLE`]
    /// ago: the instant the next request may go.
    fn throttled_until(&self, now: Instant) -> Option<Instant> {
        self.last_keyframe_request
            .map(|at| at + KEYFRAME_THROTTLE)
            .filter(|&until| until > now)
    }

    fn active(&self, now: Instant) -> bool {
        self.last_packet
            .is_some_and(|t| now.saturating_duration_since(t) <= LAYER_ACTIVE)
    }
}

/// Queues one of str0m's datagrams for the driver and counts it.
fn push_transmit(stats: &mut EngineStats, out: &mut VecDeque<Transmit>, t: str0m::net::Transmit) {
    stats.packets_out += 1;
    stats.bytes_out += t.contents.len() as u64;
    out.push_back(Transmit {
        source: t.source,
        destination: t.destination,
        contents: t.contents.into(),
    });
}

/// Active layers from lowest to highest: by measured bitrate once every
/// active layer has one, else in SDP order (browsers list rids low to high).
fn ranked_layers(track: &SourceTrack, now: Instant) -> Vec<usize> {
    let mut active: Vec<usize> = (0..track.layers.len())
        .filter(|&i| track.layers[i].active(now))
        .collect();
    if active.is_empty() {
        // Nothing received yet: aim at what the SDP promises.
        active = (0..track.layers.len()).collect();
        return active;
    }
    if active.iter().all(|&i| track.layers[i].bitrate_bps > 0) {
        active.sort_by_key(|&i| (track.layers[i].bitrate_bps, i));
    }
    active
}

fn restore(slot: &mut Vec<PeerId>, taken: Vec<PeerId>) {
    // Viewers added while the list was taken (none today: forwarding adds
    // no subscribers) are kept after the restored ones.
    let added = std::mem::replace(slot, taken);
    for id in added {
        if !slot.contains(&id) {
            slot.push(id);
        }
    }
}

/// Maps each publisher payload type to the viewer's payload type of the same codec.
fn map_payload_types(publisher: &[PayloadParams], viewer: &[PayloadParams]) -> Vec<(Pt, Pt)> {
    publisher
        .iter()
        .filter_map(|p| {
            let spec = p.spec();
            let exact = viewer.iter().find(|v| v.spec() == spec);
            let same_codec = || viewer.iter().find(|v| v.spec().codec == spec.codec);
            exact.or_else(same_codec).map(|v| (p.pt(), v.pt()))
        })
        .collect()
}

/// Whether a packet starts a keyframe a decoder can start from. For H.264
/// that is the packet carrying the SPS (sent ahead of the IDR) or the IDR.
fn is_keyframe_start(codec: Option<Codec>, payload: &[u8]) -> bool {
    match codec {
        Some(Codec::Vp8) => str0m::format::detect_vp8_keyframe(payload),
        Some(Codec::H264) => {
            str0m::format::detect_h264_nalu(payload, 7) || str0m::format::detect_h264_keyframe(payload)
        }
        Some(Codec::Vp9) => str0m::format::detect_vp9_keyframe(payload),
        Some(Codec::Av1) => str0m::format::detect_av1_keyframe(payload),
        Some(Codec::H265) => str0m::format::detect_h265_keyframe(payload),
        _ => false,
    }
}

/// Width and height from a VP8 keyframe's first packet: the payload
/// descriptor (RFC 7741 §4.2), then the keyframe header (RFC 6386 §9.1).
fn vp8_keyframe_size(codec: Option<Codec>, payload: &[u8]) -> Option<(u32, u32)> {
    if codec != Some(Codec::Vp8) {
        return None;
    }
    let first = *payload.first()?;
    let mut at = 1;
    if first & 0x80 != 0 {
        let ext = *payload.get(at)?;
        at += 1;
        if ext & 0x80 != 0 {
            at += if payload.get(at)? & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            at += 1;
        }
        if ext & 0x30 != 0 {
            at += 1;
        }
    }
    let frame = payload.get(at..at + 10)?;
    if frame[0] & 0x01 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u32::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff);
    let h = u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff);
    Some((w, h))
}
