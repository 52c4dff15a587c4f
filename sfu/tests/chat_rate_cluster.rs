//! Chat rate limits across two real `sfu` nodes sharing a real
//! nats-server: one viewer token with a WebSocket on each node, both
//! flooding for 2 s, gets one bucket's allowance in total (per-node buckets
//! gave it about twice that), while a polite viewer on both nodes loses
//! nothing; a sender's first message is not held up by a lease request.

use crate::common;

use std::time::{Duration, Instant};

use common::chat::{ChatClient, cluster_node, metric, token, wait_for_view};
use common::nats::NatsServer;
use common::node::{Http, Node};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use signaling::cluster::NodeId;
use signaling::cluster::placement::owner;
use tokio_tungstenite::tungstenite::Message;

/// A viewer's rate and burst, and its lease (a quarter second's worth).
const RATE: u64 = 10;
const LEASE: u64 = 3;
const FLOOD: Duration = Duration::from_secs(2);

/// Connects `identity` (a viewer) to `room` on `node`, then sends
/// `prefix-<n>` every `every` until `end` while reading; returns (sent,
/// refused with `rate_limited`).
async fn send_paced(node: &Node, identity: &str, prefix: &str, every: Duration, end: Instant) -> (u64, u64) {
    let client = ChatClient::connect(node, "r", Some(&token("r", identity, false, None)))
        .await
        .unwrap();
    let (mut sink, mut stream) = client.into_ws().split();
    let reader = tokio::spawn(async move {
        let mut refused = 0;
        let until = tokio::time::Instant::from_std(end + Duration::from_secs(1));
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, stream.next()).await {
            if let Message::Text(t) = m {
                let f: Value = serde_json::from_str(t.as_str()).unwrap();
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
        let text = json!({"type": "message", "text": format!("{prefix}-{sent}")});
        sink.send(Message::text(text.to_string())).await.unwrap();
        sent += 1;
    }
    (sent, reader.await.unwrap())
}

#[tokio::test]
async fn a_viewer_on_two_nodes_gets_one_allowance() {
    let nats = NatsServer::start();
    let a = cluster_node(&nats, "a", "127.0.0.14");
    let b = cluster_node(&nats, "b", "127.0.0.15");
    let http = Http::default();
    wait_for_view(&http, &[&a, &b], 2).await;
    let mut watcher = ChatClient::connect(&a, "r", Some(&token("r", "watcher", false, None)))
        .await
        .unwrap();

    // 100/s on each node from the flooder; 4/s on each (8/s in all, within
    // 10/s) from the polite viewer.
    let end = Instant::now() + FLOOD;
    let ((fa, fb), (pa, pb)) = tokio::join!(
        async {
            tokio::join!(
                send_paced(&a, "flooder", "fa", Duration::from_millis(10), end),
                send_paced(&b, "flooder", "fb", Duration::from_millis(10), end),
            )
        },
        async {
            tokio::join!(
                send_paced(&a, "polite", "pa", Duration::from_millis(250), end),
                send_paced(&b, "polite", "pb", Duration::from_millis(250), end),
            )
        },
    );
    assert_eq!((pa.1, pb.1), (0, 0), "the polite viewer was refused");

    let (mut flood_seen, mut polite_seen) = (0, 0);
    // The first and last accepted flood message's server stamp (ms).
    let (mut first_ts, mut last_ts) = (u64::MAX, 0);
    while let Ok(Some(f)) = watcher.next_within(Duration::from_millis(1500)).await {
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
    assert_eq!(polite_seen, pa.0 + pb.0, "the polite viewer lost messages");
    // One bucket allows burst + rate × the time the accepted messages
    // span (about 2 s), plus at most one lease of slack; two per-node
    // buckets pass about twice that.
    let span_ms = last_ts.saturating_sub(first_ts);
    let bound = RATE + (RATE * span_ms).div_ceil(1000) + LEASE;
    assert!(
        flood_seen <= bound,
        "{flood_seen} of {} flood messages passed in {span_ms} ms; one bucket allows {bound}",
        fa.0 + fb.0
    );
    assert!(flood_seen >= 2 * RATE, "only {flood_seen} flood messages passed");
    assert_eq!(
        fa.1 + fb.1 + flood_seen,
        fa.0 + fb.0,
        "every flood message answered"
    );

    let sum = async |name: &str| metric(&http, &a, name).await + metric(&http, &b, name).await;
    assert!(sum("wave_chat_rate_lease_requests_total").await > 0.0);
    assert!(sum("wave_chat_rate_lease_grants_total").await > 0.0);
    assert_eq!(sum("wave_chat_rate_fallbacks_total").await, 0.0);
}

/// The time from a member's send to its own message coming back, for the
/// first message of `n` fresh viewers on `node` whose bucket `owner_id`
/// keeps: mean and max, in ms.
async fn first_sends(node: &Node, ids: &[NodeId], owner_id: &str, n: usize) -> (f64, f64) {
    let mut took = Vec::new();
    for i in 0.. {
        if took.len() == n {
            break;
        }
        let identity = format!("fresh-{owner_id}-{i}");
        if owner(&format!("r/{identity}"), ids).unwrap().as_str() != owner_id {
            continue;
        }
        let mut c = ChatClient::connect(node, "r", Some(&token("r", &identity, false, None)))
            .await
            .unwrap();
        let t0 = Instant::now();
        c.say("first").await;
        loop {
            let f = c.next_of("message").await;
            if f["sender"]["identity"] == identity.as_str() {
                break;
            }
        }
        took.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let mean = took.iter().sum::<f64>() / took.len() as f64;
    (mean, took.iter().copied().fold(0.0, f64::max))
}

/// A fresh sender's first message on a node that does not own its bucket
/// is sent on credit: it comes back as fast as on the owner (no lease
/// round trip before it). Prints both and the lease round trip.
#[tokio::test]
async fn a_first_message_does_not_wait_for_a_lease() {
    let nats = NatsServer::start();
    let a = cluster_node(&nats, "a", "127.0.0.16");
    let b = cluster_node(&nats, "b", "127.0.0.17");
    let http = Http::default();
    wait_for_view(&http, &[&a, &b], 2).await;
    let ids = [NodeId::parse("a").unwrap(), NodeId::parse("b").unwrap()];
    // Warm both nodes' room and bus paths.
    let _ = first_sends(&a, &ids, "a", 2).await;
    let (local_mean, local_max) = first_sends(&a, &ids, "a", 20).await;
    let before = metric(&http, &a, "wave_chat_rate_lease_requests_total").await;
    let (remote_mean, remote_max) = first_sends(&a, &ids, "b", 20).await;
    // Each remote sender's credit was reported by one background request.
    let asked = metric(&http, &a, "wave_chat_rate_lease_requests_total").await - before;
    assert_eq!(asked, 20.0);
    assert_eq!(metric(&http, &a, "wave_chat_rate_fallbacks_total").await, 0.0);
    let rtt = |part: &str| format!("wave_chat_rate_lease_seconds_{part}{{outcome=\"answered\"}}");
    let rtt_sum = metric(&http, &a, &rtt("sum")).await;
    let rtt_n = metric(&http, &a, &rtt("count")).await;
    eprintln!(
        "first send to own echo: owner here {local_mean:.2} ms mean ({local_max:.2} max), \
         owner elsewhere {remote_mean:.2} ms mean ({remote_max:.2} max); \
         lease round trip {:.3} ms mean over {rtt_n}",
        rtt_sum / rtt_n * 1e3
    );
}
