//! The LL-HLS segmenter (Sans-IO): frames of a room's tracks in, CMAF
//! parts, segments and init sections out, as an immutable
//! [`RoomSnapshot`] the HTTP layer serves.
//!
//! Rules (reference ll-hls.md §2, §6; checklist C2, C6, C12, C17, C18):
//! - PART-TARGET is fixed for the life of the packager; a part is closed
//!   *before* the sample that would overflow it (on DTS), so no part is
//!   longer than the target. Video cuts a part at an IDR when the part so
//!   far is at least 85% of the target (the new part is INDEPENDENT).
//! - A video segment starts at an IDR once the segment so far reaches the
//!   segment target minus one part; a change of SPS/PPS starts a new
//!   segment with a new init section and EXT-X-DISCONTINUITY. A publisher
//!   that stops sending IDRs gets a forced cut before the segment would
//!   exceed TARGETDURATION + 0.5 s (counted and logged), never a segment
//!   that breaks the playlist.
//! - Audio cuts parts on the same part target and segments where the room
//!   clock crosses a multiple of the segment target; every audio part is
//!   independent.
//! - Samples are written one behind: a sample's duration is the distance to
//!   the next one's timestamp, so `tfdt` is continuous.
//! - One media clock for the room: a track's first sample is placed at its
//!   capture time (RTCP SR) or, without a report yet, its arrival time,
//!   relative to the room's first sample; PROGRAM-DATE-TIME is the same
//!   mapping, identical for every rendition (C11).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, warn};

use crate::fmp4::{self, OpusConfig, TrackConfig};
use crate::thumbnail::Keyframe;
use crate::{Error, Frame, TrackId};

/// Decode time of the room's first sample: keeps every `tfdt` positive even
/// for a track whose capture clock starts a little before the room's.
const BASE: Duration = Duration::from_secs(10);

/// Byte bounds on what one rendition holds. Parts, segments and the DVR
/// window are measured in the publisher's timestamps; a publisher whose
/// timestamps barely advance would fill them without end. Each bound is far
/// above real media (a 30 s window of 20 Mbit/s 4K is 75 MB); reaching one
/// closes the part or segment early, or trims the oldest segment, and is
/// counted in [`PackagerStats::byte_limited`].
pub const MAX_PART_BYTES: usize = 8 << 20;
pub const MAX_SEGMENT_BYTES: u64 = 32 << 20;
pub const MAX_WINDOW_BYTES: u64 = 128 << 20;

/// Segmenter and playlist knobs; fixed for the life of a stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HlsConfig {
    /// PART-TARGET, 0.2–1 s, rounded up to the millisecond.
    pub part_target: Duration,
    /// Wanted segment duration (keyframes are requested at this period).
    pub segment_target: Duration,
    /// Segments kept in the playlist, at least 6 (Apple 8.11).
    pub window_segments: usize,
    /// DVR window: segments are kept while the playlist is shorter than this.
    pub dvr_window: Duration,
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            part_target: Duration::from_millis(334),
            segment_target: Duration::from_secs(2),
            window_segments: 6,
            dvr_window: Duration::from_secs(30),
        }
    }
}

impl HlsConfig {
    /// Checks the ranges and rounds PART-TARGET up to the millisecond.
    pub fn validated(mut self) -> Result<Self, Error> {
        let ms = self.part_target.as_nanos().div_ceil(1_000_000) as u64;
        self.part_target = Duration::from_millis(ms);
        if !(200..=1000).contains(&ms) {
            return Err(Error::Config("part target must be 0.2-1 s"));
        }
        if self.segment_target < self.part_target * 2 || self.segment_target > Duration::from_secs(10) {
            return Err(Error::Config("segment target must be 2 parts to 10 s"));
        }
        if self.window_segments < 6 {
            return Err(Error::Config("the window must hold at least 6 segments"));
        }
        Ok(self)
    }

    /// EXT-X-TARGETDURATION: fixed, with room for an IDR that arrives late.
    pub fn target_duration(&self) -> u32 {
        (self.segment_target.as_secs_f64() * 1.5).ceil() as u32
    }
}

