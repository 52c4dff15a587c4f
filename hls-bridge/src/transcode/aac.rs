//! Opus → AAC-LC stereo, 48 kHz (HLS authoring spec: AAC-LC is the audio
//! every Apple player takes; Opus stays as a second rendition).
//!
//! libopus decodes to stereo PCM, FDK AAC encodes 1024-sample access units.
//! The timeline is the Opus track's 48 kHz RTP timeline: an access unit's
//! timestamp is the time of its first decoded sample, so AAC and video stay
//! in sync. Gaps are concealed (libopus PLC, in-band FEC when the next packet
//! carries it) so timestamps stay continuous; a gap longer than
//! [`AacTranscoderConfig::max_concealment`] (a publisher that paused, or a
//! new RTP timeline) restarts the encoder and flags the next access unit as a
//! discontinuity.

use std::collections::VecDeque;

use fdk_aac::enc::{AudioObjectType, BitRate, ChannelMode, Encoder, EncoderParams, Transport};
use tracing::debug;

use crate::Error;
use crate::fmp4::AacConfig;
use crate::opus::{OpusFrame, parse_toc};

/// Opus always decodes at 48 kHz here (RFC 7587 §4.1: the RTP clock).
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples per channel in one AAC-LC access unit (ISO/IEC 14496-3 §4.5.1).
pub const AAC_FRAME: u32 = 1024;
const CHANNELS: usize = 2;
/// RFC 6716 §3.2.5: at most 120 ms per Opus packet.
const MAX_OPUS_SAMPLES: usize = 5760;
/// libopus decodes (and conceals) in multiples of 2.5 ms.
const OPUS_GRANULE: usize = 120;

/// Knobs of the transcoder.
#[derive(Debug, Clone, Copy)]
pub struct AacTranscoderConfig {
    /// Constant AAC bitrate in bits/s (stereo).
    pub bitrate: u32,
    /// The longest gap (48 kHz samples) filled with concealment; a longer
    /// one starts a new timeline.
    pub max_concealment: u32,
}

impl Default for AacTranscoderConfig {
    fn default() -> Self {
        Self {
            bitrate: 128_000,
            max_concealment: 2 * SAMPLE_RATE,
        }
    }
}

/// One AAC-LC access unit: one fMP4 sample of [`AAC_FRAME`] samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AacAccessUnit {
    /// 48 kHz, on the Opus track's (unwrapped) RTP timeline.
    pub timestamp: i64,
    /// Raw AAC (no ADTS header).
    pub data: Vec<u8>,
    /// The timeline restarted before this access unit (a gap too long to
    /// conceal): the segmenter starts a new segment with a discontinuity.
    pub discontinuity: bool,
}

/// What the transcoder did with its input.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AacTranscoderStats {
    pub opus_frames: u64,
    pub access_units: u64,
    /// Samples (per channel) synthesised by packet-loss concealment or FEC.
    pub concealed_samples: u64,
    /// Frames entirely before the current position (late or duplicate).
    pub late_frames: u64,
    /// Packets libopus refused; concealed instead.
    pub undecodable_frames: u64,
    /// Gaps too long to conceal: timeline restarts.
    pub restarts: u64,
}

/// Opus frames in, AAC access units out. Feed frames in timestamp order
/// with [`OpusToAac::handle_frame`], drain [`OpusToAac::poll_access_unit`].
pub struct OpusToAac {
    config: AacTranscoderConfig,
    aac: AacConfig,
    decoder: opus::Decoder,
    encoder: Encoder,
    /// Encoder delay in samples: the first decoded sample of access unit
    /// `n` is input sample `n * 1024 - delay` (FDK's `nDelay`).
    delay: i64,
    max_out_bytes: usize,
    /// The timeline position of the next Opus sample expected.
    next: Option<i64>,
    /// Timestamp of the first sample fed to the current encoder.
    origin: i64,
    /// Access units produced by the current encoder.
    produced: i64,
    /// Interleaved stereo PCM not yet given to the encoder.
    pcm: Vec<i16>,
    scratch: Vec<i16>,
    discontinuity: bool,
    out: VecDeque<AacAccessUnit>,
    stats: AacTranscoderStats,
}

