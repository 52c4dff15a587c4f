//! A media worker that panics is not a silent zombie: the panic is logged
//! at once and counted, the worker's sessions end (their resources answer
//! 404), `/healthz` answers 503, new sessions are refused while the node
//! drains, and the node exits non-zero so that its supervisor restarts it.
//! The panic comes from a test-only fault hook (`WAVE_FAULT_PANIC_ROOM`).

use crate::common;

use std::time::{Duration, Instant};

use common::chat::metric;
use common::node::{Http, Node, publish_offer};
use hyper::{Method, StatusCode};

#[tokio::test]
async fn a_panicking_worker_ends_its_sessions_reports_unhealthy_and_stops_the_node() {
    // Two workers (the helper's default); a room homed with "boom".
    let home = |r: &str| sfu::node::room_home(&wave_vocab::RoomId::parse(r).unwrap(), 2);
    let calm = (0..)
        .map(|i| format!("calm{i}"))
        .find(|r| home(r) == home("boom"))
        .unwrap();
    let other = (0..)
        .map(|i| format!("other{i}"))
        .find(|r| home(r) != home("boom"))
        .unwrap();
    let mut node = Node::start_env(&["--drain-timeout", "5s"], &[("WAVE_FAULT_PANIC_ROOM", "boom")]);
    let http = Http::default();
    let health = http.send(Method::GET, &node.url("/healthz"), &[], "").await;
    assert_eq!(health.status, StatusCode::OK);
    let calm = http
        .post_sdp(&node.url(&format!("/whip/{calm}")), &publish_offer(), None)
        .await;
    assert_eq!(calm.status, StatusCode::CREATED, "{}", calm.body);
    let session = node.url(calm.header("location").unwrap());
    // A session on the other worker keeps the drain going.
    let kept = http
        .post_sdp(&node.url(&format!("/whip/{other}")), &publish_offer(), None)
        .await;
    assert_eq!(kept.status, StatusCode::CREATED, "{}", kept.body);
    let kept = node.url(kept.header("location").unwrap());

    // The fault: the worker panics taking this publish.
    let boom = http
        .post_sdp(&node.url("/whip/boom"), &publish_offer(), None)
        .await;
    assert_eq!(boom.status, StatusCode::SERVICE_UNAVAILABLE, "{}", boom.body);

    let started = Instant::now();
    loop {
        let h = http.send(Method::GET, &node.url("/healthz"), &[], "").await;
        if h.status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "/healthz still {}",
            h.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&http, &node, "wave_thread_panics_total").await, 1.0);
    // Its session is gone from the HTTP layer too.
    let gone = http.send(Method::GET, &session, &[], "").await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.body);
    // The other worker's session runs on through the drain.
    let alive = http.send(Method::GET, &kept, &[], "").await;
    assert_eq!(alive.status, StatusCode::NO_CONTENT, "{}", alive.body);
    // New sessions are refused while it drains.
    let refused = http
        .post_sdp(&node.url("/whip/later"), &publish_offer(), None)
        .await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );

    // The drain ends (5 s, or when the other session ends): exit status non-zero.
    let exit = loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the node did not stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!exit.success(), "{exit:?}");
}
