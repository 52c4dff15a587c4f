//! Runs a room's Opus -> AAC-LC transcoder (`hls_bridge::transcode::aac`)
//! on a thread of its own ([`AacRunner`], a [`super::runner::CodecRunner`]), off the media
//! worker's packet path: decoding Opus and encoding AAC costs ~1% of a core
//! per room, and a worker serves many rooms' packets. A full queue drops
//! the Opus frame, counts it and warns; the transcoder conceals the gap,
//! so the AAC timeline stays whole. When the publisher leaves, the input
//! closes and the thread flushes the encoder on its own; the tap collects
//! the last access units on later ticks (the worker never waits for it).

use hls_bridge::Error;
use hls_bridge::fmp4::AacConfig;
use hls_bridge::opus::OpusFrame;
use hls_bridge::transcode::aac::{AacAccessUnit, AacTranscoderConfig, OpusToAac};
use signaling::RoomId;

use super::runner::{CodecRunner, ThreadCodec};

/// Opus frames queued for the transcoder thread at most (1 s of 20 ms
/// frames).
const QUEUE: usize = 50;

impl ThreadCodec for OpusToAac {
    type In = OpusFrame;
    type Out = AacAccessUnit;
    const NAME: &'static str = "aac";
    const WHEN_FULL: &'static str = "AAC transcoder behind the publisher; Opus frames dropped (concealed)";

    fn handle(&mut self, frame: OpusFrame) -> Result<(), Error> {
        self.handle_frame(&frame)
    }
    fn poll(&mut self) -> Option<AacAccessUnit> {
        self.poll_access_unit()
    }
    fn flush(&mut self) -> Result<(), Error> {
        self.finish()
    }
    fn stats(&self) -> impl std::fmt::Debug {
        OpusToAac::stats(self)
    }
}

/// The transcoder on its thread: Opus frames in (a full queue drops and
/// counts), AAC access units out; `close` flushes the encoder on the
/// thread, whose last units `poll` returns before `is_done` holds.
pub(super) type AacRunner = CodecRunner<OpusToAac>;

/// Builds the transcoder and starts its thread; returns it with the AAC
/// configuration of its output (known at once, for the init segment).
pub(super) fn start(room: &RoomId) -> Result<(AacRunner, AacConfig), Error> {
    let transcoder = OpusToAac::new(AacTranscoderConfig::default())?;
    let aac = transcoder.aac_config().clone();
    Ok((CodecRunner::start(room, transcoder, QUEUE)?, aac))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// A 20 ms CELT frame of silence (TOC config 31, mono, one frame).
    fn silence(i: i64) -> OpusFrame {
        OpusFrame {
            timestamp: 480_000 + i * 960,
            duration: 960,
            stereo: false,
            data: vec![0xf8, 0xff, 0xfe],
        }
    }

    #[test]
    fn closing_never_waits_and_the_flushed_tail_still_comes_back() {
        // What the transcoder gives for 40 frames, flush included.
        let mut direct = OpusToAac::new(AacTranscoderConfig::default()).unwrap();
        for i in 0..40 {
            direct.handle_frame(&silence(i)).unwrap();
        }
        direct.finish().unwrap();
        let want: Vec<i64> = std::iter::from_fn(|| direct.poll_access_unit())
            .map(|u| u.timestamp)
            .collect();
        assert!(want.len() > 30, "{}", want.len());

        let room = RoomId::parse("aac-runner").unwrap();
        let (mut runner, _) = start(&room).unwrap();
        for i in 0..40 {
            runner.push(silence(i));
        }
        // The worker's call returns at once (`runner::tests` shows it does
        // not wait for a flush in progress); the tail comes back later.
        runner.close();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while !runner.is_done() && Instant::now() < deadline {
            match runner.poll() {
                Some(u) => got.push(u.timestamp),
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        assert!(runner.is_done(), "the AAC thread never ended");
        assert_eq!(got, want, "every access unit, the encoder's flush included");
        assert_eq!(runner.dropped(), 0);
    }
}
