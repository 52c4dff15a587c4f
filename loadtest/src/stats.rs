//! Statistics: percentiles, an HDR histogram, RFC 3550 jitter, and
//! loss counting over extended sequence numbers.

use serde::Serialize;

/// p50/p95/p99/max of a set of values (nearest-rank percentiles).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentile `p` (0–100) of sorted `v`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Summary {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Summary {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Summary::default();
        }
        v.sort_by(f64::total_cmp);
        Summary {
            count: v.len(),
            p50: percentile(&v, 50.0),
            p95: percentile(&v, 95.0),
            p99: percentile(&v, 99.0),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }
}

/// Microsecond values in an HDR histogram of 2 significant figures
/// (hdrhistogram, resizing to the largest value seen): bounded memory for
/// millions of latency samples, quantiles within 1 %; max and mean exact.
#[derive(Debug, Clone)]
pub struct Histogram {
    hdr: hdrhistogram::Histogram<u64>,
    max: u64,
    sum: u128,
}

/// Quantiles within 1/128 of the value (hdrhistogram's sub-bucket width).
const SIGNIFICANT_FIGURES: u8 = 2;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            // Invariant: 2 significant figures is within hdrhistogram's 0–5.
            hdr: hdrhistogram::Histogram::new(SIGNIFICANT_FIGURES).expect("2 significant figures are valid"),
            max: 0,
            sum: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        // The histogram resizes up to about 2^62; a value past that counts
        // at the top of its range.
        if self.hdr.record(us).is_err() {
            self.hdr.saturating_record(us);
        }
        self.max = self.max.max(us);
        self.sum += u128::from(us);
    }

    pub fn merge(&mut self, other: &Histogram) {
        // Invariant: an auto-resizing histogram accepts any other's range.
        self.hdr.add(&other.hdr).expect("auto-resizing histograms merge");
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.hdr.len()
    }

    /// Heap bytes the counts take.
    pub fn bytes(&self) -> usize {
        self.hdr.distinct_values() * std::mem::size_of::<u64>()
    }

    /// The value at percentile `p` (0–100), in microseconds.
    pub fn quantile(&self, p: f64) -> f64 {
        if self.hdr.is_empty() {
            return 0.0;
        }
        (self.hdr.value_at_quantile(p / 100.0) as f64).min(self.max as f64)
    }

    /// p50/p95/p99/max in milliseconds.
    pub fn summary_ms(&self) -> Summary {
        let total = self.count();
        if total == 0 {
            return Summary::default();
        }
        Summary {
            count: total as usize,
            p50: self.quantile(50.0) / 1000.0,
            p95: self.quantile(95.0) / 1000.0,
            p99: self.quantile(99.0) / 1000.0,
            max: self.max as f64 / 1000.0,
            mean: (self.sum as f64 / total as f64) / 1000.0,
        }
    }
}

/// Interarrival jitter (RFC 3550 §6.4.1 and A.8), in RTP clock units.
#[derive(Debug, Clone, Default)]
pub struct Jitter {
    last_transit: Option<i64>,
    jitter: f64,
}

