//! What the engine keeps per room, peer, source and viewer.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relay::{SourceId, WorkerId};
use str0m::Rtc;
use str0m::media::{MediaKind, Mid, Pt, Rid};
use str0m::rtp::Ssrc;
use tracing::Span;
use wave_vocab::{Codec, CodecDesc, LayerPref, RoomId, SessionId};

use super::rewrite::{Rewriter, Vp8Rewriter};
use super::{KEYFRAME_THROTTLE, LAYER_ACTIVE, PeerId};

#[derive(Default)]
pub(super) struct Room {
    /// Publishers here, then the mirrors of other engines' (in the order
    /// they arrived).
    pub(super) publishers: Vec<PeerId>,
    pub(super) viewers: BTreeSet<PeerId>,
    /// Engines with more of the room's publishers (the room's own worker,
    /// the relay gateway for other nodes'): this one's viewers are fed
    /// mirrors of theirs.
    pub(super) homes: BTreeSet<WorkerId>,
    /// Engines with viewers of the room (handed every packet of the
    /// publishers here).
    pub(super) watchers: BTreeSet<WorkerId>,
}

/// A publisher of another engine as this engine's viewers see it.
pub(super) struct Mirror {
    pub(super) home: WorkerId,
    /// The source's id on its home.
    pub(super) remote: SourceId,
    pub(super) session: SessionId,
    pub(super) identity: Option<String>,
    /// The source's payload types, as announced.
    pub(super) codecs: Vec<CodecDesc>,
    pub(super) publisher: Publisher,
    /// Per track and layer: whether the home was last told viewers here
    /// need it ([`relay::Message::Demand`]).
    pub(super) demanded: Vec<Vec<bool>>,
}

/// A source fed from outside the engine (`super::ingest`).
pub(super) struct Ingest {
    pub(super) room: RoomId,
    pub(super) session: SessionId,
    pub(super) identity: Option<String>,
    /// Its payload types (H.264 and Opus).
    pub(super) codecs: Vec<CodecDesc>,
    /// A video and an audio track, one layer each.
    pub(super) publisher: Publisher,
    /// Its audio is AAC, passed through to LL-HLS: its Opus (made for
    /// WebRTC viewers) is not packaged.
    pub(super) aac_hls: bool,
}

pub(super) struct Peer {
    pub(super) session: SessionId,
    pub(super) room: RoomId,
    pub(super) identity: Option<String>,
    pub(super) rtc: Rtc,
    /// The remote offer, kept so an ICE restart PATCH can be replayed as an offer.
    pub(super) offer: String,
    pub(super) local_ufrag: String,
    pub(super) addrs: Vec<SocketAddr>,
    /// The peer's entry in `Engine::timers`; `None` while it has none
    /// (new, or popped as due and not yet driven).
    pub(super) timer: Option<Instant>,
    pub(super) last_rx: Instant,
    pub(super) role: Role,
    /// RTP was written since the last drive: str0m timestamps and sends
    /// written packets on its next `handle_input`.
    pub(super) dirty: bool,
    /// Stats counters from str0m, to turn its absolute values into deltas.
    pub(super) nacks_seen: HashMap<(Mid, Option<Rid>), u64>,
    /// `peer{room session peer role}`: entered for the peer's control-plane
    /// work (commands, str0m events, removal), not per forwarded packet.
    pub(super) span: Span,
}

pub(super) enum Role {
    Publisher(Publisher),
    Viewer(Box<Viewer>),
}

#[derive(Default)]
pub(super) struct Publisher {
    pub(super) tracks: Vec<SourceTrack>,
}

pub(super) struct SourceTrack {
    pub(super) mid: Mid,
    pub(super) kind: MediaKind,
    /// Simulcast layers in SDP order; one rid-less layer without simulcast.
    pub(super) layers: Vec<SourceLayer>,
    /// Viewers forwarded this track when it is audio.
    pub(super) subscribers: Vec<PeerId>,
}

