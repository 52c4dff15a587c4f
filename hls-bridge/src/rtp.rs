//! RTP bookkeeping shared by every track: sequence and timestamp unwrapping,
//! and a small reorder buffer that turns a late or missing packet into an
//! explicit "lost before this one" signal for the depacketizers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Extends 16-bit RTP sequence numbers to 64 bits (RFC 3550 A.1 style).
#[derive(Debug, Default)]
pub(crate) struct SeqUnwrapper {
    last: Option<u64>,
}

impl SeqUnwrapper {
    /// Starts far from zero so that reordered packets before the first one
    /// never underflow.
    const ORIGIN: u64 = 1 << 32;

    pub(crate) fn unwrap(&mut self, seq: u16) -> u64 {
        let ext = match self.last {
            None => Self::ORIGIN + u64::from(seq),
            Some(last) => {
                let diff = i64::from(seq.wrapping_sub(last as u16) as i16);
                last.saturating_add_signed(diff)
            }
        };
        if self.last.is_none_or(|l| ext > l) {
            self.last = Some(ext);
        }
        ext
    }
}

/// Extends 32-bit RTP timestamps to 64 bits, relative to the first one seen.
#[derive(Debug, Default)]
pub(crate) struct TsUnwrapper {
    last: Option<(u32, i64)>,
}

impl TsUnwrapper {
    pub(crate) fn unwrap(&mut self, ts: u32) -> i64 {
        let ext = match self.last {
            None => i64::from(ts),
            Some((raw, ext)) => ext + i64::from(ts.wrapping_sub(raw) as i32),
        };
        if self.last.is_none_or(|(_, l)| ext > l) {
            self.last = Some((ts, ext));
        }
        ext
    }
}

/// A packet the reorder buffer owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnedPacket {
    pub(crate) seq: u64,
    pub(crate) timestamp: u32,
    pub(crate) marker: bool,
    pub(crate) payload: Vec<u8>,
}

/// What leaves the reorder buffer: packets in sequence order, each saying
/// how many packets were given up on just before it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Released {
    pub(crate) packet: OwnedPacket,
    pub(crate) lost_before: u64,
}

/// Holds out-of-order packets until the gap fills, the buffer holds
/// `max_held` packets, or the oldest held packet waited `max_wait`.
#[derive(Debug)]
pub(crate) struct Reorder {
    next: Option<u64>,
    held: BTreeMap<u64, (Instant, OwnedPacket)>,
    max_held: usize,
    max_wait: Duration,
    /// Packets that came after their slot was given up on, or twice.
    pub(crate) late_or_duplicate: u64,
}

impl Reorder {
    pub(crate) fn new(max_held: usize, max_wait: Duration) -> Self {
        Self {
            next: None,
            held: BTreeMap::new(),
            max_held: max_held.max(1),
            max_wait,
            late_or_duplicate: 0,
        }
    }

    pub(crate) fn push(&mut self, now: Instant, packet: OwnedPacket) {
        if self.next.is_some_and(|n| packet.seq < n) || self.held.contains_key(&packet.seq) {
            self.late_or_duplicate += 1;
            return;
        }
        self.next.get_or_insert(packet.seq);
        self.held.insert(packet.seq, (now, packet));
    }

    pub(crate) fn pop(&mut self, now: Instant) -> Option<Released> {
        let next = self.next?;
        let (&first, (at, _)) = self.held.first_key_value()?;
        let give_up = self.held.len() > self.max_held || now.saturating_duration_since(*at) >= self.max_wait;
        if first != next && !give_up {
            return None;
        }
        let (_, packet) = self.held.remove(&first)?;
        self.next = Some(first + 1);
        Some(Released {
            packet,
            lost_before: first - next,
        })
    }

    /// When the oldest held packet stops waiting for a gap to fill.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let next = self.next?;
        let (&first, (at, _)) = self.held.first_key_value()?;
        (first != next).then_some(*at + self.max_wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u64) -> OwnedPacket {
        OwnedPacket {
            seq,
            timestamp: 0,
            marker: false,
            payload: vec![],
        }
    }

    fn drain(r: &mut Reorder, now: Instant) -> Vec<(u64, u64)> {
        std::iter::from_fn(|| r.pop(now))
            .map(|x| (x.packet.seq, x.lost_before))
            .collect()
    }

    #[test]
    fn seq_unwrap_crosses_wrap_and_accepts_reordering() {
        let mut u = SeqUnwrapper::default();
        let a = u.unwrap(65534);
        assert_eq!(u.unwrap(65535), a + 1);
        assert_eq!(u.unwrap(1), a + 3);
        assert_eq!(u.unwrap(0), a + 2);
        assert_eq!(u.unwrap(2), a + 4);
    }

    #[test]
    fn ts_unwrap_crosses_wrap() {
        let mut u = TsUnwrapper::default();
        let a = u.unwrap(u32::MAX - 1000);
        assert_eq!(u.unwrap(2000), a + 3001);
        assert_eq!(u.unwrap(u32::MAX - 500), a + 500);
    }

    #[test]
    fn reorder_fills_gaps_then_gives_up() {
        let t0 = Instant::now();
        let mut r = Reorder::new(4, Duration::from_millis(100));
        r.push(t0, pkt(10));
        r.push(t0, pkt(12));
        r.push(t0, pkt(11));
        assert_eq!(drain(&mut r, t0), vec![(10, 0), (11, 0), (12, 0)]);
        r.push(t0, pkt(14));
        assert_eq!(drain(&mut r, t0), vec![]);
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_millis(100)));
        assert_eq!(drain(&mut r, t0 + Duration::from_millis(100)), vec![(14, 1)]);
        r.push(t0, pkt(13));
        r.push(t0, pkt(14));
        assert_eq!(r.late_or_duplicate, 2);
    }

    #[test]
    fn reorder_gives_up_when_full() {
        let t0 = Instant::now();
        let mut r = Reorder::new(2, Duration::from_secs(10));
        r.push(t0, pkt(1));
        assert_eq!(drain(&mut r, t0), vec![(1, 0)]);
        for s in [3, 4, 5] {
            r.push(t0, pkt(s));
        }
        assert_eq!(drain(&mut r, t0), vec![(3, 1), (4, 0), (5, 0)]);
    }
}
