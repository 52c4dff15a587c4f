//! The engine's LL-HLS tap: every room whose publisher sends H.264 gets an
//! `hls_bridge::Bridge` + `Packager`, fed from the publisher's RTP (with
//! the sender reports str0m attaches to each packet). Sans-IO like the
//! engine: time comes in, keyframe requests and updates go out.
//!
//! Per room: Opus is packaged as it arrives and also transcoded once to
//! AAC-LC (`OpusToAac`, ≈1% of a core) for the default audio rendition,
//! on a thread of its own ([`super::aac::AacRunner`]: never on the
//! worker's packet path);
//! the latest top-layer IDR is kept for thumbnails (rendered by the HTTP
//! side on request); with the ladder on, a single-layer publisher's video
//! is decoded, scaled and re-encoded on a thread of its own
//! ([`super::ladder::LadderRunner`]) into two more variants. A room whose
//! publisher left keeps its ended playlists for `linger`, then its HLS
//! state is removed from the node's store.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, UNIX_EPOCH};

use hls_bridge::fmp4::{self, TrackConfig};
use hls_bridge::h264::AvcConfig;
use hls_bridge::thumbnail::{ThumbnailCache, ThumbnailConfig};
use hls_bridge::transcode::aac::{self, AacAccessUnit};
use hls_bridge::{
    AudioCodec, AudioSample, Bridge, BridgeConfig, Frame, HlsConfig, Packager, RoomSnapshot,
    RtpPacket as BridgeRtp, SenderReport, TrackId, TrackKind,
};
use signaling::RoomId;
use str0m::format::Codec;
use str0m::media::MediaKind;
use str0m::rtp::RtpPacket;
use tracing::{debug, info, warn};

use super::PeerId;
use super::aac::AacRunner;
use super::ladder::LadderRunner;

/// RFC 5905: NTP era 0 starts 2,208,988,800 s before the UNIX epoch.
const NTP_UNIX: u64 = 2_208_988_800;
/// The publisher's Opus, packaged as it is (rendition `opus`).
const OPUS_TRACK: TrackId = TrackId(1000);
/// AAC-LC transcoded from [`OPUS_TRACK`] (rendition `aac`, the default).
const AAC_TRACK: TrackId = TrackId(1001);
/// Ladder rung `i` is packaged as track `RUNG_TRACK + i`.
const RUNG_TRACK: u32 = 2000;
/// How long a room whose publisher left waits for the AAC thread's last
/// access units (its queue and the encoder's flush: milliseconds) before
/// its playlists end without them.
const AAC_TAIL_WAIT: Duration = Duration::from_millis(250);
/// How often the tap looks for those last access units meanwhile.
const AAC_TAIL_POLL: Duration = Duration::from_millis(5);

/// Counters for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct HlsStats {
    pub rooms: u64,
    pub parts: u64,
    pub segments: u64,
    pub aac_dropped: u64,
}

/// What the driver does with the node's HLS store.
#[derive(Debug)]
pub enum HlsUpdate {
    /// The room's latest snapshot replaces the one served.
    Publish(RoomId, RoomSnapshot),
    /// The room ended `linger` ago: forget it (its URLs answer 404).
    Remove(RoomId),
}

/// The node's HLS knobs beyond the packager's.
#[derive(Debug, Clone, Copy)]
pub struct TapConfig {
    pub hls: HlsConfig,
    /// How long an ended room's playlists stay served.
    pub linger: Duration,
    /// Transcode a ladder for single-layer publishers.
    pub ladder: bool,
}

pub(super) struct HlsTap {
    config: TapConfig,
    /// `(now, wall clock since the UNIX epoch)` of one instant.
    anchor: (Instant, Duration),
    /// By publisher: the packet path finds its room by the peer id it
    /// already has, never by the room's name.
    rooms: BTreeMap<PeerId, HlsRoom>,
    /// Publishers of rooms whose HLS another publisher feeds.
    refused: BTreeMap<PeerId, RoomId>,
    /// Rooms whose publisher left, waiting for the AAC thread's last
    /// access units: (room, give up at, next look). Never the worker's
    /// wait: the tap looks on its timer.
    finishing: Vec<(HlsRoom, Instant, Instant)>,
    /// Rooms that ended, with the time their state goes.
    ended: BTreeMap<RoomId, Instant>,
    thumbnails: ThumbnailCache<RoomId>,
    out: VecDeque<HlsUpdate>,
    /// Parts and segments of rooms that ended.
    done: HlsStats,
}

