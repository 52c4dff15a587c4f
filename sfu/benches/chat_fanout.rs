//! Chat fan-out benchmark: a real nats-server, three real `sfu` nodes on
//! 127.0.0.2-4, N WebSocket clients spread over them in one room, senders
//! (streamers, within their 50/s limit) producing R messages/s in total.
//! Prints delivery latency p50/p99 (send → receipt by each client, one
//! clock: this process) and messages/s delivered, and the loss count.
//!
//! `cargo bench -p sfu --bench chat_fanout` (defaults: 5000 clients, 200
//! msg/s, 10 s). Override with `CHAT_BENCH_CLIENTS`, `CHAT_BENCH_RATE`,
//! `CHAT_BENCH_SECS`. Needs `ulimit -n` above the client count plus slack.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::chat::{ChatClient, SECRET, token};
use common::nats::NatsServer;
use common::node::Node;

const ROOM: &str = "bench";
/// Each sender stays under the streamer limit (50/s).
const PER_SENDER_RATE: f64 = 40.0;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is ignored.
    let clients = env("CHAT_BENCH_CLIENTS", 5000) as usize;
    let rate = env("CHAT_BENCH_RATE", 200) as f64;
    let secs = env("CHAT_BENCH_SECS", 10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(clients, rate, Duration::from_secs(secs)));
}

fn start(nats: &NatsServer, id: &str, ip: &str) -> Node {
    Node::start_in_cluster(&nats.url(), id, ip, &["--auth-secret", SECRET, "--no-hls"])
}

async fn run(clients: usize, rate: f64, duration: Duration) {
    let nats = NatsServer::start();
    let nodes = [
        start(&nats, "a", "127.0.0.2"),
        start(&nats, "b", "127.0.0.3"),
        start(&nats, "c", "127.0.0.4"),
    ];
    let epoch = Instant::now();

    // Receivers, round-robin over the nodes, joined before anyone sends.
    let t0 = Instant::now();
    let mut receivers = Vec::with_capacity(clients);
    for chunk in (0..clients).collect::<Vec<_>>().chunks(200) {
        let joins: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let node = &nodes[i % nodes.len()];
                let tok = token(ROOM, &format!("viewer-{i}"), false, None);
                let http = node.http;
                async move {
                    let url = format!("ws://{http}/v1/chat/{ROOM}?token={tok}");
                    ChatClient::connect_url(&url).await.expect("join")
                }
            })
            .collect();
        receivers.extend(futures_util::future::join_all(joins).await);
    }
    println!(
        "chat_fanout: {clients} clients joined over 3 nodes in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(clients);
    for mut c in receivers {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies_us: Vec<u32> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Ok(frame) = c.next_within(Duration::from_millis(200)).await else {
                    continue;
                };
                let Some(f) = frame else { break };
                if f["type"] != "message" {
                    continue;
                }
                let sent: u64 = f["text"]
                    .as_str()
                    .and_then(|t| t.split(' ').nth(1))
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                let now = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                latencies_us.push(u32::try_from(now.saturating_sub(sent)).unwrap_or(u32::MAX));
            }
            latencies_us
        }));
    }

    // Senders: streamers, one connection each, spread over the nodes.
    let senders = ((rate / PER_SENDER_RATE).ceil() as usize).max(1);
    let per_sender = rate / senders as f64;
    let mut sender_tasks = Vec::new();
    for s in 0..senders {
        let node = &nodes[s % nodes.len()];
        let tok = token(ROOM, &format!("streamer-{s}"), true, None);
        let mut c = ChatClient::connect(node, ROOM, Some(&tok))
            .await
            .expect("sender joins");
        let n = (per_sender * duration.as_secs_f64()) as u64;
        let period = Duration::from_secs_f64(1.0 / per_sender);
        sender_tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            for seq in 0..n {
                tick.tick().await;
                let now = epoch.elapsed().as_micros();
                c.say(&format!("{seq} {now}")).await;
                // A sender receives the room too: read what is there, or
                // the node would count it as a slow client.
                while let Ok(Some(_)) = c.next_within(Duration::ZERO).await {}
            }
            // Keep the connection (and reading) until everything is delivered.
            let drain_until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < drain_until {
                let _ = c.next_within(Duration::from_millis(100)).await;
            }
            n
        }));
    }
    let t_send = Instant::now();
    let mut sent = 0;
    for t in sender_tasks {
        sent += t.await.expect("sender");
    }
    let send_secs = t_send.elapsed().as_secs_f64() - 3.0;
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<u32> = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("receiver"));
    }
    all.sort_unstable();
    let expected = sent * clients as u64;
    let delivered = all.len() as u64;
    let pct = |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)));
    let ms = |v: Option<&u32>| v.map_or(f64::NAN, |v| f64::from(*v) / 1000.0);
    println!(
        "chat_fanout: {clients} clients, {senders} senders, {sent} messages sent at {:.0}/s over {send_secs:.1} s",
        sent as f64 / send_secs
    );
    println!(
        "chat_fanout: delivered {delivered} of {expected} ({} lost), {:.0} msgs/s delivered",
        expected.saturating_sub(delivered),
        delivered as f64 / send_secs
    );
    println!(
        "chat_fanout: latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(all.last())
    );
}
