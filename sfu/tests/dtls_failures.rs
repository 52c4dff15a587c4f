//! A client whose DTLS fails has its session ended and counted by reason in
//! `wave_dtls_failures_total`; the sessions next to it go on.

use crate::common::interop::{InteropNode, settle};

#[test]
fn a_wrong_fingerprint_is_counted_and_other_sessions_go_on() {
    let node = InteropNode::start("dtlsfail", &[]);
    let good = node.client("aiortc-publish", "good", 14, &[]);
    let forged = node.client("aiortc-publish", "forged", 8, &["--bad-fingerprint"]);
    settle();
    let viewer = node.client("aiortc-watch", "good", 6, &[]);

    let forged = forged.report();
    assert_ne!(
        forged.dtls.as_deref(),
        Some("connected"),
        "the node accepted a certificate that does not match the offer's fingerprint: {forged:?}"
    );
    viewer.report().assert_decoded();
    good.report().assert_published();
    assert_eq!(node.metric("wave_dtls_failures_total{reason=\"bad_fingerprint\"}"), 1.0);
    assert_eq!(node.metric("wave_dtls_failures_total{reason=\"protocol\"}"), 0.0);
}