struct HlsRoom {
    room: RoomId,
    bridge: Bridge,
    packager: Packager,
    /// Bridge video track -> the engine's layer index.
    layers: BTreeMap<TrackId, usize>,
    has_audio: bool,
    /// Current SPS/PPS per video track (thumbnails, ladder input).
    avc: BTreeMap<TrackId, AvcConfig>,
    /// Last sender report fed per track.
    reports: BTreeMap<TrackId, u64>,
    aac: Option<AacRunner>,
    /// Rendition layer of the publisher's (single) layer when a ladder
    /// runs under it.
    ladder: Option<LadderRunner>,
}

impl HlsTap {
    pub(super) fn new(config: TapConfig, now: Instant, wall: Duration) -> Self {
        Self {
            config,
            anchor: (now, wall),
            rooms: BTreeMap::new(),
            refused: BTreeMap::new(),
            finishing: Vec::new(),
            ended: BTreeMap::new(),
            thumbnails: ThumbnailCache::new(ThumbnailConfig::default()),
            out: VecDeque::new(),
            done: HlsStats::default(),
        }
    }

    pub(super) fn stats(&self) -> HlsStats {
        let mut s = self.done;
        s.rooms = self.rooms.len() as u64;
        for r in self.rooms.values().chain(self.finishing.iter().map(|(r, ..)| r)) {
            let p = r.packager.stats();
            s.parts += p.parts;
            s.segments += p.segments;
            s.aac_dropped += r.aac.as_ref().map_or(0, AacRunner::dropped);
        }
        s
    }

