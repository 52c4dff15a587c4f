//! The rooms this node has claimed, fed the time and the set of rooms the
//! media node still hosts. It decides; the driver talks to the KV bucket.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::media::RoomId;

/// What the driver should do with one claim on this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimAction {
    /// Rewrite the claim at `revision` to restart its TTL.
    Refresh { room: RoomId, revision: u64 },
    /// The room has no publisher here any more: delete the claim at `revision`.
    Release { room: RoomId, revision: u64 },
}

#[derive(Debug)]
struct Owned {
    revision: u64,
    claimed_at: Instant,
}

/// Claims held by this node.
#[derive(Debug)]
pub struct ClaimBook {
    /// A fresh claim is kept this long even if the room is not active yet:
    /// the publisher's offer is still being answered.
    grace: Duration,
    owned: BTreeMap<RoomId, Owned>,
}

impl ClaimBook {
    pub fn new(grace: Duration) -> ClaimBook {
        ClaimBook {
            grace,
            owned: BTreeMap::new(),
        }
    }

    /// The KV `create` (or a takeover `update`) succeeded at `revision`.
    pub fn handle_claimed(&mut self, now: Instant, room: RoomId, revision: u64) {
        self.owned.insert(
            room,
            Owned {
                revision,
                claimed_at: now,
            },
        );
    }

    /// A refresh succeeded at the new `revision`.
    pub fn handle_refreshed(&mut self, room: &RoomId, revision: u64) {
        if let Some(o) = self.owned.get_mut(room) {
            o.revision = revision;
        }
    }

    /// The claim is gone (released, or another node holds the key now).
    pub fn handle_lost(&mut self, room: &RoomId) {
        self.owned.remove(room);
    }

    pub fn owns(&self, room: &RoomId) -> bool {
        self.owned.contains_key(room)
    }

    pub fn rooms(&self) -> impl Iterator<Item = &RoomId> {
        self.owned.keys()
    }

    /// One heartbeat: refresh claims of rooms still hosted (or just
    /// claimed), release the others. Ordered by room.
    pub fn poll_actions(&self, now: Instant, active: &BTreeSet<RoomId>) -> Vec<ClaimAction> {
        self.owned
            .iter()
            .map(|(room, o)| {
                let young = now.saturating_duration_since(o.claimed_at) < self.grace;
                let room = room.clone();
                if active.contains(&room) || young {
                    ClaimAction::Refresh {
                        room,
                        revision: o.revision,
                    }
                } else {
                    ClaimAction::Release {
                        room,
                        revision: o.revision,
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(s: &str) -> RoomId {
        RoomId::parse(s).unwrap()
    }

    #[test]
    fn active_rooms_refresh_and_idle_ones_release_after_grace() {
        let t0 = Instant::now();
        let mut book = ClaimBook::new(Duration::from_secs(2));
        book.handle_claimed(t0, room("a"), 5);
        book.handle_claimed(t0, room("b"), 6);
        let active: BTreeSet<RoomId> = [room("a")].into();

        // Within the grace period both are refreshed, even b whose publisher
        // is still negotiating.
        let now = t0 + Duration::from_secs(1);
        assert_eq!(
            book.poll_actions(now, &active),
            [
                ClaimAction::Refresh {
                    room: room("a"),
                    revision: 5
                },
                ClaimAction::Refresh {
                    room: room("b"),
                    revision: 6
                },
            ]
        );
        book.handle_refreshed(&room("a"), 9);

        let later = t0 + Duration::from_secs(3);
        assert_eq!(
            book.poll_actions(later, &active),
            [
                ClaimAction::Refresh {
                    room: room("a"),
                    revision: 9
                },
                ClaimAction::Release {
                    room: room("b"),
                    revision: 6
                },
            ]
        );
        book.handle_lost(&room("b"));
        assert!(book.owns(&room("a")));
        assert!(!book.owns(&room("b")));
        assert_eq!(book.rooms().count(), 1);
    }
}
