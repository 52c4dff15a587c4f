//! Real media for the transcoding tests: tones encoded with libopus,
//! frequency analysis, and the external `ffprobe`/`ffmpeg` tools.
#![allow(dead_code)]

use std::f64::consts::PI;
use std::io::Cursor;
use std::path::Path;
use std::process::Command;

/// Interleaved stereo 16-bit PCM of a `freq` Hz sine at 48 kHz, starting
/// at sample `from` of an endless tone.
pub fn tone(freq: f64, from: usize, samples: usize, amplitude: f64) -> Vec<i16> {
    (from..from + samples)
        .flat_map(|i| {
            let v = (amplitude * (2.0 * PI * freq * i as f64 / 48_000.0).sin()) as i16;
            [v, v]
        })
        .collect()
}

/// 20 ms stereo Opus packets of `pcm` (48 kHz interleaved), as a browser
/// would send them.
pub fn opus_packets(pcm: &[i16]) -> Vec<Vec<u8>> {
    let mut enc = opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio).unwrap();
    enc.set_bitrate(opus::Bitrate::Bits(96_000)).unwrap();
    pcm.chunks_exact(960 * 2)
        .map(|frame| enc.encode_vec(frame, 4000).unwrap())
        .collect()
}

/// Samples libopus's encoder delays its input by (its lookahead).
pub fn opus_lookahead() -> usize {
    let mut enc = opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio).unwrap();
    enc.get_lookahead().unwrap() as usize
}

/// The left channel of interleaved stereo PCM.
pub fn left(pcm: &[i16]) -> Vec<f64> {
    pcm.chunks_exact(2).map(|s| f64::from(s[0])).collect()
}

/// Goertzel power of `freq` Hz in 48 kHz `samples`.
pub fn power_at(samples: &[f64], freq: f64) -> f64 {
    let w = 2.0 * PI * freq / 48_000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in samples {
        let s = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// The strongest frequency among 100 Hz .. 8 kHz in 50 Hz steps.
pub fn dominant_frequency(samples: &[f64]) -> f64 {
    (2..=160)
        .map(|k| f64::from(k) * 50.0)
        .max_by(|a, b| power_at(samples, *a).total_cmp(&power_at(samples, *b)))
        .unwrap()
}

/// Runs a tool of the Debian `ffmpeg` package (installed by
/// scripts/setup.sh); a missing tool fails the test rather than skipping it.
pub fn ffmpeg_tool(tool: &str, args: &[&str], input: &Path) -> Vec<u8> {
    let out = Command::new(tool)
        .args(["-v", "error"])
        .arg("-i")
        .arg(input)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} not runnable ({e}); run scripts/setup.sh"));
    assert!(
        out.status.success(),
        "{tool} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Interleaved RGB8 → I420 (BT.601 limited range), 2x2 chroma averages.
pub fn rgb_to_picture(rgb: &[u8], width: usize, height: usize) -> hls_bridge::transcode::video::Picture {
    let px = |x: usize, y: usize| {
        let i = (y * width + x) * 3;
        (f64::from(rgb[i]), f64::from(rgb[i + 1]), f64::from(rgb[i + 2]))
    };
    let mut y_plane = Vec::with_capacity(width * height);
    for y in 0..height {
        for x in 0..width {
            let (r, g, b) = px(x, y);
            y_plane.push((16.0 + 0.257 * r + 0.504 * g + 0.098 * b).round() as u8);
        }
    }
    let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
    let (mut u, mut v) = (Vec::with_capacity(cw * ch), Vec::with_capacity(cw * ch));
    for cy in 0..ch {
        for cx in 0..cw {
            let (r, g, b) = px((2 * cx).min(width - 1), (2 * cy).min(height - 1));
            u.push((128.0 - 0.148 * r - 0.291 * g + 0.439 * b).round() as u8);
            v.push((128.0 + 0.439 * r - 0.368 * g - 0.071 * b).round() as u8);
        }
    }
    hls_bridge::transcode::video::Picture {
        width,
        height,
        y: y_plane,
        u,
        v,
    }
}

/// Quadrants red | green over blue | white: a picture whose regions a
/// thumbnail must keep.
pub const QUADRANTS: [[u8; 3]; 4] = [[220, 30, 30], [30, 200, 40], [30, 40, 210], [240, 240, 240]];

pub fn quadrant_pattern(width: usize, height: usize) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            let q = usize::from(x >= width / 2) + 2 * usize::from(y >= height / 2);
            rgb.extend_from_slice(&QUADRANTS[q]);
        }
    }
    rgb
}

/// Parses a one-track audio init segment with Mozilla's `mp4parse` (what
/// Firefox runs), checks the parts every audio entry shares (audio handler,
/// 48 kHz timescale, stereo) and hands the sample entry to `check`.
pub fn with_audio_entry<T>(init: &[u8], check: impl FnOnce(&mp4parse::AudioSampleEntry) -> T) -> T {
    let ctx = mp4parse::read_mp4(&mut Cursor::new(init)).unwrap();
    assert_eq!(ctx.tracks.len(), 1);
    let track = &ctx.tracks[0];
    assert_eq!(track.track_type, mp4parse::TrackType::Audio);
    assert_eq!(track.timescale.map(|t| t.0), Some(48_000));
    let stsd = track.stsd.as_ref().unwrap();
    let mp4parse::SampleEntry::Audio(a) = &stsd.descriptions[0] else {
        panic!("not an audio sample entry");
    };
    assert_eq!(a.channelcount, 2);
    check(a)
}