    /// One RTP packet of publisher `pid` in `room`, track kind `kind`,
    /// simulcast layer `layer` of `layers`. Returns the layers to ask for
    /// a keyframe.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn packet(
        &mut self,
        now: Instant,
        room: &RoomId,
        pid: PeerId,
        kind: MediaKind,
        layer: usize,
        layers: usize,
        codec: Option<Codec>,
        session_seed: u64,
        packet: &RtpPacket,
    ) -> Vec<usize> {
        let video = match (kind, codec) {
            (MediaKind::Video, Some(Codec::H264)) => true,
            (MediaKind::Audio, Some(Codec::Opus)) => false,
            _ => return Vec::new(),
        };
        if !self.rooms.contains_key(&pid) {
            // Audio alone never starts HLS; a second publisher's video
            // never takes a room over from the first.
            if !video || self.refused.contains_key(&pid) {
                return Vec::new();
            }
            if !self.start(now, room, pid, layers, session_seed) {
                return Vec::new();
            }
        }
        let ladder = self.config.ladder;
        let Some(r) = self.rooms.get_mut(&pid) else {
            return Vec::new();
        };
        let id = if video {
            let id = r.video_track(layer);
            if r.layers.contains_key(&id) {
                id
            } else {
                match r.add_video(now, layer, layers, ladder) {
                    Some(id) => id,
                    None => return Vec::new(),
                }
            }
        } else {
            if !r.has_audio && !r.add_audio(now) {
                return Vec::new();
            }
            OPUS_TRACK
        };
        if let Some(sr) = &packet.last_sender_info
            && let Ok(unix) = sr.ntp_time.duration_since(UNIX_EPOCH)
        {
            let ntp = ((unix.as_secs() + NTP_UNIX) << 32)
                | ((u64::from(unix.subsec_nanos()) << 32) / 1_000_000_000);
            if r.reports.insert(id, ntp) != Some(ntp) {
                let _ = r.bridge.handle_sender_report(
                    id,
                    SenderReport {
                        ntp_time: ntp,
                        rtp_time: sr.rtp_time.numer() as u32,
                    },
                );
            }
        }
        let rtp = BridgeRtp {
            sequence_number: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            marker: packet.header.marker,
            payload: &packet.payload,
        };
        if let Err(e) = r.bridge.handle_rtp(now, id, rtp) {
            debug!(room = %r.room, track = %id, error = %e, "HLS dropped a packet");
        }
        r.pump(now, &mut self.thumbnails, &mut self.out)
    }

    /// The first H.264 packet of `pid`: its room gets HLS unless another
    /// publisher's feeds it already.
    fn start(&mut self, now: Instant, room: &RoomId, pid: PeerId, layers: usize, seed: u64) -> bool {
        if self.rooms.values().any(|r| &r.room == room) {
            debug!(%room, publisher = pid.0, "HLS already fed by another publisher");
            self.refused.insert(pid, room.clone());
            return false;
        }
        let wall = self.anchor.1 + now.saturating_duration_since(self.anchor.0);
        let packager = match Packager::new(self.config.hls, seed, now, wall) {
            Ok(p) => p,
            Err(e) => {
                warn!(%room, error = %e, "HLS packager refused its config");
                self.refused.insert(pid, room.clone());
                return false;
            }
        };
        let bridge = Bridge::new(BridgeConfig {
            segment_target: self.config.hls.segment_target,
            ..BridgeConfig::default()
        });
        // A new session of a room that just ended replaces it in the store
        // (one still waiting for its AAC tail ends first, without it).
        if let Some(i) = self.finishing.iter().position(|(r, ..)| &r.room == room) {
            let (r, ..) = self.finishing.remove(i);
            warn!(%room, "HLS restarted before the AAC tail of its last session; that audio is cut");
            self.end_room(now, r);
        }
        self.ended.remove(room);
        info!(%room, publisher = pid.0, layers, "HLS started");
        self.rooms.insert(
            pid,
            HlsRoom {
                room: room.clone(),
                bridge,
                packager,
                layers: BTreeMap::new(),
                has_audio: false,
                avc: BTreeMap::new(),
                reports: BTreeMap::new(),
                aac: None,
                ladder: None,
            },
        );
        true
    }

    /// Time passed: `(publisher, layer)` keyframe requests that fell due.
    pub(super) fn timeout(&mut self, now: Instant) -> Vec<(PeerId, usize)> {
        let mut wanted = Vec::new();
        for (&pid, r) in &mut self.rooms {
            if r.bridge.poll_timeout().is_some_and(|at| at <= now) {
                r.bridge.handle_timeout(now);
            }
            for layer in r.pump(now, &mut self.thumbnails, &mut self.out) {
                wanted.push((pid, layer));
            }
        }
        self.finish_rooms(now);
        let due: Vec<RoomId> = self
            .ended
            .iter()
            .filter(|&(_, &at)| at <= now)
            .map(|(room, _)| room.clone())
            .collect();
        for room in due {
            self.ended.remove(&room);
            self.thumbnails.remove(&room);
            info!(%room, "HLS state removed after linger");
            self.out.push_back(HlsUpdate::Remove(room));
        }
        wanted
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let rooms = self.rooms.values().filter_map(|r| r.bridge.poll_timeout());
        let finishing = self.finishing.iter().map(|&(_, _, next)| next);
        rooms.chain(finishing).chain(self.ended.values().copied()).min()
    }

    /// The publisher left: its room's playlists end (EXT-X-ENDLIST) and
    /// stay served for `linger`. With an AAC rendition they end once the
    /// transcoder thread handed back its last access units (the queue's
    /// rest and the encoder's flush), on a later [`Self::timeout`]: this
    /// call never waits for that thread.
    pub(super) fn publisher_left(&mut self, now: Instant, pid: PeerId) {
        self.refused.remove(&pid);
        let Some(mut r) = self.rooms.remove(&pid) else {
            return;
        };
        r.pump(now, &mut self.thumbnails, &mut self.out);
        // Another publisher of the room may take it over from its next packet.
        self.refused.retain(|_, room| *room != r.room);
        if let Some(aac) = &mut r.aac {
            aac.close();
            self.finishing.push((r, now + AAC_TAIL_WAIT, now));
            self.finish_rooms(now);
        } else {
            self.end_room(now, r);
        }
    }

    /// Moves the AAC tail of rooms whose publisher left into their last
    /// parts; ends those whose thread is done (or that waited too long).
    fn finish_rooms(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.finishing.len() {
            let (r, give_up, next) = &mut self.finishing[i];
            while let Some(unit) = r.aac.as_mut().and_then(AacRunner::poll_access_unit) {
                r.push_aac(now, unit);
            }
            let done = r.aac.as_ref().is_none_or(AacRunner::is_done);
            if done || now >= *give_up {
                if !done {
                    warn!(room = %r.room, "AAC thread did not finish in time; the last audio is cut");
                }
                let (r, ..) = self.finishing.remove(i);
                self.end_room(now, r);
            } else {
                *next = (now + AAC_TAIL_POLL).min(*give_up);
                i += 1;
            }
        }
    }

    /// Ends every rendition of `r` and keeps it served for `linger`.
    fn end_room(&mut self, now: Instant, mut r: HlsRoom) {
        let room = r.room.clone();
        let _ = r.packager.end();
        let s = r.packager.stats();
        self.done.parts += s.parts;
        self.done.segments += s.segments;
        self.done.aac_dropped += r.aac.as_ref().map_or(0, AacRunner::dropped);
        if let Some(mut snap) = r.packager.take_snapshot() {
            snap.thumbnail = self.thumbnails.latest(&room);
            self.out.push_back(HlsUpdate::Publish(room.clone(), snap));
        }
        info!(%room, parts = s.parts, linger_s = self.config.linger.as_secs(), "HLS ended");
        self.ended.insert(room, now + self.config.linger);
    }

    pub(super) fn poll_update(&mut self) -> Option<HlsUpdate> {
        self.out.pop_front()
    }
}

