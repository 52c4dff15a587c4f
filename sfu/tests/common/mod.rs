#![allow(dead_code)]
pub mod chat;
/// hls-bridge's LL-HLS conformance checker (C1–C12, C16–C18).
#[path = "../../../hls-bridge/tests/common/checker.rs"]
pub mod checker;
pub mod hls;
pub mod interop;
pub mod logs;
#[path = "../../../signaling/tests/common/nats.rs"]
pub mod nats;
pub mod netns;
pub mod node;
pub mod pki;
#[path = "../../../signaling/tests/common/placement.rs"]
pub mod placement;
pub mod publisher;
pub mod rtc_io;
pub mod rtmp;
pub mod rtsp;
pub mod sim;
pub mod viewer;

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

/// Every frame (the publisher numbers them alike on every layer), none
/// skipped: nothing was lost between the engines. A switch lands on the
/// target layer's keyframe of the same frame or the next one (the layers
/// of one frame are sent low to high).
pub fn assert_every_frame(f: &[(u8, usize, u32, bool)]) {
    for w in f.windows(2) {
        if w[0].1 == w[1].1 {
            assert_eq!(w[1].2, w[0].2 + 1, "frame skipped or repeated: {w:?}");
        } else {
            assert!(w[1].3, "switch {} -> {} not at a keyframe", w[0].1, w[1].1);
            assert!(
                w[1].2 == w[0].2 || w[1].2 == w[0].2 + 1,
                "frames skipped at a switch: {w:?}"
            );
        }
    }
}

/// The layers of successive frames, each run of one layer once.
pub fn layers_seen(f: &[(u8, usize, u32, bool)]) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for x in f {
        if out.last() != Some(&x.1) {
            out.push(x.1);
        }
    }
    out
}

/// Asserts the VP8 PictureID and TL0PICIDX of successive frames count up by
/// one (mod their width) across every layer switch, as a decoder needs.
pub fn assert_vp8_continuous(received: &[Received]) {
    let ids: Vec<(u16, u8)> = of_kind(received, MediaKind::Video)
        .iter()
        .filter(|r| r.video_tag().is_some())
        .filter_map(|r| r.vp8_ids())
        .collect();
    assert!(!ids.is_empty(), "no VP8 descriptors");
    for w in ids.windows(2) {
        assert_eq!(
            w[1].0,
            (w[0].0 + 1) & 0x7fff,
            "PictureID jump {:?} -> {:?}",
            w[0],
            w[1]
        );
        assert_eq!(
            w[1].1,
            w[0].1.wrapping_add(1),
            "TL0PICIDX jump {:?} -> {:?}",
            w[0],
            w[1]
        );
    }
}
