//! The driver side of the LL-HLS wing: a room's codecs (the Opus -> AAC
//! transcoder, the ABR ladder) on a thread of their own, off the media
//! worker's packet path. The room packager ([`crate::room`]) never starts a
//! thread: it asks the [`CodecHost`] its driver gave it for a
//! [`CodecPort`] per codec; [`ThreadHost`] (the node's) runs each on a
//! thread, [`InlineHost`] (simulated-time tests) runs it in the caller. The codecs stay Sans-IO
//! ([`ThreadCodec`]); this is only the hand-off: input goes in through a
//! bounded queue that never blocks the worker (a full queue refuses the
//! item; the caller decides what that means and [`CodecRunner`] counts it),
//! output comes back through another queue, drained by the tap whenever it
//! runs. Closing the input never waits: the thread flushes the codec on its
//! own and its last output arrives through the same queue, after which
//! [`CodecRunner::is_done`] holds.

use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};

use tracing::{debug, warn};
use wave_vocab::RoomId;

use crate::Error;
use crate::Frame;
use crate::fmp4::AacConfig;
use crate::h264::{AccessUnit, AvcConfig};
use crate::opus::OpusFrame;
use crate::transcode::aac::{AacAccessUnit, AacTranscoderConfig, OpusToAac};
use crate::transcode::ladder::{Ladder, LadderConfig, RungId};

/// Opus frames queued for the AAC transcoder at most (1 s of 20 ms frames).
/// A full queue drops the frame, counts it and warns; the transcoder
/// conceals the gap, so the AAC timeline stays whole.
pub const AAC_QUEUE: usize = 50;
/// Source access units queued for the ladder at most: 1 s at 30 fps. A
/// thread that stalls for less catches up without a drop; a drop costs
/// every frame up to the next IDR.
pub const LADDER_QUEUE: usize = 30;

/// One codec of one room as the room packager sees it, wherever it runs:
/// input that never blocks, output polled whenever the packager runs, a
/// close that never waits (the codec's flush arrives through `poll`).
pub trait CodecPort<I, O>: Send {
    fn push(&mut self, input: I) -> Pushed;
    fn poll(&mut self) -> Option<O>;
    fn close(&mut self);
    /// Closed, flushed, and every output polled.
    fn is_done(&self) -> bool;
    /// Input items dropped so far (a full queue).
    fn dropped(&self) -> u64;
    /// Counts an input item the caller dropped itself.
    fn count_dropped(&mut self);
}

/// The AAC transcoder's port, and the configuration of its output.
pub type AacPort = Box<dyn CodecPort<OpusFrame, AacAccessUnit>>;
/// The ladder's port, and how many rungs it encodes.
pub type LadderPort = Box<dyn CodecPort<(AvcConfig, AccessUnit), (RungId, Frame)>>;

/// Where a room's codecs run: the room packager asks, the driver decides.
pub trait CodecHost: Send + Sync + std::fmt::Debug {
    /// Starts the Opus -> AAC-LC transcoder of `room`.
    fn aac(&self, room: &RoomId) -> Result<(AacPort, AacConfig), Error>;
    /// Starts the ABR ladder of `room`; returns it with its rung count.
    fn ladder(&self, room: &RoomId) -> Result<(LadderPort, usize), Error>;
}

/// The node's host: each codec on a thread of its own ([`CodecRunner`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadHost;

impl CodecHost for ThreadHost {
    fn aac(&self, room: &RoomId) -> Result<(AacPort, AacConfig), Error> {
        let transcoder = OpusToAac::new(AacTranscoderConfig::default())?;
        let config = transcoder.aac_config().clone();
        Ok((Box::new(CodecRunner::start(room, transcoder, AAC_QUEUE)?), config))
    }

    fn ladder(&self, room: &RoomId) -> Result<(LadderPort, usize), Error> {
        let config = LadderConfig::default();
        let rungs = config.rungs.len();
        let ladder = Ladder::new(config)?;
        Ok((Box::new(CodecRunner::start(room, ladder, LADDER_QUEUE)?), rungs))
    }
}

