//! `hls-bridge`: turns a room's RTP tracks (H.264 per simulcast layer,
//! Opus) into CMAF fMP4 for LL-HLS.
//!
//! Sans-IO: the [`Bridge`] never reads a clock or touches a socket. The node
//! feeds it RTP packets and RTCP sender reports with the time they arrived,
//! calls [`Bridge::handle_timeout`] when [`Bridge::poll_timeout`] says, and
//! drains keyframe requests (to send as PLI/FIR upstream) and frames.
//! It does not know the `sfu` crate: this module is the whole interface.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use tracing::debug;

pub mod aac;
mod error;
pub mod fmp4;
#[doc(hidden)]
pub mod fuzzing;
pub mod h264;
pub mod http;
pub mod opus;
pub mod playlist;
pub mod room;
mod rtp;
pub mod runner;
pub mod segmenter;
pub mod thumbnail;
pub mod transcode;

pub use error::Error;
use h264::{AccessUnit, AvcConfig, H264Depacketizer, H264Stats};
use opus::OpusFrame;
use rtp::{OwnedPacket, Reorder, SeqUnwrapper, TsUnwrapper};
pub use segmenter::{AudioCodec, AudioSample, HlsConfig, Packager, RenditionKind, RoomSnapshot};

/// A track of a room, as the node numbers them (e.g. one per simulcast
/// layer SSRC, one for audio).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrackId(pub u32);

impl fmt::Display for TrackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackKind {
    /// H.264 video; `layer` ranks simulcast layers, 0 = lowest.
    H264 { layer: u8 },
    /// Opus audio; `stereo` from the SDP fmtp (`stereo=1`), which the TOC
    /// stereo flag can only confirm.
    Opus { stereo: bool },
}

impl TrackKind {
    fn clock_rate(self) -> u32 {
        match self {
            TrackKind::H264 { .. } => fmp4::VIDEO_TIMESCALE,
            TrackKind::Opus { .. } => fmp4::OPUS_TIMESCALE,
        }
    }
}

/// The fields of one RTP packet the bridge needs (RFC 3550 §5.1), after
/// SRTP and RTX unwrapping.
#[derive(Debug, Clone, Copy)]
pub struct RtpPacket<'a> {
    pub sequence_number: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: &'a [u8],
}

/// An RTCP sender report's clock mapping (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderReport {
    /// 64-bit NTP timestamp (seconds since 1900 in the high 32 bits).
    pub ntp_time: u64,
    pub rtp_time: u32,
}

impl SenderReport {
    /// `ntp_time` as time since the UNIX epoch (`None` before 1970).
    pub fn unix_time(&self) -> Option<Duration> {
        // RFC 5905 §6: NTP era 0 starts 1900-01-01, 2,208,988,800 s before 1970.
        const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
        let secs = (self.ntp_time >> 32).checked_sub(NTP_UNIX_OFFSET)?;
        let frac_nanos = ((self.ntp_time & 0xffff_ffff) * 1_000_000_000) >> 32;
        Some(Duration::from_secs(secs) + Duration::from_nanos(frac_nanos))
    }
}

/// A depacketized frame of one track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An H.264 access unit. `new_config` is set on the first frame and
    /// whenever the SPS/PPS change (a new init segment and
    /// EXT-X-DISCONTINUITY follow; checklist C18); that frame is an IDR.
    Video {
        au: AccessUnit,
        new_config: Option<AvcConfig>,
    },
    Audio(OpusFrame),
}

/// Knobs, all with the defaults of the LL-HLS reference.
#[derive(Debug, Clone, Copy)]
pub struct BridgeConfig {
    /// Every video layer is asked for a keyframe at the same instant once
    /// per segment target, so segments of all renditions align (ref §6.1).
    pub segment_target: Duration,
    /// A layer waiting for an IDR (start, loss) asks again this often.
    pub keyframe_retry: Duration,
    /// Packets held while waiting for a missing one.
    pub reorder_depth: usize,
    /// How long a gap may stay open before it counts as loss.
    pub reorder_wait: Duration,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            segment_target: Duration::from_secs(2),
            keyframe_retry: Duration::from_millis(500),
            reorder_depth: 64,
            reorder_wait: Duration::from_millis(50),
        }
    }
}

/// Per-track counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TrackStats {
    pub packets: u64,
    pub lost_packets: u64,
    pub late_or_duplicate: u64,
    pub malformed: u64,
    pub frames: u64,
    /// Frames dropped because [`MAX_QUEUED_FRAMES`] were waiting for
    /// [`Bridge::poll_frame`]; a video track then waits for its next IDR.
    pub dropped_frames: u64,
    pub h264: H264Stats,
}

