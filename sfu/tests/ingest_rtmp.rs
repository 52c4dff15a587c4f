//! Debian's FFmpeg pushes H.264 + AAC (44.1 kHz) over RTMP
//! (`--rtmp-listen`) into a room; an aiortc viewer watches over WHEP and
//! decodes the video and the audio (AAC transcoded to Opus); the room's
//! LL-HLS gets parts, and its `aac` rendition is the source's AAC passed
//! through (44.1 kHz, decodable; no Opus -> AAC transcoder, no Opus
//! rendition).

use std::time::Duration;

use crate::common::hls::probe_aac;
use crate::common::interop::{InteropNode, token};
use crate::common::netns::NODE_IP;
use crate::common::rtmp::FfmpegPush;

#[test]
fn ffmpeg_rtmp_push_reaches_whep_viewers_and_ll_hls() {
    let node = InteropNode::start_with_hls("rtmp", &["--rtmp-listen", &format!("{NODE_IP}:1935")]);
    let publish = token("live1", "encoder", "--publish");
    let url = format!("rtmp://{NODE_IP}:1935/live/live1?token={publish}");
    let mut push = FfmpegPush::start(node.ns.command("ffmpeg"), &url, 30, 30);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        push.wait(Duration::ZERO).is_none(),
        "ffmpeg stopped: {:?}",
        push.wait(Duration::ZERO)
    );

    let viewer = node.client("aiortc-watch", "live1", 8, &[]).report();
    eprintln!("aiortc viewer of an RTMP room: {viewer:?}");
    viewer.assert_decoded();
    // 8 s of 20 ms Opus frames is 400; joining takes some of it.
    assert!(
        viewer.audio_frames >= 150,
        "the viewer decoded {} audio frames: {viewer:?}",
        viewer.audio_frames
    );

    let subscribe = token("live1", "hls", "--subscribe");
    let multivariant = node.ns.get(
        &node.url(&format!("/hls/live1/index.m3u8?token={subscribe}")),
        None,
    );
    assert!(
        multivariant.contains("mp4a.40.2") && multivariant.contains("avc1."),
        "no H.264 + AAC variant: {multivariant}"
    );
    let variant = multivariant
        .lines()
        .find(|l| !l.starts_with('#') && l.contains("/v0/"))
        .unwrap_or_else(|| panic!("no video playlist in {multivariant}"));
    let playlist = node.ns.get(&node.url(&format!("/hls/live1/{variant}")), None);
    let parts = playlist.matches("#EXT-X-PART:").count();
    assert!(parts >= 3, "{parts} parts in {playlist}");
    assert_eq!(node.metric("wave_rtmp_publishing"), 1.0);

    // The AAC rendition is the encoder's AAC: its rate (44.1 kHz; the
    // Opus -> AAC path makes 48 kHz), its mono, every frame decodable.
    let get = |path: &str| {
        let out = node
            .ns
            .command("curl")
            .args(["-sS", "--fail", "--max-time", "5", &node.url(path)])
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "GET {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let aac = probe_aac(&get, "live1", &format!("?token={subscribe}"), 2);
    eprintln!("LL-HLS aac rendition of an RTMP room: {aac:?}");
    assert_eq!(
        (aac.codec.as_str(), aac.sample_rate, aac.channels),
        ("aac", 44_100, 1)
    );
    // At least two 2 s segments of 1024-sample frames (43 a second).
    assert!(aac.frames >= 80, "{aac:?}");
    assert!(
        !aac.multivariant.contains("GROUP-ID=\"opus\""),
        "{}",
        aac.multivariant
    );
    let metrics = node.ns.get(&node.url("/metrics"), None);
    assert!(
        metrics.lines().any(|l| l == "wave_hls_aac_transcoders_total 0"),
        "an Opus -> AAC transcoder ran: {metrics}"
    );
    assert!(node.metric("wave_hls_aac_passthrough_frames_total") >= 80.0);
    assert_eq!(node.metric("wave_hls_aac_passthrough_dropped_total"), 0.0);
}