/// Codecs run in the caller, on each push: deterministic, for tests on
/// simulated time (a real node uses [`ThreadHost`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct InlineHost;

impl CodecHost for InlineHost {
    fn aac(&self, _room: &RoomId) -> Result<(AacPort, AacConfig), Error> {
        let transcoder = OpusToAac::new(AacTranscoderConfig::default())?;
        let config = transcoder.aac_config().clone();
        Ok((Box::new(Inline::new(transcoder)), config))
    }

    fn ladder(&self, _room: &RoomId) -> Result<(LadderPort, usize), Error> {
        let config = LadderConfig::default();
        let rungs = config.rungs.len();
        Ok((Box::new(Inline::new(Ladder::new(config)?)), rungs))
    }
}

/// A codec run by the caller: `push` handles the input at once.
struct Inline<C: ThreadCodec> {
    codec: C,
    out: std::collections::VecDeque<C::Out>,
    closed: bool,
    dropped: u64,
}

impl<C: ThreadCodec> Inline<C> {
    fn new(codec: C) -> Self {
        Self {
            codec,
            out: std::collections::VecDeque::new(),
            closed: false,
            dropped: 0,
        }
    }

    fn drain(&mut self) {
        while let Some(o) = self.codec.poll() {
            self.out.push_back(o);
        }
    }
}

impl<C: ThreadCodec> CodecPort<C::In, C::Out> for Inline<C> {
    fn push(&mut self, input: C::In) -> Pushed {
        if self.closed {
            return Pushed::Closed;
        }
        if let Err(error) = self.codec.handle(input) {
            debug!(codec = C::NAME, %error, "codec refused its input");
        }
        self.drain();
        Pushed::Queued
    }
    fn poll(&mut self) -> Option<C::Out> {
        self.out.pop_front()
    }
    fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            if let Err(error) = self.codec.flush() {
                debug!(codec = C::NAME, %error, "codec flush failed");
            }
            self.drain();
        }
    }
    fn is_done(&self) -> bool {
        self.closed && self.out.is_empty()
    }
    fn dropped(&self) -> u64 {
        self.dropped
    }
    fn count_dropped(&mut self) {
        self.dropped += 1;
    }
}

impl<C: ThreadCodec> CodecPort<C::In, C::Out> for CodecRunner<C> {
    fn push(&mut self, input: C::In) -> Pushed {
        CodecRunner::push(self, input)
    }
    fn poll(&mut self) -> Option<C::Out> {
        CodecRunner::poll(self)
    }
    fn close(&mut self) {
        CodecRunner::close(self);
    }
    fn is_done(&self) -> bool {
        CodecRunner::is_done(self)
    }
    fn dropped(&self) -> u64 {
        CodecRunner::dropped(self)
    }
    fn count_dropped(&mut self) {
        CodecRunner::count_dropped(self);
    }
}

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

impl ThreadCodec for Ladder {
    type In = (AvcConfig, AccessUnit);
    type Out = (RungId, Frame);
    const NAME: &'static str = "ladder";
    const WHEN_FULL: &'static str = "ladder behind the source; frames dropped to the next IDR";

    fn handle(&mut self, (avc, au): (AvcConfig, AccessUnit)) -> Result<(), Error> {
        self.handle_access_unit(&avc, &au)
    }
    fn poll(&mut self) -> Option<(RungId, Frame)> {
        self.poll_frame()
    }
    fn stats(&self) -> impl std::fmt::Debug {
        Ladder::stats(self)
    }
}

