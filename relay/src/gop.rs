//! The latest keyframe-started group of a video layer. An engine writes it
//! to a viewer that starts on the layer, and a gateway to a link that
//! starts carrying it: the receiver starts decoding at its keyframe at
//! once, instead of waiting for one asked of the publisher (throttled, and
//! answered no sooner than the publisher's encoder allows). A group older
//! than [`GOP_MAX_AGE`] or larger than [`GOP_MAX_BYTES`] is not kept: the
//! frames handed over at once would put playback that far behind live.

use std::time::{Duration, Instant};

use crate::MediaPacket;
use wave_vocab::Codec;

/// A group is replayed only while its keyframe is this recent.
pub const GOP_MAX_AGE: Duration = Duration::from_millis(1000);
/// Payload bytes a group may hold (per layer).
pub const GOP_MAX_BYTES: usize = 512 * 1024;

/// Packets from a layer's last keyframe start on, in arrival order.
#[derive(Default)]
pub struct Gop {
    packets: Vec<(Option<Codec>, MediaPacket)>,
    bytes: usize,
    /// When the group's keyframe arrived; `None`: no usable group.
    started: Option<Instant>,
}

impl Gop {
    /// One packet of the layer; `keyframe`: it starts a keyframe.
    pub fn push(&mut self, now: Instant, keyframe: bool, codec: Option<Codec>, packet: &MediaPacket) {
        let first_ts = self.packets.first().map(|(_, p)| p.rtp_ts);
        if keyframe && first_ts != Some(packet.rtp_ts) {
            // A new keyframe (its first packet; the SPS and the IDR of
            // one picture share a timestamp).
            self.packets.clear();
            self.bytes = 0;
            self.started = Some(now);
        }
        let Some(started) = self.started else {
            return;
        };
        self.bytes += packet.payload.len();
        if self.bytes > GOP_MAX_BYTES || now.saturating_duration_since(started) > GOP_MAX_AGE {
            self.clear();
            return;
        }
        self.packets.push((codec, packet.clone()));
    }

    /// The group, when one is usable now.
    pub fn replay(&self, now: Instant) -> Option<&[(Option<Codec>, MediaPacket)]> {
        let started = self.started?;
        (now.saturating_duration_since(started) <= GOP_MAX_AGE && !self.packets.is_empty())
            .then_some(&self.packets[..])
    }

    /// Forgets the group (and keeps nothing until the next keyframe).
    pub fn clear(&mut self) {
        self.packets = Vec::new();
        self.bytes = 0;
        self.started = None;
    }

    /// The group as of its newest packet (for a sender with no clock of
    /// its own: a layer that stalled keeps the group it had).
    pub fn latest(&self) -> Option<&[(Option<Codec>, MediaPacket)]> {
        let (_, last) = self.packets.last()?;
        self.replay(last.arrival)
    }

    /// Packets held.
    pub fn held(&self) -> usize {
        self.packets.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::Ext;

    use super::*;

    fn packet(seq: u64, ts: u32, bytes: usize) -> MediaPacket {
        MediaPacket {
            pt: 96,
            seq,
            rtp_ts: ts,
            arrival: Instant::now(),
            marker: false,
            ext: Ext::default(),
            payload: Arc::from(vec![0u8; bytes]),
        }
    }

    #[test]
    fn a_group_starts_at_a_keyframe_and_ends_at_its_bounds() {
        let t0 = Instant::now();
        let mut g = Gop::default();
        g.push(t0, false, None, &packet(1, 0, 100));
        assert!(g.replay(t0).is_none(), "nothing before a keyframe");
        g.push(t0, true, None, &packet(2, 3000, 100));
        // The IDR after its SPS: the same picture, the same group.
        g.push(t0, true, None, &packet(3, 3000, 100));
        g.push(t0, false, None, &packet(4, 6000, 100));
        let seqs: Vec<u64> = g.replay(t0).unwrap().iter().map(|(_, p)| p.seq).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        // The next keyframe starts a new group.
        g.push(t0, true, None, &packet(5, 9000, 100));
        assert_eq!(g.held(), 1);
        // Too old: not replayed, and dropped at the next packet.
        let late = t0 + GOP_MAX_AGE + Duration::from_millis(1);
        assert!(g.replay(late).is_none());
        g.push(late, false, None, &packet(6, 12_000, 100));
        assert_eq!(g.held(), 0);
        // Too large: dropped.
        g.push(late, true, None, &packet(7, 15_000, 100));
        g.push(late, false, None, &packet(8, 18_000, GOP_MAX_BYTES));
        assert!(g.replay(late).is_none());
    }
}
