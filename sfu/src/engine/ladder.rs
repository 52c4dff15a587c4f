//! Runs a room's `hls_bridge::transcode::ladder::Ladder` on a thread of its
//! own: decoding and re-encoding a 720p30 layer costs about half a core
//! (ARCHITECTURE.md, hls-bridge transcoding), far too much for the media
//! worker's packet path. The ladder itself stays Sans-IO; this is only the
//! hand-off: access units go in through a bounded queue (when the thread
//! falls behind, frames are dropped up to the next IDR, so the decoder
//! never sees a broken reference chain), rung frames come back through
//! another and are drained by the tap whenever it runs.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

use hls_bridge::h264::{AccessUnit, AvcConfig};
use hls_bridge::transcode::ladder::{Ladder, LadderConfig, RungId};
use hls_bridge::{Error, Frame};
use signaling::RoomId;
use tracing::{debug, warn};

/// Starts thread `hls-{codec}-{room}` running `work`.
pub(super) fn spawn_codec_thread(
    codec: &'static str,
    room: &RoomId,
    work: impl FnOnce() + Send + 'static,
) -> Result<(), Error> {
    std::thread::Builder::new()
        .name(format!("hls-{codec}-{room}"))
        .spawn(work)
        .map(drop)
        .map_err(|e| Error::Codec {
            codec,
            reason: e.to_string(),
        })
}

/// Source access units queued for the ladder thread at most.
const QUEUE: usize = 8;

pub(super) struct LadderRunner {
    rungs: usize,
    /// `None` once the thread is gone.
    input: Option<SyncSender<(AvcConfig, AccessUnit)>>,
    output: Receiver<(RungId, Frame)>,
    /// A frame was dropped: skip to the next IDR.
    resync: bool,
    dropped: u64,
    room: RoomId,
}

impl LadderRunner {
    /// Builds the ladder (openh264 decoder) and starts its thread.
    pub(super) fn start(room: &RoomId) -> Result<Self, Error> {
        let config = LadderConfig::default();
        let rungs = config.rungs.len();
        let mut ladder = Ladder::new(config)?;
        let (input, jobs) = mpsc::sync_channel::<(AvcConfig, AccessUnit)>(QUEUE);
        let (results, output) = mpsc::channel();
        let name = room.to_string();
        spawn_codec_thread("ladder", room, move || {
            for (avc, au) in jobs {
                if let Err(error) = ladder.handle_access_unit(&avc, &au) {
                    debug!(room = %name, %error, "ladder refused an access unit");
                }
                while let Some(frame) = ladder.poll_frame() {
                    if results.send(frame).is_err() {
                        return;
                    }
                }
            }
            debug!(room = %name, stats = ?ladder.stats(), "ladder thread ends");
        })?;
        Ok(Self {
            rungs,
            input: Some(input),
            output,
            resync: false,
            dropped: 0,
            room: room.clone(),
        })
    }

    /// How many rungs the ladder adds.
    pub(super) fn rungs(&self) -> usize {
        self.rungs
    }

    /// One access unit of the source layer (never blocks).
    pub(super) fn push(&mut self, avc: &AvcConfig, au: &AccessUnit) {
        let Some(input) = &self.input else { return };
        if self.resync && !au.keyframe {
            self.dropped += 1;
            return;
        }
        match input.try_send((avc.clone(), au.clone())) {
            Ok(()) => self.resync = false,
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                self.resync = true;
                if self.dropped.is_power_of_two() {
                    warn!(room = %self.room, dropped = self.dropped, "ladder behind the source; frames dropped to the next IDR");
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                warn!(room = %self.room, "ladder thread ended");
                self.input = None;
            }
        }
    }

    /// The next encoded rung frame, if the thread finished one.
    pub(super) fn poll_frame(&mut self) -> Option<(RungId, Frame)> {
        self.output.try_recv().ok()
    }
}
