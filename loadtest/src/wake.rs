//! When a media thread must next wake (Sans-IO: instants in, instants out).
//!
//! Each peer has one deadline, the earlier of str0m's next timeout and, for a
//! publisher, its next frame. They live in a dense vector indexed by the
//! peer's slot, apart from the peers themselves, so finding the earliest is a
//! scan over a few KiB (thousands of peers in a microsecond or two) and an
//! update is one store: no allocation, no stale entries. The shard sleeps in
//! `ppoll` until that instant or until a datagram or a command arrives.

use std::time::{Duration, Instant};

/// Per-slot deadlines.
#[derive(Debug, Default)]
pub struct Deadlines {
    at: Vec<Option<Instant>>,
}

impl Deadlines {
    /// Slot `slot` wants to run at `at` (replacing its previous deadline).
    pub fn set(&mut self, slot: usize, at: Instant) {
        if self.at.len() <= slot {
            self.at.resize(slot + 1, None);
        }
        self.at[slot] = Some(at);
    }

    /// Slot `slot` needs no wake-up (its peer left).
    pub fn clear(&mut self, slot: usize) {
        if let Some(d) = self.at.get_mut(slot) {
            *d = None;
        }
    }

    /// The earliest deadline, if any slot has one.
    pub fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }

    /// Moves the slots due by `now` into `due` (ascending slot order) and
    /// clears their deadlines: whoever runs them sets the next ones.
    pub fn take_due(&mut self, now: Instant, due: &mut Vec<usize>) {
        due.clear();
        for (slot, d) in self.at.iter_mut().enumerate() {
            if d.is_some_and(|at| at <= now) {
                *d = None;
                due.push(slot);
            }
        }
    }
}

/// How long to sleep at `now` before `next` (`None`: until I/O or a
/// command). Zero when it is already due, which happens only when there is work.
pub fn sleep_for(now: Instant, next: Option<Instant>) -> Option<Duration> {
    next.map(|at| at.saturating_duration_since(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_deadline_means_sleep_until_io() {
        let now = Instant::now();
        let mut d = Deadlines::default();
        assert_eq!(d.next(), None);
        assert_eq!(sleep_for(now, d.next()), None);
        d.set(3, now + ms(5));
        d.clear(3);
        d.clear(99);
        assert_eq!(d.next(), None);
    }

    #[test]
    fn next_is_the_earliest_and_follows_updates() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        d.set(7, t0 + ms(40));
        d.set(2, t0 + ms(25));
        d.set(300, t0 + ms(33));
        assert_eq!(d.next(), Some(t0 + ms(25)));
        assert_eq!(sleep_for(t0, d.next()), Some(ms(25)));
        // A later deadline for the earliest slot replaces it (no stale entry).
        d.set(2, t0 + ms(50));
        assert_eq!(d.next(), Some(t0 + ms(33)));
        d.clear(300);
        assert_eq!(d.next(), Some(t0 + ms(40)));
        // Past deadlines sleep zero, never a negative or a panic.
        assert_eq!(sleep_for(t0 + ms(45), d.next()), Some(Duration::ZERO));
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
        assert_eq!(d.next(), Some(t0 + ms(20)));
        d.take_due(t0 + ms(10), &mut due);
        assert!(due.is_empty(), "a taken slot is not due again until set");
        d.take_due(t0 + ms(100), &mut due);
        assert_eq!(due, [1, 9]);
        assert_eq!(d.next(), None);
    }
}