impl HlsRoom {
    /// The bridge track of the engine's video `layer`. With a ladder the
    /// publisher's only layer is the top rendition, above the rungs.
    fn video_track(&self, layer: usize) -> TrackId {
        match &self.ladder {
            Some(l) => TrackId(l.rungs() as u32 + 1),
            None => TrackId(layer as u32 + 1),
        }
    }

    /// The publisher's video `layer` (of `layers`) becomes a rendition;
    /// a single layer gets a ladder under it when `ladder` is on.
    fn add_video(&mut self, now: Instant, layer: usize, layers: usize, ladder: bool) -> Option<TrackId> {
        let mut rendition_layer = layer as u8;
        let mut id = TrackId(layer as u32 + 1);
        if ladder && layers == 1 && self.layers.is_empty() && self.ladder.is_none() {
            match LadderRunner::start(&self.room) {
                Ok(runner) => {
                    rendition_layer = runner.rungs() as u8;
                    id = TrackId(u32::from(rendition_layer) + 1);
                    self.ladder = Some(runner);
                }
                Err(e) => warn!(room = %self.room, error = %e, "HLS ladder unavailable"),
            }
        }
        let added = self
            .bridge
            .add_track(
                now,
                id,
                TrackKind::H264 {
                    layer: rendition_layer,
                },
            )
            .and_then(|()| self.packager.add_video(id, rendition_layer));
        if let Err(e) = added {
            debug!(room = %self.room, track = %id, error = %e, "HLS track refused");
            return None;
        }
        if let Some(runner) = &self.ladder {
            for rung in 0..runner.rungs() {
                let rung_layer = (runner.rungs() - 1 - rung) as u8;
                if let Err(e) = self
                    .packager
                    .add_video(TrackId(RUNG_TRACK + rung as u32), rung_layer)
                {
                    debug!(room = %self.room, rung, error = %e, "HLS rung refused");
                }
            }
        }
        self.layers.insert(id, layer);
        Some(id)
    }

