//! aiortc (Python; its own DTLS over OpenSSL) publishes H.264 and VP8 over
//! WHIP and watches over WHEP; GStreamer watches the H.264 room too.

use crate::common::interop::{InteropNode, settle};

#[test]
fn aiortc_publishes_h264_and_vp8_and_watches() {
    let node = InteropNode::start("aiortc", &[]);
    let h264 = node.client("aiortc-publish", "a264", 16, &["--codec", "H264"]);
    let vp8 = node.client("aiortc-publish", "avp8", 16, &["--codec", "VP8"]);
    settle();
    let h264_aiortc = node.client("aiortc-watch", "a264", 7, &[]);
    let h264_gst = node.client("gst-watch", "a264", 7, &[]);
    let vp8_aiortc = node.client("aiortc-watch", "avp8", 7, &[]);

    h264_aiortc.report().assert_decoded();
    h264_gst.report().assert_decoded();
    vp8_aiortc.report().assert_decoded();
    h264.report().assert_published();
    vp8.report().assert_published();
}
