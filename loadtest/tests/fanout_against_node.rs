//! `loadtest fanout` against the real `sfu` binary on loopback.

use crate::common;

use common::{Node, fanout_low_layer, loadtest, num};

#[test]
fn fifty_viewers_join_and_get_the_low_layer() {
    let node = Node::start();
    let (stdout, r) = fanout_low_layer(&node, 50);
    assert_eq!(num(&r, "/publishers_connected"), 1.0, "{stdout}");
    assert_eq!(num(&r, "/viewers_asking_layer"), 50.0, "{stdout}");
    assert_eq!(num(&r, "/layers/0/viewers"), 50.0, "{stdout}");
    assert_eq!(num(&r, "/viewers_header_counted"), 0.0, "{stdout}");
    assert!(num(&r, "/layers/0/kbps/p50") > 30.0, "{stdout}");
    // Every join step was measured, in order.
    let j = |s: &str| num(&r, &format!("/join_ms/{s}/p50"));
    assert!(
        j("answer") <= j("dtls_connected") && j("dtls_connected") <= j("first_keyframe"),
        "{stdout}"
    );
    assert_eq!(num(&r, "/join_ms/first_keyframe/count"), 50.0);
    // Latency was measured on the packets themselves, and the server's cost read.
    assert!(num(&r, "/latency_ms/count") > 1000.0, "{stdout}");
    assert!(num(&r, "/latency_ms/p50") > 0.0);
    assert!(num(&r, "/server/packets_per_sec") > 0.0, "{stdout}");
    // The publishers' frame schedule was measured, and the media threads' wake-ups counted.
    assert!(num(&r, "/send_lateness_ms/count") > 0.0, "{stdout}");
    assert!(num(&r, "/client/wakeups_per_sec") > 0.0, "{stdout}");
    // The shards' own socket drops are read (Linux) and reported beside the loss.
    assert!(num(&r, "/tester_socket_drops") >= 0.0, "{stdout}");
    assert!(num(&r, "/tester_socket_drops_window") >= 0.0, "{stdout}");
    assert!(stdout.contains("tester socket drops: "), "{stdout}");
    assert!(num(&r, "/packets_expected") > 1000.0, "{stdout}");
    assert!(
        r.pointer("/server/cpu_us_per_packet")
            .is_some_and(|v| v.is_number()),
        "{stdout}"
    );
    assert_eq!(
        r.pointer("/server/packet_source").and_then(|v| v.as_str()),
        Some("server")
    );
    assert!(stdout.contains("join: first keyframe"), "{stdout}");
}

#[test]
fn a_missed_expectation_fails_the_run() {
    let node = Node::start();
    let (out, r) = loadtest(&[
        "fanout",
        "--url",
        &node.url,
        "--viewers",
        "3",
        "--rate",
        "50",
        "--duration",
        "0.5",
        "--expect",
        "join_p95<0.001ms",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("expectation missed: join_p95<0.001ms"),
        "{stderr}"
    );
    // The run itself worked; only the threshold failed.
    assert_eq!(num(&r, "/viewers_joined"), 3.0);
}

#[test]
fn a_server_that_is_not_there_is_counted_not_fatal() {
    // A port nothing listens on: every POST fails to connect.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let url = format!("http://127.0.0.1:{port}");
    let (out, r) = loadtest(&[
        "fanout",
        "--url",
        &url,
        "--viewers",
        "4",
        "--rate",
        "100",
        "--duration",
        "0.2",
        "--timeout",
        "2",
        "--expect",
        "joined>=100%",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(num(&r, "/viewers_joined"), 0.0);
    assert_eq!(num(&r, "/viewers_failed"), 4.0);
    assert!(num(&r, "/http/connect") >= 5.0, "{r}");
}
