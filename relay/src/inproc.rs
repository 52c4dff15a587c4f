//! The in-process transport: one bounded [`Inbox`] per worker, filled a
//! batch at a time by the other workers (one lock per batch per loop turn,
//! never per viewer), with a wake-up for the owner's loop. Media is dropped
//! (and counted) when the inbox is full: a keyframe request follows. Control
//! messages never are: mirrors must stay consistent.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use crate::message::{Message, WorkerId};

/// Messages one inbox holds before further media is dropped: ~1 s of
/// a 3-layer publisher plus audio, far more than a worker loop turn
/// produces.
pub const INBOX_MEDIA: usize = 4096;

/// What became of one batch handed to an [`Inbox`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handed {
    /// Media messages queued.
    pub media: u64,
    /// Media messages dropped because the inbox was full.
    pub dropped: u64,
}

/// What other workers hand one worker.
#[derive(Default)]
pub struct Inbox {
    queue: Mutex<Vec<(WorkerId, Message)>>,
    /// Set after a push, so the owner's every-turn check takes no lock
    /// when nothing came.
    pending: AtomicBool,
    wake: Notify,
}

impl Inbox {
    /// Appends a batch from worker `from` (draining it) and wakes the owner.
    pub fn push(&self, from: WorkerId, batch: &mut Vec<Message>) -> Handed {
        let mut handed = Handed::default();
        match self.queue.lock() {
            Ok(mut q) => {
                for msg in batch.drain(..) {
                    if msg.is_media() {
                        if q.len() >= INBOX_MEDIA {
                            handed.dropped += 1;
                            continue;
                        }
                        handed.media += 1;
                    }
                    q.push((from, msg));
                }
            }
            // A worker panicked holding the lock: nothing reads this inbox.
            Err(_) => handed.dropped = batch.drain(..).filter(Message::is_media).count() as u64,
        }
        self.pending.store(true, Ordering::Release);
        self.wake.notify_one();
        handed
    }

    /// Moves everything queued into `into` (the lock is held for a swap);
    /// whether there was anything. Takes no lock when nothing was pushed.
    pub fn take(&self, into: &mut Vec<(WorkerId, Message)>) -> bool {
        if !self.pending.swap(false, Ordering::Acquire) {
            return false;
        }
        if let Ok(mut q) = self.queue.lock() {
            std::mem::swap(&mut *q, into);
        }
        !into.is_empty()
    }

    /// Resolves after the next [`Self::push`] (or at once if one came since
    /// the last wait).
    pub async fn notified(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::message::{Ext, MediaPacket, SourceId};

    fn media() -> Message {
        Message::Media {
            source: SourceId(1),
            track: 0,
            layer: 0,
            codec: None,
            packet: MediaPacket {
                pt: 96,
                seq: 1,
                rtp_ts: 0,
                arrival: Instant::now(),
                marker: false,
                ext: Ext::default(),
                payload: vec![0u8; 4].into(),
            },
        }
    }

    #[test]
    fn a_full_inbox_drops_media_and_keeps_control() {
        let inbox = Inbox::default();
        let mut batch: Vec<Message> = (0..INBOX_MEDIA + 10).map(|_| media()).collect();
        batch.push(Message::Keyframe {
            source: SourceId(1),
            layer: 0,
        });
        let handed = inbox.push(WorkerId(1), &mut batch);
        assert_eq!(
            handed,
            Handed {
                media: INBOX_MEDIA as u64,
                dropped: 10
            }
        );
        let mut out = Vec::new();
        assert!(inbox.take(&mut out));
        assert_eq!(out.len(), INBOX_MEDIA + 1);
        assert!(matches!(
            out.last(),
            Some((WorkerId(1), Message::Keyframe { .. }))
        ));
        // Nothing pushed since: no lock, nothing taken.
        out.clear();
        assert!(!inbox.take(&mut out));
    }
}
