//! FFmpeg's `whip` muxer (FFmpeg 8 as bundled by PyAV: libx264 baseline +
//! Opus) publishes over WHIP; aiortc watches over WHEP and decodes.

use crate::common::interop::{InteropNode, settle};

#[test]
fn ffmpeg_whip_publishes_and_aiortc_decodes() {
    let node = InteropNode::start("ffmpeg", &[]);
    let publisher = node.client("ffmpeg-publish", "ff", 14, &[]);
    settle();
    let viewer = node.client("aiortc-watch", "ff", 7, &[]);

    viewer.report().assert_decoded();
    publisher.report().assert_published();
}
