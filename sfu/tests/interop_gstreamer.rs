//! GStreamer's `webrtcbin` (libnice, OpenSSL DTLS with an RSA certificate)
//! publishes H.264 + Opus over WHIP; aiortc and GStreamer itself watch over
//! WHEP and decode the picture.

use crate::common::interop::{InteropNode, settle};

#[test]
fn gstreamer_publishes_and_independent_viewers_decode() {
    let node = InteropNode::start("gst", &[]);
    let publisher = node.client("gst-publish", "gst", 14, &[]);
    settle();
    let aiortc = node.client("aiortc-watch", "gst", 7, &[]);
    let gst = node.client("gst-watch", "gst", 7, &[]);

    aiortc.report().assert_decoded();
    gst.report().assert_decoded();
    publisher.report().assert_published();
}