/// A codec the runner drives on its thread.
pub trait ThreadCodec: Send + 'static {
    type In: Send + 'static;
    type Out: Send + 'static;
    /// Names the thread (`hls-{NAME}-{room}`), errors and logs.
    const NAME: &'static str;
    /// What a full queue costs (the warning's text).
    const WHEN_FULL: &'static str;

    fn handle(&mut self, input: Self::In) -> Result<(), Error>;
    fn poll(&mut self) -> Option<Self::Out>;
    /// The input closed: emit what the codec still holds.
    fn flush(&mut self) -> Result<(), Error> {
        Ok(())
    }
    /// Logged when the thread ends.
    fn stats(&self) -> impl std::fmt::Debug;
}

/// What became of one pushed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue was full: the item was dropped (and counted).
    Dropped,
    /// The thread is gone or the input was closed.
    Closed,
}

pub struct CodecRunner<C: ThreadCodec> {
    /// `None` once closed (or the thread is gone).
    input: Option<SyncSender<C::In>>,
    output: Receiver<C::Out>,
    /// The thread ended and everything it sent was polled.
    done: bool,
    dropped: u64,
    room: RoomId,
}

impl<C: ThreadCodec> CodecRunner<C> {
    /// Starts thread `hls-{C::NAME}-{room}` running `codec` behind a queue
    /// of `queue` items.
    pub fn start(room: &RoomId, mut codec: C, queue: usize) -> Result<Self, Error> {
        let (input, jobs) = mpsc::sync_channel::<C::In>(queue);
        let (results, output) = mpsc::channel();
        let name = room.to_string();
        let work = move || {
            let drain = |c: &mut C| {
                while let Some(out) = c.poll() {
                    if results.send(out).is_err() {
                        return false;
                    }
                }
                true
            };
            for job in jobs {
                if let Err(error) = codec.handle(job) {
                    debug!(room = %name, codec = C::NAME, %error, "codec refused its input");
                }
                if !drain(&mut codec) {
                    return;
                }
            }
            // The input closed (the publisher left): flush.
            if let Err(error) = codec.flush() {
                debug!(room = %name, codec = C::NAME, %error, "codec flush failed");
            }
            drain(&mut codec);
            debug!(room = %name, codec = C::NAME, stats = ?codec.stats(), "codec thread ends");
        };
        std::thread::Builder::new()
            .name(format!("hls-{}-{room}", C::NAME))
            .spawn(work)
            .map_err(|e| Error::Codec {
                codec: C::NAME,
                reason: e.to_string(),
            })?;
        Ok(Self {
            input: Some(input),
            output,
            done: false,
            dropped: 0,
            room: room.clone(),
        })
    }

    /// One input item; never blocks.
    pub fn push(&mut self, item: C::In) -> Pushed {
        let Some(input) = &self.input else {
            return Pushed::Closed;
        };
        match input.try_send(item) {
            Ok(()) => Pushed::Queued,
            Err(TrySendError::Full(_)) => {
                self.count_dropped();
                Pushed::Dropped
            }
            Err(TrySendError::Disconnected(_)) => {
                warn!(room = %self.room, codec = C::NAME, "codec thread ended");
                self.input = None;
                Pushed::Closed
            }
        }
    }

    /// Counts an input item the caller dropped (or the queue refused).
    pub fn count_dropped(&mut self) {
        self.dropped += 1;
        if self.dropped.is_power_of_two() {
            warn!(room = %self.room, codec = C::NAME, dropped = self.dropped, "{}", C::WHEN_FULL);
        }
    }

