//! Bad RTMP input: a wrong or expired token, a second publisher for a held
//! room, bytes that are not RTMP, media of a codec never announced, an
//! Enhanced RTMP (HEVC) stream and an oversized message are each refused
//! or cut off, with an RTMP error status where the protocol has one, and
//! counted in `wave_rtmp_rejected_total{reason}`; an oversized AAC frame
//! is dropped from LL-HLS and counted without cutting its stream; the room
//! an FFmpeg encoder publishes meanwhile keeps going.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use signaling::auth::{Claims, issue_claims};

use crate::common::node::{Node, cli_token};
use crate::common::rtmp::{FfmpegPush, RtmpClient};

#[test]
fn bad_rtmp_input_is_refused_counted_and_leaves_other_rooms_alone() {
    let node = Node::start(&["--auth-secret", "s3cret", "--rtmp-listen", "127.0.0.1:0"]);
    let rtmp = node.rtmp.expect("the ready line names the RTMP listener");
    let good = cli_token(&["--room", "good", "--identity", "enc", "--publish"]);
    let _push = FfmpegPush::start(
        Command::new("ffmpeg"),
        &format!("rtmp://{rtmp}/live/good?token={good}"),
        30,
        60,
    );
    wait_for(
        || video_bitrate(&node, "good") > 0,
        "the FFmpeg publisher's video",
    );
    let publish = |room: &str| cli_token(&["--room", room, "--identity", "enc", "--publish"]);

    // A token signed with another secret, and an expired one: Unauthorized.
    let forged = {
        let out = Command::new(env!("CARGO_BIN_EXE_sfu"))
            .args([
                "token",
                "--secret",
                "other",
                "--room",
                "r1",
                "--identity",
                "x",
                "--publish",
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let mut expired = Claims::new(
        "r1",
        "x",
        Duration::from_secs(60),
        SystemTime::now() - Duration::from_secs(3600),
    );
    expired.publish = true;
    let expired = issue_claims(b"s3cret", &expired);
    for key in [
        format!("r1?token={forged}"),
        format!("r1?token={expired}"),
        "r1".into(),
    ] {
        let mut c = RtmpClient::connect(rtmp, "live").expect("connect");
        assert_eq!(
            c.publish(&key),
            Err("NetStream.Publish.Unauthorized".into()),
            "{key}"
        );
        assert!(
            c.closed_within(Duration::from_secs(2)),
            "still open after a refusal"
        );
    }
    assert_eq!(rejected(&node, "auth"), 3.0);
    // FFmpeg, refused the same way, gives up.
    let mut refused = FfmpegPush::start(
        Command::new("ffmpeg"),
        &format!("rtmp://{rtmp}/live/r1?token={forged}"),
        30,
        60,
    );
    let (ok, stderr) = refused.wait(Duration::from_secs(10)).expect("FFmpeg gave up");
    assert!(!ok, "FFmpeg published with a forged token: {stderr}");
    wait_for(|| rejected(&node, "auth") == 4.0, "FFmpeg's refusal counted");

    // The token alone as the stream key names its room; a second publisher
    // of a held room is refused.
    let mut alone = RtmpClient::connect(rtmp, "live").expect("connect");
    alone
        .publish(&publish("alone"))
        .expect("a token alone publishes into its room");
    let mut second = RtmpClient::connect(rtmp, "live").expect("connect");
    let key = format!("good?token={}", publish("good"));
    assert_eq!(second.publish(&key), Err("NetStream.Publish.BadName".into()));
    wait_for(
        || rejected(&node, "room_held") == 1.0,
        "the held room's refusal counted",
    );
    drop(alone);

    // Bytes that are not RTMP: the connection closes.
    let mut garbage = TcpStream::connect(rtmp).unwrap();
    garbage.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let junk: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
        .collect();
    let _ = garbage.write_all(&junk);
    let mut buf = [0u8; 4096];
    let closed = loop {
        match garbage.read(&mut buf) {
            Ok(0) | Err(_) => break true,
            Ok(_) => {}
        }
    };
    assert!(closed);
    wait_for(|| rejected(&node, "protocol") == 1.0, "the garbage counted");

    // H.264 without its AVC configuration, then Enhanced RTMP HEVC.
    let cases: [(&str, &[u8], &str); 2] = [
        (
            "raw",
            &[0x27, 1, 0, 0, 0, 0, 0, 0, 2, 0x41, 0x9a],
            "not_announced",
        ),
        ("hevc", b"\x90hvc1\x00\x00\x00\x00", "codec"),
    ];
    for (room, tag, reason) in cases {
        let mut c = RtmpClient::connect(rtmp, "live").expect("connect");
        c.publish(&format!("{room}?token={}", publish(room)))
            .expect("publish");
        c.video(tag, 0).expect("sent");
        assert!(c.closed_within(Duration::from_secs(3)), "{room}: still open");
        assert_eq!(rejected(&node, reason), 1.0, "{reason}");
    }

    // AAC frames over 6,144 bits per channel (here 2,000 bytes of stereo):
    // FDK cannot decode them (the viewers' Opus skips them) and LL-HLS
    // drops and counts them; the stream goes on, later frames pass.
    assert_eq!(metric(&node, "wave_hls_aac_passthrough_dropped_total"), 0.0);
    let mut aac = RtmpClient::connect(rtmp, "live").expect("connect");
    aac.publish(&format!("aacbig?token={}", publish("aacbig")))
        .expect("publish");
    let avc = [
        0x17, 0, 0, 0, 0, 1, 0x42, 0xe0, 0x1f, 0xff, 0xe1, 0, 3, 0x67, 0x42, 0x1f, 1, 0, 2, 0x68, 0xce,
    ];
    aac.video(&avc, 0).expect("sent");
    aac.video(&[0x17, 1, 0, 0, 0, 0, 0, 0, 3, 0x65, 0x88, 0x84], 0)
        .expect("sent");
    aac.audio(&[0xaf, 0, 0x12, 0x10], 0).expect("sent");
    let mut frame = vec![0xaf, 1];
    frame.resize(2 + 2000, 0x5a);
    aac.audio(&frame, 0).expect("sent");
    wait_for(
        || metric(&node, "wave_hls_aac_passthrough_dropped_total") == 1.0,
        "the oversized AAC frame counted",
    );
    assert!(
        !aac.closed_within(Duration::from_millis(500)),
        "the stream was cut"
    );
    drop(aac);

    // A 12 MiB video message (RTMP allows 16 MiB), in 1 MiB chunks.
    let mut big = RtmpClient::connect_with_chunk_size(rtmp, "live", 1 << 20).expect("connect");
    big.publish(&format!("big?token={}", publish("big")))
        .expect("publish");
    let mut tag = vec![0x27, 1, 0, 0, 0];
    tag.resize(12 << 20, 0x41);
    let _ = big.video(&tag, 0);
    assert!(
        big.closed_within(Duration::from_secs(3)),
        "a 12 MiB message was taken"
    );
    wait_for(
        || rejected(&node, "oversized") == 1.0,
        "the oversized message counted",
    );

    // Through all of it the FFmpeg room kept publishing, and no other
    // ingest is left behind.
    let before = hls_parts(&node);
    std::thread::sleep(Duration::from_secs(1));
    assert!(video_bitrate(&node, "good") > 100_000, "the good room stalled");
    assert!(hls_parts(&node) > before, "no LL-HLS parts since");
    wait_for(
        || metric(&node, "wave_rtmp_publishing") == 1.0,
        "only the FFmpeg publish left",
    );
}

fn get(node: &Node, path: &str) -> String {
    let token = cli_token(&["--room", "*", "--identity", "op", "--subscribe"]);
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-H",
            &format!("Authorization: Bearer {token}"),
        ])
        .arg(node.url(path))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn metric(node: &Node, name: &str) -> f64 {
    get(node, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn rejected(node: &Node, reason: &str) -> f64 {
    metric(node, &format!("wave_rtmp_rejected_total{{reason=\"{reason}\"}}"))
}

/// LL-HLS parts produced so far.
fn hls_parts(node: &Node) -> f64 {
    metric(node, "wave_hls_parts_total")
}

/// The measured bitrate of `room`'s video track (0 when absent).
fn video_bitrate(node: &Node, room: &str) -> u64 {
    let rooms: Value = serde_json::from_str(&get(node, "/v1/rooms")).unwrap_or(Value::Null);
    rooms["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["room"] == room)
        .flat_map(|r| r["publishers"].as_array().into_iter().flatten())
        .flat_map(|p| p["tracks"].as_array().into_iter().flatten())
        .filter(|t| t["kind"] == "video")
        .filter_map(|t| t["bitrate_bps"].as_u64())
        .sum()
}

fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let t0 = Instant::now();
    while !done() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