/// Frames the bridge holds for [`Bridge::poll_frame`], all tracks together:
/// a caller drains after every packet, so only a stalled caller reaches it
/// (about 3 s of three 30 fps layers and 50 audio packets a second).
pub const MAX_QUEUED_FRAMES: usize = 512;

/// The bridge for one room.
#[derive(Debug)]
pub struct Bridge {
    config: BridgeConfig,
    tracks: BTreeMap<TrackId, Track>,
    next_aligned_keyframe: Option<Instant>,
    keyframe_requests: BTreeSet<TrackId>,
    frames: VecDeque<(TrackId, Frame)>,
}

#[derive(Debug)]
struct Track {
    kind: TrackKind,
    seq: SeqUnwrapper,
    ts: TsUnwrapper,
    reorder: Reorder,
    h264: H264Depacketizer,
    avc: Option<AvcConfig>,
    sender_report: Option<SenderReport>,
    last_keyframe_request: Option<Instant>,
    stats: TrackStats,
}

impl Bridge {
    pub fn new(config: BridgeConfig) -> Self {
        Self {
            config,
            tracks: BTreeMap::new(),
            next_aligned_keyframe: None,
            keyframe_requests: BTreeSet::new(),
            frames: VecDeque::new(),
        }
    }

    pub fn add_track(&mut self, now: Instant, id: TrackId, kind: TrackKind) -> Result<(), Error> {
        if self.tracks.contains_key(&id) {
            return Err(Error::DuplicateTrack(id));
        }
        self.tracks.insert(
            id,
            Track {
                kind,
                seq: SeqUnwrapper::default(),
                ts: TsUnwrapper::default(),
                reorder: Reorder::new(self.config.reorder_depth, self.config.reorder_wait),
                h264: H264Depacketizer::default(),
                avc: None,
                sender_report: None,
                last_keyframe_request: None,
                stats: TrackStats::default(),
            },
        );
        if matches!(kind, TrackKind::H264 { .. }) {
            self.next_aligned_keyframe
                .get_or_insert(now + self.config.segment_target);
        }
        self.handle_timeout(now);
        Ok(())
    }

    pub fn remove_track(&mut self, id: TrackId) {
        self.tracks.remove(&id);
        self.keyframe_requests.remove(&id);
    }

    /// One RTP packet of track `id`, received at `now`.
    pub fn handle_rtp(&mut self, now: Instant, id: TrackId, packet: RtpPacket<'_>) -> Result<(), Error> {
        let track = self.tracks.get_mut(&id).ok_or(Error::UnknownTrack(id))?;
        track.stats.packets += 1;
        let seq = track.seq.unwrap(packet.sequence_number);
        track.reorder.push(
            now,
            OwnedPacket {
                seq,
                timestamp: packet.timestamp,
                marker: packet.marker,
                payload: packet.payload.to_vec(),
            },
        );
        let result = self.drain(now, id);
        self.handle_timeout(now);
        result
    }

    /// An RTCP sender report for track `id`: the NTP<->RTP mapping that
    /// gives every frame its capture time (PROGRAM-DATE-TIME, C11).
    pub fn handle_sender_report(&mut self, id: TrackId, report: SenderReport) -> Result<(), Error> {
        let track = self.tracks.get_mut(&id).ok_or(Error::UnknownTrack(id))?;
        track.sender_report = Some(report);
        Ok(())
    }

