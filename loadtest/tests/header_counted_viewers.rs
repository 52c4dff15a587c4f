//! Viewers that count media from RTP headers after their first keyframe
//! (`--full-every`), against the real `sfu` binary on loopback: they join
//! like full viewers, the node keeps sending to them for the whole run
//! although they send no NACK and stale receiver reports, and their loss
//! and bitrate match the full viewers'. Only low-layer viewers are
//! header-counted; the others stay full.

use crate::common;

use common::{Node, loadtest, num, succeeded};

fn run(node: &Node, layer: &str) -> (String, serde_json::Value) {
    let (out, r) = loadtest(&[
        "fanout",
        "--url",
        &node.url,
        "--viewers",
        "40",
        "--layer",
        layer,
        "--rate",
        "100",
        "--duration",
        "3",
        "--full-every",
        "4",
        "--expect",
        "joined>=100%",
    ]);
    (succeeded(&out), r)
}

#[test]
fn header_counted_low_layer_viewers_keep_receiving() {
    let node = Node::start();
    let (stdout, r) = run(&node, "low");
    assert_eq!(num(&r, "/viewers_joined"), 40.0, "{stdout}");
    // Ids 0, 4, .. 36 stay full; the other 30 switch at their first keyframe.
    assert_eq!(num(&r, "/viewers_header_counted"), 30.0, "{stdout}");
    assert_eq!(num(&r, "/layers/0/viewers"), 40.0, "{stdout}");
    assert!(num(&r, "/loss_header_counted_pct") < 1.0, "{stdout}");
    assert!(num(&r, "/loss_full_pct") < 1.0, "{stdout}");
    // Header-counted bitrate: payload bytes from the datagram length, so it
    // must agree with what str0m handed the full viewers.
    let (full_kbps, counted_kbps) = (num(&r, "/full_kbps/p50"), num(&r, "/header_counted_kbps/p50"));
    assert!(counted_kbps > 30.0, "{stdout}");
    assert!(
        (counted_kbps - full_kbps).abs() < 0.15 * full_kbps,
        "full {full_kbps} vs header-counted {counted_kbps} kbit/s\n{stdout}"
    );
    assert_eq!(num(&r, "/header_counted_kbps/count"), 30.0, "{stdout}");
    // Every header-counted viewer kept receiving until the end (joins take
    // 0.4 s, then 3 s measured): the node did not stop sending to one.
    assert!(num(&r, "/header_counted_min_media_secs") > 2.8, "{stdout}");
    // Latency still measured, on the full viewers.
    assert!(num(&r, "/latency_ms/count") > 100.0, "{stdout}");
    assert!(
        stdout.contains("10 full str0m peers, 30 header-counted"),
        "{stdout}"
    );
}

#[test]
fn viewers_of_a_higher_layer_stay_full() {
    // With bandwidth estimation a viewer without transport feedback would
    // be moved off its layer where its headers cannot tell.
    let node = Node::start();
    let (stdout, r) = run(&node, "high");
    assert_eq!(num(&r, "/viewers_joined"), 40.0, "{stdout}");
    assert_eq!(num(&r, "/viewers_header_counted"), 0.0, "{stdout}");
    assert!(
        stdout.contains("40 full str0m peers, 0 header-counted"),
        "{stdout}"
    );
}
