//! SIGTERM drains: new sessions get 503 + Retry-After (an RTMP publish an
//! error status) and `/healthz` 503,
//! open sessions run until they end or `--drain-timeout` passes, then the
//! node exits 0; a second SIGTERM stops at once.

use crate::common;

use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use common::node::{Http, Node, Resp, play_offer, publish_offer};
use common::rtmp::RtmpClient;
use hyper::{Method, StatusCode};

#[tokio::test]
async fn sigterm_refuses_new_sessions_keeps_open_ones_until_the_timeout_and_exits_0() {
    let mut node = Node::start(&["--drain-timeout", "3s", "--rtmp-listen", "127.0.0.1:0"]);
    let http = Http::default();
    let session = publish(&http, &node, "drain").await;

    let t0 = Instant::now();
    signal(&node, "TERM");
    let health = draining(&http, &node).await;
    assert_eq!(health.header("retry-after"), Some("3"));
    for (path, offer) in [("/whip/another", publish_offer()), ("/whep/drain", play_offer())] {
        let r = http.post_sdp(&node.url(path), &offer, None).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {}", r.body);
        assert_eq!(r.header("retry-after"), Some("3"), "{path}");
    }
    // An RTMP encoder is refused too.
    let rtmp = node.rtmp.expect("the RTMP listener");
    let pushed = tokio::task::spawn_blocking(move || {
        let mut c = RtmpClient::connect(rtmp, "live").expect("connect");
        c.publish("rtmp-during-drain")
    })
    .await
    .unwrap();
    assert_eq!(pushed, Err("NetStream.Publish.Failed".into()));
    let open = http.send(Method::GET, &node.url(&session), &[], "").await;
    assert_eq!(
        open.status,
        StatusCode::NO_CONTENT,
        "the open session is still served"
    );

    tokio::time::sleep(Duration::from_secs(2).saturating_sub(t0.elapsed())).await;
    assert!(
        node.child.try_wait().unwrap().is_none(),
        "the node exited {:?} after SIGTERM, before its drain timeout",
        t0.elapsed()
    );
    let status = exit_within(&mut node, Duration::from_secs(8));
    let took = t0.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(2900),
        "exited after {took:?}, before the 3 s drain timeout"
    );
}

#[tokio::test]
async fn a_drain_ends_when_the_last_session_ends() {
    let mut node = Node::start(&["--drain-timeout", "30s"]);
    let http = Http::default();
    let session = publish(&http, &node, "drain").await;
    signal(&node, "TERM");
    draining(&http, &node).await;

    let t0 = Instant::now();
    let deleted = http.send(Method::DELETE, &node.url(&session), &[], "").await;
    assert_eq!(deleted.status, StatusCode::OK);
    let status = exit_within(&mut node, Duration::from_secs(3));
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(3), "took {:?}", t0.elapsed());
}

#[tokio::test]
async fn a_second_sigterm_stops_a_drain_at_once() {
    let mut node = Node::start(&["--drain-timeout", "30s"]);
    let http = Http::default();
    publish(&http, &node, "drain").await;
    signal(&node, "TERM");
    draining(&http, &node).await;

    let t0 = Instant::now();
    signal(&node, "TERM");
    let status = exit_within(&mut node, Duration::from_secs(3));
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(3), "took {:?}", t0.elapsed());
}

/// A WHIP session (it never connects: the drain only counts sessions); its Location.
async fn publish(http: &Http, node: &Node, room: &str) -> String {
    let r = http
        .post_sdp(&node.url(&format!("/whip/{room}")), &publish_offer(), None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.header("location").expect("Location").to_owned()
}

fn signal(node: &Node, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (up to 2 s) for `/healthz` to say the node drains; that answer.
async fn draining(http: &Http, node: &Node) -> Resp {
    let t0 = Instant::now();
    loop {
        let r = http.send(Method::GET, &node.url("/healthz"), &[], "").await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(r.body, "draining");
            return r;
        }
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "/healthz still 200 2 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn exit_within(node: &mut Node, limit: Duration) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            return status;
        }
        assert!(t0.elapsed() < limit, "still running {limit:?} later");
        std::thread::sleep(Duration::from_millis(20));
    }
}
