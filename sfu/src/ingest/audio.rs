//! Audio of an ingest to Opus for WebRTC viewers: AAC (RTMP encoders,
//! RTSP cameras) decoded by FDK, G.711 (RTSP cameras) by its table
//! (ITU-T G.711); then one path: a linear resampler brings any rate to
//! 48 kHz stereo, libopus encodes 20 ms frames. Opus timestamps count
//! samples from the first frame's, re-anchored when the source's clock
//! jumps.

use std::sync::Arc;

use fdk_aac::dec::{Decoder, Transport};

use super::Refusal;

/// Opus's clock and the rate it is encoded at (RFC 7587 §4.1).
const RATE: u32 = 48_000;
/// 20 ms at 48 kHz.
const FRAME: usize = 960;
/// Largest decoded frame FDK gives: 2,048 samples (HE-AAC) × 8 channels.
const MAX_PCM: usize = 2048 * 8;
/// G.711's one rate (ITU-T G.711 §1; RFC 3551 §4.5.14).
const G711_RATE: u32 = 8000;
/// Largest G.711 frame taken: 1 s of samples (cameras send 20-40 ms).
const MAX_G711: usize = G711_RATE as usize;
/// A jump of the source's timestamps by more than this restarts the
/// Opus timeline there (a gap, or a clock the source reset).
const JUMP_MS: i64 = 200;
const BITRATE: i32 = 96_000;
/// Largest Opus packet libopus writes (RFC 6716 §3.2.5).
const MAX_OPUS: usize = 1275;

/// One Opus packet: its RTP timestamp (48 kHz) and payload.
pub struct OpusPacket {
    pub rtp_ts: u32,
    pub payload: Vec<u8>,
}

/// G.711's two companding laws (ITU-T G.711 Tables 1 and 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    /// PCMU.
    Mu,
    /// PCMA.
    A,
}

/// An audio stream's decoder in front of the shared Opus stage.
pub enum ToOpus {
    /// With the AudioSpecificConfig it was opened with (LL-HLS carries
    /// the AAC itself).
    Aac(Box<Decoder>, PcmToOpus, Arc<[u8]>),
    G711(Law, PcmToOpus),
}

impl ToOpus {
    /// A transcoder for the AAC stream the AudioSpecificConfig `asc` describes.
    pub fn aac(asc: &[u8]) -> Result<ToOpus, Refusal> {
        let mut decoder = Decoder::new(Transport::Raw);
        decoder
            .config_raw(asc)
            .map_err(|e| Refusal::Codec(format!("AAC configuration FDK refuses: {}", e.message())))?;
        Ok(ToOpus::Aac(Box::new(decoder), PcmToOpus::new()?, Arc::from(asc)))
    }

    /// The AudioSpecificConfig of an AAC stream (`None` for G.711).
    pub fn audio_specific_config(&self) -> Option<&Arc<[u8]>> {
        match self {
            ToOpus::Aac(_, _, asc) => Some(asc),
            ToOpus::G711(..) => None,
        }
    }

    /// A transcoder for G.711 (8 kHz mono).
    pub fn g711(law: Law) -> Result<ToOpus, Refusal> {
        Ok(ToOpus::G711(law, PcmToOpus::new()?))
    }

    /// One access unit (AAC) or run of samples (G.711) at `ts_ms`; the
    /// Opus packets it completes go to `out`.
    pub fn handle_frame(&mut self, ts_ms: u32, frame: &[u8], out: &mut Vec<OpusPacket>) {
        match self {
            ToOpus::Aac(decoder, opus, _) => {
                let pcm = &mut opus.pcm;
                pcm.resize(MAX_PCM, 0);
                if decoder.fill(frame).is_err() || decoder.decode_frame(pcm).is_err() {
                    opus.errors += 1;
                    return;
                }
                let info = decoder.stream_info();
                let (Ok(rate), Ok(channels), Ok(size)) = (
                    u32::try_from(info.sampleRate),
                    usize::try_from(info.numChannels),
                    usize::try_from(info.frameSize),
                ) else {
                    opus.errors += 1;
                    return;
                };
                if channels == 0 || size * channels > MAX_PCM {
                    opus.errors += 1;
                    return;
                }
                opus.pcm.truncate(size * channels);
                opus.encode(ts_ms, rate, channels, out);
            }
            ToOpus::G711(law, opus) => {
                if frame.len() > MAX_G711 {
                    opus.errors += 1;
                    return;
                }
                opus.pcm.clear();
                opus.pcm.extend(frame.iter().map(|&b| g711(*law, b)));
                opus.encode(ts_ms, G711_RATE, 1, out);
            }
        }
    }

