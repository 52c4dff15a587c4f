//! Presence events: a WHEP viewer's and a chat member's join and leave on
//! one node reach a chat client on another (or the same) node as
//! participants with kind, role and node, batched at most once a second per
//! room per client, and `/v1/rooms/{room}` lists the participants. Over a
//! real nats-server with two nodes, and on one node's in-process bus.

use crate::common;

use std::time::{Duration, Instant};

use common::chat::{ChatClient, SECRET, cluster_node, room_json, token, wait_for_view};
use common::nats::NatsServer;
use common::node::{Http, Node, play_offer, publish_offer};
use common::placement::room_placed_on;
use hyper::{Method, StatusCode};
use serde_json::Value;

/// Presence frames a client received, with when.
struct Watcher {
    client: ChatClient,
    frames: Vec<(Instant, Value)>,
}

impl Watcher {
    async fn join(node: &Node, room: &str) -> Watcher {
        let mut client = ChatClient::connect(node, room, Some(&token(room, "watcher", false, None)))
            .await
            .unwrap();
        // The frame on join lists who is here; later ones are batches.
        let first = client.next_of("presence").await;
        assert!(first["participants"].is_array(), "{first}");
        Watcher {
            client,
            frames: Vec::new(),
        }
    }

    /// Waits (at most 4 s) for a batch whose `list` (`joined`/`left`) has
    /// participant `id` of `kind`; returns it and how long it took.
    async fn change(&mut self, list: &str, kind: &str, id: &str) -> (Value, Duration) {
        let t0 = Instant::now();
        loop {
            let left = Duration::from_secs(4).saturating_sub(t0.elapsed());
            let f = match self.client.next_within(left).await {
                Ok(Some(f)) => f,
                Ok(None) => panic!("watcher closed"),
                Err(()) => panic!("no {list} {kind} {id} within 4 s; frames: {:?}", self.frames),
            };
            if f["type"] != "presence" {
                continue;
            }
            self.frames.push((Instant::now(), f.clone()));
            let found = f[list]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["kind"] == kind && p["id"] == id);
            if let Some(p) = found {
                return (p.clone(), t0.elapsed());
            }
        }
    }

    /// Batches were pushed at most once per second (by their server time).
    fn assert_spaced(&self) {
        for w in self.frames.windows(2) {
            let gap = w[1].1["ts"].as_u64().unwrap() - w[0].1["ts"].as_u64().unwrap();
            assert!(gap >= 990, "presence frames pushed {gap} ms apart");
        }
    }
}

/// A publisher, then a WHEP viewer and a chat member join and leave at
/// `at`; `watcher` (on `seen_at`) sees each with its kind, role and node.
async fn joins_and_leaves_are_seen(at: &Node, at_id: &str, seen_at: &Node, room: &str) -> Vec<Duration> {
    let http = Http::default();
    let mut watcher = Watcher::join(seen_at, room).await;
    let mut took = Vec::new();

    let p = http
        .post_sdp(
            &at.url(&format!("/whip/{room}")),
            &publish_offer(),
            Some(&token(room, "alice", true, None)),
        )
        .await;
    assert_eq!(p.status, StatusCode::CREATED, "{}", p.body);
    let (alice, _) = watcher.change("joined", "publisher", "alice").await;
    assert_eq!(alice["role"], "streamer");
    assert_eq!(alice["node"], at_id);

    // A WHEP viewer joins and leaves.
    let vic = token(room, "vic", false, None);
    let v = http
        .post_sdp(&at.url(&format!("/whep/{room}")), &play_offer(), Some(&vic))
        .await;
    assert_eq!(v.status, StatusCode::CREATED, "{}", v.body);
    let (p, t) = watcher.change("joined", "viewer", "vic").await;
    assert_eq!(
        (&p["role"], &p["node"]),
        (&Value::from("viewer"), &Value::from(at_id))
    );
    took.push(t);
    let session = at.url(v.header("location").expect("Location"));
    let bearer = format!("Bearer {vic}");
    let d = http
        .send(Method::DELETE, &session, &[("authorization", &bearer)], "")
        .await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.body);
    let (p, t) = watcher.change("left", "viewer", "vic").await;
    assert_eq!(p["node"], at_id);
    took.push(t);

    // A chat member (a moderator) joins and leaves.
    let carol = ChatClient::connect(at, room, Some(&token(room, "carol", false, Some("moderator"))))
        .await
        .unwrap();
    let (p, t) = watcher.change("joined", "chat", "carol").await;
    assert_eq!(
        (&p["role"], &p["node"]),
        (&Value::from("moderator"), &Value::from(at_id))
    );
    took.push(t);
    drop(carol);
    let (p, t) = watcher.change("left", "chat", "carol").await;
    assert_eq!(p["role"], "moderator");
    took.push(t);
    watcher.assert_spaced();

    // The room's listing names its participants.
    let v = room_json(&http, seen_at, room).await.expect("the room is listed");
    let listed = v["presence"]["participants"].as_array().unwrap().clone();
    assert!(
        listed
            .iter()
            .any(|p| p["kind"] == "publisher" && p["id"] == "alice" && p["node"] == at_id),
        "{v}"
    );
    assert!(
        listed.iter().any(|p| p["kind"] == "chat" && p["id"] == "watcher"),
        "{v}"
    );
    assert_eq!(v["presence"]["participants_truncated"], false);
    took
}

