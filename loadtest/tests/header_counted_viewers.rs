//! Viewers that count media from RTP headers after their first keyframe
//! (`--full-every`), against the real `sfu` binary on loopback: they join
//! like full viewers, the node keeps sending to them for the whole run
//! although they send no NACK and stale receiver reports, and their loss
//! and bitrate match the full viewers'.

use crate::common;

use common::{Node, loadtest, num, succeeded};

/// `all_switch`: every non-sampled viewer reaches its asked layer in the run
/// (so exactly 30 are header-counted); with bandwidth estimation on a busy
/// machine some may still be climbing and stay full.
fn run(layer: &str, layer_index: usize, all_switch: bool) {
    let node = Node::start();
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
    let stdout = succeeded(&out);
    assert_eq!(num(&r, "/viewers_joined"), 40.0, "{stdout}");
    // Ids 0, 4, .. 36 stay full; the other 30 switch at their first
    // keyframe on the asked layer.
    let counted = num(&r, "/viewers_header_counted");
    if all_switch {
        assert_eq!(counted, 30.0, "{stdout}");
        assert_eq!(
            num(&r, &format!("/layers/{layer_index}/viewers")),
            40.0,
            "{stdout}"
        );
    } else {
        assert!((10.0..=30.0).contains(&counted), "{stdout}");
    }
    assert!(num(&r, "/loss_header_counted_pct") < 1.0, "{stdout}");
    assert!(num(&r, "/loss_full_pct") < 1.0, "{stdout}");
    // Header-counted bitrate: payload bytes from the datagram length, so it
    // must agree with what str0m handed the full viewers.
    // (On the high layer the viewers reach it at different times, so only
    // the low layer's rates compare one to one.)
    let (full_kbps, counted_kbps) = (num(&r, "/full_kbps/p50"), num(&r, "/header_counted_kbps/p50"));
    assert!(counted_kbps > 30.0, "{stdout}");
    if all_switch {
        assert!(
            (counted_kbps - full_kbps).abs() < 0.15 * full_kbps,
            "full {full_kbps} vs header-counted {counted_kbps} kbit/s\n{stdout}"
        );
    }
    // Every header-counted viewer kept receiving until the end (joins take
    // 0.4 s, then 3 s measured): the node did not stop sending to one.
    assert!(num(&r, "/header_counted_min_media_secs") > 2.8, "{stdout}");
    assert_eq!(num(&r, "/header_counted_kbps/count"), counted, "{stdout}");
    // Latency still measured, on the full viewers.
    assert!(num(&r, "/latency_ms/count") > 100.0, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{} full str0m peers, {counted} header-counted",
            40.0 - counted
        )),
        "{stdout}"
    );
}

#[test]
fn header_counted_viewers_on_the_low_layer_keep_receiving() {
    run("low", 0, true);
}

#[test]
fn header_counted_viewers_on_the_high_layer_keep_receiving() {
    // High: the node runs bandwidth estimation for these viewers and
    // climbs from a lower layer; a viewer turns header-counted only once on
    // high (it then sends no transport feedback that could move it up).
    run("high", 2, false);
}