/// Which audio codec an audio rendition carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioCodec {
    /// Opus passed through (RFC 7587), 48 kHz.
    Opus { stereo: bool },
    /// AAC, from the Opus-to-AAC transcoder (AAC-LC, 48 kHz) or passed
    /// through from an ingest source (its rate, its AudioSpecificConfig):
    /// the init section (`ftyp`+`moov` with `mp4a`/`esds`) is the caller's,
    /// as are the samples (one AAC frame each, timestamps in `timescale`)
    /// and the RFC 6381 `codec` (`mp4a.40.2`).
    Aac {
        init: Vec<u8>,
        timescale: u32,
        channels: u8,
        codec: String,
    },
}

/// What a rendition is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenditionKind {
    Video { layer: u8 },
    Audio(AudioCodec),
}

impl RenditionKind {
    pub fn is_video(&self) -> bool {
        matches!(self, RenditionKind::Video { .. })
    }
}

/// One audio sample from outside the RTP path (the AAC seam).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioSample {
    /// In the rendition's timescale, unwrapped.
    pub timestamp: i64,
    pub data: Vec<u8>,
}

/// A published part.
#[derive(Debug, Clone, PartialEq)]
pub struct PartInfo {
    pub index: u32,
    pub duration: f64,
    pub independent: bool,
    pub size: u64,
}

/// A segment: complete, or the one being built (`duration` so far).
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentInfo {
    pub msn: u64,
    pub duration: f64,
    /// Init section number (`init_{n}.mp4`).
    pub init: u32,
    pub discontinuity: bool,
    /// PROGRAM-DATE-TIME, since the UNIX epoch.
    pub program_date_time: Duration,
    pub parts: Vec<PartInfo>,
    /// Starts with an IDR (false only after a forced cut).
    pub independent: bool,
    pub size: u64,
    pub frames: u64,
    pub start_dts: u64,
}

/// What the HTTP layer serves for one rendition.
#[derive(Debug, Clone)]
pub struct RenditionSnapshot {
    pub name: String,
    pub kind: RenditionKind,
    /// RFC 6381 codec string.
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub timescale: u32,
    /// MSN of the first segment in `segments`.
    pub media_sequence: u64,
    pub discontinuity_sequence: u64,
    /// Complete segments in the window, oldest first.
    pub segments: Vec<SegmentInfo>,
    /// The segment being built; its `parts` are the published ones.
    pub open: Option<SegmentInfo>,
    pub ended: bool,
    /// Files by name: `init_{n}.mp4`, `seg_{msn}.m4s`, `part_{msn}_{i}.m4s`.
    pub files: BTreeMap<String, Bytes>,
    /// Peak and average bits/s over the window's segments.
    pub peak_bandwidth: u64,
    pub average_bandwidth: u64,
    pub frame_rate: f64,
}

impl RenditionSnapshot {
    /// The newest published part as (MSN, index).
    pub fn last_part(&self) -> Option<(u64, u32)> {
        if let Some(open) = &self.open
            && let Some(p) = open.parts.last()
        {
            return Some((open.msn, p.index));
        }
        let seg = self.segments.last()?;
        Some((seg.msn, seg.parts.last()?.index))
    }

    /// MSN of the newest complete segment.
    pub fn last_complete_msn(&self) -> Option<u64> {
        self.segments.last().map(|s| s.msn)
    }

    /// MSN of the last segment the playlist shows (complete or with parts).
    pub fn last_msn(&self) -> Option<u64> {
        match &self.open {
            Some(o) if !o.parts.is_empty() => Some(o.msn),
            _ => self.last_complete_msn(),
        }
    }

    /// The part under construction, named by the PRELOAD-HINT.
    pub fn next_part(&self) -> Option<(u64, u32)> {
        if self.ended {
            return None;
        }
        let open = self.open.as_ref()?;
        Some((open.msn, open.parts.len() as u32))
    }

    /// The init section the next part will use, when it differs from the
    /// last one in the playlist (a MAP preload hint).
    pub fn next_map(&self) -> Option<u32> {
        let open = self.open.as_ref().filter(|o| o.parts.is_empty() && !self.ended)?;
        let last = self.segments.last().map(|s| s.init);
        (last != Some(open.init) && last.is_some()).then_some(open.init)
    }

    /// Whether the playlist has anything to show.
    pub fn has_media(&self) -> bool {
        self.last_part().is_some()
    }
}

