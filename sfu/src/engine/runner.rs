//! A room's codec (the Opus -> AAC transcoder, the ABR ladder) on a thread
//! of its own, off the media worker's packet path. The codecs stay Sans-IO
//! ([`ThreadCodec`]); this is only the hand-off: input goes in through a
//! bounded queue that never blocks the worker (a full queue refuses the
//! item; the caller decides what that means and [`CodecRunner`] counts it),
//! output comes back through another queue, drained by the tap whenever it
//! runs. Closing the input never waits: the thread flushes the codec on its
//! own and its last output arrives through the same queue, after which
//! [`CodecRunner::is_done`] holds.

use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};

use hls_bridge::Error;
use signaling::RoomId;
use tracing::{debug, warn};

/// A codec the runner drives on its thread.
pub(super) trait ThreadCodec: Send + 'static {
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
pub(super) enum Pushed {
    Queued,
    /// The queue was full: the item was dropped (and counted).
    Dropped,
    /// The thread is gone or the input was closed.
    Closed,
}

pub(super) struct CodecRunner<C: ThreadCodec> {
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
    pub(super) fn start(room: &RoomId, mut codec: C, queue: usize) -> Result<Self, Error> {
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
    pub(super) fn push(&mut self, item: C::In) -> Pushed {
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
    pub(super) fn count_dropped(&mut self) {
        self.dropped += 1;
        if self.dropped.is_power_of_two() {
            warn!(room = %self.room, codec = C::NAME, dropped = self.dropped, "{}", C::WHEN_FULL);
        }
    }

    /// Input items dropped so far.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The next output item, if the thread produced one.
    pub(super) fn poll(&mut self) -> Option<C::Out> {
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
    pub(super) fn close(&mut self) {
        self.input = None;
    }

    /// The thread ended and all its output was polled.
    pub(super) fn is_done(&self) -> bool {
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
}
