//! Keeps one outgoing RTP stream continuous while its source changes.
//!
//! A viewer sees one SSRC per track for its whole session. Behind it the
//! source may switch between simulcast layers (each with its own sequence
//! space and RTP clock origin) or be replaced by a reconnecting publisher.
//! On every such change the rewriter is rebased so the next packet continues
//! exactly where the last one left off: sequence number + 1, and a timestamp
//! advanced by the wall-clock time that really passed.

use std::time::Instant;

/// Sequence/timestamp rewriting state of one outgoing stream.
#[derive(Debug, Clone)]
pub struct Rewriter {
    clock_rate: u32,
    /// out_seq = in_seq + seq_offset (in the extended, 64-bit space).
    seq_offset: i64,
    ts_offset: u32,
    /// Packets older than this input sequence belong to the previous source.
    base_in_seq: u64,
    last_out_seq: u64,
    last_out_ts: u32,
    last_out_at: Option<Instant>,
    started: bool,
}

/// A rewritten (sequence number, timestamp) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    pub seq: u64,
    pub ts: u32,
}

impl Rewriter {
    /// `first_seq` is where the outgoing sequence space starts (RFC 3550 §5.1
    /// recommends a random origin; it is kept below 2^15 so the receiver's
    /// rollover counter starts at zero, see str0m's `RtpWrite::new`).
    pub fn new(clock_rate: u32, first_seq: u16) -> Rewriter {
        Rewriter {
            clock_rate: clock_rate.max(1),
            seq_offset: 0,
            ts_offset: 0,
            base_in_seq: 0,
            last_out_seq: u64::from(first_seq & 0x7fff),
            last_out_ts: 0,
            last_out_at: None,
            started: false,
        }
    }

    /// Makes `in_seq`/`in_ts` (the first packet of a new source) follow the
    /// last packet sent.
    pub fn rebase(&mut self, in_seq: u64, in_ts: u32, now: Instant) {
        let next_seq = if self.started {
            self.last_out_seq + 1
        } else {
            self.last_out_seq
        };
        self.seq_offset = next_seq as i64 - in_seq as i64;
        let next_ts = match self.last_out_at {
            Some(at) => {
                let elapsed = now.saturating_duration_since(at);
                let ticks = (elapsed.as_micros() as u64 * u64::from(self.clock_rate) / 1_000_000).max(1);
                self.last_out_ts.wrapping_add(ticks as u32)
            }
            None => in_ts,
        };
        self.ts_offset = next_ts.wrapping_sub(in_ts);
        self.base_in_seq = in_seq;
    }

    /// Rewrites one packet of the current source, or `None` for a packet
    /// that predates the last rebase (it belongs to the previous source).
    pub fn rewrite(&mut self, in_seq: u64, in_ts: u32, now: Instant) -> Option<Rewritten> {
        if in_seq < self.base_in_seq {
            return None;
        }
        let out = in_seq as i64 + self.seq_offset;
        if out < 0 {
            return None;
        }
        let seq = out as u64;
        let ts = in_ts.wrapping_add(self.ts_offset);
        if !self.started || seq > self.last_out_seq {
            self.last_out_seq = seq;
            self.last_out_ts = ts;
            self.last_out_at = Some(now);
        }
        self.started = true;
        Some(Rewritten { seq, ts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn continuous_across_a_source_switch() {
        let t0 = Instant::now();
        let mut rw = Rewriter::new(90_000, 100);
        rw.rebase(5_000, 1_000_000, t0);
        assert_eq!(
            rw.rewrite(5_000, 1_000_000, t0),
            Some(Rewritten {
                seq: 100,
                ts: 1_000_000
            })
        );
        assert_eq!(
            rw.rewrite(5_001, 1_003_000, t0),
            Some(Rewritten {
                seq: 101,
                ts: 1_003_000
            })
        );

        // A new layer with an unrelated origin, 33 ms later.
        let t1 = t0 + Duration::from_millis(33);
        rw.rebase(70, 42, t1);
        let r = rw.rewrite(70, 42, t1).unwrap();
        assert_eq!(r.seq, 102);
        assert_eq!(r.ts, 1_003_000 + 2_970);
        assert_eq!(rw.rewrite(71, 42 + 3_000, t1).unwrap().seq, 103);
        // A late packet of the old source is dropped.
        assert_eq!(rw.rewrite(69, 0, t1), None);
    }

    #[test]
    fn gaps_are_kept_so_the_receiver_can_nack() {
        let t0 = Instant::now();
        let mut rw = Rewriter::new(48_000, 1);
        rw.rebase(10, 0, t0);
        assert_eq!(rw.rewrite(10, 0, t0).unwrap().seq, 1);
        assert_eq!(rw.rewrite(13, 960, t0).unwrap().seq, 4);
        // The retransmission of a missing packet lands in the hole.
        assert_eq!(rw.rewrite(11, 480, t0).unwrap().seq, 2);
    }

    #[test]
    fn timestamps_wrap() {
        let t0 = Instant::now();
        let mut rw = Rewriter::new(90_000, 0);
        rw.rebase(1, u32::MAX - 10, t0);
        rw.rewrite(1, u32::MAX - 10, t0).unwrap();
        let t1 = t0 + Duration::from_millis(1);
        rw.rebase(500, 7, t1);
        assert_eq!(
            rw.rewrite(500, 7, t1).unwrap().ts,
            (u32::MAX - 10).wrapping_add(90)
        );
    }
}