/// Everything one room publishes, at one instant.
#[derive(Debug, Clone)]
pub struct RoomSnapshot {
    pub config: HlsConfig,
    /// Per-session path prefix (12 hex digits) so caches never mix streams.
    pub session: String,
    pub renditions: BTreeMap<String, RenditionSnapshot>,
    /// Wall time of decode time 0 of every rendition (DASH availabilityStartTime).
    pub epoch: Option<Duration>,
    /// Bumped on every change.
    pub version: u64,
    /// The latest IDR of the top layer, for `thumbnail.jpg`/`.png`. The
    /// driver that keeps a [`crate::thumbnail::ThumbnailCache`] attaches it
    /// (the packager leaves it `None`); rendered lazily on request.
    pub thumbnail: Option<Arc<Keyframe>>,
}

impl RoomSnapshot {
    /// Wall time (since the UNIX epoch) of the room's first frame.
    pub fn started(&self) -> Option<Duration> {
        self.epoch.map(|e| e + BASE)
    }

    pub fn ended(&self) -> bool {
        !self.renditions.is_empty() && self.renditions.values().all(|r| r.ended)
    }
}

/// Packager counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PackagerStats {
    pub parts: u64,
    pub segments: u64,
    pub discontinuities: u64,
    /// Segments cut without an IDR because the publisher sent none in time.
    pub forced_cuts: u64,
    /// Samples dropped for a timestamp that does not advance.
    pub non_monotonic: u64,
    /// Parts or segments closed early, or segments trimmed from the
    /// window, because they reached a byte bound ([`MAX_WINDOW_BYTES`]).
    pub byte_limited: u64,
}

/// The segmenter for one room.
#[derive(Debug)]
pub struct Packager {
    config: HlsConfig,
    session: String,
    anchor: (Instant, Duration),
    epoch: Option<Duration>,
    renditions: BTreeMap<TrackId, Rendition>,
    version: u64,
    changed: bool,
    stats: PackagerStats,
}

impl Packager {
    /// `session` is a random number (randomness is an input); `now` and
    /// `wall` (time since the UNIX epoch) are the same instant, so the
    /// packager can date arrivals without reading a clock.
    pub fn new(config: HlsConfig, session: u64, now: Instant, wall: Duration) -> Result<Self, Error> {
        Ok(Self {
            config: config.validated()?,
            session: format!("{:012x}", session & 0xffff_ffff_ffff),
            anchor: (now, wall),
            epoch: None,
            renditions: BTreeMap::new(),
            version: 0,
            changed: false,
            stats: PackagerStats::default(),
        })
    }

    pub fn config(&self) -> &HlsConfig {
        &self.config
    }

    pub fn stats(&self) -> PackagerStats {
        self.stats
    }

    /// A video rendition (one simulcast layer), named `v{layer}`.
    pub fn add_video(&mut self, id: TrackId, layer: u8) -> Result<(), Error> {
        self.add(id, format!("v{layer}"), RenditionKind::Video { layer })
    }

    /// An audio rendition, named `opus` or `aac`.
    pub fn add_audio(&mut self, id: TrackId, codec: AudioCodec) -> Result<(), Error> {
        let name = match codec {
            AudioCodec::Opus { .. } => "opus",
            AudioCodec::Aac { .. } => "aac",
        };
        self.add(id, name.to_string(), RenditionKind::Audio(codec))
    }

    fn add(&mut self, id: TrackId, name: String, kind: RenditionKind) -> Result<(), Error> {
        if self.renditions.contains_key(&id) || self.renditions.values().any(|r| r.name == name) {
            return Err(Error::DuplicateTrack(id));
        }
        let mut r = Rendition::new(name, kind);
        if let RenditionKind::Audio(codec) = &r.kind {
            let (init, codec_string, timescale) = match codec {
                AudioCodec::Opus { stereo } => (
                    fmp4::init_segment(&TrackConfig::Opus(OpusConfig {
                        channels: if *stereo { 2 } else { 1 },
                        pre_skip: 0,
                    }))?,
                    "opus".to_string(),
                    fmp4::OPUS_TIMESCALE,
                ),
                AudioCodec::Aac {
                    init,
                    timescale,
                    codec,
                    ..
                } => (init.clone(), codec.clone(), *timescale),
            };
            r.timescale = timescale;
            r.codec = codec_string;
            r.set_init(Bytes::from(init));
        }
        self.renditions.insert(id, r);
        Ok(())
    }

