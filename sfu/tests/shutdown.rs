//! SIGTERM without a drain (`--drain-timeout 0s`, as every test node runs) closes every peer and the process exits within 2 s.

use crate::common;

use std::time::Duration;

use common::node::{Http, Node, play_offer, publish_offer};
use hyper::StatusCode;

#[tokio::test]
async fn sigterm_exits_within_two_seconds_with_sessions_open() {
    let mut node = Node::start(&[]);
    let http = Http::default();
    assert_eq!(
        http.post_sdp(&node.url("/whip/s"), &publish_offer(), None)
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        http.post_sdp(&node.url("/whep/s"), &play_offer(), None)
            .await
            .status,
        StatusCode::CREATED
    );
    let took = node.terminate();
    assert!(took < Duration::from_secs(2), "exit took {took:?}");
    let status = node.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
