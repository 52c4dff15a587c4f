//! The room packager: the whole LL-HLS orchestration of a media engine's
//! rooms, Sans-IO. Every room whose publisher sends H.264 gets a [`Bridge`]
//! and a [`Packager`], fed from the publisher's RTP and sender reports.
//! In: RTP packets ([`HlsTap::handle_media`]), time
//! ([`HlsTap::handle_timeout`]), a publisher leaving. Out: playlist and part
//! snapshots for the HTTP store ([`HlsTap::poll_update`]) and keyframe
//! requests ([`HlsTap::poll_keyframe_request`]).
//!
//! Per room: Opus is packaged as it arrives and also transcoded once to
//! AAC-LC (`OpusToAac`, ≈1% of a core) for the default audio rendition;
//! a source whose audio is AAC (an RTMP push, an RTSP pull) instead has its
//! own access units passed through to that rendition ([`HlsTap::handle_aac`]:
//! its AudioSpecificConfig, its rate, no transcoder, no Opus rendition);
//! the latest top-layer IDR is kept for thumbnails (rendered by the HTTP
//! side on request); with the ladder on, a single-layer publisher's video
//! is decoded, scaled and re-encoded into two more variants. Both codecs
//! run where the driver's [`CodecHost`] puts them (a thread each on a node:
//! never on the worker's packet path); this module starts no thread. A
//! room whose publisher left keeps its ended playlists for `linger`, then
//! its HLS state is removed from the node's store.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use std::sync::Arc;

use tracing::{debug, info, warn};
use wave_vocab::{PeerId, RoomId};

use crate::aac::AudioSpecificConfig;
use crate::fmp4::{self, TrackConfig};
use crate::h264::{AccessUnit, AvcConfig};
use crate::runner::{AacPort, CodecHost, LadderPort, Pushed};
use crate::thumbnail::{ThumbnailCache, ThumbnailConfig};
use crate::transcode::aac::{self, AacAccessUnit};
use crate::transcode::ladder::RungId;
use crate::{
    AudioCodec, AudioSample, Bridge, BridgeConfig, Frame, HlsConfig, Packager, RoomSnapshot, RtpPacket,
    SenderReport, TrackId, TrackKind,
};
/// The publisher's Opus, packaged as it is (rendition `opus`).
const OPUS_TRACK: TrackId = TrackId(1000);
/// AAC-LC transcoded from [`OPUS_TRACK`], or the source's AAC passed
/// through (rendition `aac`, the default).
const AAC_TRACK: TrackId = TrackId(1001);
/// Ladder rung `i` is packaged as track `RUNG_TRACK + i`.
const RUNG_TRACK: u32 = 2000;
/// How long a room whose publisher left waits for its codec threads'
/// last output before its playlists end without it: the AAC thread's
/// queue and encoder flush take milliseconds; the ladder's queue holds up
/// to 8 source frames at ~20 ms each for a 720p source (ARCHITECTURE.md,
/// hls-bridge transcoding), so 500 ms covers both with room to spare on a
/// loaded machine.
const TAIL_WAIT: Duration = Duration::from_millis(500);
/// How often the tap looks for that last output meanwhile.
const TAIL_POLL: Duration = Duration::from_millis(5);

/// Counters for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct HlsStats {
    pub rooms: u64,
    pub parts: u64,
    pub segments: u64,
    pub aac_dropped: u64,
    /// Opus -> AAC transcoders started (one per room with Opus audio).
    pub aac_transcoders: u64,
    /// Source AAC access units passed through to an `aac` rendition.
    pub aac_passthrough: u64,
    /// Source AAC access units dropped: a configuration that does not
    /// parse, a frame over the AAC bound or empty.
    pub aac_passthrough_dropped: u64,
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

pub struct HlsTap {
    config: TapConfig,
    /// Where the rooms' codecs run.
    codecs: Arc<dyn CodecHost>,
    /// `(now, wall clock since the UNIX epoch)` of one instant.
    anchor: (Instant, Duration),
    /// By publisher: the packet path finds its room by the peer id it
    /// already has, never by the room's name.
    rooms: BTreeMap<PeerId, HlsRoom>,
    /// Publishers of rooms whose HLS another publisher feeds.
    refused: BTreeMap<PeerId, RoomId>,
    /// Rooms whose publisher left, waiting for the last output of their
    /// codec threads (AAC access units, ladder rung frames): (room, give
    /// up at, next look). Never the worker's wait: the tap looks on its
    /// timer.
    finishing: Vec<(HlsRoom, Instant, Instant)>,
    /// Rooms that ended, with the time their state goes.
    ended: BTreeMap<RoomId, Instant>,
    thumbnails: ThumbnailCache<RoomId>,
    out: VecDeque<HlsUpdate>,
    /// `(publisher, layer)` keyframe requests.
    keyframes: VecDeque<(PeerId, usize)>,
    /// Parts and segments of rooms that ended; the AAC counters.
    done: HlsStats,
}

/// An AAC access unit of a source whose audio is AAC (an RTMP push, an
/// RTSP pull), for [`HlsTap::handle_aac`].
#[derive(Debug, Clone, Copy)]
pub struct AacUnit<'a> {
    /// The source's AudioSpecificConfig, on every unit: a change starts a
    /// new init section.
    pub config: &'a [u8],
    /// The source's clock in ms (32 bits, wrapping), as its sender
    /// reports' `rtp_time` counts it.
    pub ts_ms: u32,
    /// One raw access unit (no ADTS header).
    pub data: &'a [u8],
}