    /// A frame from [`crate::Bridge::poll_frame`]; `capture` is
    /// [`crate::Bridge::capture_time`] of its timestamp, if known.
    pub fn push_frame(
        &mut self,
        now: Instant,
        id: TrackId,
        frame: &Frame,
        capture: Option<Duration>,
    ) -> Result<(), Error> {
        let wall = capture.unwrap_or_else(|| self.wall(now));
        let r = self.renditions.get_mut(&id).ok_or(Error::UnknownTrack(id))?;
        let input = match frame {
            Frame::Video { au, new_config } => {
                if !r.kind.is_video() {
                    return Err(Error::UnknownTrack(id));
                }
                if let Some(config) = new_config {
                    let init = fmp4::init_segment(&TrackConfig::Avc(config.clone()))?;
                    r.codec = config.codec_string();
                    r.width = config.width;
                    r.height = config.height;
                    r.set_init(Bytes::from(init));
                }
                if r.init.is_none() {
                    return Ok(());
                }
                Input {
                    timestamp: au.timestamp,
                    wall,
                    keyframe: au.keyframe,
                    new_init: new_config.is_some(),
                    data: &au.data,
                }
            }
            Frame::Audio(opus) => {
                if !matches!(r.kind, RenditionKind::Audio(AudioCodec::Opus { .. })) {
                    return Err(Error::UnknownTrack(id));
                }
                Input {
                    timestamp: opus.timestamp,
                    wall,
                    keyframe: true,
                    new_init: false,
                    data: &opus.data,
                }
            }
        };
        self.feed(id, input)
    }

    /// A new configuration for a rendition added with [`AudioCodec::Aac`]
    /// (a source's AudioSpecificConfig changed mid-stream, as a new SPS
    /// does for video): the last sample of the old one is placed, the open
    /// part and segment close, the next sample starts a segment with the
    /// new init section after EXT-X-DISCONTINUITY, its timeline (and
    /// timescale) anchored anew on its capture time.
    pub fn reconfigure_audio(&mut self, id: TrackId, codec: AudioCodec) -> Result<(), Error> {
        let r = self.renditions.get_mut(&id).ok_or(Error::UnknownTrack(id))?;
        let (
            RenditionKind::Audio(AudioCodec::Aac { .. }),
            AudioCodec::Aac {
                init,
                timescale,
                codec: codec_string,
                ..
            },
        ) = (&r.kind, &codec)
        else {
            return Err(Error::UnknownTrack(id));
        };
        if *timescale == 0 {
            return Err(Error::AudioConfig("timescale 0"));
        }
        let (init, timescale, codec_string) = (Bytes::from(init.clone()), *timescale, codec_string.clone());
        r.reconfigure(&self.config, &mut self.stats, self.epoch)?;
        r.kind = RenditionKind::Audio(codec);
        r.codec = codec_string;
        r.timescale = timescale;
        r.set_init(init);
        self.changed = true;
        Ok(())
    }

    /// An audio sample for a rendition added with [`AudioCodec::Aac`]:
    /// the seam the Opus-to-AAC transcoder and AAC passthrough feed.
    pub fn push_audio_sample(
        &mut self,
        now: Instant,
        id: TrackId,
        sample: &AudioSample,
        capture: Option<Duration>,
    ) -> Result<(), Error> {
        let wall = capture.unwrap_or_else(|| self.wall(now));
        let r = self.renditions.get(&id).ok_or(Error::UnknownTrack(id))?;
        if !matches!(r.kind, RenditionKind::Audio(AudioCodec::Aac { .. })) {
            return Err(Error::UnknownTrack(id));
        }
        self.feed(
            id,
            Input {
                timestamp: sample.timestamp,
                wall,
                keyframe: true,
                new_init: false,
                data: &sample.data,
            },
        )
    }

    fn feed(&mut self, id: TrackId, input: Input<'_>) -> Result<(), Error> {
        let r = self.renditions.get_mut(&id).ok_or(Error::UnknownTrack(id))?;
        let result = r.push(&self.config, &mut self.epoch, &mut self.stats, input);
        self.changed |= r.changed;
        r.changed = false;
        result
    }

    /// The publisher of track `id` stopped: its last part and segment are
    /// closed and its playlist ends (EXT-X-ENDLIST).
    pub fn end_track(&mut self, id: TrackId) -> Result<(), Error> {
        let r = self.renditions.get_mut(&id).ok_or(Error::UnknownTrack(id))?;
        r.end(&self.config, &mut self.stats, self.epoch)?;
        self.changed = true;
        Ok(())
    }

