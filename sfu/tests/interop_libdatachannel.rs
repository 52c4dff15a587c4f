//! libdatachannel, the WebRTC stack of OBS's WHIP output (through its Node
//! bindings, npm `node-datachannel`: libdatachannel 0.24 with OpenSSL
//! DTLS). It publishes H.264 + Opus over WHIP the way OBS sets its tracks up
//! (RTP packetizer, sender reports, NACK responder) and aiortc watches and
//! decodes it; it watches an aiortc H.264 publisher over WHEP, depacketizes
//! the RTP libdatachannel hands it and FFmpeg decodes the picture; and it
//! watches itself.

use crate::common::interop::{InteropNode, settle};

#[test]
fn libdatachannel_publishes_and_watches() {
    let node = InteropNode::start("ldc", &[]);
    let ldc = node.client("ldc-publish", "ldc", 14, &[]);
    let aiortc = node.client("aiortc-publish", "ldcw", 14, &["--codec", "H264"]);
    settle();
    let aiortc_watch = node.client("aiortc-watch", "ldc", 7, &[]);
    let ldc_watch = node.client("ldc-watch", "ldcw", 7, &[]);
    // libdatachannel to libdatachannel: 8 KB keyframes arrive as FU-A.
    let ldc_ldc = node.client("ldc-watch", "ldc", 7, &[]);

    let seen = aiortc_watch.report();
    seen.assert_decoded();
    assert!(
        seen.audio_frames > 50,
        "aiortc decoded {} audio frames of libdatachannel's Opus: {seen:?}",
        seen.audio_frames
    );
    ldc_watch.report().assert_decoded();
    ldc_ldc.report().assert_decoded();
    ldc.report().assert_published();
    aiortc.report().assert_published();
}
