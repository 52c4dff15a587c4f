//! Chat fan-out benchmark: a real nats-server, three real `sfu` nodes on
//! 127.0.0.2-4, N WebSocket clients spread over them in one room, senders
//! (streamers, within their 50/s limit) producing R messages/s in total.
//! Prints delivery latency p50/p99 (send → receipt by each client, one
//! clock: this process), messages/s delivered, the loss count, and the CPU
//! the nodes, nats-server and this process used while sending (from
//! `/proc`), so deliveries per node core can be read off.
//!
//! `cargo bench -p sfu --bench chat_fanout` (defaults: 5000 clients, 200
//! msg/s, 10 s). Override with `CHAT_BENCH_CLIENTS`, `CHAT_BENCH_RATE`,
//! `CHAT_BENCH_SECS`; `CHAT_BENCH_READ_BUFFER` is each receiving client's
//! WebSocket read buffer in bytes (default 4096; tungstenite's own default,
//! 131072, zeroes that much on every read and made the clients the
//! bottleneck); `CHAT_BENCH_SFU` runs another `sfu` binary as the nodes
//! and `CHAT_BENCH_NODE_ARGS` adds flags to them (space separated), to
//! compare builds and settings back to back. Needs `ulimit -n` above the
//! client count plus slack.
//!
//! The receiving clients parse only what latency needs: the send time in a
//! message frame's text (`"<seq> <Unix µs>"`), found by substring, no JSON
//! tree per frame. Beside the clients' end-to-end latency it prints where
//! the time went: the nodes' `wave_chat_hop_seconds` histograms (read from
//! `/metrics` before and after, summed over the nodes) and, from the
//! senders' own connections, client send → the origin node's `ts` stamp.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hyper::Method;
use signaling::chat::{HOP_METRIC, HOPS};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use wave_metrics::BucketCounts;

use common::chat::{ChatClient, SECRET, token};
use common::nats::NatsServer;
use common::node::{Http, Node};

const ROOM: &str = "bench";
/// Each sender stays under the streamer limit (50/s).
const PER_SENDER_RATE: f64 = 40.0;
/// After the last send, receivers keep reading until everything arrived or
/// nothing did for this long (then what is missing counts as lost).
const QUIET: Duration = Duration::from_secs(3);
/// ... and never longer than this.
const MAX_DRAIN: Duration = Duration::from_secs(60);
/// After a quiet period with messages missing, how long to keep reading to
/// tell a stall (they still come) from a loss.
const LATE: Duration = Duration::from_secs(10);

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
    let extra = std::env::var("CHAT_BENCH_NODE_ARGS").unwrap_or_default();
    let mut flags = vec!["--auth-secret", SECRET, "--no-hls"];
    flags.extend(extra.split_whitespace());
    match std::env::var_os("CHAT_BENCH_SFU") {
        Some(bin) => Node::start_bin_in_cluster(bin.as_ref(), &nats.url(), id, ip, &flags),
        None => Node::start_in_cluster(&nats.url(), id, ip, &flags),
    }
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The send time (Unix µs) in a message frame, found without parsing the
/// JSON: the text is `"<seq> <µs>"`, and only message frames carry a
/// `"text"` field.
fn sent_micros(frame: &str) -> Option<u64> {
    const KEY: &str = "\"text\":\"";
    let start = frame.find(KEY)? + KEY.len();
    let text = &frame[start..];
    let text = &text[..text.find('"')?];
    text.split(' ').nth(1)?.parse().ok()
}

/// The origin node's stamp (`"ts"`, Unix ms) of a message frame.
fn origin_millis(frame: &str) -> Option<u64> {
    const KEY: &str = "\"ts\":";
    let start = frame.find(KEY)? + KEY.len();
    let digits = frame[start..].split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// Every node's `/metrics` hop histograms, by hop ([`HOPS`] order).
async fn hop_counts(http: &Http, nodes: &[Node]) -> Vec<BucketCounts> {
    let mut sums = vec![BucketCounts::default(); HOPS.len()];
    for node in nodes {
        let page = http.send(Method::GET, &node.url("/metrics"), &[], "").await.body;
        for (sum, hop) in sums.iter_mut().zip(HOPS) {
            *sum = sum.plus(&BucketCounts::parse(&page, HOP_METRIC, &format!("hop=\"{hop}\"")));
        }
    }
    sums
}

/// CPU seconds (user + system) used so far by `pid` and its descendants.
fn tree_cpu_secs(pid: u32) -> f64 {
    let ticks = ticks_per_sec();
    let mut total = 0.0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            // Fields after the `)` closing the command: state is field 3,
            // utime 14 and stime 15.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let t = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                total += (t(14) + t(15)) / ticks;
            }
        }
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(children) = std::fs::read_to_string(t.path().join("children")) {
                    stack.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
                }
            }
        }
    }
    total
}