    /// Input items dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The next output item, if the thread produced one.
    pub fn poll(&mut self) -> Option<C::Out> {
        match self.output.try_recv() {
            Ok(out) => Some(out),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.done = true;
                None
            }
        }
    }

    /// Closes the input without waiting: the thread works through its
    /// queue, flushes the codec and ends; [`Self::poll`] returns the rest,
    /// then [`Self::is_done`] holds.
    pub fn close(&mut self) {
        self.input = None;
    }

    /// The thread ended and all its output was polled.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{Receiver, Sender};
    use std::time::{Duration, Instant};

    use super::*;

    /// Doubles its input; its flush emits a marker, but only once the test
    /// lets it (so the test controls when the thread can end).
    struct Gated {
        out: Vec<u32>,
        release: Receiver<()>,
        started_flush: Sender<()>,
    }

    impl ThreadCodec for Gated {
        type In = u32;
        type Out = u32;
        const NAME: &'static str = "gated";
        const WHEN_FULL: &'static str = "gated codec behind";

        fn handle(&mut self, input: u32) -> Result<(), Error> {
            self.out.push(input * 2);
            Ok(())
        }
        fn poll(&mut self) -> Option<u32> {
            (!self.out.is_empty()).then(|| self.out.remove(0))
        }
        fn flush(&mut self) -> Result<(), Error> {
            let _ = self.started_flush.send(());
            let _ = self.release.recv();
            self.out.push(u32::MAX);
            Ok(())
        }
        fn stats(&self) -> impl std::fmt::Debug {
            self.out.len()
        }
    }

    fn room() -> RoomId {
        RoomId::parse("runner-test").unwrap()
    }

    /// Polls until the runner is done (or 5 s pass).
    fn drain<C: ThreadCodec>(r: &mut CodecRunner<C>) -> Vec<C::Out> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        while !r.is_done() && Instant::now() < deadline {
            match r.poll() {
                Some(o) => out.push(o),
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        assert!(r.is_done(), "codec thread never ended");
        out
    }

    #[test]
    fn close_returns_while_the_codec_still_flushes_and_the_flush_still_arrives() {
        let (release_tx, release) = mpsc::channel();
        let (started_flush, flushing) = mpsc::channel();
        let codec = Gated {
            out: Vec::new(),
            release,
            started_flush,
        };
        let mut r = CodecRunner::start(&room(), codec, 16).unwrap();
        for i in 1..=10 {
            assert_eq!(r.push(i), Pushed::Queued);
        }
        r.close();
        // close() did not wait for the thread: its flush is still blocked
        // on `release` (a close that waited for the flush would never get
        // here, or would have given up on the flush's output).
        flushing.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(!r.is_done());
        assert_eq!(r.push(11), Pushed::Closed);
        release_tx.send(()).unwrap();
        let out = drain(&mut r);
        let mut want: Vec<u32> = (1..=10).map(|i| i * 2).collect();
        want.push(u32::MAX);
        assert_eq!(out, want);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let (release_tx, release) = mpsc::channel();
        let (started_flush, _flushing) = mpsc::channel();
        /// Blocks on its first input until released.
        struct Stuck(Gated, bool);
        impl ThreadCodec for Stuck {
            type In = u32;
            type Out = u32;
            const NAME: &'static str = "stuck";
            const WHEN_FULL: &'static str = "stuck codec behind";
            fn handle(&mut self, input: u32) -> Result<(), Error> {
                if !self.1 {
                    self.1 = true;
                    let _ = self.0.release.recv();
                }
                self.0.handle(input)
            }
            fn poll(&mut self) -> Option<u32> {
                self.0.poll()
            }
            fn stats(&self) -> impl std::fmt::Debug {
                self.0.stats()
            }
        }
        let codec = Stuck(
            Gated {
                out: Vec::new(),
                release,
                started_flush,
            },
            false,
        );
        let mut r = CodecRunner::start(&room(), codec, 2).unwrap();
        let t = Instant::now();
        let pushed: Vec<Pushed> = (0..20).map(|i| r.push(i)).collect();
        assert!(t.elapsed() < Duration::from_secs(1));
        // One item in the codec's hands at most, two queued; the rest dropped.
        let queued = pushed.iter().filter(|p| **p == Pushed::Queued).count();
        assert!((2..=3).contains(&queued), "{pushed:?}");
        assert_eq!(r.dropped(), (20 - queued) as u64);
        release_tx.send(()).unwrap();
        r.close();
        assert_eq!(drain(&mut r).len(), queued);
    }

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
        let (mut runner, _) = ThreadHost.aac(&room).unwrap();
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