/// Which track of which publisher a packet belongs to: its H.264 video
/// (`video`) or its Opus audio.
#[derive(Debug, Clone, Copy)]
pub struct Track {
    pub pid: PeerId,
    pub video: bool,
    /// Simulcast layer `layer` of `layers` (video).
    pub layer: usize,
    pub layers: usize,
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
    aac: Option<AacPort>,
    /// The source's AAC, passed through.
    passthrough: Passthrough,
    /// The ABR ladder under a single-layer publisher.
    ladder: Option<LadderFeed>,
}

/// A room's source AAC on its way to the `aac` rendition.
#[derive(Default)]
struct Passthrough {
    /// The configuration the rendition's init section carries.
    config: Option<AudioSpecificConfig>,
    /// A hash of the last configuration refused: its units drop without
    /// another warning.
    refused: Option<u64>,
    /// The last unit's ms as sent and unwrapped.
    last_ms: Option<(u32, i64)>,
    /// Where the next access unit starts, in ticks of the sample rate.
    next: Option<i64>,
    /// The source's latest report for this stream (its clock in ms).
    report: Option<SenderReport>,
    warned_oversized: bool,
}

impl Passthrough {
    /// The access unit at `ts_ms` in ticks of the current configuration's
    /// rate: samples counted from the last unit while the source's ms
    /// agree to within half a frame (their rounding is 1 ms), anchored
    /// anew on the ms otherwise (a gap, a clock that jumped).
    fn ticks(&mut self, ts_ms: u32, rate: u32, frame: u32) -> (i64, i64) {
        let ms = match self.last_ms {
            Some((raw, ms)) => ms + i64::from(ts_ms.wrapping_sub(raw) as i32),
            None => i64::from(ts_ms),
        };
        self.last_ms = Some((ts_ms, ms));
        let from_clock = ms * i64::from(rate) / 1000;
        let ticks = match self.next {
            Some(next) if (from_clock - next).abs() <= i64::from(frame / 2) => next,
            _ => from_clock,
        };
        self.next = Some(ticks + i64::from(frame));
        (ticks, ms)
    }

    /// The capture time of the unit at `ticks` (`ms` on the source's
    /// clock), from the latest report.
    fn capture(&self, ticks: i64, ms: i64, ts_ms: u32, rate: u32) -> Option<Duration> {
        let sr = self.report?;
        let sr_unix = sr.unix_time()?;
        let sr_ms = ms - i64::from(ts_ms.wrapping_sub(sr.rtp_time) as i32);
        let nanos = i128::from(ticks) * 1_000_000_000 / i128::from(rate) - i128::from(sr_ms) * 1_000_000;
        let delta = Duration::from_nanos(u64::try_from(nanos.unsigned_abs()).ok()?);
        if nanos >= 0 {
            sr_unix.checked_add(delta)
        } else {
            sr_unix.checked_sub(delta)
        }
    }
}

/// The ladder's port, its rung count, and whether it waits for an IDR
/// after a dropped frame (the decoder must never see a broken reference
/// chain).
struct LadderFeed {
    port: LadderPort,
    rungs: usize,
    resync: bool,
}

impl LadderFeed {
    fn rungs(&self) -> usize {
        self.rungs
    }

    /// One access unit of the source layer (never blocks).
    fn push(&mut self, avc: &AvcConfig, au: &AccessUnit) {
        if self.resync && !au.keyframe {
            self.port.count_dropped();
            return;
        }
        match self.port.push((avc.clone(), au.clone())) {
            Pushed::Queued => self.resync = false,
            Pushed::Dropped => self.resync = true,
            Pushed::Closed => {}
        }
    }

    fn poll_frame(&mut self) -> Option<(RungId, Frame)> {
        self.port.poll()
    }
}

impl HlsTap {
    /// A tap whose rooms' codecs run on `codecs`; `wall` is the wall-clock
    /// time (since the UNIX epoch) at `now`: media is dated without reading
    /// a clock.
    pub fn new(config: TapConfig, codecs: Arc<dyn CodecHost>, now: Instant, wall: Duration) -> Self {
        Self {
            config,
            codecs,
            anchor: (now, wall),
            rooms: BTreeMap::new(),
            refused: BTreeMap::new(),
            finishing: Vec::new(),
            ended: BTreeMap::new(),
            thumbnails: ThumbnailCache::new(ThumbnailConfig::default()),
            out: VecDeque::new(),
            keyframes: VecDeque::new(),
            done: HlsStats::default(),
        }
    }

    pub fn stats(&self) -> HlsStats {
        let mut s = self.done;
        s.rooms = self.rooms.len() as u64;
        for r in self.rooms.values().chain(self.finishing.iter().map(|(r, ..)| r)) {
            let p = r.packager.stats();
            s.parts += p.parts;
            s.segments += p.segments;
            s.aac_dropped += r.aac.as_ref().map_or(0, |a| a.dropped());
        }
        s
    }

