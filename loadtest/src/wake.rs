//! When a media thread must next wake (Sans-IO: instants in, instants out).
//!
//! Each peer has one deadline, the earlier of str0m's next timeout and, for a
//! publisher, its next frame, kept per slot (the truth) and in a min-heap of
//! `(deadline, slot)` in which a replaced deadline stays behind and is
//! skipped when it surfaces. The earliest is a peek, the due slots are pops,
//! an update is a push (none when the deadline did not move), and the heap is
//! rebuilt from the slots when stale entries outnumber them 4 to 1. A scan of
//! every slot per wake-up cost ~3.7 ns a slot here (`next` plus `take_due`:
//! ~7 µs at 2,000 peers), and a shard wakes thousands of times a second at
//! 1,000+ viewers. The shard sleeps in `ppoll` until that instant or until a
//! datagram or a command arrives.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Heap entries allowed per slot before the heap is rebuilt without the
/// stale ones (amortised O(1) per update).
const STALE_FACTOR: usize = 4;

/// Rounds `at` up to the next multiple of `grid` after `epoch` (`at` itself
/// when on the grid or before `epoch`). Peers whose deadlines are rounded
/// to a shared grid come due together: one wake-up runs them all.
pub fn round_up(at: Instant, epoch: Instant, grid: Duration) -> Instant {
    let grid_ns = grid.as_nanos();
    if grid_ns == 0 {
        return at;
    }
    let Some(since) = at.checked_duration_since(epoch) else {
        return at;
    };
    let rest = since.as_nanos() % grid_ns;
    if rest == 0 {
        return at;
    }
    // The remainder is below one grid step, so it fits in a u64 of nanoseconds.
    at + Duration::from_nanos((grid_ns - rest) as u64)
}

/// Per-slot deadlines.
#[derive(Debug, Default)]
pub struct Deadlines {
    /// Each slot's current deadline.
    at: Vec<Option<Instant>>,
    /// Earliest first; entries that no longer match `at` are stale.
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Deadlines {
    /// Slot `slot` wants to run at `at` (replacing its previous deadline).
    pub fn set(&mut self, slot: usize, at: Instant) {
        if self.at.len() <= slot {
            self.at.resize(slot + 1, None);
        }
        if self.at[slot] == Some(at) {
            return;
        }
        self.at[slot] = Some(at);
        self.heap.push(Reverse((at, slot)));
        if self.heap.len() > STALE_FACTOR * self.at.len() + 64 {
            self.heap = self
                .at
                .iter()
                .enumerate()
                .filter_map(|(slot, at)| Some(Reverse(((*at)?, slot))))
                .collect();
        }
    }

    /// Slot `slot` needs no wake-up (its peer left).
    pub fn clear(&mut self, slot: usize) {
        if let Some(d) = self.at.get_mut(slot) {
            *d = None;
        }
    }

    /// The earliest deadline, if any slot has one (drops stale entries on top).
    pub fn earliest(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, slot))) = self.heap.peek() {
            if self.at[slot] == Some(at) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Moves the slots due by `now` into `due` (ascending slot order) and
    /// clears their deadlines: whoever runs them sets the next ones.
    pub fn take_due(&mut self, now: Instant, due: &mut Vec<usize>) {
        due.clear();
        while let Some(&Reverse((at, slot))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            // A slot can have the same deadline in the heap twice (set to
            // A, B, then A again); the first one takes it.
            if self.at[slot] == Some(at) {
                self.at[slot] = None;
                due.push(slot);
            }
        }
        due.sort_unstable();
    }

    /// Heap entries, stale ones included (for tests).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_deadline_without_a_slot_set() {
        let now = Instant::now();
        let mut d = Deadlines::default();
        assert_eq!(d.earliest(), None);
        d.set(3, now + ms(5));
        d.clear(3);
        d.clear(99);
        assert_eq!(d.earliest(), None);
    }

    #[test]
    fn next_is_the_earliest_and_follows_updates() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        d.set(7, t0 + ms(40));
        d.set(2, t0 + ms(25));
        d.set(300, t0 + ms(33));
        assert_eq!(d.earliest(), Some(t0 + ms(25)));
        // A later deadline for the earliest slot replaces it (the old entry is skipped).
        d.set(2, t0 + ms(50));
        assert_eq!(d.earliest(), Some(t0 + ms(33)));
        d.clear(300);
        assert_eq!(d.earliest(), Some(t0 + ms(40)));
    }

    #[test]
    fn take_due_moves_only_due_slots_and_clears_them() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        d.set(0, t0 + ms(10));
        d.set(1, t0 + ms(20));
        d.set(5, t0 + ms(10));
        d.set(9, t0 + ms(30));
        let mut due = vec![42];
        d.take_due(t0 + ms(10), &mut due);
        assert_eq!(due, [0, 5]);
        assert_eq!(d.earliest(), Some(t0 + ms(20)));
        d.take_due(t0 + ms(10), &mut due);
        assert!(due.is_empty(), "a taken slot is not due again until set");
        d.take_due(t0 + ms(100), &mut due);
        assert_eq!(due, [1, 9]);
        assert_eq!(d.earliest(), None);
    }

    #[test]
    fn replaced_deadlines_do_not_pile_up() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        for slot in 0..100 {
            d.set(slot, t0 + ms(1_000 + slot as u64));
        }
        // Every datagram moves its peer's deadline: 100,000 updates.
        for i in 0..100_000u64 {
            d.set((i % 100) as usize, t0 + ms(i % 997));
        }
        assert!(d.entries() <= STALE_FACTOR * 100 + 64, "{}", d.entries());
        // The truth is the last update of each slot: i = 99,900 + slot.
        let want = (0..100u64).map(|s| t0 + ms((99_900 + s) % 997)).min();
        assert_eq!(d.earliest(), want);
        let mut due = Vec::new();
        d.take_due(t0 + ms(1_000), &mut due);
        assert_eq!(due, (0..100).collect::<Vec<_>>());
        assert_eq!(d.earliest(), None);
        // A deadline set back to an earlier value is due once.
        d.set(3, t0 + ms(5));
        d.set(3, t0 + ms(9));
        d.set(3, t0 + ms(5));
        d.take_due(t0 + ms(20), &mut due);
        assert_eq!(due, [3]);
        assert_eq!(d.earliest(), None);
    }

    #[test]
    fn round_up_lands_on_the_grid_and_never_early() {
        let epoch = Instant::now();
        let grid = ms(100);
        assert_eq!(round_up(epoch + ms(1), epoch, grid), epoch + ms(100));
        assert_eq!(round_up(epoch + ms(100), epoch, grid), epoch + ms(100));
        assert_eq!(round_up(epoch + ms(101), epoch, grid), epoch + ms(200));
        assert_eq!(
            round_up(epoch + Duration::from_nanos(250_000_001), epoch, grid),
            epoch + ms(300)
        );
        // Before the epoch, or without a grid: unchanged.
        let early = epoch.checked_sub(ms(5)).unwrap_or(epoch);
        assert_eq!(round_up(early, epoch, grid), early);
        assert_eq!(round_up(epoch + ms(7), epoch, Duration::ZERO), epoch + ms(7));
        // Peers with deadlines spread over one step share one instant.
        let mut d = Deadlines::default();
        for slot in 0..50 {
            d.set(slot, round_up(epoch + ms(301 + slot as u64), epoch, grid));
        }
        let mut due = Vec::new();
        d.take_due(epoch + ms(400), &mut due);
        assert_eq!(due.len(), 50);
    }
}
