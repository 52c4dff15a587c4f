//! What the bridge's transcoders cost per core: `cargo bench -p hls-bridge
//! --bench transcode`. Prints numbers; asserts nothing. Rates are per CPU
//! second of this thread (Linux `schedstat`), so a busy machine does not
//! deflate them; wall time is printed beside.
//!
//! - Opus → AAC: seconds of stereo audio transcoded per CPU second.
//! - Ladder: 720p30 source pictures per second through decode + two rungs.
//! - Thumbnail: milliseconds to render a 720p IDR as JPEG.

use std::time::{Duration, Instant};

use hls_bridge::h264::AvcConfig;
use hls_bridge::thumbnail::{self, ImageFormat, ThumbnailConfig};
use hls_bridge::transcode::aac::{AacTranscoderConfig, OpusToAac};
use hls_bridge::transcode::ladder::{Ladder, LadderConfig};
use hls_bridge::transcode::video::{H264Encoder, Picture};

fn main() {
    aac();
    let (avc, aus) = source_720p(90);
    ladder(&avc, &aus);
    thumbnail(&avc, &aus[0]);
}

/// Wall and on-CPU time of this thread since `start`.
struct Clock {
    wall: Instant,
    cpu: Option<Duration>,
}

impl Clock {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: thread_cpu(),
        }
    }

    /// (CPU seconds, wall seconds); CPU falls back to wall off Linux.
    fn stop(&self) -> (f64, f64) {
        let wall = self.wall.elapsed().as_secs_f64();
        let cpu = match (self.cpu, thread_cpu()) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => wall,
        };
        (cpu, wall)
    }
}

/// The first field of `/proc/thread-self/schedstat`: nanoseconds on CPU.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(Duration::from_nanos(
        stat.split_whitespace().next()?.parse().ok()?,
    ))
}

fn aac() {
    let seconds = 20;
    let mut enc = opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio).unwrap();
    let packets: Vec<Vec<u8>> = (0..seconds * 50)
        .map(|f| {
            let pcm: Vec<i16> = (0..960)
                .flat_map(|i| {
                    let t = (f * 960 + i) as f64 / 48_000.0;
                    let v = (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16;
                    [v, v]
                })
                .collect();
            enc.encode_vec(&pcm, 4000).unwrap()
        })
        .collect();
    let mut t = OpusToAac::new(AacTranscoderConfig::default()).unwrap();
    let clock = Clock::start();
    for (i, p) in packets.iter().enumerate() {
        t.handle_opus(i as i64 * 960, p).unwrap();
        while t.poll_access_unit().is_some() {}
    }
    let (cpu, wall) = clock.stop();
    println!(
        "opus->aac: {seconds} s of stereo in {:.1} ms CPU ({:.1} ms wall) = {:.0}x real time on one core",
        cpu * 1e3,
        wall * 1e3,
        seconds as f64 / cpu
    );
}

/// A moving gradient at 1280x720, encoded at 2.5 Mbit/s with an IDR every 60.
fn source_720p(frames: usize) -> (AvcConfig, Vec<hls_bridge::h264::AccessUnit>) {
    let (w, h) = (1280, 720);
    let mut enc = H264Encoder::new(2_500_000, 30.0).unwrap();
    let aus: Vec<_> = (0..frames)
        .filter_map(|n| {
            let y = (0..w * h)
                .map(|i| ((i % w + i / w + 4 * n) % 220 + 16) as u8)
                .collect();
            let c = |k: usize| {
                (0..w * h / 4)
                    .map(|i| ((i % (w / 2) + k * n) % 200 + 28) as u8)
                    .collect()
            };
            let picture = Picture {
                width: w,
                height: h,
                y,
                u: c(2),
                v: c(3),
            };
            enc.encode(&picture, n as i64 * 3000, n % 60 == 0).unwrap()
        })
        .collect();
    let avc = AvcConfig::new(aus[0].sps.clone().unwrap(), aus[0].pps.clone().unwrap()).unwrap();
    (avc, aus)
}

fn ladder(avc: &AvcConfig, aus: &[hls_bridge::h264::AccessUnit]) {
    let mut ladder = Ladder::new(LadderConfig::default()).unwrap();
    let clock = Clock::start();
    for au in aus {
        ladder.handle_access_unit(avc, au).unwrap();
        while ladder.poll_frame().is_some() {}
    }
    let (cpu, wall) = clock.stop();
    let fps = aus.len() as f64 / cpu;
    println!(
        "ladder 720p -> 640x360 + 320x180: {fps:.0} source fps per core ({:.0} wall) = {:.1} rooms at 30 fps",
        aus.len() as f64 / wall,
        fps / 30.0
    );
}

fn thumbnail(avc: &AvcConfig, idr: &hls_bridge::h264::AccessUnit) {
    let config = ThumbnailConfig::default();
    let runs = 10;
    let clock = Clock::start();
    for _ in 0..runs {
        thumbnail::render(avc, idr, ImageFormat::Jpeg, &config).unwrap();
    }
    let (cpu, wall) = clock.stop();
    println!(
        "thumbnail 720p IDR -> 640x360 JPEG: {:.1} ms CPU ({:.1} ms wall)",
        cpu * 1e3 / f64::from(runs),
        wall * 1e3 / f64::from(runs)
    );
}
