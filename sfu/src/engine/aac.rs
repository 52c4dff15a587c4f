//! Runs a room's Opus -> AAC-LC transcoder (`hls_bridge::transcode::aac`)
//! on a thread of its own, off the media worker's packet path: decoding
//! Opus and encoding AAC costs ~1% of a core per room, and a worker serves
//! many rooms' packets. Like [`super::ladder::LadderRunner`] this is only
//! the hand-off: Opus frames go in through a bounded queue that never
//! blocks the worker (a full queue drops the frame, counts it and warns;
//! the transcoder conceals the gap, so the AAC timeline stays whole), and
//! access units come back through another, drained by the tap whenever it
//! runs.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use hls_bridge::Error;
use hls_bridge::fmp4::AacConfig;
use hls_bridge::opus::OpusFrame;
use hls_bridge::transcode::aac::{AacAccessUnit, AacTranscoderConfig, OpusToAac};
use signaling::RoomId;
use tracing::{debug, warn};

use super::ladder::spawn_codec_thread;

/// Opus frames queued for the transcoder thread at most (1 s of 20 ms
/// frames).
const QUEUE: usize = 50;
/// How long [`AacRunner::finish`] waits for the thread to drain its queue.
const FINISH_WAIT: Duration = Duration::from_millis(250);

pub(super) struct AacRunner {
    aac: AacConfig,
    /// `None` once the thread is gone (or finishing).
    input: Option<SyncSender<OpusFrame>>,
    output: Receiver<AacAccessUnit>,
    dropped: u64,
    room: RoomId,
}

impl AacRunner {
    /// Builds the transcoder (its AAC configuration is known at once, for
    /// the init segment) and starts its thread.
    pub(super) fn start(room: &RoomId) -> Result<Self, Error> {
        let mut transcoder = OpusToAac::new(AacTranscoderConfig::default())?;
        let aac = transcoder.aac_config().clone();
        let (input, jobs) = mpsc::sync_channel::<OpusFrame>(QUEUE);
        let (results, output) = mpsc::channel();
        let name = room.to_string();
        spawn_codec_thread("aac", room, move || {
            let drain = |t: &mut OpusToAac| {
                while let Some(unit) = t.poll_access_unit() {
                    if results.send(unit).is_err() {
                        return false;
                    }
                }
                true
            };
            for frame in jobs {
                if let Err(error) = transcoder.handle_frame(&frame) {
                    debug!(room = %name, %error, "AAC transcoder refused a frame");
                }
                if !drain(&mut transcoder) {
                    return;
                }
            }
            // The input closed: the publisher left. Flush the encoder.
            if let Err(error) = transcoder.finish() {
                debug!(room = %name, %error, "AAC flush failed");
            }
            drain(&mut transcoder);
            debug!(room = %name, stats = ?transcoder.stats(), "AAC thread ends");
        })?;
        Ok(Self {
            aac,
            input: Some(input),
            output,
            dropped: 0,
            room: room.clone(),
        })
    }

    /// The AAC configuration of the output (the rendition's init segment).
    pub(super) fn aac_config(&self) -> &AacConfig {
        &self.aac
    }

    /// Frames dropped because the thread was behind.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// One Opus frame (never blocks).
    pub(super) fn push(&mut self, frame: &OpusFrame) {
        let Some(input) = &self.input else { return };
        match input.try_send(frame.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                if self.dropped.is_power_of_two() {
                    warn!(room = %self.room, dropped = self.dropped, "AAC transcoder behind the publisher; Opus frames dropped (concealed)");
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                warn!(room = %self.room, "AAC thread ended");
                self.input = None;
            }
        }
    }

    /// The next AAC access unit, if the thread finished one.
    pub(super) fn poll_access_unit(&mut self) -> Option<AacAccessUnit> {
        self.output.try_recv().ok()
    }

    /// The publisher left: closes the input and collects what the thread
    /// still produces (the queue's remainder and the encoder's flush), for
    /// the stream's last parts. Waits at most [`FINISH_WAIT`] (a queue
    /// drains in well under that); what comes later is lost.
    pub(super) fn finish(&mut self) -> Vec<AacAccessUnit> {
        self.input = None;
        let deadline = Instant::now() + FINISH_WAIT;
        let mut units = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(unit) => units.push(unit),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    warn!(room = %self.room, "AAC thread did not finish in time; the last audio is cut");
                    break;
                }
            }
        }
        units
    }
}