    /// Ends every rendition.
    pub fn end(&mut self) -> Result<(), Error> {
        let ids: Vec<TrackId> = self.renditions.keys().copied().collect();
        for id in ids {
            self.end_track(id)?;
        }
        Ok(())
    }

    /// A snapshot when something changed since the last call.
    pub fn take_snapshot(&mut self) -> Option<RoomSnapshot> {
        if !self.changed {
            return None;
        }
        self.changed = false;
        self.version += 1;
        Some(self.snapshot())
    }

    pub fn snapshot(&self) -> RoomSnapshot {
        RoomSnapshot {
            config: self.config,
            session: self.session.clone(),
            renditions: self
                .renditions
                .values()
                .map(|r| (r.name.clone(), r.snapshot()))
                .collect(),
            epoch: self.epoch.map(|e| e.saturating_sub(BASE)),
            version: self.version,
            thumbnail: None,
        }
    }

    fn wall(&self, now: Instant) -> Duration {
        self.anchor.1 + now.saturating_duration_since(self.anchor.0)
    }
}

struct Input<'a> {
    timestamp: i64,
    /// Capture (or arrival) time of this sample.
    wall: Duration,
    keyframe: bool,
    new_init: bool,
    data: &'a [u8],
}

#[derive(Debug)]
struct Pending {
    dts: u64,
    data: Vec<u8>,
    keyframe: bool,
    new_init: bool,
}

#[derive(Debug, Default)]
struct PartBuilder {
    start_dts: u64,
    duration: u64,
    samples: Vec<fmp4::Sample>,
    data: Vec<u8>,
    independent: bool,
}

#[derive(Debug)]
struct OpenSegment {
    info: SegmentInfo,
    fragments: Vec<Bytes>,
    part: PartBuilder,
}

struct Rendition {
    name: String,
    kind: RenditionKind,
    codec: String,
    width: u32,
    height: u32,
    timescale: u32,
    /// Current init section number and bytes.
    init: Option<u32>,
    inits: BTreeMap<u32, Bytes>,
    /// A new init waits for the sample that starts its segment.
    origin: Option<(i64, u64)>,
    /// The next sample starts a segment with a new init section (an audio
    /// rendition reconfigured).
    restart: bool,
    last_timestamp: Option<i64>,
    last_duration: u64,
    pending: Option<Pending>,
    open: Option<OpenSegment>,
    segments: VecDeque<SegmentInfo>,
    files: BTreeMap<String, Bytes>,
    /// Files of segments that left the window, kept a while (C15, §6.2.2).
    retired: VecDeque<Vec<String>>,
    media_sequence: u64,
    next_msn: u64,
    discontinuity_sequence: u64,
    fragment_sequence: u32,
    ended: bool,
    changed: bool,
}

impl fmt::Debug for Rendition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rendition")
            .field("name", &self.name)
            .field("next_msn", &self.next_msn)
            .field("segments", &self.segments.len())
            .finish_non_exhaustive()
    }
}

/// Segments that left the window whose files stay downloadable.
const RETIRED_KEPT: usize = 4;

impl Rendition {
    fn new(name: String, kind: RenditionKind) -> Self {
        Self {
            name,
            timescale: if kind.is_video() {
                fmp4::VIDEO_TIMESCALE
            } else {
                fmp4::OPUS_TIMESCALE
            },
            kind,
            codec: String::new(),
            width: 0,
            height: 0,
            init: None,
            inits: BTreeMap::new(),
            origin: None,
            restart: false,
            last_timestamp: None,
            last_duration: 0,
            pending: None,
            open: None,
            segments: VecDeque::new(),
            files: BTreeMap::new(),
            retired: VecDeque::new(),
            media_sequence: 0,
            next_msn: 0,
            discontinuity_sequence: 0,
            fragment_sequence: 0,
            ended: false,
            changed: false,
        }
    }

    fn set_init(&mut self, bytes: Bytes) {
        let n = self.init.map_or(0, |n| n + 1);
        self.init = Some(n);
        self.files.insert(format!("init_{n}.mp4"), bytes.clone());
        self.inits.insert(n, bytes);
        self.changed = true;
    }