pub(super) struct SourceLayer {
    pub(super) rid: Option<Rid>,
    pub(super) ssrc: Option<Ssrc>,
    pub(super) codec: Option<Codec>,
    /// Viewers whose current or target layer this is.
    pub(super) subscribers: Vec<PeerId>,
    pub(super) bytes_window: u64,
    pub(super) window_start: Option<Instant>,
    pub(super) bitrate_bps: u64,
    pub(super) last_packet: Option<Instant>,
    pub(super) keyframe_wanted: bool,
    pub(super) last_keyframe_request: Option<Instant>,
    pub(super) size: Option<(u32, u32)>,
    /// Its packets since its last keyframe (video), for viewers starting on it.
    pub(super) gop: relay::gop::Gop,
}

pub(super) struct Viewer {
    /// The publisher currently forwarded.
    pub(super) source: Option<PeerId>,
    /// `?publisher=`: an identity or session the viewer asked for.
    pub(super) pin: Option<String>,
    pub(super) max_layer: Option<LayerPref>,
    pub(super) audio: Option<OutTrack>,
    pub(super) video: Option<OutTrack>,
    pub(super) bwe_bps: Option<u64>,
    pub(super) current: Option<usize>,
    pub(super) target: Option<usize>,
    pub(super) up_since: Option<Instant>,
    /// The viewer (or a new source) changed the layer wanted: skip the upswitch hold once.
    pub(super) forced: bool,
    pub(super) desired_bps: u64,
    /// The source last reported as sending a video codec this viewer did
    /// not negotiate (one warning and count per viewer and source).
    pub(super) codec_warned: Option<PeerId>,
}

pub(super) struct OutTrack {
    pub(super) ssrc: Ssrc,
    /// Payload types this viewer negotiated, to map the publisher's onto.
    pub(super) codecs: Vec<CodecDesc>,
    /// (publisher pt, viewer pt) for the current source.
    pub(super) pt_map: Vec<(u8, Pt)>,
    pub(super) rewriter: Rewriter,
    pub(super) vp8: Vp8Rewriter,
    /// Rebase on the next packet forwarded (new source or new layer).
    pub(super) rebase: bool,
    pub(super) bitrate: RateMeter,
}

#[derive(Default)]
pub(super) struct RateMeter {
    pub(super) bytes: u64,
    pub(super) start: Option<Instant>,
    pub(super) bps: u64,
}

impl RateMeter {
    pub(super) fn add(&mut self, now: Instant, bytes: usize) {
        self.start.get_or_insert(now);
        self.bytes += bytes as u64;
    }

    pub(super) fn tick(&mut self, now: Instant) {
        let Some(start) = self.start else { return };
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= Duration::from_secs(1) {
            self.bps = self.bytes * 8 * 1000 / elapsed.as_millis().max(1) as u64;
            self.bytes = 0;
            self.start = Some(now);
        }
    }
}

impl Publisher {
    /// Measures every layer's bitrate; lists the layers a keyframe is still
    /// wanted of (someone waits for it) as `(id, layer)`.
    pub(super) fn measure(&mut self, now: Instant, id: PeerId, keyframes: &mut Vec<(PeerId, usize)>) {
        for t in &mut self.tracks {
            for l in &mut t.layers {
                l.measure(now);
            }
        }
        self.wanted_keyframes(id, keyframes);
    }

    /// The layers a keyframe is still wanted of (someone waits for it), as
    /// `(id, layer)`.
    pub(super) fn wanted_keyframes(&self, id: PeerId, keyframes: &mut Vec<(PeerId, usize)>) {
        for t in &self.tracks {
            for (li, l) in t.layers.iter().enumerate() {
                if l.keyframe_wanted && !l.subscribers.is_empty() {
                    keyframes.push((id, li));
                }
            }
        }
    }
}

impl Viewer {
    pub(super) fn new(pin: Option<String>, max_layer: Option<LayerPref>) -> Viewer {
        Viewer {
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
            codec_warned: None,
        }
    }
}

impl SourceLayer {
    pub(super) fn new(rid: Option<Rid>) -> SourceLayer {
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
            gop: relay::gop::Gop::default(),
        }
    }

    pub(super) fn measure(&mut self, now: Instant) {
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
    pub(super) fn throttled_until(&self, now: Instant) -> Option<Instant> {
        self.last_keyframe_request
            .map(|at| at + KEYFRAME_THROTTLE)
            .filter(|&until| until > now)
    }

    pub(super) fn active(&self, now: Instant) -> bool {
        self.last_packet
            .is_some_and(|t| now.saturating_duration_since(t) <= LAYER_ACTIVE)
    }
}
