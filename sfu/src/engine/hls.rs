//! The engine's LL-HLS tap: every room whose publisher sends H.264 gets an
//! `hls_bridge::Bridge` + `Packager`, fed from the publisher's RTP (with
//! the sender reports str0m attaches to each packet). Sans-IO like the
//! engine: time comes in, keyframe requests and snapshots go out.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, UNIX_EPOCH};

use hls_bridge::{
    AudioCodec, Bridge, BridgeConfig, HlsConfig, Packager, RoomSnapshot, RtpPacket as BridgeRtp,
    SenderReport, TrackId, TrackKind,
};
use signaling::RoomId;
use str0m::format::Codec;
use str0m::media::MediaKind;
use str0m::rtp::RtpPacket;
use tracing::{debug, info};

use super::PeerId;

/// RFC 5905: NTP era 0 starts 2,208,988,800 s before the UNIX epoch.
const NTP_UNIX: u64 = 2_208_988_800;
const AUDIO_TRACK: TrackId = TrackId(1000);

/// Counters for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct HlsStats {
    pub rooms: u64,
    pub parts: u64,
    pub segments: u64,
}

pub(super) struct HlsTap {
    config: HlsConfig,
    /// `(now, wall clock since the UNIX epoch)` of one instant.
    anchor: (Instant, Duration),
    rooms: BTreeMap<RoomId, HlsRoom>,
    out: VecDeque<(RoomId, RoomSnapshot)>,
    /// Parts and segments of rooms that ended.
    done: HlsStats,
}

struct HlsRoom {
    publisher: PeerId,
    bridge: Bridge,
    packager: Packager,
    /// Bridge track -> video layer index (audio: none).
    tracks: BTreeMap<TrackId, Option<usize>>,
    /// Last sender report fed per track.
    reports: BTreeMap<TrackId, u64>,
}

impl HlsTap {
    pub(super) fn new(config: HlsConfig, now: Instant, wall: Duration) -> Self {
        Self {
            config,
            anchor: (now, wall),
            rooms: BTreeMap::new(),
            out: VecDeque::new(),
            done: HlsStats::default(),
        }
    }

    pub(super) fn stats(&self) -> HlsStats {
        let mut s = self.done;
        s.rooms = self.rooms.len() as u64;
        for r in self.rooms.values() {
            let p = r.packager.stats();
            s.parts += p.parts;
            s.segments += p.segments;
        }
        s
    }

    /// One RTP packet of publisher `pid` in `room`, track kind `kind`,
    /// simulcast layer `layer`. Returns the layers to ask for a keyframe.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn packet(
        &mut self,
        now: Instant,
        room: &RoomId,
        pid: PeerId,
        kind: MediaKind,
        layer: usize,
        codec: Option<Codec>,
        session_seed: u64,
        packet: &RtpPacket,
    ) -> Vec<usize> {
        let id = match (kind, codec) {
            (MediaKind::Video, Some(Codec::H264)) => TrackId(layer as u32 + 1),
            (MediaKind::Audio, Some(Codec::Opus)) => AUDIO_TRACK,
            _ => return Vec::new(),
        };
        if !self.rooms.contains_key(room) {
            if kind != MediaKind::Video {
                return Vec::new();
            }
            let wall = self.anchor.1 + now.saturating_duration_since(self.anchor.0);
            let packager = match Packager::new(self.config, session_seed, now, wall) {
                Ok(p) => p,
                Err(e) => {
                    debug!(%room, error = %e, "HLS packager refused its config");
                    return Vec::new();
                }
            };
            let bridge = Bridge::new(BridgeConfig {
                segment_target: self.config.segment_target,
                ..BridgeConfig::default()
            });
            info!(%room, publisher = pid.0, "HLS started");
            self.rooms.insert(
                room.clone(),
                HlsRoom {
                    publisher: pid,
                    bridge,
                    packager,
                    tracks: BTreeMap::new(),
                    reports: BTreeMap::new(),
                },
            );
        }
        let Some(r) = self.rooms.get_mut(room) else {
            return Vec::new();
        };
        if r.publisher != pid {
            return Vec::new();
        }
        if !r.tracks.contains_key(&id) {
            let added = match kind {
                MediaKind::Video => r
                    .bridge
                    .add_track(now, id, TrackKind::H264 { layer: layer as u8 })
                    .and_then(|()| r.packager.add_video(id, layer as u8)),
                MediaKind::Audio => r
                    .bridge
                    .add_track(now, id, TrackKind::Opus { stereo: true })
                    .and_then(|()| r.packager.add_audio(id, AudioCodec::Opus { stereo: true })),
            };
            if let Err(e) = added {
                debug!(%room, track = %id, error = %e, "HLS track refused");
                return Vec::new();
            }
            r.tracks.insert(id, (kind == MediaKind::Video).then_some(layer));
        }
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
            debug!(%room, track = %id, error = %e, "HLS dropped a packet");
        }
        Self::pump(room, r, now, &mut self.out)
    }

    /// Moves frames into the packager; returns keyframe requests.
    fn pump(
        room: &RoomId,
        r: &mut HlsRoom,
        now: Instant,
        out: &mut VecDeque<(RoomId, RoomSnapshot)>,
    ) -> Vec<usize> {
        while let Some((id, frame)) = r.bridge.poll_frame() {
            let ts = match &frame {
                hls_bridge::Frame::Video { au, .. } => au.timestamp,
                hls_bridge::Frame::Audio(a) => a.timestamp,
            };
            let capture = r.bridge.capture_time(id, ts);
            if let Err(e) = r.packager.push_frame(now, id, &frame, capture) {
                debug!(%room, track = %id, error = %e, "HLS frame refused");
            }
        }
        if let Some(s) = r.packager.take_snapshot() {
            out.push_back((room.clone(), s));
        }
        let mut layers = Vec::new();
        while let Some(id) = r.bridge.poll_keyframe_request() {
            if let Some(Some(layer)) = r.tracks.get(&id) {
                layers.push(*layer);
            }
        }
        layers
    }

    /// Time passed: `(publisher, layer)` keyframe requests that fell due.
    pub(super) fn timeout(&mut self, now: Instant) -> Vec<(PeerId, usize)> {
        let mut wanted = Vec::new();
        for (room, r) in &mut self.rooms {
            if r.bridge.poll_timeout().is_some_and(|at| at <= now) {
                r.bridge.handle_timeout(now);
            }
            for layer in Self::pump(room, r, now, &mut self.out) {
                wanted.push((r.publisher, layer));
            }
        }
        wanted
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.rooms.values().filter_map(|r| r.bridge.poll_timeout()).min()
    }

    /// The publisher left: its room's playlists end.
    pub(super) fn publisher_left(&mut self, pid: PeerId) {
        let ended: Vec<RoomId> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.publisher == pid)
            .map(|(room, _)| room.clone())
            .collect();
        for room in ended {
            if let Some(mut r) = self.rooms.remove(&room) {
                let _ = r.packager.end();
                let s = r.packager.stats();
                self.done.parts += s.parts;
                self.done.segments += s.segments;
                if let Some(snap) = r.packager.take_snapshot() {
                    self.out.push_back((room.clone(), snap));
                }
                info!(%room, parts = s.parts, "HLS ended");
            }
        }
    }

    pub(super) fn poll_snapshot(&mut self) -> Option<(RoomId, RoomSnapshot)> {
        self.out.pop_front()
    }
}
