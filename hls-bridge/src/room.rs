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
/// AAC-LC transcoded from [`OPUS_TRACK`] (rendition `aac`, the default).
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
    /// Parts and segments of rooms that ended.
    done: HlsStats,
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
    /// The ABR ladder under a single-layer publisher.
    ladder: Option<LadderFeed>,
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
            if !r.has_audio && !r.add_audio(now, &*self.codecs) {
                return;
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
            let init = fmp4::init_segment(&TrackConfig::Aac(config))?;
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
