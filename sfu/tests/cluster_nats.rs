//! Several real `sfu` nodes on 127.0.0.x sharing a real nats-server, with
//! `--no-relay`: room placement of new rooms, claims, 307 redirects to the
//! owner, owner death, NATS restarts. (`cluster_relay` covers the default.)

use crate::common;

use std::time::Duration;

use common::chat::wait_for_view;
use common::nats::NatsServer;
use common::node::{Http, Node, play_offer, publish_offer};
use common::placement::room_placed_on;
use hyper::{Method, StatusCode};

/// Short heartbeats so a dead node is gone within about a second.
fn start(nats: &NatsServer, id: &str, ip: &str) -> Node {
    let flags = ["--heartbeat", "200ms", "--node-ttl", "1s", "--no-relay"];
    Node::start_in_cluster(&nats.url(), id, ip, &flags)
}

async fn room_owner(http: &Http, node: &Node, room: &str) -> Option<String> {
    let r = http
        .send(Method::GET, &node.url(&format!("/v1/rooms/{room}")), &[], "")
        .await;
    if r.status != StatusCode::OK {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("room JSON");
    v["owner"]["node"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn whep_at_another_node_is_redirected_and_a_dead_owners_room_moves() {
    let nats = NatsServer::start();
    let mut a = start(&nats, "a", "127.0.0.2");
    let b = start(&nats, "b", "127.0.0.3");
    let http = Http::default();
    wait_for_view(&http, &[&a, &b], 2).await;
    let live = room_placed_on("live", "a", &["a", "b"]);
    let live_path = |p: &str| p.replace("{room}", &live);

    let p = http
        .post_sdp(&a.url(&live_path("/whip/{room}")), &publish_offer(), None)
        .await;
    assert_eq!(p.status, StatusCode::CREATED, "{}", p.body);

    // WHEP at b: 307 to the same resource on a, query kept.
    let v = http
        .post_sdp(&b.url(&live_path("/whep/{room}?layer=low")), &play_offer(), None)
        .await;
    assert_eq!(v.status, StatusCode::TEMPORARY_REDIRECT, "{}", v.body);
    let target = v.header("location").expect("Location").to_owned();
    assert_eq!(target, a.url(&live_path("/whep/{room}?layer=low")));
    // Following it plays from a.
    let followed = http.post_sdp(&target, &play_offer(), None).await;
    assert_eq!(followed.status, StatusCode::CREATED, "{}", followed.body);
    assert!(followed.body.contains("a=sendonly"));

    // A second publisher at b is sent to a as well.
    let p2 = http
        .post_sdp(&b.url(&live_path("/whip/{room}")), &publish_offer(), None)
        .await;
    assert_eq!(p2.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        p2.header("location"),
        Some(a.url(&live_path("/whip/{room}")).as_str())
    );

    // Both nodes report the owner.
    assert_eq!(room_owner(&http, &a, &live).await.as_deref(), Some("a"));
    assert_eq!(room_owner(&http, &b, &live).await.as_deref(), Some("a"));

    // A new room goes where placement puts it, whichever node is asked:
    // b takes its own, and sends a's to a without claiming it.
    let on_b = room_placed_on("other", "b", &["a", "b"]);
    let here = http
        .post_sdp(&b.url(&format!("/whip/{on_b}")), &publish_offer(), None)
        .await;
    assert_eq!(here.status, StatusCode::CREATED, "{}", here.body);
    let on_a = room_placed_on("other", "a", &["a", "b"]);
    let sent = http
        .post_sdp(&b.url(&format!("/whip/{on_a}")), &publish_offer(), None)
        .await;
    assert_eq!(sent.status, StatusCode::TEMPORARY_REDIRECT, "{}", sent.body);
    assert_eq!(
        sent.header("location"),
        Some(a.url(&format!("/whip/{on_a}")).as_str())
    );
    assert_eq!(
        room_owner(&http, &b, &on_a).await,
        None,
        "placement claims nothing"
    );

    // kill -9 a: once its heartbeats stop, b takes the room's next publisher.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let started = tokio::time::Instant::now();
    loop {
        let r = http
            .post_sdp(&b.url(&live_path("/whip/{room}")), &publish_offer(), None)
            .await;
        if r.status == StatusCode::CREATED {
            break;
        }
        assert_eq!(r.status, StatusCode::TEMPORARY_REDIRECT, "{}", r.body);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "the dead owner's claim held for {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(room_owner(&http, &b, &live).await.as_deref(), Some("b"));
}

#[tokio::test]
async fn nodes_keep_serving_through_a_nats_restart_and_reannounce() {
    let mut nats = NatsServer::start();
    let a = start(&nats, "a", "127.0.0.4");
    let b = start(&nats, "b", "127.0.0.5");
    let http = Http::default();
    wait_for_view(&http, &[&a, &b], 2).await;
    let show = room_placed_on("show", "b", &["a", "b"]);
    let show_path = |p: &str| p.replace("{room}", &show);

    let p = http
        .post_sdp(&b.url(&show_path("/whip/{room}")), &publish_offer(), None)
        .await;
    assert_eq!(p.status, StatusCode::CREATED, "{}", p.body);
    let session = b.url(p.header("location").unwrap());

    // NATS down for longer than the TTL: everything in the registry expires.
    nats.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // b still serves its publisher and viewers of its room.
    let alive = http.send(Method::GET, &session, &[], "").await;
    assert_eq!(alive.status, StatusCode::NO_CONTENT);
    let local = http
        .post_sdp(&b.url(&show_path("/whep/{room}")), &play_offer(), None)
        .await;
    assert_eq!(local.status, StatusCode::CREATED, "{}", local.body);
    // A node that cannot reach the registry takes no new rooms.
    let refused = http
        .post_sdp(&a.url("/whip/new-room"), &publish_offer(), None)
        .await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert!(refused.header("retry-after").is_some());

    nats.restart();
    // Both reconnect; b re-claims its room, so a redirects viewers there.
    let started = tokio::time::Instant::now();
    loop {
        let v = http
            .post_sdp(&a.url(&show_path("/whep/{room}")), &play_offer(), None)
            .await;
        if v.status == StatusCode::TEMPORARY_REDIRECT {
            assert_eq!(
                v.header("location"),
                Some(b.url(&show_path("/whep/{room}")).as_str())
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no re-announce after {:?}: {} {}",
            started.elapsed(),
            v.status,
            v.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(room_owner(&http, &a, &show).await.as_deref(), Some("b"));
    assert_eq!(
        http.send(Method::GET, &session, &[], "").await.status,
        StatusCode::NO_CONTENT
    );
}
