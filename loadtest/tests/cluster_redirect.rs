//! `loadtest` against two real nodes sharing a real nats-server with
//! `--no-relay`: the room is placed on node a, every publisher and viewer is
//! sent to node b, answered with a 307 to a, and plays there. (With the
//! relay, node b answers them itself: `sfu`'s `cluster_relay` tests.)

use crate::common;

use std::time::{Duration, Instant};

use common::nats::NatsServer;
use common::placement::room_placed_on;
use common::{Node, loadtest, succeeded};

fn start(nats: &NatsServer, id: &str, ip: &str) -> Node {
    let url = nats.url();
    Node::start_at(
        &format!("{ip}:0"),
        &[
            "--nats",
            &url,
            "--node-id",
            id,
            "--media-ip",
            ip,
            "--heartbeat",
            "200ms",
            "--node-ttl",
            "1s",
            "--no-relay",
        ],
    )
}

/// Waits until every node's view (`GET /v1/nodes`) lists `n` nodes, so all
/// of them place rooms alike.
fn wait_for_view(nodes: &[&Node], n: usize) {
    let started = Instant::now();
    for node in nodes {
        loop {
            let (status, body) = node.get("/v1/nodes");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let seen = v["nodes"].as_array().map_or(0, Vec::len);
            if status == 200 && seen == n {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{} sees {seen} nodes: {status} {body}",
                node.url
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn peers_sent_to_the_wrong_node_are_redirected_and_play() {
    let nats = NatsServer::start();
    let a = start(&nats, "a", "127.0.0.6");
    let b = start(&nats, "b", "127.0.0.7");
    wait_for_view(&[&a, &b], 2);
    let room = room_placed_on("placed", "a", &["a", "b"]);

    let whip = format!("/whip/{room}");
    let whep = format!("/whep/{room}");
    let args = [
        "fanout",
        "--url",
        &b.url,
        "--whip-path",
        &whip,
        "--whep-path",
        &whep,
        "--metrics-path",
        "",
        "--viewers",
        "10",
        "--layer",
        "low",
        "--rate",
        "50",
        "--duration",
        "2",
        "--expect",
        "loss<1%,joined>=100%",
    ];
    // Both nodes' views are read while the run is live: once it ends the
    // publisher leaves and the claim is released.
    let ((out, r), (at_a, at_b)) = std::thread::scope(|s| {
        let run = s.spawn(|| loadtest(&args));
        let views = live_views(&a, &b, &room, &run);
        (run.join().expect("loadtest thread"), views)
    });
    let stdout = succeeded(&out);
    let num = |p: &str| r.pointer(p).and_then(serde_json::Value::as_f64).unwrap_or(-1.0);
    assert_eq!(num("/publishers_connected"), 1.0, "{stdout}");
    assert_eq!(num("/viewers_joined"), 10.0, "{stdout}");
    assert_eq!(num("/viewers_on_asked_layer"), 10.0, "{stdout}");
    assert!(num("/layers/0/kbps/p50") > 30.0, "{stdout}");
    assert!(num("/join_ms/first_keyframe/count") == 10.0, "{stdout}");

    // The peers ended up on a; b only knows the owner.
    assert_eq!(at_b["owner"]["node"], "a", "b: {at_b}\na: {at_a}");
    assert_eq!(at_b["viewers"].as_array().map(Vec::len), Some(0), "{at_b}");
    assert_eq!(at_a["viewers"].as_array().map(Vec::len), Some(10), "{at_a}");
}

/// Polls `GET /v1/rooms/{room}` on both nodes until a lists the 10 viewers
/// and b names a as the owner, or the run ends; returns the last views.
fn live_views(
    a: &Node,
    b: &Node,
    room: &str,
    run: &std::thread::ScopedJoinHandle<'_, (std::process::Output, serde_json::Value)>,
) -> (serde_json::Value, serde_json::Value) {
    let view = |node: &Node| {
        let (_, body) = node.get(&format!("/v1/rooms/{room}"));
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()
    };
    loop {
        let (at_a, at_b) = (view(a), view(b));
        let viewers = at_a["viewers"].as_array().map_or(0, Vec::len);
        if (viewers == 10 && at_b["owner"]["node"] == "a") || run.is_finished() {
            return (at_a, at_b);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