    /// Frames that did not decode or encode (skipped, concealed by silence).
    pub fn errors(&self) -> u64 {
        match self {
            ToOpus::Aac(_, opus, _) | ToOpus::G711(_, opus) => opus.errors,
        }
    }
}

/// Interleaved PCM of any rate and channel count to 20 ms Opus frames.
pub struct PcmToOpus {
    encoder: opus::Encoder,
    resampler: Option<Resampler>,
    /// The decoded frame being encoded.
    pcm: Vec<i16>,
    stereo: Vec<i16>,
    resampled: Vec<i16>,
    /// Interleaved stereo 48 kHz samples waiting for a whole frame.
    pending: Vec<i16>,
    /// (48 kHz timestamp of `pending`'s first sample, the source timestamp
    /// in ms the next frame is expected at).
    clock: Option<(u32, i64)>,
    errors: u64,
}

impl PcmToOpus {
    fn new() -> Result<PcmToOpus, Refusal> {
        let mut encoder = opus::Encoder::new(RATE, opus::Channels::Stereo, opus::Application::Audio)
            .map_err(|e| Refusal::Codec(format!("Opus encoder: {e}")))?;
        let _ = encoder.set_bitrate(opus::Bitrate::Bits(BITRATE));
        Ok(PcmToOpus {
            encoder,
            resampler: None,
            pcm: Vec::with_capacity(MAX_PCM),
            stereo: Vec::new(),
            resampled: Vec::new(),
            pending: Vec::new(),
            clock: None,
            errors: 0,
        })
    }

    /// Encodes `self.pcm` (`channels` interleaved at `rate`, taken at `ts_ms`).
    fn encode(&mut self, ts_ms: u32, rate: u32, channels: usize, out: &mut Vec<OpusPacket>) {
        if rate == 0 || channels == 0 {
            self.errors += 1;
            return;
        }
        let size = self.pcm.len() / channels;
        let ts = i64::from(ts_ms);
        match self.clock {
            Some((_, expected)) if (ts - expected).abs() <= JUMP_MS => {}
            _ => {
                // Start (or restart) the Opus timeline at this frame.
                self.pending.clear();
                self.clock = Some(((ts_ms).wrapping_mul(RATE / 1000), ts));
            }
        }
        if let Some((_, expected)) = &mut self.clock {
            *expected = ts + (size as i64 * 1000 / i64::from(rate));
        }
        // Down- or up-mix to stereo: the first two channels, or mono twice.
        self.stereo.clear();
        for f in self.pcm.chunks_exact(channels) {
            let (l, r) = (f[0], if channels > 1 { f[1] } else { f[0] });
            self.stereo.extend_from_slice(&[l, r]);
        }
        if rate == RATE {
            self.pending.extend_from_slice(&self.stereo);
        } else {
            let r = self.resampler.get_or_insert_with(|| Resampler::new(rate));
            if r.rate != rate {
                *r = Resampler::new(rate);
            }
            self.resampled.clear();
            r.push(&self.stereo, &mut self.resampled);
            self.pending.extend_from_slice(&self.resampled);
        }
        let mut used = 0;
        while self.pending.len() - used >= FRAME * 2 {
            let Some((ts48, _)) = &mut self.clock else { break };
            let frame = &self.pending[used..used + FRAME * 2];
            match self.encoder.encode_vec(frame, MAX_OPUS) {
                Ok(payload) => out.push(OpusPacket {
                    rtp_ts: *ts48,
                    payload,
                }),
                Err(_) => self.errors += 1,
            }
            *ts48 = ts48.wrapping_add(FRAME as u32);
            used += FRAME * 2;
        }
        self.pending.drain(..used);
    }
}

/// One G.711 code word to linear 16-bit PCM (ITU-T G.711 §3 and §4; the
/// formula behind its tables).
fn g711(law: Law, code: u8) -> i16 {
    match law {
        Law::Mu => {
            let c = !code;
            let exponent = (c >> 4) & 0x07;
            let magnitude = ((i16::from(c & 0x0f) << 3) + 0x84) << exponent;
            let v = magnitude - 0x84;
            if c & 0x80 != 0 { -v } else { v }
        }
        Law::A => {
            let c = code ^ 0x55;
            let exponent = (c >> 4) & 0x07;
            let mantissa = i16::from(c & 0x0f) << 4;
            let v = match exponent {
                0 => mantissa + 8,
                e => (mantissa + 0x108) << (e - 1),
            };
            if c & 0x80 != 0 { v } else { -v }
        }
    }
}

/// Linear interpolation of interleaved stereo from `rate` to 48 kHz; keeps
/// the last input sample and the fractional position across calls.
struct Resampler {
    rate: u32,
    /// Input samples per output sample.
    step: f64,
    /// Position of the next output sample, in input samples, where 0 is
    /// `prev` and 1 the first sample of the next input.
    pos: f64,
    prev: [f64; 2],
}

