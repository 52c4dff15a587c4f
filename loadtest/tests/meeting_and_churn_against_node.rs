//! `loadtest meeting` and `loadtest churn` against the real `sfu` binary.

use crate::common;

use common::{Node, loadtest, num, succeeded};

#[test]
fn every_meeting_peer_sees_every_other() {
    let node = Node::start();
    let (out, r) = loadtest(&[
        "meeting",
        "--url",
        &node.url,
        "--peers",
        "3",
        "--rate",
        "50",
        "--duration",
        "1",
    ]);
    let stdout = succeeded(&out);
    assert_eq!(num(&r, "/publishers_connected"), 3.0, "{stdout}");
    assert_eq!(num(&r, "/viewers_planned"), 6.0, "{stdout}");
    assert_eq!(num(&r, "/viewers_joined"), 6.0, "{stdout}");
    assert!(num(&r, "/loss_pct") < 1.0, "{stdout}");
}

#[test]
fn churned_viewers_leave_and_new_ones_join() {
    let node = Node::start();
    let (out, r) = loadtest(&[
        "churn",
        "--url",
        &node.url,
        "--viewers",
        "10",
        "--churn",
        "5",
        "--rate",
        "50",
        "--duration",
        "2.5",
        "--expect",
        "joined>=100%",
    ]);
    let stdout = succeeded(&out);
    // 10 at first, then about 5 per second for the 1.5 s before the last second.
    let planned = num(&r, "/viewers_planned");
    assert!((15.0..=19.0).contains(&planned), "{stdout}");
    assert_eq!(num(&r, "/viewers_failed"), 0.0, "{stdout}");
    // Every leave was a DELETE the server accepted.
    let deleted = num(&r, "/http/200");
    assert!(deleted >= planned, "{stdout}");
    assert!(
        r.pointer("/errors")
            .and_then(|e| e.as_object())
            .is_some_and(|e| e.is_empty()),
        "{stdout}"
    );
}