    /// Opus passed through, plus AAC-LC transcoded from it.
    fn add_audio(&mut self, now: Instant) -> bool {
        self.has_audio = true;
        let added = self
            .bridge
            .add_track(now, OPUS_TRACK, TrackKind::Opus { stereo: true })
            .and_then(|()| {
                self.packager
                    .add_audio(OPUS_TRACK, AudioCodec::Opus { stereo: true })
            });
        if let Err(e) = added {
            debug!(room = %self.room, error = %e, "HLS audio refused");
            return false;
        }
        let aac = AacRunner::start(&self.room).and_then(|t| {
            let init = fmp4::init_segment(&TrackConfig::Aac(t.aac_config().clone()))?;
            self.packager.add_audio(
                AAC_TRACK,
                AudioCodec::AacLc {
                    init,
                    timescale: aac::SAMPLE_RATE,
                    channels: 2,
                },
            )?;
            Ok(t)
        });
        match aac {
            Ok(t) => self.aac = Some(t),
            Err(e) => warn!(room = %self.room, error = %e, "no AAC rendition"),
        }
        true
    }

    /// One access unit from the AAC thread into the AAC rendition.
    fn push_aac(&mut self, now: Instant, unit: AacAccessUnit) {
        let capture = self.bridge.capture_time(OPUS_TRACK, unit.timestamp);
        let sample = AudioSample {
            timestamp: unit.timestamp,
            data: unit.data,
        };
        if let Err(e) = self.packager.push_audio_sample(now, AAC_TRACK, &sample, capture) {
            debug!(room = %self.room, error = %e, "AAC sample refused");
        }
    }

    /// Moves frames into the packager (through the AAC transcoder and the
    /// ladder where they apply); returns keyframe requests.
    fn pump(
        &mut self,
        now: Instant,
        thumbnails: &mut ThumbnailCache<RoomId>,
        out: &mut VecDeque<HlsUpdate>,
    ) -> Vec<usize> {
        while let Some((id, frame)) = self.bridge.poll_frame() {
            let ts = match &frame {
                Frame::Video { au, .. } => au.timestamp,
                Frame::Audio(a) => a.timestamp,
            };
            let capture = self.bridge.capture_time(id, ts);
            if let Err(e) = self.packager.push_frame(now, id, &frame, capture) {
                debug!(room = %self.room, track = %id, error = %e, "HLS frame refused");
            }
            match &frame {
                Frame::Video { au, new_config } => {
                    if let Some(c) = new_config {
                        self.avc.insert(id, c.clone());
                    }
                    if let Some(avc) = self.avc.get(&id) {
                        if au.keyframe {
                            let layer = (id.0 - 1) as u8;
                            thumbnails.handle_access_unit(now, self.room.clone(), layer, avc, au);
                        }
                        if let Some(ladder) = &mut self.ladder {
                            ladder.push(avc, au);
                        }
                    }
                }
                Frame::Audio(opus) => {
                    if let Some(aac) = &mut self.aac {
                        aac.push(opus);
                    }
                }
            }
        }
        while let Some(unit) = self.aac.as_mut().and_then(AacRunner::poll_access_unit) {
            self.push_aac(now, unit);
        }
        if let Some(ladder) = &mut self.ladder {
            let source = TrackId(ladder.rungs() as u32 + 1);
            while let Some((rung, frame)) = ladder.poll_frame() {
                let ts = match &frame {
                    Frame::Video { au, .. } => au.timestamp,
                    Frame::Audio(a) => a.timestamp,
                };
                let capture = self.bridge.capture_time(source, ts);
                let id = TrackId(RUNG_TRACK + rung.0 as u32);
                if let Err(e) = self.packager.push_frame(now, id, &frame, capture) {
                    debug!(room = %self.room, rung = rung.0, error = %e, "HLS rung frame refused");
                }
            }
        }
        if let Some(mut s) = self.packager.take_snapshot() {
            s.thumbnail = thumbnails.latest(&self.room);
            out.push_back(HlsUpdate::Publish(self.room.clone(), s));
        }
        let mut layers = Vec::new();
        while let Some(id) = self.bridge.poll_keyframe_request() {
            if let Some(&layer) = self.layers.get(&id) {
                layers.push(layer);
            }
        }
        layers
    }
}