impl std::fmt::Debug for OpusToAac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusToAac")
            .field("config", &self.config)
            .field("next", &self.next)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl OpusToAac {
    pub fn new(config: AacTranscoderConfig) -> Result<Self, Error> {
        let decoder = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Stereo).map_err(opus_error)?;
        let (encoder, info) = new_encoder(config.bitrate)?;
        let asc = info.confBuf[..(info.confSize as usize).min(info.confBuf.len())].to_vec();
        Ok(Self {
            aac: AacConfig {
                audio_specific_config: asc,
                channels: CHANNELS as u8,
                sample_rate: SAMPLE_RATE,
                bitrate: config.bitrate,
            },
            config,
            decoder,
            encoder,
            delay: i64::from(info.nDelay),
            max_out_bytes: (info.maxOutBufBytes as usize).max(2048),
            next: None,
            origin: 0,
            produced: 0,
            pcm: Vec::with_capacity(2 * MAX_OPUS_SAMPLES * CHANNELS),
            scratch: vec![0; MAX_OPUS_SAMPLES * CHANNELS],
            discontinuity: false,
            out: VecDeque::new(),
            stats: AacTranscoderStats::default(),
        })
    }

    /// The `mp4a`/`esds` configuration (AudioSpecificConfig) of the output.
    pub fn aac_config(&self) -> &AacConfig {
        &self.aac
    }

    /// Samples by which the encoder delays its input; access unit
    /// timestamps already account for it.
    pub fn encoder_delay(&self) -> u32 {
        self.delay as u32
    }

    pub fn stats(&self) -> AacTranscoderStats {
        self.stats
    }

    /// One depacketized Opus frame (see [`crate::Frame::Audio`]).
    pub fn handle_frame(&mut self, frame: &OpusFrame) -> Result<(), Error> {
        self.handle_opus(frame.timestamp, &frame.data)
    }

    /// One Opus packet with its 48 kHz timestamp. A packet libopus cannot
    /// decode is concealed (the timeline stays whole) and reported as `Err`.
    pub fn handle_opus(&mut self, timestamp: i64, packet: &[u8]) -> Result<(), Error> {
        let duration = match parse_toc(packet) {
            Ok((duration, _)) => duration as usize,
            Err(reason) => {
                self.stats.undecodable_frames += 1;
                debug!(timestamp, reason, "undecodable Opus packet dropped");
                return Err(Error::Codec {
                    codec: "opus",
                    reason: reason.to_string(),
                });
            }
        };
        self.stats.opus_frames += 1;
        let next = match self.next {
            Some(next) => next,
            None => {
                self.origin = timestamp;
                self.next = Some(timestamp);
                timestamp
            }
        };
        let mut gap = timestamp - next;
        // Far off either way: a pause, or the sender started a new RTP timeline.
        if gap.unsigned_abs() > u64::from(self.config.max_concealment) {
            debug!(
                timestamp,
                expected = next,
                gap,
                "audio gap too long to conceal; new timeline"
            );
            self.restart(timestamp)?;
            gap = 0;
        } else if gap <= -(duration as i64) {
            self.stats.late_frames += 1;
            debug!(timestamp, expected = next, "late or duplicate Opus frame dropped");
            return Ok(());
        } else if gap > 0 {
            self.conceal(gap as usize, Some(packet), duration)?;
        }
        // Part of this frame may overlap what was already produced.
        let skip = usize::try_from(-gap).unwrap_or(0);
        let result = self.decode(packet, duration, skip);
        self.encode_ready()?;
        result
    }

    /// End of stream: pads with silence until every sample fed so far has
    /// left the encoder.
    pub fn finish(&mut self) -> Result<(), Error> {
        if self.next.is_none() {
            return Ok(());
        }
        let frame = AAC_FRAME as usize * CHANNELS;
        // Everything fed must reach sample index fed + delay in the output.
        let pending = self.pcm.len() / CHANNELS + self.delay as usize;
        let pad = pending.div_ceil(AAC_FRAME as usize) * frame - self.pcm.len();
        self.pcm.extend(std::iter::repeat_n(0, pad));
        self.encode_ready()?;
        self.next = None;
        Ok(())
    }

    /// The next access unit, in timestamp order.
    pub fn poll_access_unit(&mut self) -> Option<AacAccessUnit> {
        self.out.pop_front()
    }

    fn restart(&mut self, timestamp: i64) -> Result<(), Error> {
        self.stats.restarts += 1;
        self.finish()?;
        self.pcm.clear();
        let (encoder, _) = new_encoder(self.config.bitrate)?;
        self.encoder = encoder;
        self.decoder.reset_state().map_err(opus_error)?;
        self.origin = timestamp;
        self.produced = 0;
        self.next = Some(timestamp);
        self.discontinuity = true;
        Ok(())
    }

    /// Fills `gap` samples: packet-loss concealment, then (for the last
    /// frame's worth) the in-band FEC copy that `following` may carry.
    fn conceal(&mut self, gap: usize, following: Option<&[u8]>, following_len: usize) -> Result<(), Error> {
        self.stats.concealed_samples += gap as u64;
        let (plc, fec) = match following {
            Some(packet) if gap >= following_len && following_len.is_multiple_of(OPUS_GRANULE) => {
                (gap - following_len, Some(packet))
            }
            _ => (gap, None),
        };
        let mut left = plc;
        while left > 0 {
            let chunk = left.min(960).next_multiple_of(OPUS_GRANULE);
            let n = self
                .decoder
                .decode(&[], &mut self.scratch[..chunk * CHANNELS], false)
                .map_err(opus_error)?;
            let keep = n.min(left);
            self.pcm.extend_from_slice(&self.scratch[..keep * CHANNELS]);
            left -= keep;
            if n == 0 {
                // libopus produced nothing: pad with silence instead.
                self.pcm.extend(std::iter::repeat_n(0, left * CHANNELS));
                left = 0;
            }
        }
        if let Some(packet) = fec {
            let n = match self
                .decoder
                .decode(packet, &mut self.scratch[..following_len * CHANNELS], true)
            {
                Ok(n) => n.min(following_len),
                Err(_) => 0,
            };
            self.pcm.extend_from_slice(&self.scratch[..n * CHANNELS]);
            self.pcm
                .extend(std::iter::repeat_n(0, (following_len - n) * CHANNELS));
        }
        self.advance(gap);
        Ok(())
    }

    /// Decodes `packet` (`duration` samples), dropping its first `skip`.
    fn decode(&mut self, packet: &[u8], duration: usize, skip: usize) -> Result<(), Error> {
        match self.decoder.decode(packet, &mut self.scratch, false) {
            Ok(n) => {
                let n = n.min(duration);
                let skip = skip.min(n);
                self.pcm
                    .extend_from_slice(&self.scratch[skip * CHANNELS..n * CHANNELS]);
                // A short decode still advances by the TOC's duration.
                self.pcm.extend(std::iter::repeat_n(0, (duration - n) * CHANNELS));
                self.advance(duration - skip);
                Ok(())
            }
            Err(error) => {
                self.stats.undecodable_frames += 1;
                debug!(%error, "undecodable Opus packet; concealed");
                self.conceal(duration - skip, None, 0)?;
                Err(opus_error(error))
            }
        }
    }

    fn advance(&mut self, samples: usize) {
        if let Some(next) = &mut self.next {
            *next += samples as i64;
        }
    }

    fn encode_ready(&mut self) -> Result<(), Error> {
        let frame = AAC_FRAME as usize * CHANNELS;
        let mut consumed = 0;
        let mut buf = vec![0u8; self.max_out_bytes];
        while self.pcm.len() - consumed >= frame {
            let info = self
                .encoder
                .encode(&self.pcm[consumed..consumed + frame], &mut buf)
                .map_err(|e| Error::Codec {
                    codec: "fdk-aac",
                    reason: e.to_string(),
                })?;
            if info.input_consumed == 0 && info.output_size == 0 {
                // Invariant of FDK's raw LC mode: a full frame in is consumed.
                break;
            }
            consumed += info.input_consumed;
            if info.output_size > 0 {
                self.out.push_back(AacAccessUnit {
                    timestamp: self.origin - self.delay + self.produced * i64::from(AAC_FRAME),
                    data: buf[..info.output_size].to_vec(),
                    discontinuity: std::mem::take(&mut self.discontinuity),
                });
                self.produced += 1;
                self.stats.access_units += 1;
            }
        }
        self.pcm.drain(..consumed);
        Ok(())
    }
}