    /// Advances time: flushes gaps that waited long enough and schedules
    /// keyframe requests.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<TrackId> = self.tracks.keys().copied().collect();
        for id in ids {
            // Malformed payloads were counted when they arrived.
            let _ = self.drain(now, id);
        }
        let aligned = self.next_aligned_keyframe.is_some_and(|at| now >= at);
        if aligned {
            self.next_aligned_keyframe = Some(now + self.config.segment_target);
        }
        let retry = self.config.keyframe_retry;
        for (&id, track) in &mut self.tracks {
            if !matches!(track.kind, TrackKind::H264 { .. }) {
                continue;
            }
            let waiting = track.h264.waiting_for_idr()
                && track
                    .last_keyframe_request
                    .is_none_or(|at| now.saturating_duration_since(at) >= retry);
            if aligned || waiting {
                track.last_keyframe_request = Some(now);
                self.keyframe_requests.insert(id);
            }
        }
    }

    /// When to call [`Bridge::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retry = self.config.keyframe_retry;
        let retries = self.tracks.values().filter_map(|t| {
            (matches!(t.kind, TrackKind::H264 { .. }) && t.h264.waiting_for_idr())
                .then(|| t.last_keyframe_request.map(|at| at + retry))
                .flatten()
        });
        let gaps = self.tracks.values().filter_map(|t| t.reorder.poll_timeout());
        retries.chain(gaps).chain(self.next_aligned_keyframe).min()
    }

    /// A track the publisher should send a keyframe on (PLI/FIR).
    pub fn poll_keyframe_request(&mut self) -> Option<TrackId> {
        self.keyframe_requests.pop_first()
    }

    /// The next depacketized frame.
    pub fn poll_frame(&mut self) -> Option<(TrackId, Frame)> {
        self.frames.pop_front()
    }

    pub fn stats(&self, id: TrackId) -> Option<TrackStats> {
        self.tracks.get(&id).map(|t| TrackStats {
            h264: t.h264.stats(),
            late_or_duplicate: t.reorder.late_or_duplicate,
            ..t.stats
        })
    }

    /// The capture time of a frame of track `id` with (unwrapped) RTP
    /// `timestamp`, as time since the UNIX epoch, from the latest sender
    /// report. `None` before the first report.
    pub fn capture_time(&self, id: TrackId, timestamp: i64) -> Option<Duration> {
        let track = self.tracks.get(&id)?;
        let sr = track.sender_report?;
        let sr_unix = sr.unix_time()?;
        let delta_ticks = i64::from((timestamp as u32).wrapping_sub(sr.rtp_time) as i32);
        let delta_nanos = delta_ticks * 1_000_000_000 / i64::from(track.kind.clock_rate());
        if delta_nanos >= 0 {
            sr_unix.checked_add(Duration::from_nanos(delta_nanos as u64))
        } else {
            sr_unix.checked_sub(Duration::from_nanos(delta_nanos.unsigned_abs()))
        }
    }

    fn drain(&mut self, now: Instant, id: TrackId) -> Result<(), Error> {
        let Some(track) = self.tracks.get_mut(&id) else {
            return Ok(());
        };
        let mut first_error = None;
        while let Some(released) = track.reorder.pop(now) {
            track.stats.lost_packets += released.lost_before;
            let packet = released.packet;
            let timestamp = track.ts.unwrap(packet.timestamp);
            let result = match track.kind {
                TrackKind::H264 { .. } => {
                    let r = track.h264.push(
                        timestamp,
                        packet.marker,
                        &packet.payload,
                        released.lost_before > 0,
                    );
                    while let Some(au) = track.h264.poll() {
                        if self.frames.len() >= MAX_QUEUED_FRAMES {
                            // Later frames of this track depend on this one.
                            track.stats.dropped_frames += 1;
                            track.h264.resync();
                            continue;
                        }
                        if let Some(frame) = accept_access_unit(id, track, au) {
                            track.stats.frames += 1;
                            self.frames.push_back((id, frame));
                        }
                    }
                    r.map_err(|reason| (reason, "H.264"))
                }
                TrackKind::Opus { .. } => match opus::parse_toc(&packet.payload) {
                    Ok(_) if self.frames.len() >= MAX_QUEUED_FRAMES => {
                        track.stats.dropped_frames += 1;
                        Ok(())
                    }
                    Ok((duration, stereo)) => {
                        track.stats.frames += 1;
                        self.frames.push_back((
                            id,
                            Frame::Audio(OpusFrame {
                                timestamp,
                                duration,
                                stereo,
                                data: packet.payload,
                            }),
                        ));
                        Ok(())
                    }
                    Err(reason) => Err((reason, "Opus")),
                },
            };
            if let Err((reason, codec)) = result {
                track.stats.malformed += 1;
                debug!(track = %id, codec, reason, "dropped malformed RTP payload");
                first_error.get_or_insert(Error::MalformedPayload {
                    track: id,
                    codec,
                    reason,
                });
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Tracks SPS/PPS: a frame goes out only once its parameters are known;
/// a change of parameters is announced on the IDR that carries them.
fn accept_access_unit(id: TrackId, track: &mut Track, au: AccessUnit) -> Option<Frame> {
    let mut new_config = None;
    if let (Some(sps), Some(pps)) = (&au.sps, &au.pps) {
        let changed = track.avc.as_ref().is_none_or(|c| &c.sps != sps || &c.pps != pps);
        if changed && !au.keyframe {
            // New parameters on a non-IDR: not decodable alone.
            track.h264.resync();
            return None;
        }
        if changed {
            match AvcConfig::new(sps.clone(), pps.clone()) {
                Ok(config) => {
                    debug!(track = %id, codec = %config.codec_string(), config.width, config.height, "new H.264 parameters");
                    track.avc = Some(config.clone());
                    new_config = Some(config);
                }
                Err(error) => {
                    debug!(track = %id, %error, "unusable SPS; waiting for the next IDR");
                    track.stats.malformed += 1;
                    track.avc = None;
                    track.h264.resync();
                    return None;
                }
            }
        }
    }
    if track.avc.is_none() {
        // No parameters yet: not decodable.
        track.h264.resync();
        return None;
    }
    Some(Frame::Video { au, new_config })
}