    /// One AAC access unit of `pid`, a source whose audio is AAC, with the
    /// latest report of that stream (`rtp_time` in the source's ms): passed
    /// through unchanged to the room's `aac` rendition, whose init section
    /// carries the source's AudioSpecificConfig and whose timescale is its
    /// rate. Such a room starts no Opus -> AAC transcoder and has no Opus
    /// rendition: its Opus packets (made for WebRTC viewers) are not
    /// packaged. Audio alone never starts HLS. A configuration that does
    /// not parse, an empty frame or one over the AAC bound is logged,
    /// counted and dropped.
    pub fn handle_aac(&mut self, now: Instant, pid: PeerId, report: Option<SenderReport>, unit: AacUnit<'_>) {
        let Some(r) = self.rooms.get_mut(&pid) else {
            return;
        };
        match r.pass_aac(now, report, unit) {
            Ok(()) => self.done.aac_passthrough += 1,
            Err(reason) => {
                self.done.aac_passthrough_dropped += 1;
                debug!(room = %r.room, reason, "source AAC frame dropped");
            }
        }
        for layer in r.pump(now, &mut self.thumbnails, &mut self.out) {
            self.keyframes.push_back((pid, layer));
        }
    }

    /// One RTP packet `rtp` of `track` in `room`, with the last sender
    /// report of its stream; `session_seed` seeds a new room's packager.
    pub fn handle_media(
        &mut self,
        now: Instant,
        room: &RoomId,
        track: Track,
        session_seed: u64,
        report: Option<SenderReport>,
        rtp: RtpPacket<'_>,
    ) {
        let Track {
            pid,
            video,
            layer,
            layers,
        } = track;
        if !self.rooms.contains_key(&pid) {
            // Audio alone never starts HLS; a second publisher's video
            // never takes a room over from the first.
            if !video || self.refused.contains_key(&pid) {
                return;
            }
            if !self.start(now, room, pid, layers, session_seed) {
                return;
            }
        }
        let ladder = self.config.ladder.then_some(&*self.codecs);
        let Some(r) = self.rooms.get_mut(&pid) else {
            return;
        };
        let id = if video {
            let id = r.video_track(layer);
            if r.layers.contains_key(&id) {
                id
            } else {
                match r.add_video(now, layer, layers, ladder) {
                    Some(id) => id,
                    None => return,
                }
            }
        } else {
            // The source's AAC is passed through: its Opus is for WebRTC only.
            if r.passthrough.config.is_some() {
                return;
            }
            if !r.has_audio {
                if !r.add_audio(now, &*self.codecs) {
                    return;
                }
                if r.aac.is_some() {
                    self.done.aac_transcoders += 1;
                }
            }
            OPUS_TRACK
        };
        if let Some(sr) = report
            && r.reports.insert(id, sr.ntp_time) != Some(sr.ntp_time)
        {
            let _ = r.bridge.handle_sender_report(id, sr);
        }
        if let Err(e) = r.bridge.handle_rtp(now, id, rtp) {
            debug!(room = %r.room, track = %id, error = %e, "HLS dropped a packet");
        }
        for layer in r.pump(now, &mut self.thumbnails, &mut self.out) {
            self.keyframes.push_back((pid, layer));
        }
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
        // (one still waiting for its codec threads ends first, without
        // their last output).
        if let Some(i) = self.finishing.iter().position(|(r, ..)| &r.room == room) {
            let (r, ..) = self.finishing.remove(i);
            warn!(%room, "HLS restarted before the codec tail of its last session; that tail is cut");
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
                passthrough: Passthrough::default(),
                ladder: None,
            },
        );
        true
    }

    /// Time passed: segments close, keyframe requests fall due, codec
    /// tails arrive, ended rooms go.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (&pid, r) in &mut self.rooms {
            if r.bridge.poll_timeout().is_some_and(|at| at <= now) {
                r.bridge.handle_timeout(now);
            }
            for layer in r.pump(now, &mut self.thumbnails, &mut self.out) {
                self.keyframes.push_back((pid, layer));
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
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let rooms = self.rooms.values().filter_map(|r| r.bridge.poll_timeout());
        let finishing = self.finishing.iter().map(|&(_, _, next)| next);
        rooms.chain(finishing).chain(self.ended.values().copied()).min()
    }

    /// The publisher left: its room's playlists end (EXT-X-ENDLIST) and
    /// stay served for `linger`. With an AAC rendition or a ladder they
    /// end once those threads handed back their last output (the AAC
    /// queue's rest and the encoder's flush; the rung frames of the source
    /// frames still queued), on a later [`Self::timeout`]: this call never
    /// waits for a thread.
    pub fn publisher_left(&mut self, now: Instant, pid: PeerId) {
        self.refused.remove(&pid);
        let Some(mut r) = self.rooms.remove(&pid) else {
            return;
        };
        r.pump(now, &mut self.thumbnails, &mut self.out);
        // Another publisher of the room may take it over from its next packet.
        self.refused.retain(|_, room| *room != r.room);
        if r.aac.is_none() && r.ladder.is_none() {
            self.end_room(now, r);
            return;
        }
        if let Some(aac) = &mut r.aac {
            aac.close();
        }
        if let Some(ladder) = &mut r.ladder {
            ladder.port.close();
        }
        self.finishing.push((r, now + TAIL_WAIT, now));
        self.finish_rooms(now);
    }

    /// Moves the codec tails of rooms whose publisher left (AAC access
    /// units, rung frames) into their last parts; ends those whose threads
    /// are done (or that waited too long).
    fn finish_rooms(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.finishing.len() {
            let (r, give_up, next) = &mut self.finishing[i];
            r.drain_codecs(now);
            let aac_done = r.aac.as_ref().is_none_or(|a| a.is_done());
            let ladder_done = r.ladder.as_ref().is_none_or(|l| l.port.is_done());
            if (aac_done && ladder_done) || now >= *give_up {
                if !aac_done {
                    warn!(room = %r.room, "AAC thread did not finish in time; the last audio is cut");
                }
                if !ladder_done {
                    warn!(room = %r.room, "ladder thread did not finish in time; the rungs' last frames are cut");
                }
                let (r, ..) = self.finishing.remove(i);
                self.end_room(now, r);
            } else {
                *next = (now + TAIL_POLL).min(*give_up);
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
        self.done.aac_dropped += r.aac.as_ref().map_or(0, |a| a.dropped());
        if let Some(mut snap) = r.packager.take_snapshot() {
            snap.thumbnail = self.thumbnails.latest(&room);
            self.out.push_back(HlsUpdate::Publish(room.clone(), snap));
        }
        info!(%room, parts = s.parts, linger_s = self.config.linger.as_secs(), "HLS ended");
        self.ended.insert(room, now + self.config.linger);
    }

    /// The next change for the HTTP store.
    pub fn poll_update(&mut self) -> Option<HlsUpdate> {
        self.out.pop_front()
    }

    /// The next `(publisher, layer)` a keyframe is wanted of.
    pub fn poll_keyframe_request(&mut self) -> Option<(PeerId, usize)> {
        self.keyframes.pop_front()
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
    fn add_video(
        &mut self,
        now: Instant,
        layer: usize,
        layers: usize,
        ladder: Option<&dyn CodecHost>,
    ) -> Option<TrackId> {
        let mut rendition_layer = layer as u8;
        let mut id = TrackId(layer as u32 + 1);
        let host = ladder.filter(|_| layers == 1 && self.layers.is_empty() && self.ladder.is_none());
        if let Some(host) = host {
            match host.ladder(&self.room) {
                Ok((port, rungs)) => {
                    rendition_layer = rungs as u8;
                    id = TrackId(u32::from(rendition_layer) + 1);
                    self.ladder = Some(LadderFeed {
                        port,
                        rungs,
                        resync: false,
                    });
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
    fn add_audio(&mut self, now: Instant, codecs: &dyn CodecHost) -> bool {
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
        let aac = codecs.aac(&self.room).and_then(|(t, config)| {
            let codec = config.codec_string();
            let init = fmp4::init_segment(&TrackConfig::Aac(config))?;
            self.packager.add_audio(
                AAC_TRACK,
                AudioCodec::Aac {
                    init,
                    timescale: aac::SAMPLE_RATE,
                    channels: 2,
                    codec,
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

    /// A source AAC access unit into the `aac` rendition (added, or
    /// given a new init section, when its configuration is new).
    fn pass_aac(
        &mut self,
        now: Instant,
        report: Option<SenderReport>,
        unit: AacUnit<'_>,
    ) -> Result<(), &'static str> {
        if report.is_some() {
            self.passthrough.report = report;
        }
        if self.aac.is_some() || self.has_audio {
            return Err("the room's audio is already transcoded from Opus");
        }
        let known = self
            .passthrough
            .config
            .as_ref()
            .is_some_and(|c| c.raw == unit.config);
        if !known {
            self.configure_aac(unit.config)?;
        }
        let Some(config) = &self.passthrough.config else {
            return Err("no AudioSpecificConfig");
        };
        if unit.data.is_empty() {
            return Err("empty AAC frame");
        }
        if unit.data.len() > config.max_frame_bytes() {
            let max = config.max_frame_bytes();
            if !std::mem::replace(&mut self.passthrough.warned_oversized, true) {
                warn!(room = %self.room, bytes = unit.data.len(), max, "source AAC frame over 6,144 bits per channel: dropped (further ones logged at debug)");
            }
            return Err("AAC frame over 6,144 bits per channel");
        }
        let (rate, frame) = (config.sample_rate, config.frame_length);
        let (ticks, ms) = self.passthrough.ticks(unit.ts_ms, rate, frame);
        let capture = self.passthrough.capture(ticks, ms, unit.ts_ms, rate);
        let sample = AudioSample {
            timestamp: ticks,
            data: unit.data.to_vec(),
        };
        self.packager
            .push_audio_sample(now, AAC_TRACK, &sample, capture)
            .map_err(|e| {
                debug!(room = %self.room, error = %e, "source AAC sample refused");
                "refused by the packager"
            })
    }

    /// A new AudioSpecificConfig: the `aac` rendition's first, or a change
    /// (a new init section after a discontinuity, like a new SPS).
    fn configure_aac(&mut self, raw: &[u8]) -> Result<(), &'static str> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        raw.hash(&mut h);
        let hash = h.finish();
        if self.passthrough.refused == Some(hash) {
            return Err("AudioSpecificConfig refused");
        }
        let refuse = |p: &mut Passthrough, error: &crate::Error| {
            warn!(room = %self.room, %error, config = ?&raw[..raw.len().min(16)], "source AAC not passed through to LL-HLS: its AudioSpecificConfig is refused; its frames are dropped until a valid one");
            p.refused = Some(hash);
            "AudioSpecificConfig refused"
        };
        let config = match AudioSpecificConfig::parse(raw) {
            Ok(c) => c,
            Err(e) => return Err(refuse(&mut self.passthrough, &e)),
        };
        let codec = fmp4::init_segment(&TrackConfig::Aac(config.mp4a())).map(|init| AudioCodec::Aac {
            init,
            timescale: config.sample_rate,
            channels: config.channels,
            codec: config.codec_string(),
        });
        let first = self.passthrough.config.is_none();
        let added = codec.and_then(|codec| {
            if first {
                self.packager.add_audio(AAC_TRACK, codec)
            } else {
                self.packager.reconfigure_audio(AAC_TRACK, codec)
            }
        });
        if let Err(e) = added {
            return Err(refuse(&mut self.passthrough, &e));
        }
        if first {
            info!(room = %self.room, rate = config.sample_rate, channels = config.channels, codec = %config.codec_string(), "LL-HLS AAC passed through from the source");
        } else {
            warn!(room = %self.room, rate = config.sample_rate, channels = config.channels, codec = %config.codec_string(), "source AudioSpecificConfig changed: new AAC init section and a discontinuity");
        }
        self.passthrough.config = Some(config);
        self.passthrough.refused = None;
        self.passthrough.last_ms = None;
        self.passthrough.next = None;
        Ok(())
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

    /// What the codec threads finished (AAC access units, rung frames)
    /// into their renditions.
    fn drain_codecs(&mut self, now: Instant) {
        while let Some(unit) = self.aac.as_mut().and_then(|a| a.poll()) {
            self.push_aac(now, unit);
        }
        let Some(ladder) = &mut self.ladder else {
            return;
        };
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
            match frame {
                Frame::Video { au, new_config } => {
                    if let Some(c) = new_config {
                        self.avc.insert(id, c);
                    }
                    if let Some(avc) = self.avc.get(&id) {
                        if au.keyframe {
                            let layer = (id.0 - 1) as u8;
                            thumbnails.handle_access_unit(now, self.room.clone(), layer, avc, &au);
                        }
                        if let Some(ladder) = &mut self.ladder {
                            ladder.push(avc, &au);
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
        self.drain_codecs(now);
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

#[cfg(test)]
mod tests {
    use crate::runner::ThreadHost;
    use crate::transcode::video::{H264Encoder, Picture, avcc_nal_units};

    use super::*;

    /// [`InlineHost`](crate::runner::InlineHost), counting the Opus -> AAC
    /// transcoders asked for.
    #[derive(Debug, Default)]
    struct CountingHost(std::sync::atomic::AtomicUsize);

    impl CodecHost for CountingHost {
        fn aac(&self, room: &RoomId) -> Result<(AacPort, crate::fmp4::AacConfig), crate::Error> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::runner::InlineHost.aac(room)
        }
        fn ladder(&self, room: &RoomId) -> Result<(LadderPort, usize), crate::Error> {
            crate::runner::InlineHost.ladder(room)
        }
    }

    /// NTP 32.32 of `unix` + `ms`.
    fn ntp(unix_s: u64, ms: u64) -> u64 {
        ((unix_s + 2_208_988_800) << 32) + (ms << 32) / 1000
    }

    const WALL_S: u64 = 1_800_000_000;

    /// A source publishing `secs` of 30 fps H.264 (an IDR a second) and
    /// AAC access units of 1024 samples at each `(config, rate)` in turn,
    /// `secs` each, with sender reports of one clock; then it leaves.
    /// Returns the room's last snapshot.
    fn publish_with_aac(tap: &mut HlsTap, configs: &[(&[u8], u32)], secs: u32) -> RoomSnapshot {
        let t0 = Instant::now();
        let room = RoomId::parse("aac-pass").unwrap();
        let pid = PeerId(1);
        let track = Track {
            pid,
            video: true,
            layer: 0,
            layers: 1,
        };
        let total_ms = secs * 1000 * configs.len() as u32;
        let mut encoder = H264Encoder::new(300_000, 30.0).unwrap();
        let (mut seq, mut frame, mut unit) = (0u16, 0u32, 0u32);
        // (config index, first ms of that config, units sent under it)
        let (mut ci, mut since_ms, mut in_config) = (0usize, 0u32, 0u32);
        let mut aac_reported = None;
        loop {
            let video_ms = frame * 1000 / 30;
            let (config, rate) = configs[ci];
            let audio_ms = since_ms + (u64::from(in_config) * 1024 * 1000 / u64::from(rate)) as u32;
            if video_ms >= total_ms && audio_ms >= total_ms {
                break;
            }
            if video_ms <= audio_ms {
                let ts = frame * 3000;
                let au = encoder
                    .encode(
                        &Picture::test_ramp(128, 96, u64::from(frame)),
                        i64::from(ts),
                        frame % 30 == 0,
                    )
                    .unwrap()
                    .expect("one access unit per picture");
                let nalus = avcc_nal_units(&au.data).unwrap();
                let report = (frame % 30 == 0).then(|| SenderReport {
                    ntp_time: ntp(WALL_S, u64::from(video_ms)),
                    rtp_time: ts,
                });
                for (i, nalu) in nalus.iter().enumerate() {
                    let rtp = RtpPacket {
                        sequence_number: seq,
                        timestamp: ts,
                        marker: i + 1 == nalus.len(),
                        payload: nalu,
                    };
                    seq = seq.wrapping_add(1);
                    let now = t0 + Duration::from_millis(u64::from(video_ms));
                    tap.handle_media(now, &room, track, 7, report.filter(|_| i == 0), rtp);
                }
                frame += 1;
            } else {
                // Distinct bytes per unit: the rendition must carry them as sent.
                let data: Vec<u8> = (0..100 + unit % 50).map(|b| (b + unit) as u8).collect();
                let report = (aac_reported.is_none_or(|at| audio_ms >= at + 1000)).then(|| {
                    aac_reported = Some(audio_ms);
                    SenderReport {
                        ntp_time: ntp(WALL_S, u64::from(audio_ms)),
                        rtp_time: audio_ms,
                    }
                });
                let aac = AacUnit {
                    config,
                    ts_ms: audio_ms,
                    data: &data,
                };
                tap.handle_aac(t0 + Duration::from_millis(u64::from(audio_ms)), pid, report, aac);
                unit += 1;
                in_config += 1;
                if audio_ms >= since_ms + secs * 1000 && ci + 1 < configs.len() {
                    ci += 1;
                    since_ms = audio_ms + 23;
                    in_config = 0;
                }
            }
        }
        tap.publisher_left(t0 + Duration::from_millis(u64::from(total_ms)), pid);
        std::iter::from_fn(|| tap.poll_update())
            .filter_map(|u| match u {
                HlsUpdate::Publish(_, s) => Some(s),
                HlsUpdate::Remove(_) => None,
            })
            .last()
            .filter(RoomSnapshot::ended)
            .expect("the room ended")
    }

    fn passthrough_tap(host: Arc<CountingHost>) -> HlsTap {
        let config = TapConfig {
            hls: HlsConfig::default(),
            linger: Duration::from_secs(60),
            ladder: false,
        };
        HlsTap::new(config, host, Instant::now(), Duration::from_secs(WALL_S))
    }

    /// A segment as its file says.
    struct Seg {
        init: u32,
        discontinuity: bool,
        durations: Vec<u32>,
        /// `tfdt` of its first fragment.
        tfdt: u64,
        /// The samples' bytes.
        data: Vec<u8>,
    }

    fn segments(r: &crate::segmenter::RenditionSnapshot) -> Vec<Seg> {
        use mp4_atom::{Decode, Moof};
        r.segments
            .iter()
            .map(|seg| {
                let file = &r.files[&format!("seg_{}.m4s", seg.msn)];
                let (mut at, mut durations, mut tfdt, mut data) = (0usize, Vec::new(), None, Vec::new());
                while at + 8 <= file.len() {
                    let size = u32::from_be_bytes(file[at..at + 4].try_into().unwrap()) as usize;
                    let body = &file[at..at + size];
                    match &file[at + 4..at + 8] {
                        b"moof" => {
                            let moof = Moof::decode(&mut &body[..]).unwrap();
                            let traf = &moof.traf[0];
                            tfdt.get_or_insert(traf.tfdt.as_ref().unwrap().base_media_decode_time);
                            durations.extend(traf.trun[0].samples.iter().map(|e| e.duration.unwrap()));
                        }
                        b"mdat" => data.extend_from_slice(&body[8..]),
                        _ => {}
                    }
                    at += size;
                }
                Seg {
                    init: seg.init,
                    discontinuity: seg.discontinuity,
                    durations,
                    tfdt: tfdt.unwrap(),
                    data,
                }
            })
            .collect()
    }

    /// The `mp4a` entry of an init section: (rate, channels, the
    /// AudioSpecificConfig its `esds` carries), and the track's timescale.
    fn mp4a(init: &[u8]) -> (u32, u32, Vec<u8>, u32) {
        let ctx = mp4parse::read_mp4(&mut std::io::Cursor::new(init)).unwrap();
        let track = &ctx.tracks[0];
        let mp4parse::SampleEntry::Audio(a) = &track.stsd.as_ref().unwrap().descriptions[0] else {
            panic!("not an audio sample entry");
        };
        assert_eq!(a.codec_type, mp4parse::CodecType::AAC);
        let mp4parse::AudioCodecSpecific::ES_Descriptor(esds) = &a.codec_specific else {
            panic!("no esds");
        };
        (
            a.samplerate as u32,
            a.channelcount,
            esds.decoder_specific_data.to_vec(),
            track.timescale.unwrap().0 as u32,
        )
    }

    #[test]
    fn source_aac_is_passed_through_at_its_rate_with_its_config_and_no_transcoder() {
        // FFmpeg's `-c:a aac -ar 44100` (stereo) and a 48 kHz mono source.
        for (config, rate, channels) in [
            (&[0x12u8, 0x10][..], 44_100u32, 2u32),
            (&[0x11, 0x88][..], 48_000, 1),
        ] {
            let host = Arc::new(CountingHost::default());
            let mut tap = passthrough_tap(host.clone());
            let snapshot = publish_with_aac(&mut tap, &[(config, rate)], 4);
            let names: Vec<&str> = snapshot.renditions.keys().map(String::as_str).collect();
            assert_eq!(names, ["aac", "v0"], "no Opus rendition for an AAC source");
            let aac = &snapshot.renditions["aac"];
            assert_eq!((aac.timescale, aac.codec.as_str()), (rate, "mp4a.40.2"));
            assert_eq!(
                mp4a(&aac.files["init_0.mp4"]),
                (rate, channels, config.to_vec(), rate)
            );
            let mpd = crate::playlist::dash_mpd(&snapshot, "").unwrap();
            assert!(mpd.contains(&format!("audioSamplingRate=\"{rate}\"")), "{mpd}");
            let segs = segments(aac);
            assert!(segs.len() >= 2, "{} segments", segs.len());
            // Every unit as sent, in order, each lasting 1024 ticks of the
            // source's rate; the timeline continuous across segments.
            let mut bytes = Vec::new();
            let mut units = 0u32;
            for (i, seg) in segs.iter().enumerate() {
                assert_eq!((seg.init, seg.discontinuity), (0, false));
                assert!(seg.durations.iter().all(|&d| d == 1024), "{:?}", seg.durations);
                if i > 0 {
                    assert_eq!(seg.tfdt, segs[0].tfdt + 1024 * u64::from(units));
                }
                units += seg.durations.len() as u32;
                bytes.extend_from_slice(&seg.data);
            }
            let sent: Vec<u8> = (0..units)
                .flat_map(|unit| (0..100 + unit % 50).map(move |b| (b + unit) as u8))
                .collect();
            assert_eq!(bytes, sent);
            // 4 s of 1024-sample units, every one of them packaged.
            assert_eq!(units, (4 * rate).div_ceil(1024));
            // The audio is dated on the source's clock, as the video is.
            let (a, v) = (&aac.segments[0], &snapshot.renditions["v0"].segments[0]);
            let skew = a.program_date_time.as_secs_f64() - v.program_date_time.as_secs_f64();
            assert!(skew.abs() < 0.025, "audio {skew} s off the video");
            assert_eq!(host.0.load(std::sync::atomic::Ordering::Relaxed), 0);
            let stats = tap.stats();
            assert_eq!((stats.aac_transcoders, stats.aac_passthrough_dropped), (0, 0));
            assert_eq!(stats.aac_passthrough, u64::from(units));
        }
    }

    #[test]
    fn a_new_audio_specific_config_starts_a_new_init_after_a_discontinuity() {
        let host = Arc::new(CountingHost::default());
        let mut tap = passthrough_tap(host.clone());
        let snapshot = publish_with_aac(&mut tap, &[(&[0x11, 0x90], 48_000), (&[0x12, 0x10], 44_100)], 3);
        let aac = &snapshot.renditions["aac"];
        assert_eq!(aac.timescale, 44_100);
        assert_eq!(mp4a(&aac.files["init_0.mp4"]).0, 48_000);
        assert_eq!(
            mp4a(&aac.files["init_1.mp4"]),
            (44_100, 2, vec![0x12, 0x10], 44_100)
        );
        let segs = segments(aac);
        let first_new = segs
            .iter()
            .position(|s| s.init == 1)
            .expect("segments of the new init");
        assert!(first_new > 0);
        assert!(
            segs[first_new].discontinuity,
            "the new init follows a discontinuity"
        );
        assert!(segs[..first_new].iter().all(|s| s.init == 0 && !s.discontinuity));
        assert!(
            segs[first_new + 1..]
                .iter()
                .all(|s| s.init == 1 && !s.discontinuity)
        );
        assert!(segs.iter().all(|s| s.durations.iter().all(|&d| d == 1024)));
        let playlist = crate::playlist::media_playlist(&snapshot, "aac", false, "").unwrap();
        assert_eq!(
            playlist.matches("#EXT-X-DISCONTINUITY\n").count(),
            1,
            "{playlist}"
        );
        assert_eq!(host.0.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn bad_source_aac_is_logged_counted_and_dropped() {
        let host = Arc::new(CountingHost::default());
        let mut tap = passthrough_tap(host);
        let now = Instant::now();
        let room = RoomId::parse("aac-bad").unwrap();
        let pid = PeerId(1);
        // Audio before the room's first video: no HLS yet, nothing counted.
        let unit = |config, ts_ms, data| AacUnit { config, ts_ms, data };
        tap.handle_aac(now, pid, None, unit(&[0x12, 0x10], 0, &[1; 10]));
        assert_eq!(
            tap.stats().aac_passthrough + tap.stats().aac_passthrough_dropped,
            0
        );
        let mut encoder = H264Encoder::new(300_000, 30.0).unwrap();
        let au = encoder
            .encode(&Picture::test_ramp(128, 96, 0), 0, true)
            .unwrap()
            .unwrap();
        let track = Track {
            pid,
            video: true,
            layer: 0,
            layers: 1,
        };
        let nalus = avcc_nal_units(&au.data).unwrap();
        for (i, nalu) in nalus.iter().enumerate() {
            let rtp = RtpPacket {
                sequence_number: i as u16,
                timestamp: 0,
                marker: i + 1 == nalus.len(),
                payload: nalu,
            };
            tap.handle_media(now, &room, track, 7, None, rtp);
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        };
        let big = vec![0u8; 1537];
        let garbage: Vec<Vec<u8>> = (0..300).map(|i| (0..i % 9).map(|_| next()).collect()).collect();
        // A configuration that does not parse (twice: one warning), an
        // empty config, a reserved rate, garbage.
        let mut dropped = 0;
        for config in [&[0x12][..], &[0x12], &[], &[0x16, 0x90]] {
            tap.handle_aac(now, pid, None, unit(config, 0, &[1; 10]));
            dropped += 1;
        }
        assert!(!tap.rooms[&pid].packager.snapshot().renditions.contains_key("aac"));
        // A valid one, then an empty frame and one over 6,144 bits per
        // channel (stereo: 1,536 bytes).
        tap.handle_aac(now, pid, None, unit(&[0x12, 0x10], 0, &[1; 10]));
        tap.handle_aac(now, pid, None, unit(&[0x12, 0x10], 23, &[]));
        tap.handle_aac(now, pid, None, unit(&[0x12, 0x10], 46, &big));
        tap.handle_aac(now, pid, None, unit(&[0x12, 0x10], 70, &big[..1536]));
        dropped += 2;
        let stats = tap.stats();
        assert_eq!(
            (stats.aac_passthrough, stats.aac_passthrough_dropped),
            (2, dropped)
        );
        // Garbage configurations and frames never panic; the valid ones pass.
        for (i, g) in garbage.iter().enumerate() {
            let config: &[u8] = if i % 2 == 0 { g } else { &[0x12, 0x10] };
            tap.handle_aac(now, pid, None, unit(config, 93 + i as u32 * 23, g));
        }
        let stats = tap.stats();
        assert!(stats.aac_passthrough > 2 && stats.aac_passthrough_dropped > dropped);
        assert_eq!(stats.aac_transcoders, 0);
    }

    /// Frames of every complete segment and the open one.
    fn frames(r: &crate::segmenter::RenditionSnapshot) -> u64 {
        r.segments.iter().chain(&r.open).map(|s| s.frames).sum()
    }

    #[test]
    fn the_ladder_rungs_end_with_the_last_frames_of_the_source() {
        const FRAMES: usize = 24;
        let config = TapConfig {
            hls: HlsConfig::default(),
            linger: Duration::from_secs(60),
            ladder: true,
        };
        let mut tap = HlsTap::new(
            config,
            Arc::new(ThreadHost),
            Instant::now(),
            Duration::from_secs(1_800_000_000),
        );
        let room = RoomId::parse("ladder-end").unwrap();
        let track = Track {
            pid: PeerId(1),
            video: true,
            layer: 0,
            layers: 1,
        };
        let mut encoder = H264Encoder::new(300_000, 30.0).unwrap();
        let mut seq = 0u16;
        for n in 0..FRAMES {
            if n > 0 {
                // Real time for the ladder thread to keep up (a full queue
                // would drop frames to the next IDR).
                std::thread::sleep(Duration::from_millis(15));
            }
            let ts = n as u32 * 3000;
            let au = encoder
                .encode(&Picture::test_ramp(128, 96, n as u64), i64::from(ts), n % 12 == 0)
                .unwrap()
                .expect("one access unit per picture");
            let nalus = avcc_nal_units(&au.data).unwrap();
            for (i, nalu) in nalus.iter().enumerate() {
                let rtp = RtpPacket {
                    sequence_number: seq,
                    timestamp: ts,
                    marker: i + 1 == nalus.len(),
                    payload: nalu,
                };
                seq = seq.wrapping_add(1);
                tap.handle_media(Instant::now(), &room, track, 7, None, rtp);
            }
        }
        // The publisher leaves right after its last frame: the ladder
        // thread still has that frame's rungs to encode.
        tap.publisher_left(Instant::now(), track.pid);
        let deadline = Instant::now() + Duration::from_secs(5);
        let snapshot = loop {
            let now = Instant::now();
            tap.handle_timeout(now);
            let last = std::iter::from_fn(|| tap.poll_update())
                .filter_map(|u| match u {
                    HlsUpdate::Publish(_, s) => Some(s),
                    HlsUpdate::Remove(_) => None,
                })
                .last();
            if let Some(s) = last.filter(RoomSnapshot::ended) {
                break s;
            }
            assert!(now < deadline, "the room never ended");
            std::thread::sleep(Duration::from_millis(2));
        };
        let video: BTreeMap<u8, u64> = snapshot
            .renditions
            .values()
            .filter_map(|r| match r.kind {
                crate::RenditionKind::Video { layer } => Some((layer, frames(r))),
                crate::RenditionKind::Audio(_) => None,
            })
            .collect();
        // The source (layer 2) and both rungs, each with every frame and
        // EXT-X-ENDLIST.
        let every = BTreeMap::from([(0, FRAMES as u64), (1, FRAMES as u64), (2, FRAMES as u64)]);
        assert_eq!(video, every);
        assert!(snapshot.renditions.values().all(|r| r.ended && r.open.is_none()));
    }
}
