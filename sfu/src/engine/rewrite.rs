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

/// Keeps VP8 payload descriptor counters (RFC 7741 §4.2) continuous across
/// source changes. Each simulcast encoder runs its own PictureID, TL0PICIDX
/// and KEYIDX; a receiver that sees them jump back matches new frames to
/// stale references and stops decoding until the counter passes them.
#[derive(Debug, Clone, Default)]
pub struct Vp8Rewriter {
    picture_offset: u16,
    tl0_offset: u8,
    key_offset: u8,
    last_picture: Option<u16>,
    last_tl0: Option<u8>,
    last_key: Option<u8>,
    rebase: bool,
}

/// PictureID is 15 bits (RFC 7741 §4.2, M=1); the 7-bit form wraps at 128.
const PICTURE_ID_MOD: u16 = 1 << 15;

impl Vp8Rewriter {
    /// The next packet starts a new source: continue the counters from the last ones sent.
    pub fn rebase(&mut self) {
        self.rebase = true;
    }

    /// The descriptor patch for one packet, `None` when nothing needs changing.
    pub fn rewrite(&mut self, payload: &[u8]) -> Option<str0m::rtp::Vp8Patch> {
        let desc = str0m::rtp::Vp8Descriptor::parse(payload).ok()?;
        if std::mem::take(&mut self.rebase) {
            if let (Some(last), Some(pid)) = (self.last_picture, desc.picture_id()) {
                self.picture_offset = (last + 1).wrapping_sub(pid) % PICTURE_ID_MOD;
            }
            if let (Some(last), Some(tl0)) = (self.last_tl0, desc.tl0_pic_idx()) {
                self.tl0_offset = last.wrapping_add(1).wrapping_sub(tl0);
            }
            if let (Some(last), Some(key)) = (self.last_key, desc.key_idx()) {
                self.key_offset = last.wrapping_add(1).wrapping_sub(key) & 0x1f;
            }
        }
        let mut patch = desc.patch();
        let mut changed = false;
        if let Some(pid) = desc.picture_id() {
            let mut out = (pid + self.picture_offset) % PICTURE_ID_MOD;
            // A 7-bit PictureID keeps its width: only the low 7 bits can move.
            if desc.patch().picture_id(out).build().is_err() {
                out &= 0x7f;
            }
            self.last_picture = Some(out);
            changed |= out != pid;
            patch = patch.picture_id(out);
        }
        if let Some(tl0) = desc.tl0_pic_idx() {
            let out = tl0.wrapping_add(self.tl0_offset);
            self.last_tl0 = Some(out);
            changed |= out != tl0;
            patch = patch.tl0_pic_idx(out);
        }
        if let Some(key) = desc.key_idx() {
            let out = key.wrapping_add(self.key_offset) & 0x1f;
            self.last_key = Some(out);
            changed |= out != key;
            patch = patch.key_idx(out);
        }
        if !changed {
            return None;
        }
        patch.build().ok()
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

    /// A VP8 descriptor with a 15-bit PictureID and TL0PICIDX (X, I, L, T set).
    fn vp8(pid: u16, tl0: u8) -> Vec<u8> {
        vec![
            0x90,
            0xe0,
            0x80 | (pid >> 8) as u8,
            pid as u8,
            tl0,
            0x20,
            0x00,
            0x00,
        ]
    }

    fn expect(payload: &[u8], pid: u16, tl0: u8) -> Option<str0m::rtp::Vp8Patch> {
        let d = str0m::rtp::Vp8Descriptor::parse(payload).unwrap();
        Some(d.patch().picture_id(pid).tl0_pic_idx(tl0).build().unwrap())
    }

    #[test]
    fn vp8_counters_continue_across_a_switch() {
        let mut rw = Vp8Rewriter::default();
        rw.rebase();
        assert!(
            rw.rewrite(&vp8(1000, 10)).is_none(),
            "first source passes through"
        );
        assert!(rw.rewrite(&vp8(1001, 10)).is_none());
        // The new layer's encoder counts from elsewhere.
        rw.rebase();
        let p = vp8(20, 200);
        assert_eq!(rw.rewrite(&p), expect(&p, 1002, 11));
        let p = vp8(21, 201);
        assert_eq!(rw.rewrite(&p), expect(&p, 1003, 12));
        // Wrapping at 2^15.
        let mut rw = Vp8Rewriter::default();
        rw.rewrite(&vp8(32_767, 255));
        rw.rebase();
        let p = vp8(5, 0);
        assert_eq!(rw.rewrite(&p), expect(&p, 0, 0));
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