    fn ticks(&self, d: Duration) -> u64 {
        (d.as_nanos() * u128::from(self.timescale) / 1_000_000_000) as u64
    }

    fn secs(&self, ticks: u64) -> f64 {
        ticks as f64 / f64::from(self.timescale)
    }

    fn push(
        &mut self,
        config: &HlsConfig,
        epoch: &mut Option<Duration>,
        stats: &mut PackagerStats,
        input: Input<'_>,
    ) -> Result<(), Error> {
        if self.ended {
            return Ok(());
        }
        let dts = match self.origin {
            Some((ts0, dts0)) => {
                if self.last_timestamp.is_some_and(|last| input.timestamp <= last) {
                    stats.non_monotonic += 1;
                    debug!(rendition = %self.name, timestamp = input.timestamp, "timestamp does not advance; sample dropped");
                    return Ok(());
                }
                dts0.saturating_add_signed(input.timestamp - ts0)
            }
            None => {
                let room = *epoch.get_or_insert(input.wall);
                let offset = (input.wall + BASE).saturating_sub(room);
                let dts0 = self.ticks(offset);
                self.origin = Some((input.timestamp, dts0));
                dts0
            }
        };
        self.last_timestamp = Some(input.timestamp);
        if let Some(p) = self.pending.take() {
            let duration = dts - p.dts;
            self.place(config, stats, *epoch, p, duration)?;
        }
        self.pending = Some(Pending {
            dts,
            data: input.data.to_vec(),
            keyframe: input.keyframe,
            new_init: input.new_init || std::mem::take(&mut self.restart),
        });
        Ok(())
    }

    /// Puts sample `p`, lasting `duration` ticks, into the open part,
    /// cutting parts and segments before it as the rules say.
    fn place(
        &mut self,
        config: &HlsConfig,
        stats: &mut PackagerStats,
        epoch: Option<Duration>,
        p: Pending,
        duration: u64,
    ) -> Result<(), Error> {
        let part_ticks = self.ticks(config.part_target);
        let duration = if duration > part_ticks {
            // A frame interval longer than a part: keep parts within the
            // target (Apple stops otherwise) and leave a gap in the timeline.
            debug!(rendition = %self.name, duration, "sample longer than a part; shortened");
            part_ticks
        } else {
            duration.max(1)
        };
        self.last_duration = duration;
        let video = self.kind.is_video();
        let max_segment =
            self.ticks(Duration::from_secs(u64::from(config.target_duration())) + Duration::from_millis(400));
        let cut_segment = match &self.open {
            None => true,
            Some(open) => {
                let elapsed = p.dts - open.info.start_dts;
                let due = if video {
                    p.keyframe
                        && elapsed >= self.ticks(config.segment_target.saturating_sub(config.part_target))
                } else {
                    // Audio follows a grid of segment targets on the room
                    // clock, so its MSNs keep pace with the video's.
                    let grid = self.ticks(config.segment_target).max(1);
                    p.dts / grid > open.info.start_dts / grid
                };
                let forced = elapsed + duration > max_segment;
                if forced && !(video && p.keyframe) && !p.new_init {
                    stats.forced_cuts += 1;
                    warn!(rendition = %self.name, "no IDR within the target duration; segment cut without one");
                }
                let held = open.info.size + (open.part.data.len() + p.data.len()) as u64;
                let full = held > MAX_SEGMENT_BYTES && !open.info.parts.is_empty();
                if full && !(p.new_init || due || forced) {
                    stats.byte_limited += 1;
                    debug!(rendition = %self.name, held, "segment reached its byte bound; cut early");
                }
                p.new_init || due || forced || full
            }
        };
        if cut_segment {
            if self.open.is_some() {
                self.close_part(stats)?;
                self.close_segment(config, stats)?;
            }
            let discontinuity = p.new_init && self.next_msn > 0;
            if discontinuity {
                stats.discontinuities += 1;
            }
            let msn = self.next_msn;
            self.next_msn += 1;
            // A publisher's sender reports date its media: a track that
            // starts before the room's epoch by more than its tick rounding
            // would date before 1970, which a playlist cannot say.
            let pdt =
                (epoch.unwrap_or_default() + Duration::from_secs_f64(self.secs(p.dts))).saturating_sub(BASE);
            self.open = Some(OpenSegment {
                info: SegmentInfo {
                    msn,
                    duration: 0.0,
                    init: self.init.unwrap_or(0),
                    discontinuity,
                    program_date_time: pdt,
                    parts: Vec::new(),
                    independent: p.keyframe,
                    size: 0,
                    frames: 0,
                    start_dts: p.dts,
                },
                fragments: Vec::new(),
                part: PartBuilder {
                    start_dts: p.dts,
                    independent: p.keyframe,
                    ..Default::default()
                },
            });
        } else if let Some(open) = &self.open {
            let part = &open.part;
            let full = part.data.len() + p.data.len() > MAX_PART_BYTES;
            if full && !part.samples.is_empty() {
                stats.byte_limited += 1;
            }
            let overflow = part.duration + duration > part_ticks || full;
            let idr = video && p.keyframe && part.duration * 100 >= part_ticks * 85;
            if !part.samples.is_empty() && (overflow || idr) {
                self.close_part(stats)?;
                if let Some(open) = &mut self.open {
                    open.part = PartBuilder {
                        start_dts: p.dts,
                        independent: p.keyframe,
                        ..Default::default()
                    };
                }
            }
        }
        if let Some(open) = &mut self.open {
            let size = u32::try_from(p.data.len()).map_err(|_| Error::FragmentSize {
                described: p.data.len() as u64,
                actual: 0,
            })?;
            open.part.samples.push(fmp4::Sample {
                duration: duration as u32,
                size,
                keyframe: p.keyframe,
            });
            open.part.duration += duration;
            open.part.data.extend_from_slice(&p.data);
            open.info.frames += 1;
        }
        Ok(())
    }