fn new_encoder(bitrate: u32) -> Result<(Encoder, fdk_aac::enc::InfoStruct), Error> {
    let fdk = |e: fdk_aac::enc::EncoderError| Error::Codec {
        codec: "fdk-aac",
        reason: e.to_string(),
    };
    let encoder = Encoder::new(EncoderParams {
        bit_rate: BitRate::Cbr(bitrate),
        sample_rate: SAMPLE_RATE,
        transport: Transport::Raw,
        channels: ChannelMode::Stereo,
        audio_object_type: AudioObjectType::Mpeg4LowComplexity,
    })
    .map_err(fdk)?;
    let info = encoder.info().map_err(fdk)?;
    if info.frameLength != AAC_FRAME {
        return Err(Error::Codec {
            codec: "fdk-aac",
            reason: format!("frame length {} instead of {AAC_FRAME}", info.frameLength),
        });
    }
    Ok((encoder, info))
}

fn opus_error(e: opus::Error) -> Error {
    Error::Codec {
        codec: "opus",
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silence_packet(enc: &mut opus::Encoder) -> Vec<u8> {
        enc.encode_vec(&[0i16; 960 * 2], 4000).unwrap()
    }

    fn encoder() -> opus::Encoder {
        opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio).unwrap()
    }

    fn drain(t: &mut OpusToAac) -> Vec<AacAccessUnit> {
        std::iter::from_fn(|| t.poll_access_unit()).collect()
    }

    #[test]
    fn audio_specific_config_is_aac_lc_48k_stereo() {
        let t = OpusToAac::new(AacTranscoderConfig::default()).unwrap();
        // AOT 2 (5 bits), frequency index 3 = 48 kHz (4), channels 2 (4), 3 zero bits.
        assert_eq!(t.aac_config().audio_specific_config, vec![0x11, 0x90]);
        assert_eq!(t.aac_config().codec_string(), "mp4a.40.2");
    }

    #[test]
    fn timestamps_continue_across_loss_and_restart_after_long_gap() {
        let mut opus = encoder();
        let mut t = OpusToAac::new(AacTranscoderConfig::default()).unwrap();
        let start = 1_000_000i64;
        // 1 s of 20 ms frames, frames 10..13 lost.
        for i in 0..50 {
            let p = silence_packet(&mut opus);
            if (10..13).contains(&i) {
                continue;
            }
            t.handle_opus(start + i * 960, &p).unwrap();
        }
        // A duplicate and a late frame change nothing.
        let p = silence_packet(&mut opus);
        t.handle_opus(start + 49 * 960, &p).unwrap();
        t.handle_opus(start, &p).unwrap();
        assert_eq!(t.stats().late_frames, 2);
        assert_eq!(t.stats().concealed_samples, 3 * 960);
        let aus = drain(&mut t);
        // 48,000 samples in: 46 full frames of 1024.
        assert_eq!(aus.len(), 48_000 / 1024);
        let delay = i64::from(t.encoder_delay());
        for (n, au) in aus.iter().enumerate() {
            assert_eq!(au.timestamp, start - delay + n as i64 * 1024);
            assert!(!au.discontinuity);
            assert!(!au.data.is_empty());
        }
        // A 10 s pause: a new timeline that starts at the new packet.
        let resume = start + 11 * 48_000;
        for i in 0..10 {
            t.handle_opus(resume + i * 960, &silence_packet(&mut opus))
                .unwrap();
        }
        let aus = drain(&mut t);
        let first_new = aus.iter().position(|a| a.discontinuity).unwrap();
        assert_eq!(aus[first_new].timestamp, resume - delay);
        assert!(aus[..first_new].iter().all(|a| a.timestamp < resume - delay));
        // The old timeline was flushed: its last unit reaches its end.
        let last_old = aus[first_new - 1].timestamp;
        assert!(last_old + 1024 >= start + 48_000);
        assert_eq!(t.stats().restarts, 1);
    }

    #[test]
    fn mono_opus_becomes_stereo_aac() {
        let mut mono = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let mut t = OpusToAac::new(AacTranscoderConfig::default()).unwrap();
        for i in 0..20 {
            let p = mono.encode_vec(&[0i16; 960], 4000).unwrap();
            assert_eq!(parse_toc(&p).map(|(_, stereo)| stereo), Ok(false));
            t.handle_opus(i * 960, &p).unwrap();
        }
        assert_eq!(drain(&mut t).len(), 20 * 960 / 1024);
        assert_eq!(t.aac_config().channels, 2);
    }

    #[test]
    fn garbage_is_an_error_and_keeps_the_timeline() {
        let mut opus = encoder();
        let mut t = OpusToAac::new(AacTranscoderConfig::default()).unwrap();
        t.handle_opus(0, &silence_packet(&mut opus)).unwrap();
        assert!(t.handle_opus(960, &[]).is_err());
        // A code-3 packet whose frame count promises more than it holds.
        assert!(t.handle_opus(960, &[(31 << 3) | 3, 0x83, 1, 2]).is_err());
        for i in 2..60 {
            t.handle_opus(i * 960, &silence_packet(&mut opus)).unwrap();
        }
        let aus = drain(&mut t);
        let delay = i64::from(t.encoder_delay());
        for (n, au) in aus.iter().enumerate() {
            assert_eq!(au.timestamp, -delay + n as i64 * 1024);
        }
        assert_eq!(aus.len(), 60 * 960 / 1024);
    }
}
