//! Runs a room's Opus -> AAC-LC transcoder (`hls_bridge::transcode::aac`)
//! on a thread of its own ([`super::runner::CodecRunner`]), off the media
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

pub(super) struct AacRunner {
    aac: AacConfig,
    runner: CodecRunner<OpusToAac>,
}

impl AacRunner {
    /// Builds the transcoder (its AAC configuration is known at once, for
    /// the init segment) and starts its thread.
    pub(super) fn start(room: &RoomId) -> Result<Self, Error> {
        let transcoder = OpusToAac::new(AacTranscoderConfig::default())?;
        let aac = transcoder.aac_config().clone();
        Ok(Self {
            aac,
            runner: CodecRunner::start(room, transcoder, QUEUE)?,
        })
    }

    /// The AAC configuration of the output (the rendition's init segment).
    pub(super) fn aac_config(&self) -> &AacConfig {
        &self.aac
    }

    /// Frames dropped because the thread was behind.
    pub(super) fn dropped(&self) -> u64 {
        self.runner.dropped()
    }

    /// One Opus frame (never blocks).
    pub(super) fn push(&mut self, frame: &OpusFrame) {
        self.runner.push(frame.clone());
    }

    /// The next AAC access unit, if the thread finished one.
    pub(super) fn poll_access_unit(&mut self) -> Option<AacAccessUnit> {
        self.runner.poll()
    }

    /// The publisher left: closes the input without waiting. The thread
    /// transcodes what is queued and flushes the encoder;
    /// [`Self::poll_access_unit`] returns those last units, then
    /// [`Self::is_done`] holds.
    pub(super) fn close(&mut self) {
        self.runner.close();
    }

    /// The thread ended and all its access units were polled.
    pub(super) fn is_done(&self) -> bool {
        self.runner.is_done()
    }
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
        let mut runner = AacRunner::start(&room).unwrap();
        for i in 0..40 {
            runner.push(&silence(i));
        }
        // The worker's call returns at once (`runner::tests` shows it does
        // not wait for a flush in progress); the tail comes back later.
        runner.close();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while !runner.is_done() && Instant::now() < deadline {
            match runner.poll_access_unit() {
                Some(u) => got.push(u.timestamp),
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        assert!(runner.is_done(), "the AAC thread never ended");
        assert_eq!(got, want, "every access unit, the encoder's flush included");
        assert_eq!(runner.dropped(), 0);
    }
}
