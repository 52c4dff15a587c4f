//! AAC (as RTMP encoders send it) to Opus for WebRTC viewers: FDK AAC
//! decodes, a linear resampler brings any rate to 48 kHz stereo, libopus
//! encodes 20 ms frames. Opus timestamps count samples from the first
//! frame's, re-anchored when the encoder's clock jumps.

use fdk_aac::dec::{Decoder, Transport};

use super::Refusal;

/// Opus's clock and the rate it is encoded at (RFC 7587 §4.1).
const RATE: u32 = 48_000;
/// 20 ms at 48 kHz.
const FRAME: usize = 960;
/// Largest decoded frame FDK gives: 2,048 samples (HE-AAC) × 8 channels.
const MAX_PCM: usize = 2048 * 8;
/// A jump of the encoder's timestamps by more than this restarts the
/// Opus timeline there (a gap, or a clock the encoder reset).
const JUMP_MS: i64 = 200;
const BITRATE: i32 = 96_000;
/// Largest Opus packet libopus writes (RFC 6716 §3.2.5).
const MAX_OPUS: usize = 1275;

/// One Opus packet: its RTP timestamp (48 kHz) and payload.
pub struct OpusPacket {
    pub rtp_ts: u32,
    pub payload: Vec<u8>,
}

pub struct AacToOpus {
    decoder: Decoder,
    encoder: opus::Encoder,
    resampler: Option<Resampler>,
    pcm: Vec<i16>,
    stereo: Vec<i16>,
    resampled: Vec<i16>,
    /// Interleaved stereo 48 kHz samples waiting for a whole frame.
    pending: Vec<i16>,
    /// (48 kHz timestamp of `pending`'s first sample, the AAC timestamp
    /// in ms the next frame is expected at).
    clock: Option<(u32, i64)>,
    /// Frames FDK could not decode (skipped).
    pub decode_errors: u64,
}

impl AacToOpus {
    /// A transcoder for the stream the AudioSpecificConfig `asc` describes.
    pub fn new(asc: &[u8]) -> Result<AacToOpus, Refusal> {
        let mut decoder = Decoder::new(Transport::Raw);
        decoder
            .config_raw(asc)
            .map_err(|e| Refusal::Codec(format!("AAC configuration FDK refuses: {}", e.message())))?;
        let encoder = opus::Encoder::new(RATE, opus::Channels::Stereo, opus::Application::Audio)
            .map_err(|e| Refusal::Codec(format!("Opus encoder: {e}")))?;
        let mut t = AacToOpus {
            decoder,
            encoder,
            resampler: None,
            pcm: vec![0; MAX_PCM],
            stereo: Vec::new(),
            resampled: Vec::new(),
            pending: Vec::new(),
            clock: None,
            decode_errors: 0,
        };
        let _ = t.encoder.set_bitrate(opus::Bitrate::Bits(BITRATE));
        Ok(t)
    }

    /// One raw AAC access unit at `ts_ms` (the FLV timestamp); the Opus
    /// packets it completes go to `out`.
    pub fn handle_frame(&mut self, ts_ms: u32, aac: &[u8], out: &mut Vec<OpusPacket>) {
        if self.decoder.fill(aac).is_err() || self.decoder.decode_frame(&mut self.pcm).is_err() {
            self.decode_errors += 1;
            return;
        }
        let info = self.decoder.stream_info();
        let (rate, channels, size) = (info.sampleRate, info.numChannels, info.frameSize);
        let (Ok(rate), Ok(channels), Ok(size)) = (
            u32::try_from(rate),
            usize::try_from(channels),
            usize::try_from(size),
        ) else {
            self.decode_errors += 1;
            return;
        };
        if rate == 0 || channels == 0 || size * channels > self.pcm.len() {
            self.decode_errors += 1;
            return;
        }
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
        for f in self.pcm[..size * channels].chunks_exact(channels) {
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
                Err(_) => self.decode_errors += 1,
            }
            *ts48 = ts48.wrapping_add(FRAME as u32);
            used += FRAME * 2;
        }
        self.pending.drain(..used);
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