impl Resampler {
    fn new(rate: u32) -> Resampler {
        Resampler {
            rate,
            step: f64::from(rate) / f64::from(RATE),
            pos: 1.0,
            prev: [0.0; 2],
        }
    }

    fn push(&mut self, input: &[i16], out: &mut Vec<i16>) {
        let n = input.len() / 2;
        if n == 0 {
            return;
        }
        let at = |i: usize, c: usize, prev: &[f64; 2]| {
            if i == 0 {
                prev[c]
            } else {
                f64::from(input[(i - 1) * 2 + c])
            }
        };
        while self.pos <= n as f64 {
            let i = self.pos.floor() as usize;
            let frac = self.pos - i as f64;
            for c in 0..2 {
                let a = at(i, c, &self.prev);
                let b = if i < n { at(i + 1, c, &self.prev) } else { a };
                out.push((a + (b - a) * frac).round() as i16);
            }
            self.pos += self.step;
        }
        self.pos -= n as f64;
        self.prev = [f64::from(input[(n - 1) * 2]), f64::from(input[(n - 1) * 2 + 1])];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g711_decodes_to_the_reference_values() {
        // ITU-T G.711 Table 2 (µ-law) and Table 1 (A-law), and the sign bit.
        assert_eq!(g711(Law::Mu, 0xff), 0);
        assert_eq!(g711(Law::Mu, 0x7f), 0);
        assert_eq!(g711(Law::Mu, 0x80), 32_124);
        assert_eq!(g711(Law::Mu, 0x00), -32_124);
        assert_eq!(g711(Law::Mu, 0xef), 132);
        assert_eq!(g711(Law::A, 0xd5), 8);
        assert_eq!(g711(Law::A, 0x55), -8);
        assert_eq!(g711(Law::A, 0xaa), 32_256);
        assert_eq!(g711(Law::A, 0x2a), -32_256);
        // Monotone over each half of the code space.
        let mu: Vec<i16> = (0..=0x7fu8).rev().map(|c| g711(Law::Mu, c | 0x80)).collect();
        assert!(mu.windows(2).all(|w| w[0] < w[1]), "{mu:?}");
    }

    #[test]
    fn g711_at_8_khz_becomes_20_ms_opus_frames_at_48_khz() {
        let mut t = ToOpus::g711(Law::Mu).unwrap();
        let mut out = Vec::new();
        // 1 s of a 440 Hz tone in 20 ms (160-sample) packets.
        for k in 0..50u32 {
            let frame: Vec<u8> = (0..160)
                .map(|i| {
                    let t = f64::from(k * 160 + i) / 8000.0;
                    mu_law((t * 440.0 * std::f64::consts::TAU).sin() * 8000.0)
                })
                .collect();
            t.handle_frame(k * 20, &frame, &mut out);
        }
        assert_eq!(t.errors(), 0);
        assert!((48..=50).contains(&out.len()), "{} packets", out.len());
        assert!(out.windows(2).all(|w| w[1].rtp_ts - w[0].rtp_ts == 960));
        assert!(out.iter().all(|p| !p.payload.is_empty()));
    }

    /// The µ-law code nearest to `x` (the encoder's side, for the test).
    fn mu_law(x: f64) -> u8 {
        (0..=255u8)
            .min_by_key(|&c| (f64::from(g711(Law::Mu, c)) - x).abs() as i64)
            .unwrap_or(0xff)
    }

    #[test]
    fn resamples_44100_to_48000_keeping_the_count_and_the_tone() {
        let mut r = Resampler::new(44_100);
        let mut out = Vec::new();
        let mut phase = 0.0f64;
        for _ in 0..100 {
            let block: Vec<i16> = (0..1024)
                .flat_map(|_| {
                    phase += 2.0 * std::f64::consts::PI * 440.0 / 44_100.0;
                    let s = (phase.sin() * 10_000.0) as i16;
                    [s, s]
                })
                .collect();
            r.push(&block, &mut out);
        }
        let expected = 102_400.0 * 48_000.0 / 44_100.0;
        assert!(
            (out.len() as f64 / 2.0 - expected).abs() < 2.0,
            "{} samples",
            out.len() / 2
        );
        // The tone survives: the output's zero crossings give 440 Hz.
        let left: Vec<i16> = out.iter().step_by(2).copied().collect();
        let crossings = left.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        let seconds = left.len() as f64 / 48_000.0;
        assert!((crossings as f64 / 2.0 / seconds - 440.0).abs() < 5.0);
    }
}