impl Jitter {
    /// `arrival` in RTP clock units on the receiver's clock; `rtp_ts` from the header.
    pub fn update(&mut self, arrival: i64, rtp_ts: u32) {
        let transit = arrival - i64::from(rtp_ts);
        if let Some(last) = self.last_transit {
            // Timestamps wrap at 2^32: the difference is taken in that space.
            let d = (transit - last) as i32;
            self.jitter += (f64::from(d.unsigned_abs()) - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    pub fn value(&self) -> f64 {
        self.jitter
    }
}

/// Unique packets received against those expected, over extended sequence
/// numbers; duplicates (retransmissions that raced the original) count once.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    first: Option<u64>,
    max: u64,
    received: u64,
    window: [u64; WINDOW / 64],
}

const WINDOW: usize = 1024;

impl SeqTracker {
    fn bit(&mut self, seq: u64) -> (usize, u64) {
        let i = (seq % WINDOW as u64) as usize;
        (i / 64, 1u64 << (i % 64))
    }

    pub fn record(&mut self, seq: u64) {
        let Some(first) = self.first else {
            self.first = Some(seq);
            self.max = seq;
            self.received = 1;
            let (w, b) = self.bit(seq);
            self.window[w] |= b;
            return;
        };
        if seq < first || seq + WINDOW as u64 <= self.max {
            return; // older than the window: too late to count
        }
        if seq > self.max {
            if seq - self.max >= WINDOW as u64 {
                self.window = [0; WINDOW / 64];
            } else {
                // Up to and including `seq`: its slot still holds the bit of
                // `seq - WINDOW`, which would count `seq` as a duplicate.
                for s in self.max + 1..=seq {
                    let (w, b) = self.bit(s);
                    self.window[w] &= !b;
                }
            }
            self.max = seq;
        }
        let (w, b) = self.bit(seq);
        if self.window[w] & b == 0 {
            self.window[w] |= b;
            self.received += 1;
        }
    }

    /// Extends a 16-bit RTP sequence number to the value nearest the highest
    /// one recorded (RFC 3550 A.1: a jump of less than half the space is
    /// taken as forward, else as a late or reordered packet), so a packet
    /// counted from its header continues the numbering str0m started.
    pub fn extend(&self, seq: u16) -> u64 {
        // Before the first packet: one full cycle up, so a reordered
        // predecessor still has a value.
        let Some(_) = self.first else {
            return (1 << 16) | u64::from(seq);
        };
        let cycle = self.max & !0xffff;
        let candidate = cycle | u64::from(seq);
        if candidate > self.max && candidate - self.max > 1 << 15 && cycle > 0 {
            candidate - (1 << 16)
        } else if candidate < self.max && self.max - candidate > 1 << 15 {
            candidate + (1 << 16)
        } else {
            candidate
        }
    }

    pub fn expected(&self) -> u64 {
        self.first.map_or(0, |f| self.max - f + 1)
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Summary::of((1..=100).map(f64::from));
        assert_eq!((s.p50, s.p95, s.p99, s.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(s.mean, 50.5);
        let one = Summary::of([7.0]);
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        assert_eq!(Summary::of([]).count, 0);
        let s = Summary::of([3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((s.count, s.p50, s.max), (3, 2.0, 3.0));
    }

    #[test]
    fn histogram_quantiles_within_one_percent() {
        let mut h = Histogram::default();
        for us in 1..=10_000u64 {
            h.record(us);
        }
        for (p, want) in [(50.0, 5000.0), (95.0, 9500.0), (99.0, 9900.0)] {
            let got = h.quantile(p);
            assert!((got - want).abs() / want < 0.01, "p{p}: {got} vs {want}");
        }
        let mut other = Histogram::default();
        other.record(1_000_000);
        h.merge(&other);
        assert_eq!(h.count(), 10_001);
        assert_eq!(h.summary_ms().max, 1000.0);
    }

    #[test]
    fn jitter_follows_rfc3550() {
        // Perfectly paced arrivals: no jitter.
        let mut j = Jitter::default();
        for i in 0..100 {
            j.update(1000 + i * 3000, (i * 3000) as u32);
        }
        assert_eq!(j.value(), 0.0);
        // One packet 160 units late: J = 160/16 = 10, then the next on time
        // is again 160 off the late one: J = 10 + (160 - 10)/16.
        let mut j = Jitter::default();
        j.update(0, 0);
        j.update(3160, 3000);
        assert_eq!(j.value(), 10.0);
        j.update(6000, 6000);
        assert_eq!(j.value(), 10.0 + 150.0 / 16.0);
        // Across the 32-bit timestamp wrap.
        let mut j = Jitter::default();
        j.update(0, u32::MAX - 1499);
        j.update(3000, 1500);
        assert_eq!(j.value(), 0.0);
    }

    #[test]
    fn seq_tracker_counts_loss_and_ignores_duplicates() {
        let mut t = SeqTracker::default();
        for s in [100, 101, 103, 103, 104, 102] {
            t.record(s);
        }
        assert_eq!((t.expected(), t.received(), t.lost()), (5, 5, 0));
        t.record(110);
        assert_eq!((t.expected(), t.received(), t.lost()), (11, 6, 5));
        // A late retransmission inside the window repairs a loss.
        t.record(107);
        assert_eq!(t.lost(), 4);
        // A jump beyond the window, then something older than it: ignored.
        t.record(5000);
        t.record(200);
        assert_eq!(t.received(), 8);
        assert_eq!(t.expected(), 4901);
    }

    #[test]
    fn seq_tracker_counts_in_order_packets_beyond_its_window() {
        let mut t = SeqTracker::default();
        for s in 0..5 * WINDOW as u64 {
            t.record(s);
        }
        assert_eq!((t.expected(), t.lost()), (5 * WINDOW as u64, 0));
    }

    /// Feeds 16-bit sequence numbers as a header-counted viewer does.
    fn feed(t: &mut SeqTracker, seqs: impl IntoIterator<Item = u16>) {
        for s in seqs {
            t.record(t.extend(s));
        }
    }

    #[test]
    fn extended_sequence_numbers_cross_the_wrap() {
        let mut t = SeqTracker::default();
        // 65,530 .. 65,535, 0 .. 9 with 65,534 and 3 lost.
        feed(&mut t, (65_530..=65_535).filter(|&s| s != 65_534));
        feed(&mut t, (0..10).filter(|&s| s != 3));
        assert_eq!((t.expected(), t.received(), t.lost()), (16, 14, 2));
        // The late 65,534 arrives after the wrap: it repairs, not a new cycle.
        feed(&mut t, [65_534]);
        assert_eq!((t.expected(), t.lost()), (16, 1));
        // Several more cycles without loss keep the count exact.
        let mut s = 10u16;
        for _ in 0..3 * 65_536 {
            feed(&mut t, [s]);
            s = s.wrapping_add(1);
        }
        assert_eq!((t.expected(), t.lost()), (16 + 3 * 65_536, 1));
    }

    #[test]
    fn extended_sequence_numbers_survive_reordering() {
        let mut t = SeqTracker::default();
        // Swapped pairs around the wrap, and a duplicate.
        feed(&mut t, [65_533, 65_535, 65_534, 1, 0, 2, 2, 4, 3]);
        assert_eq!((t.expected(), t.received(), t.lost()), (8, 8, 0));
        // A first packet followed by its predecessor (reordered at the start).
        let mut t = SeqTracker::default();
        feed(&mut t, [0, 65_535, 1]);
        assert_eq!(t.extend(2), t.extend(1) + 1);
        assert_eq!((t.expected(), t.received()), (2, 2));
    }

    #[test]
    fn header_counting_continues_str0m_numbering() {
        // str0m handed over at extended 3 * 65,536 + 65,535; the header path goes on.
        let mut t = SeqTracker::default();
        let base = 3 * 65_536 + 65_530;
        for s in base..base + 6 {
            t.record(s);
        }
        assert_eq!(t.extend(0), 4 * 65_536);
        assert_eq!(t.extend(65_534), 3 * 65_536 + 65_534);
        feed(&mut t, [0, 2]);
        assert_eq!((t.expected(), t.lost()), (9, 1));
    }
}
