//! `loadtest hls` against the real `sfu` binary on loopback: the load
//! tester publishes its H.264 stream over WHIP, the node packages it as
//! LL-HLS, and simulated LL-HLS viewers (blocking reloads, parts) watch it.

use crate::common;

use common::{Node, loadtest, succeeded};

fn num(v: &serde_json::Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(|x| x.as_f64())
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

#[test]
fn twenty_ll_hls_viewers_get_every_part_without_errors() {
    let node = Node::start();
    let pid = node.pid().to_string();
    let (out, r) = loadtest(&[
        "hls",
        "--url",
        &node.url,
        "--server-pid",
        &pid,
        "--viewers",
        "20",
        "--rate",
        "100",
        "--duration",
        "3",
        "--expect",
        "joined>=100%,errors<1,stalls<1,part_p50<1s",
    ]);
    let stdout = succeeded(&out);
    assert_eq!(
        r.pointer("/publisher").and_then(|v| v.as_str()),
        Some("connected"),
        "{stdout}"
    );
    assert_eq!(num(&r, "/viewers_joined"), 20.0, "{stdout}");
    assert_eq!(num(&r, "/errors_total"), 0.0, "{stdout}");
    // 3 s of 1/3 s parts, video and audio, for 20 viewers: most of 360.
    assert!(num(&r, "/parts") >= 20.0 * 2.0 * 6.0, "{stdout}");
    assert!(num(&r, "/part_ms/count") >= 200.0, "{stdout}");
    // Every blocking reload was answered with a new part, and the node's
    // histogram saw those answers.
    assert!(num(&r, "/reload_ms/count") >= 200.0, "{stdout}");
    assert!(num(&r, "/server/blocked_answers") >= 100.0, "{stdout}");
    assert!(num(&r, "/server/blocked_p99_ms") > 0.0, "{stdout}");
    assert!(num(&r, "/server/requests_per_sec") > 100.0, "{stdout}");
    assert!(num(&r, "/server/requests_per_core") > 0.0, "{stdout}");
    assert!(stdout.contains("part: media end → held"), "{stdout}");
}

#[test]
fn h2c_viewers_share_one_connection_each_and_get_parts() {
    let node = Node::start();
    let (out, r) = loadtest(&[
        "hls",
        "--url",
        &node.url,
        "--viewers",
        "5",
        "--rate",
        "100",
        "--duration",
        "2",
        "--h2c",
        "--no-audio",
        "--expect",
        "joined>=100%,errors<1",
    ]);
    let stdout = succeeded(&out);
    assert_eq!(r.pointer("/transport").and_then(|v| v.as_str()), Some("h2c"));
    assert!(num(&r, "/parts") >= 5.0 * 4.0, "{stdout}");
}

#[test]
fn a_room_without_a_stream_fails_the_run_cleanly() {
    let node = Node::start();
    let (out, _) = loadtest(&[
        "hls",
        "--url",
        &node.url,
        "--room",
        "nobody-publishes-here",
        "--viewers",
        "2",
        "--timeout",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did not become live"), "{stderr}");
    assert!(stderr.contains("404"), "{stderr}");
}