    fn close_part(&mut self, stats: &mut PackagerStats) -> Result<(), Error> {
        let Some(open) = &mut self.open else {
            return Ok(());
        };
        if open.part.samples.is_empty() {
            return Ok(());
        }
        let part = std::mem::take(&mut open.part);
        self.fragment_sequence = self.fragment_sequence.wrapping_add(1);
        let bytes = Bytes::from(fmp4::fragment(
            self.fragment_sequence,
            part.start_dts,
            &part.samples,
            &part.data,
        )?);
        let index = open.info.parts.len() as u32;
        let duration = part.duration as f64 / f64::from(self.timescale);
        open.info.parts.push(PartInfo {
            index,
            duration,
            independent: part.independent,
            size: bytes.len() as u64,
        });
        open.info.duration += duration;
        open.info.size += bytes.len() as u64;
        self.files
            .insert(format!("part_{}_{index}.m4s", open.info.msn), bytes.clone());
        open.fragments.push(bytes);
        // The next part continues where this one ended.
        open.part.start_dts = part.start_dts + part.duration;
        stats.parts += 1;
        self.changed = true;
        Ok(())
    }

    fn close_segment(&mut self, config: &HlsConfig, stats: &mut PackagerStats) -> Result<(), Error> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        if open.info.parts.is_empty() {
            return Ok(());
        }
        let mut bytes = fmp4::segment_type()?;
        for f in &open.fragments {
            bytes.extend_from_slice(f);
        }
        let mut info = open.info;
        // The sum of the parts, rounded like the EXT-X-PART durations.
        info.duration = info.parts.iter().map(|p| p.duration).sum();
        info.size = bytes.len() as u64;
        self.files
            .insert(format!("seg_{}.m4s", info.msn), Bytes::from(bytes));
        self.segments.push_back(info);
        stats.segments += 1;
        self.changed = true;
        self.trim(config, stats);
        Ok(())
    }

    fn trim(&mut self, config: &HlsConfig, stats: &mut PackagerStats) {
        loop {
            let total: f64 = self.segments.iter().map(|s| s.duration).sum();
            let bytes: u64 = self.segments.iter().map(|s| s.size).sum();
            let Some(first) = self.segments.front() else {
                return;
            };
            let over_bytes = bytes > MAX_WINDOW_BYTES && self.segments.len() > 1;
            let by_time = self.segments.len() > config.window_segments
                && total - first.duration >= config.dvr_window.as_secs_f64();
            if !(by_time || over_bytes) {
                break;
            }
            if !by_time {
                stats.byte_limited += 1;
                debug!(rendition = %self.name, bytes, "window reached its byte bound; oldest segment trimmed");
            }
            let Some(seg) = self.segments.pop_front() else {
                return;
            };
            self.media_sequence = seg.msn + 1;
            if seg.discontinuity {
                self.discontinuity_sequence += 1;
            }
            let mut names = vec![format!("seg_{}.m4s", seg.msn)];
            names.extend(
                seg.parts
                    .iter()
                    .map(|p| format!("part_{}_{}.m4s", seg.msn, p.index)),
            );
            self.retired.push_back(names);
        }
        while self.retired.len() > RETIRED_KEPT {
            for name in self.retired.pop_front().unwrap_or_default() {
                self.files.remove(&name);
            }
        }
        // Init sections nothing refers to any more.
        let oldest = self.segments.front().map(|s| s.init).unwrap_or(u32::MAX);
        let keep_from = oldest.saturating_sub(1);
        let stale: Vec<u32> = self.inits.range(..keep_from).map(|(&n, _)| n).collect();
        for n in stale {
            self.inits.remove(&n);
            self.files.remove(&format!("init_{n}.mp4"));
        }
    }

    /// Closes what the current configuration holds (its last sample lasts
    /// as long as the one before) and restarts the timeline: the next
    /// sample is placed at its capture time, after a discontinuity.
    fn reconfigure(
        &mut self,
        config: &HlsConfig,
        stats: &mut PackagerStats,
        epoch: Option<Duration>,
    ) -> Result<(), Error> {
        if self.ended {
            return Ok(());
        }
        self.flush_pending(config, stats, epoch)?;
        self.close_part(stats)?;
        self.close_segment(config, stats)?;
        self.origin = None;
        self.last_timestamp = None;
        self.last_duration = 0;
        self.restart = true;
        Ok(())
    }

    /// Places the sample held back (its duration unknown: the previous
    /// one's, or 20 ms).
    fn flush_pending(
        &mut self,
        config: &HlsConfig,
        stats: &mut PackagerStats,
        epoch: Option<Duration>,
    ) -> Result<(), Error> {
        if let Some(p) = self.pending.take() {
            let duration = if self.last_duration > 0 {
                self.last_duration
            } else {
                self.ticks(Duration::from_millis(20))
            };
            // The stream's last frame closes nothing new: it joins the open part.
            let p = Pending {
                keyframe: p.keyframe && self.open.is_none(),
                new_init: p.new_init && self.open.is_none(),
                ..p
            };
            self.place(config, stats, epoch, p, duration)?;
        }
        Ok(())
    }

    fn end(
        &mut self,
        config: &HlsConfig,
        stats: &mut PackagerStats,
        epoch: Option<Duration>,
    ) -> Result<(), Error> {
        if self.ended {
            return Ok(());
        }
        self.flush_pending(config, stats, epoch)?;
        self.close_part(stats)?;
        self.close_segment(config, stats)?;
        self.ended = true;
        self.changed = true;
        Ok(())
    }

    fn snapshot(&self) -> RenditionSnapshot {
        let (mut bits, mut secs, mut peak, mut frames) = (0.0, 0.0, 0.0f64, 0u64);
        for s in &self.segments {
            bits += s.size as f64 * 8.0;
            secs += s.duration;
            frames += s.frames;
            if s.duration > 0.0 {
                peak = peak.max(s.size as f64 * 8.0 / s.duration);
            }
        }
        if secs == 0.0
            && let Some(open) = &self.open
            && open.info.duration > 0.0
        {
            bits = open.info.size as f64 * 8.0;
            secs = open.info.duration;
            frames = open.info.frames;
            peak = bits / secs;
        }
        let average = if secs > 0.0 { bits / secs } else { 0.0 };
        RenditionSnapshot {
            name: self.name.clone(),
            kind: self.kind.clone(),
            codec: self.codec.clone(),
            width: self.width,
            height: self.height,
            timescale: self.timescale,
            media_sequence: self
                .segments
                .front()
                .map_or(self.next_msn.saturating_sub(1), |s| s.msn),
            discontinuity_sequence: self.discontinuity_sequence,
            segments: self.segments.iter().cloned().collect(),
            open: self.open.as_ref().map(|o| o.info.clone()),
            ended: self.ended,
            files: self.files.clone(),
            peak_bandwidth: peak.ceil() as u64,
            average_bandwidth: average.ceil() as u64,
            frame_rate: if secs > 0.0 { frames as f64 / secs } else { 0.0 },
        }
    }
}
