//! `loadtest bench` scenario `cascade`: one room across three nodes on this
//! machine. A real `nats-server` (from `PATH`) and three `sfu` nodes A, B, C
//! relaying over QUIC; the same publishers and viewers run twice, all on A
//! (*local*), then with the viewers spread over B and C, fed from A
//! (*cascade*). Reported: the added latency per hop (cascade − local, and
//! the nodes' own `wave_relay_hop_seconds`), join p95 on an edge against a
//! local join, origin egress per edge against what the publishers send
//! (a layer crosses each link once), and the relay threads' CPU per frame.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wave_metrics::BucketCounts;

use crate::error::Error;
use crate::http::Signaling;
use crate::node_process::{NodeProcess, replace_marked};
use crate::report::Report;
use crate::run::{self, LayerChoice, Plan, RunConfig};

/// Publishers and viewers of the scenario: half the load of `fanout 1×200`
/// on each of two edges, the low layer.
const PUBLISHERS: usize = 1;
const VIEWERS: usize = 100;

const BEGIN: &str = "<!-- loadtest-cascade:begin -->";
const END: &str = "<!-- loadtest-cascade:end -->";

/// A `nats-server -js` on a free loopback port, killed on drop.
struct Nats {
    child: Child,
    url: String,
    dir: std::path::PathBuf,
}

