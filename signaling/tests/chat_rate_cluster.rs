//! Chat rate limits across nodes, on the in-process bus and on a real
//! nats-server: one viewer connected to two nodes, both sockets flooding,
//! gets one bucket's allowance in total (per-node buckets gave it twice
//! that), while a polite viewer on both nodes loses nothing; a sender whose
//! owner node holds its subject but never answers is limited by the node's
//! own bucket after at most one lease timeout.

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::chat::{Ws, join, next};
use common::nats::on_both;
use futures_util::{SinkExt, StreamExt};
use signaling::bus::Bus;
use signaling::chat::{ChatConfig, ChatHub, LEASE_TIMEOUT};
use signaling::cluster::{Cluster, ClusterConfig, Load, NodeId};
use signaling::media::RoomId;
use tokio_tungstenite::tungstenite::Message;

on_both!(
    one_viewer_on_two_nodes_spends_one_bucket,
    a_silent_owner_leaves_the_limit_to_the_nodes_own_bucket,
);

/// A viewer's messages per second (and burst).
const RATE: u64 = 10;
/// A viewer's lease: a quarter second's worth.
const LEASE: u64 = 3;
const FLOOD: Duration = Duration::from_secs(2);
const BUFFER: usize = 1 << 20;

/// Nodes on `bus` that all see each other (their view stays as it is: no
/// heartbeats run after these).
async fn cluster(bus: &Bus, ids: &[&str]) -> Vec<Cluster> {
    let mut nodes = Vec::new();
    for id in ids {
        let mut config = ClusterConfig::new(NodeId::parse(id).unwrap(), format!("http://{id}.test"));
        config.ttl = Duration::from_secs(30);
        nodes.push(Cluster::new(bus.clone(), config).await.unwrap());
    }
    for _ in 0..2 {
        for n in &nodes {
            n.heartbeat(Load::default(), &BTreeSet::new()).await.unwrap();
        }
    }
    nodes
}

async fn hub(node: &Cluster) -> ChatHub {
    ChatHub::in_cluster(node.clone(), ChatConfig::default())
        .await
        .unwrap()
}

/// A counter from the hub's `/metrics` text.
fn counter(hub: &ChatHub, name: &str) -> u64 {
    let mut page = String::new();
    hub.render_metrics(&mut page);
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not on the page:\n{page}"))
}

/// Sends `prefix-<n>` every `every` until `end`, reading the socket
/// meanwhile; returns (sent, refused with `rate_limited`).
async fn send_paced(ws: Ws, prefix: String, every: Duration, end: Instant) -> (u64, u64) {
    let (mut sink, mut stream) = ws.split();
    let reader = tokio::spawn(async move {
        let mut refused = 0;
        let until = tokio::time::Instant::from_std(end + Duration::from_secs(1));
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, stream.next()).await {
            if let Message::Text(t) = m {
                let f: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                if f["type"] == "error" {
                    assert_eq!(f["code"], "rate_limited", "{f}");
                    refused += 1;
                }
            }
        }
        refused
    });
    let mut tick = tokio::time::interval(every);
    let mut sent = 0;
    while Instant::now() < end {
        tick.tick().await;
        let text = serde_json::json!({"type": "message", "text": format!("{prefix}-{sent}")});
        sink.send(Message::text(text.to_string())).await.unwrap();
        sent += 1;
    }
    (sent, reader.await.unwrap())
}

