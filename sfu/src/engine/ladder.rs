//! Runs a room's `hls_bridge::transcode::ladder::Ladder` on a thread of its
//! own ([`super::runner::CodecRunner`]): decoding and re-encoding a 720p30
//! layer costs about half a core (ARCHITECTURE.md, hls-bridge
//! transcoding), far too much for the media worker's packet path. When the
//! thread falls behind, frames are dropped up to the next IDR, so the
//! decoder never sees a broken reference chain. When the publisher leaves,
//! the input closes and the thread encodes what is queued; the tap collects
//! those last rung frames on later ticks, as it does the AAC flush, before
//! the rungs' playlists end.

use hls_bridge::h264::{AccessUnit, AvcConfig};
use hls_bridge::transcode::ladder::{Ladder, LadderConfig, RungId};
use hls_bridge::{Error, Frame};
use signaling::RoomId;

use super::runner::{CodecRunner, Pushed, ThreadCodec};

/// Source access units queued for the ladder thread at most: 1 s at
/// 30 fps, like the AAC thread's second of audio. A thread that stalls
/// for less (a busy machine's scheduler) catches up without a drop; a
/// drop costs every frame up to the next IDR, up to a whole segment.
const QUEUE: usize = 30;

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

pub(super) struct LadderRunner {
    rungs: usize,
    runner: CodecRunner<Ladder>,
    /// A frame was dropped: skip to the next IDR.
    resync: bool,
}

impl LadderRunner {
    /// Builds the ladder (openh264 decoder) and starts its thread.
    pub(super) fn start(room: &RoomId) -> Result<Self, Error> {
        let config = LadderConfig::default();
        let rungs = config.rungs.len();
        let ladder = Ladder::new(config)?;
        Ok(Self {
            rungs,
            runner: CodecRunner::start(room, ladder, QUEUE)?,
            resync: false,
        })
    }

    /// How many rungs the ladder adds.
    pub(super) fn rungs(&self) -> usize {
        self.rungs
    }

    /// One access unit of the source layer (never blocks).
    pub(super) fn push(&mut self, avc: &AvcConfig, au: &AccessUnit) {
        if self.resync && !au.keyframe {
            self.runner.count_dropped();
            return;
        }
        match self.runner.push((avc.clone(), au.clone())) {
            Pushed::Queued => self.resync = false,
            Pushed::Dropped => self.resync = true,
            Pushed::Closed => {}
        }
    }

    /// The next encoded rung frame, if the thread finished one.
    pub(super) fn poll_frame(&mut self) -> Option<(RungId, Frame)> {
        self.runner.poll()
    }

    /// The publisher left: closes the input without waiting. The thread
    /// encodes the rungs of the source frames still queued (openh264
    /// holds no frame back, so there is nothing else to flush);
    /// [`Self::poll_frame`] returns them, then [`Self::is_done`] holds.
    pub(super) fn close(&mut self) {
        self.runner.close();
    }

    /// The thread ended and all its frames were polled.
    pub(super) fn is_done(&self) -> bool {
        self.runner.is_done()
    }
}