impl Nats {
    fn start() -> Result<Nats, Error> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("loadtest-nats-{}-{port}", std::process::id()));
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::Config(format!(
                    "cannot start nats-server ({e}): run scripts/setup.sh --test"
                ))
            })?;
        let nats = Nats {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            dir,
        };
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > until {
                return Err(Error::Config(format!("nats-server did not listen on {port}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nats)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU seconds of the process's thread named `relay` (the gateway and quinn).
fn relay_cpu(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    for t in tasks.flatten() {
        let path = t.path();
        if std::fs::read_to_string(path.join("comm")).is_ok_and(|c| c.trim() == "relay") {
            let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
            // Fields after the command's closing parenthesis: utime is the
            // 14th field of the line, stime the 15th.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<f64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            let ticks = rustix::param::clock_ticks_per_second() as f64;
            return match (f.get(11), f.get(12)) {
                (Some(u), Some(s)) => (u + s) / ticks,
                _ => 0.0,
            };
        }
    }
    0.0
}

/// What the nodes' counters say at one moment.
#[derive(Debug, Clone, Default)]
struct Counters {
    frames_sent: f64,
    bytes_sent: f64,
    frames_received: f64,
    relay_cpu_origin: f64,
    relay_cpu_edges: f64,
    hop: BucketCounts,
}

async fn counters(http: &Signaling, nodes: &[NodeProcess; 3]) -> Counters {
    let mut pages = Vec::new();
    for n in nodes {
        pages.push(http.get(&format!("{}/metrics", n.url)).await.unwrap_or_default());
    }
    let v = |page: &str, name: &str| wave_metrics::value(page, name).unwrap_or(0.0);
    let hop = |page: &str| BucketCounts::parse(page, "wave_relay_hop_seconds", "");
    Counters {
        frames_sent: v(&pages[0], "wave_relay_frames_sent_total"),
        bytes_sent: v(&pages[0], "wave_relay_bytes_sent_total"),
        frames_received: v(&pages[1], "wave_relay_frames_received_total")
            + v(&pages[2], "wave_relay_frames_received_total"),
        relay_cpu_origin: relay_cpu(nodes[0].child.id()),
        relay_cpu_edges: relay_cpu(nodes[1].child.id()) + relay_cpu(nodes[2].child.id()),
        hop: hop(&pages[1]).plus(&hop(&pages[2])),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |s| format!("{:.2}", s * 1e3))
}

/// Runs the scenario; returns its Markdown section (also written into the
/// benchmark file between its markers).
pub async fn bench(
    sfu: &Path,
    node_workers: usize,
    base: &RunConfig,
    out: &Path,
    machine: &str,
) -> Result<String, Error> {
    let nats = Nats::start()?;
    let extra = |id: &str| {
        vec![
            "--nats".to_owned(),
            nats.url.clone(),
            "--node-id".into(),
            id.into(),
            "--heartbeat".into(),
            "200ms".into(),
            "--node-ttl".into(),
            "1s".into(),
            "--no-hls".into(),
        ]
    };
    let nodes = [
        NodeProcess::start_with(sfu, node_workers, &extra("a"))?,
        NodeProcess::start_with(sfu, node_workers, &extra("b"))?,
        NodeProcess::start_with(sfu, node_workers, &extra("c"))?,
    ];
    // Every node in every node's view before the first WHIP.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let http = Signaling::new(None, Duration::from_secs(5), 0);
    let mut reports: Vec<(Report, Counters, Duration)> = Vec::new();
    for (seed, viewer_urls) in [
        (11, Vec::new()),
        (12, vec![nodes[1].url.clone(), nodes[2].url.clone()]),
    ] {
        let mut rc = base.clone();
        rc.url = nodes[0].url.clone();
        rc.viewer_urls = viewer_urls;
        rc.plan = Plan::Fanout;
        rc.publishers = PUBLISHERS;
        rc.viewers = VIEWERS;
        rc.layer = LayerChoice::Low;
        rc.seed = seed;
        rc.server_pid = Some(nodes[0].child.id());
        rc.metrics_path = Some("/metrics".into());
        let before = counters(&http, &nodes).await;
        let started = Instant::now();
        let report = run::run(rc).await?;
        let after = counters(&http, &nodes).await;
        eprint!("{}", report.table());
        let delta = Counters {
            frames_sent: after.frames_sent - before.frames_sent,
            bytes_sent: after.bytes_sent - before.bytes_sent,
            frames_received: after.frames_received - before.frames_received,
            relay_cpu_origin: after.relay_cpu_origin - before.relay_cpu_origin,
            relay_cpu_edges: after.relay_cpu_edges - before.relay_cpu_edges,
            hop: after.hop.since(&before.hop),
        };
        reports.push((report, delta, started.elapsed()));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let [(local, _, _), (cascade, c, took)] = &reports[..] else {
        return Err(Error::Media("cascade: a run is missing".into()));
    };
    let secs = took.as_secs_f64();
    let row = |name: &str, r: &Report| {
        format!(
            "| {name} | {}/{} | {:.0} | {:.2} / {:.2} | {:.3} |",
            r.viewers_joined,
            r.viewers_planned,
            r.join_ms.first_keyframe.p95,
            r.latency_ms.p50,
            r.latency_ms.p99,
            r.loss_pct
        )
    };
    let per_frame = |cpu: f64, frames: f64| {
        if frames > 0.0 {
            format!("{:.1}", cpu / frames * 1e6)
        } else {
            "n/a".into()
        }
    };
    let section = format!(
        "{BEGIN}\n### loadtest bench: cascade\n\n\
         Machine: {machine}. A real nats-server and three nodes `sfu serve --workers {workers} --no-hls --nats …` \
         (release) beside the load tester; {PUBLISHERS} publisher on A with {VIEWERS} viewers of the low layer, first \
         all on A (*local*), then spread over B and C, fed from A over QUIC (*cascade*).\n\n\
         | case | joined | join p95 ms | latency p50 / p99 ms | loss % |\n|---|---|---|---|---|\n{local_row}\n{cascade_row}\n\n\
         - Added latency per hop: p50 {d50:+.2} ms, p99 {d99:+.2} ms (cascade − local); the edges' \
         `wave_relay_hop_seconds` p50 / p99: {h50} / {h99} ms.\n\
         - Join p95 on an edge {ej:.0} ms against {lj:.0} ms local.\n\
         - Origin egress per edge: {fps:.0} frames/s, {kbps:.0} kbit/s ({sent:.0} frames sent, {recv:.0} received by the \
         two edges).\n\
         - Relay thread CPU: {origin_us} µs per frame sent at the origin, {edge_us} µs per frame received at the edges.\n{END}\n",
        workers = node_workers,
        local_row = row("local", local),
        cascade_row = row("cascade", cascade),
        d50 = cascade.latency_ms.p50 - local.latency_ms.p50,
        d99 = cascade.latency_ms.p99 - local.latency_ms.p99,
        h50 = ms(c.hop.quantile(0.5)),
        h99 = ms(c.hop.quantile(0.99)),
        ej = cascade.join_ms.first_keyframe.p95,
        lj = local.join_ms.first_keyframe.p95,
        fps = c.frames_sent / secs / 2.0,
        kbps = c.bytes_sent * 8.0 / secs / 2.0 / 1000.0,
        sent = c.frames_sent,
        recv = c.frames_received,
        origin_us = per_frame(c.relay_cpu_origin, c.frames_sent),
        edge_us = per_frame(c.relay_cpu_edges, c.frames_received),
    );
    let old = std::fs::read_to_string(out).unwrap_or_default();
    std::fs::write(out, replace_marked(&old, &section, BEGIN, END))?;
    drop(nodes);
    drop(nats);
    Ok(section)
}