#[tokio::test]
async fn presence_events_cross_nodes_over_nats() {
    let nats = NatsServer::start();
    let a = cluster_node(&nats, "a", "127.0.0.10");
    let b = cluster_node(&nats, "b", "127.0.0.11");
    let http = Http::default();
    // Both nodes must see each other so the WHIP at a is not sent to b.
    wait_for_view(&http, &[&a, &b], 2).await;
    let room = room_placed_on("presence", "a", &["a", "b"]);
    let took = joins_and_leaves_are_seen(&a, "a", &b, &room).await;
    eprintln!("presence a -> b over NATS: {took:?}");
    for t in took {
        assert!(t < Duration::from_millis(2500), "a change took {t:?}");
    }
    join_storm(&a, &b, "storm", 100).await;
}

#[tokio::test]
async fn presence_events_on_one_node() {
    let n = Node::start(&["--auth-secret", SECRET, "--node-id", "solo"]);
    let took = joins_and_leaves_are_seen(&n, "solo", &n, "solo").await;
    eprintln!("presence on one node: {took:?}");
    for t in took {
        assert!(t < Duration::from_millis(2500), "a change took {t:?}");
    }
}

/// `n` chat members join `room` at `at` as fast as they can; a watcher on
/// `seen_at` gets batches at most once a second that list every join (or
/// say `truncated` when a batch held more than the cap).
async fn join_storm(at: &Node, seen_at: &Node, room: &str, n: usize) {
    let mut watcher = Watcher::join(seen_at, room).await;
    let mut crowd = Vec::with_capacity(n);
    for i in 0..n {
        let tok = token(room, &format!("v{i}"), false, None);
        crowd.push(ChatClient::connect(at, room, Some(&tok)).await.unwrap());
    }
    // Batches until the counts show everyone.
    let t0 = Instant::now();
    let (mut joined, mut truncated) = (0, false);
    loop {
        let left = Duration::from_secs(6).saturating_sub(t0.elapsed());
        let f = watcher
            .client
            .next_within(left)
            .await
            .expect("presence within 6 s")
            .expect("open");
        if f["type"] != "presence" {
            continue;
        }
        watcher.frames.push((Instant::now(), f.clone()));
        // The watcher's own join may land in a batch after its welcome frame.
        joined += f["joined"]
            .as_array()
            .map_or(0, |j| j.iter().filter(|p| p["id"] != "watcher").count());
        truncated |= f["truncated"] == true;
        if f["chat"] == n + 1 {
            break;
        }
    }
    watcher.assert_spaced();
    let batches = watcher.frames.len();
    eprintln!("{n} joins: {batches} presence frames, {joined} listed, truncated: {truncated}");
    assert!(batches <= 2 + t0.elapsed().as_secs() as usize, "{batches} frames");
    // Each batch lists its joins unless it held more than the cap.
    assert!(truncated || joined == n, "{joined} of {n} joins listed");
    drop(crowd);
}

#[tokio::test]
async fn a_join_storm_is_one_batch_per_second() {
    let n = Node::start(&["--auth-secret", SECRET]);
    join_storm(&n, &n, "storm", 150).await;
}
