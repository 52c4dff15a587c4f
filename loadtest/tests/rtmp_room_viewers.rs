//! `loadtest fanout --publisher none --room R`: viewers only, of a room
//! that FFmpeg (Debian's CLI) pushes over RTMP into the real `sfu`.

use std::process::{Command, Stdio};

use crate::common;

use common::{Node, loadtest, num, succeeded};

#[test]
fn viewers_of_an_rtmp_room_join_and_receive_it() {
    let node = Node::start_at("127.0.0.1:0", &["--rtmp-listen", "127.0.0.1:0"]);
    let rtmp = node.rtmp.expect("the ready line names the RTMP listener");
    let mut ffmpeg = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency"])
        .args(["-pix_fmt", "yuv420p", "-g", "30", "-keyint_min", "30", "-bf", "0"])
        .args(["-c:a", "aac", "-b:a", "64k", "-t", "30"])
        .args(["-f", "flv", &format!("rtmp://{rtmp}/live/cam")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ffmpeg runs (Debian's ffmpeg package, scripts/setup.sh)");
    // The room exists once the push is announced.
    let t0 = std::time::Instant::now();
    while !node.get("/v1/rooms").1.contains("\"cam\"") {
        assert!(
            t0.elapsed().as_secs() < 15,
            "the RTMP push never made room cam: {:?}",
            node.get("/v1/rooms")
        );
        assert!(
            ffmpeg.try_wait().unwrap().is_none(),
            "ffmpeg exited before publishing"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let pid = node.pid().to_string();
    let (out, r) = loadtest(&[
        "fanout",
        "--url",
        &node.url,
        "--server-pid",
        &pid,
        "--publisher",
        "none",
        "--room",
        "cam",
        "--viewers",
        "20",
        "--rate",
        "50",
        "--duration",
        "3",
        "--full-every",
        "4",
    ]);
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    let stdout = succeeded(&out);
    assert_eq!(r["external_room"], "cam", "{stdout}");
    assert_eq!(num(&r, "/publishers_connected"), 0.0, "{stdout}");
    assert_eq!(num(&r, "/viewers_joined"), 20.0, "{stdout}");
    assert_eq!(num(&r, "/join_ms/first_keyframe/count"), 20.0, "{stdout}");
    assert!(num(&r, "/packets_expected") > 1000.0, "{stdout}");
    assert!(num(&r, "/loss_pct") < 1.0, "{stdout}");
    assert!(
        stdout.contains("watching room cam, published by something else"),
        "{stdout}"
    );
}

#[test]
fn publisher_none_needs_a_room_and_one_publisher() {
    let (out, _) = loadtest(&["fanout", "--url", "http://127.0.0.1:9", "--publisher", "none"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr.contains("--publisher none needs --room"), "{stderr}");
    let (out, _) = loadtest(&["fanout", "--url", "http://127.0.0.1:9", "--room", "x"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr.contains("--room is for --publisher none"), "{stderr}");
}
