//! A client whose DTLS fails has its session ended and counted by reason in
//! `wave_dtls_failures_total`; the sessions next to it go on.

use crate::common::interop::{InteropNode, settle};

#[test]
fn a_wrong_fingerprint_ends_the_session_is_counted_and_others_go_on() {
    let node = InteropNode::start("dtlsfail", &[]);
    let good = node.client("aiortc-publish", "good", 14, &[]);
    // aiortc completes its side of the handshake; the node then finds that
    // its certificate is not the one the offer's a=fingerprint names.
    let forged = node.client("aiortc-publish", "forged", 10, &["--bad-fingerprint"]);
    settle();
    let rooms = node.rooms();
    let viewer = node.client("aiortc-watch", "good", 6, &[]);

    assert!(
        rooms.contains("\"good\""),
        "the good publisher's room is listed: {rooms}"
    );
    assert!(
        !rooms.contains("\"forged\""),
        "the forged session was ended: {rooms}"
    );
    viewer.report().assert_decoded();
    good.report().assert_published();
    drop(forged);
    assert_eq!(
        node.metric("wave_dtls_failures_total{reason=\"bad_fingerprint\"}"),
        1.0
    );
    for other in [
        "no_certificate",
        "no_shared_cipher",
        "peer_alert",
        "timeout",
        "incomplete",
        "protocol",
    ] {
        let name = format!("wave_dtls_failures_total{{reason=\"{other}\"}}");
        assert_eq!(node.metric(&name), 0.0, "{name}");
    }
}