async fn one_viewer_on_two_nodes_spends_one_bucket(bus: &Bus) {
    let nodes = cluster(bus, &["a", "b"]).await;
    let hubs = [hub(&nodes[0]).await, hub(&nodes[1]).await];
    let room = RoomId::parse("r").unwrap();
    let mut watcher = join(&hubs[0], &room, "watcher", BUFFER).await;

    // The flooder sends 100/s on each node; the polite viewer 4/s on each
    // (8/s in all, within its 10/s).
    let end = Instant::now() + FLOOD;
    let mut flooders = Vec::new();
    let mut polite = Vec::new();
    for (i, hub) in hubs.iter().enumerate() {
        let ws = join(hub, &room, "flooder", BUFFER).await;
        flooders.push(tokio::spawn(send_paced(
            ws,
            format!("flood{i}"),
            Duration::from_millis(10),
            end,
        )));
        let ws = join(hub, &room, "polite", BUFFER).await;
        polite.push(tokio::spawn(send_paced(
            ws,
            format!("polite{i}"),
            Duration::from_millis(250),
            end,
        )));
    }
    let mut flood_sent = 0;
    for f in flooders {
        flood_sent += f.await.unwrap().0;
    }
    let mut polite_sent = 0;
    for p in polite {
        let (sent, refused) = p.await.unwrap();
        assert_eq!(refused, 0, "the polite viewer was refused");
        polite_sent += sent;
    }

    // What the room carried, as a member on a sees it.
    let (mut flood_seen, mut polite_seen) = (0u64, 0u64);
    // The first and last accepted flood message's server stamp (ms).
    let (mut first_ts, mut last_ts) = (u64::MAX, 0);
    let quiet = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Ok(f)) = tokio::time::timeout_at(quiet, next(&mut watcher)).await {
        if f["type"] == "message" {
            match f["sender"]["identity"].as_str() {
                Some("flooder") => {
                    flood_seen += 1;
                    let ts = f["ts"].as_u64().unwrap();
                    (first_ts, last_ts) = (first_ts.min(ts), last_ts.max(ts));
                }
                Some("polite") => polite_seen += 1,
                other => panic!("a message from {other:?}"),
            }
        }
    }
    assert_eq!(polite_seen, polite_sent, "the polite viewer lost messages");
    // One bucket allows burst + rate × the time the accepted messages
    // span (about 2 s), plus at most one lease of slack; two per-node
    // buckets pass about twice that.
    let span_ms = last_ts.saturating_sub(first_ts);
    let bound = RATE + (RATE * span_ms).div_ceil(1000) + LEASE;
    assert!(
        flood_seen <= bound,
        "{flood_seen} of {flood_sent} flood messages passed in {span_ms} ms; one bucket allows {bound}"
    );
    assert!(
        flood_seen >= 2 * RATE,
        "only {flood_seen} flood messages passed: the allowance should be used"
    );
    // The non-owner asked over the bus; nothing fell back.
    let sum = |name: &str| hubs.iter().map(|h| counter(h, name)).sum::<u64>();
    assert!(sum("wave_chat_rate_lease_requests_total") > 0);
    assert!(sum("wave_chat_rate_lease_grants_total") > 0);
    assert!(sum("wave_chat_rate_lease_refusals_total") > 0);
    assert_eq!(
        sum("wave_chat_rate_leases_served_total"),
        sum("wave_chat_rate_lease_requests_total")
    );
    assert_eq!(sum("wave_chat_rate_fallbacks_total"), 0);
}

async fn a_silent_owner_leaves_the_limit_to_the_nodes_own_bucket(bus: &Bus) {
    let nodes = cluster(bus, &["a", "b"]).await;
    // b holds its lease subject and never answers.
    let _silent = bus.subscribe("chat.rate.b").await.unwrap();
    let hub = hub(&nodes[0]).await;
    let room = RoomId::parse("r").unwrap();
    let identity = (0..)
        .map(|i| format!("user-{i}"))
        .find(|id| nodes[0].owner_of(&format!("r/{id}")).unwrap().as_str() == "b")
        .unwrap();
    let mut ws = join(&hub, &room, &identity, BUFFER).await;
    let t0 = Instant::now();
    for i in 0..15 {
        let text = serde_json::json!({"type": "message", "text": format!("m{i}")});
        ws.send(Message::text(text.to_string())).await.unwrap();
    }
    let (mut passed, mut refused) = (0, 0);
    while passed + refused < 15 {
        let f = next(&mut ws).await.expect("connected");
        match f["type"].as_str() {
            Some("message") => passed += 1,
            Some("error") => {
                assert_eq!(f["code"], "rate_limited", "{f}");
                refused += 1;
            }
            _ => {}
        }
    }
    let took = t0.elapsed();
    // The first passes on credit; the second waits for one lease timeout,
    // then the node's own bucket (10 at once) decides for it and the rest.
    assert!((10..=12).contains(&passed), "{passed} of 15 passed");
    assert!(
        took < LEASE_TIMEOUT + Duration::from_millis(750),
        "15 sends took {took:?} with a silent owner"
    );
    assert!(counter(&hub, "wave_chat_rate_fallbacks_total") >= 10);
    assert_eq!(counter(&hub, "wave_chat_rate_lease_grants_total"), 0);
}
