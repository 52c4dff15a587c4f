#![allow(dead_code)]
pub mod node;
pub mod sim;

use sim::Received;
use str0m::media::MediaKind;

/// The packets of one kind a viewer received, in arrival order.
pub fn of_kind(received: &[Received], kind: MediaKind) -> Vec<&Received> {
    received.iter().filter(|r| r.kind == kind).collect()
}

/// Asserts one SSRC, sequence numbers without a gap or repeat, and
/// timestamps that never go backwards: what a decoder needs to see one stream.
pub fn assert_continuous(packets: &[&Received]) {
    assert!(!packets.is_empty(), "no packets");
    let ssrc = packets[0].ssrc;
    for w in packets.windows(2) {
        assert_eq!(w[1].ssrc, ssrc, "SSRC changed");
        assert_eq!(
            w[1].seq,
            w[0].seq + 1,
            "sequence gap or reorder: {} -> {}",
            w[0].seq,
            w[1].seq
        );
        let dt = w[1].ts.wrapping_sub(w[0].ts);
        assert!(
            dt < u32::MAX / 2,
            "timestamp went backwards: {} -> {}",
            w[0].ts,
            w[1].ts
        );
    }
}

/// (tag, layer, frame, keyframe) of every frame start a viewer received.
pub fn frames(received: &[Received]) -> Vec<(u8, usize, u32, bool)> {
    of_kind(received, MediaKind::Video)
        .iter()
        .filter_map(|r| r.video_tag())
        .collect()
}