fn ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU seconds of the nodes, nats-server and this process (whose
/// descendants they are: subtracted).
fn cpu(nodes: &[Node], nats: &NatsServer) -> (f64, f64, f64) {
    let node: f64 = nodes.iter().map(|n| tree_cpu_secs(n.child.id())).sum();
    let nats = nats.pid().map_or(0.0, tree_cpu_secs);
    (node, nats, tree_cpu_secs(std::process::id()) - node - nats)
}

/// What one receiving client saw.
struct Received {
    latencies_us: Vec<u32>,
    /// The server closed the connection (e.g. 1013, too slow).
    closed: bool,
}

async fn run(clients: usize, rate: f64, duration: Duration) {
    let load_start = loadavg();
    let nats = NatsServer::start();
    let nodes = [
        start(&nats, "a", "127.0.0.2"),
        start(&nats, "b", "127.0.0.3"),
        start(&nats, "c", "127.0.0.4"),
    ];
    let http = Http::default();
    let read_buffer = env("CHAT_BENCH_READ_BUFFER", 4096) as usize;
    let ws_config = Some(WebSocketConfig::default().read_buffer_size(read_buffer));

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
                    ChatClient::connect_url_with(&url, ws_config)
                        .await
                        .expect("join")
                        .into_ws()
                }
            })
            .collect();
        receivers.extend(futures_util::future::join_all(joins).await);
    }
    println!(
        "chat_fanout: {clients} clients joined over 3 nodes in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let senders = ((rate / PER_SENDER_RATE).ceil() as usize).max(1);
    let per_sender = rate / senders as f64;
    let per_client = (per_sender * duration.as_secs_f64()) as usize * senders;
    // Read while nothing is sent: once the receivers run, this runtime's
    // threads are theirs and an HTTP exchange on it waits for them.
    let hops0 = hop_counts(&http, &nodes).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let arrived = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(clients);
    for mut ws in receivers {
        let mut stop = stop_rx.clone();
        let arrived = arrived.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = Received {
                latencies_us: Vec::with_capacity(per_client),
                closed: false,
            };
            // One wait for the stop signal for the whole run: a `changed()`
            // made per message would register with the channel (a lock
            // shared by every receiver) a million times a second.
            let stopped = stop.changed();
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    m = ws.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            if let Some(sent) = sent_micros(t.as_str()) {
                                let now = unix_micros();
                                r.latencies_us
                                    .push(u32::try_from(now.saturating_sub(sent)).unwrap_or(u32::MAX));
                                arrived.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => {
                            r.closed = true;
                            break;
                        }
                    },
                    _ = &mut stopped => break,
                }
            }
            r
        }));
    }

    // Senders: streamers, one connection each, spread over the nodes, on
    // their own runtime (one thread) so that the receivers cannot delay the
    // send schedule.
    let sender_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("sender runtime");
    let mut sender_tasks = Vec::new();
    let mut readers = Vec::new();
    for s in 0..senders {
        let url = format!("ws://{}/v1/chat/{ROOM}", nodes[s % nodes.len()].http);
        let tok = token(ROOM, &format!("streamer-{s}"), true, None);
        let stop = stop_rx.clone();
        let (mut sink, reader) = sender_rt
            .spawn(async move {
                let c = ChatClient::connect_url(&format!("{url}?token={tok}"))
                    .await
                    .expect("sender joins");
                let (sink, stream) = c.into_ws().split();
                (sink, tokio::spawn(count_refused(stream, stop)))
            })
            .await
            .expect("sender joins");
        readers.push(reader);
        let n = (per_sender * duration.as_secs_f64()) as u64;
        let period = Duration::from_secs_f64(1.0 / per_sender);
        sender_tasks.push(sender_rt.spawn(async move {
            let mut tick = tokio::time::interval(period);
            // A starved sender sends late, never in a burst over its limit.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for seq in 0..n {
                tick.tick().await;
                let now = unix_micros();
                let frame = format!(r#"{{"type":"message","text":"{seq} {now}"}}"#);
                sink.send(Message::text(frame)).await.expect("send a chat frame");
            }
            (n, sink)
        }));
    }
    let cpu0 = cpu(&nodes, &nats);
    let t_send = Instant::now();
    let mut sent = 0;
    let mut sinks = Vec::new();
    for t in sender_tasks {
        let (n, sink) = t.await.expect("sender");
        sent += n;
        sinks.push(sink);
    }
    let send_secs = t_send.elapsed().as_secs_f64();
    // Keep the connections (and reading) until everything is delivered.
    let expected = sent * clients as u64;
    let (mut last, mut last_change) = (0, Instant::now());
    while t_send.elapsed() < duration + MAX_DRAIN && last_change.elapsed() < QUIET {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = arrived.load(Ordering::Relaxed);
        if now >= expected {
            break;
        }
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
    }
    let cpu1 = cpu(&nodes, &nats);
    let window = t_send.elapsed().as_secs_f64();
    // Stalled or lost? Whatever still comes within LATE after the quiet
    // period was stalled (it counts as delivered, very late).
    let at_quiet = arrived.load(Ordering::Relaxed);
    let t_quiet = Instant::now();
    while at_quiet < expected && t_quiet.elapsed() < LATE && arrived.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let late = arrived.load(Ordering::Relaxed) - at_quiet;
    let hops1 = hop_counts(&http, &nodes).await;
    let _ = stop_tx.send(true);
    let mut refused = 0;
    // Client send → origin stamp, µs, from the senders' own connections.
    let mut to_origin: Vec<u64> = Vec::new();
    for r in readers {
        let (n, lat) = r.await.unwrap_or_default();
        refused += n;
        to_origin.extend(lat);
    }
    to_origin.sort_unstable();
    let mut all: Vec<u32> = Vec::with_capacity(per_client * clients);
    let mut closed = 0;
    // Receivers that got less than every accepted message (where loss
    // sits), by node (receiver i is on node i % 3).
    let mut short = 0;
    let mut short_by_node = [0usize; 3];
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.expect("receiver");
        closed += usize::from(r.closed);
        if (r.latencies_us.len() as u64) < sent.saturating_sub(refused) {
            short += 1;
            short_by_node[i % nodes.len()] += 1;
        }
        all.extend(r.latencies_us);
    }
    drop(sinks);
    sender_rt.shutdown_background();
    let load_end = loadavg();
    all.sort_unstable();
    let delivered = all.len() as u64;
    let accepted = sent.saturating_sub(refused) * clients as u64;
    let pct = |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)));
    let ms = |v: Option<&u32>| v.map_or(f64::NAN, |v| f64::from(*v) / 1000.0);
    // CPU over sending and draining, the window every delivery fell in.
    let node_cpu = cpu1.0 - cpu0.0;
    let node_cores = node_cpu / window;
    let nats_cores = (cpu1.1 - cpu0.1) / window;
    let bench_cores = (cpu1.2 - cpu0.2) / window;
    let per_sec = delivered as f64 / send_secs;
    println!(
        "chat_fanout: {clients} clients, {senders} senders, {sent} messages sent at {:.0}/s over {send_secs:.1} s, {refused} refused",
        sent as f64 / send_secs
    );
    println!(
        "chat_fanout: delivered {delivered} of {accepted} accepted ({} lost, {short} clients short of a message (by node a/b/c: {short_by_node:?}), {closed} clients closed by the server), {per_sec:.0} msgs/s delivered",
        accepted.saturating_sub(delivered),
    );
    if late > 0 {
        println!(
            "chat_fanout: {late} deliveries came after {} s without any (stalled, not lost; counted above)",
            QUIET.as_secs()
        );
    }
    println!(
        "chat_fanout: latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(all.last())
    );
    println!(
        "chat_fanout: CPU over the {window:.1} s of sending and draining: nodes {node_cores:.2} cores ({:.0} deliveries per node CPU second), nats-server {nats_cores:.2}, bench clients {bench_cores:.2}",
        delivered as f64 / node_cpu.max(f64::EPSILON)
    );
    println!(
        "chat_fanout: where the time goes (p50 / p99 ms; node hops from /metrics, all nodes, bucket-interpolated):"
    );
    let q = |v: &[u64], p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .map_or(f64::NAN, |us| *us as f64 / 1000.0)
    };
    println!(
        "chat_fanout:   client send -> origin stamp (senders' view, ms stamp) {:>9.1} {:>9.1}  n={}",
        q(&to_origin, 0.5),
        q(&to_origin, 0.99),
        to_origin.len()
    );
    for (i, hop) in HOPS.iter().enumerate() {
        let d = hops1[i].since(&hops0[i]);
        let ms = |p: f64| d.quantile(p).map_or(f64::NAN, |s| s * 1000.0);
        println!(
            "chat_fanout:   {hop:<56} {:>9.1} {:>9.1}  n={}",
            ms(0.5),
            ms(0.99),
            d.count()
        );
    }
    println!(
        "chat_fanout:   client receipt (end to end)                              {:>9.1} {:>9.1}  n={}",
        ms(pct(0.50)),
        ms(pct(0.99)),
        all.len()
    );
    println!("chat_fanout: load average at start {load_start}, at the end {load_end}");
}

/// Reads a sender's own connection (it receives the room too) and counts
/// its refused messages (error frames: rate limit, bus unavailable), which
/// no client is expected to receive; also returns, per message received,
/// its send time to the origin node's `ts` stamp (µs, 0 when the whole-ms
/// stamp reads before the send).
async fn count_refused(
    mut stream: futures_util::stream::SplitStream<
        tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    >,
    mut stop: watch::Receiver<bool>,
) -> (u64, Vec<u64>) {
    let mut refused = 0u64;
    let mut to_origin = Vec::new();
    loop {
        tokio::select! {
            m = stream.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str().starts_with(r#"{"type":"error""#) {
                        refused += 1;
                    } else if let (Some(sent), Some(ts)) = (sent_micros(t.as_str()), origin_millis(t.as_str())) {
                        to_origin.push((ts * 1000).saturating_sub(sent));
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            },
            _ = stop.changed() => break,
        }
    }
    (refused, to_origin)
}
