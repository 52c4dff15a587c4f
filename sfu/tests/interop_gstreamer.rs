//! GStreamer's `webrtcbin` (libnice, OpenSSL DTLS with an RSA certificate)
//! publishes H.264 + Opus over WHIP; aiortc and GStreamer itself watch over
//! WHEP and decode the picture and the sound. GStreamer's viewer offers
//! Opus as `OPUS/48000` (no channel count, as `webrtcbin` writes caps
//! without `encoding-params`).

use crate::common::interop::{InteropNode, settle};

#[test]
fn gstreamer_publishes_and_independent_viewers_decode() {
    let node = InteropNode::start("gst", &[]);
    let publisher = node.client("gst-publish", "gst", 14, &[]);
    settle();
    let aiortc = node.client("aiortc-watch", "gst", 7, &[]);
    let gst = node.client("gst-watch", "gst", 7, &[]);

    aiortc.report().assert_decoded();
    let watched = gst.report();
    watched.assert_decoded();
    // 7 s of 20 ms Opus frames: ~350 once connected.
    assert!(
        watched.audio_frames >= 100,
        "GStreamer viewer heard too little: {watched:?}"
    );
    publisher.report().assert_published();
}
