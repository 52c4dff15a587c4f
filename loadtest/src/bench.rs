//! `loadtest bench`: starts an `sfu` node per scenario on loopback, runs
//! the fixed scenarios, measures the per-packet floor on the same machine,
//! and writes the table into BENCHMARKS.md.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;
use crate::floor::{self, FanoutFloor, Floor};
use crate::node_process::{NodeProcess, replace_marked};
use crate::report::Report;
use crate::run::{self, LayerChoice, Plan, RunConfig};

/// One fixed scenario of the benchmark.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub plan: Plan,
    pub publishers: usize,
    pub viewers: usize,
    pub layer: LayerChoice,
}

/// The issue's scenarios: fanout 100/500/1,000/2,000 low and 500 high;
/// meeting 10 and 25; churn 200 viewers at 20 leaves+joins per second.
pub fn cases() -> Vec<Case> {
    let fanout = |v: usize, layer: LayerChoice, l: &str| Case {
        name: format!("fanout 1×{v} {l}"),
        plan: Plan::Fanout,
        publishers: 1,
        viewers: v,
        layer,
    };
    let mut c: Vec<Case> = [100, 500, 1000, 2000]
        .into_iter()
        .map(|v| fanout(v, LayerChoice::Low, "low"))
        .collect();
    c.push(fanout(500, LayerChoice::High, "high"));
    for peers in [10, 25] {
        c.push(Case {
            name: format!("meeting {peers}"),
            plan: Plan::Meeting,
            publishers: peers,
            viewers: 0,
            layer: LayerChoice::Low,
        });
    }
    c.push(Case {
        name: "churn 200 @20/s".into(),
        plan: Plan::Churn { rate: 20.0 },
        publishers: 1,
        viewers: 200,
        layer: LayerChoice::Low,
    });
    c
}

/// Options of `loadtest bench`.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub sfu: PathBuf,
    pub out: PathBuf,
    pub node_workers: usize,
    /// Template for every case (rate, duration, threads, bitrates, seed).
    pub base: RunConfig,
    /// Only these cases (by name prefix); all when empty.
    pub only: Vec<String>,
}

/// What the machine is, for the table's heading.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or("?".into(), |kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{model}, {cores} cores, {mem} RAM, Linux {}; load average at start {}",
        kernel.trim(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}

fn fmt(v: Option<f64>, d: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.d$}"))
}

/// One Markdown row.
pub fn row(name: &str, r: &Report, floor: &Floor, fan: Option<&FanoutFloor>) -> String {
    let s = &r.server;
    let multiple = s.cpu_us_per_packet.map(|c| c / floor.total_us());
    let fan_us = fan.map(FanoutFloor::us);
    let fan_multiple = s.cpu_us_per_packet.zip(fan_us).map(|(c, f)| c / f);
    format!(
        "| {name} | {}/{} ({} full) | {} | {} | {:.3} | {:.0} | {:.2} / {:.2} | {} | {} | {} / {} | {} | {} / {} |",
        r.viewers_joined,
        r.viewers_planned,
        r.viewers_joined - r.viewers_header_counted,
        fmt(s.cpu_us_per_packet, 2),
        fmt(s.packets_per_sec, 0),
        r.loss_pct,
        r.join_ms.first_keyframe.p95,
        r.latency_ms.p50,
        r.latency_ms.p99,
        fmt(s.mem_per_viewer_kib, 1),
        fmt(multiple, 1),
        fmt(fan_us, 2),
        fmt(fan_multiple, 1),
        fmt(s.cpu_cores, 2),
        fmt(r.client.cpu_us_per_packet, 2),
        fmt(r.client.cpu_cores, 2),
    )
}

/// Runs the benchmark; returns the Markdown section it wrote.
pub async fn bench(cfg: BenchConfig) -> Result<String, Error> {
    let machine = machine();
    let floor = tokio::task::spawn_blocking(|| floor::measure(Duration::from_secs(2)))
        .await
        .map_err(|e| Error::Media(format!("floor task: {e}")))??;
    eprintln!(
        "floor: AES-128-GCM seal of 1,200 bytes {:.0} ns + batched loopback send {:.0} ns = {:.2} µs per packet",
        floor.seal_ns,
        floor.send_ns,
        floor.total_us()
    );
    let mut rows = Vec::new();
    for case in cases() {
        if !cfg.only.is_empty() && !cfg.only.iter().any(|o| case.name.starts_with(o.as_str())) {
            continue;
        }
        // The fan-out floor for as many receivers as the scenario has
        // viewers (a meeting: every peer watches every other), measured
        // before its node starts.
        let receivers = case
            .viewers
            .max(case.publishers * case.publishers.saturating_sub(1));
        let fan = match tokio::task::spawn_blocking(move || floor::fanout(receivers, Duration::from_secs(1)))
            .await
        {
            Ok(Ok(f)) => {
                eprintln!(
                    "fan-out floor, {receivers} receivers: {:.2} µs per datagram ({} sent, {} read)",
                    f.us(),
                    f.sent,
                    f.received
                );
                Some(f)
            }
            Ok(Err(e)) => {
                eprintln!("fan-out floor, {receivers} receivers: {e}");
                None
            }
            Err(e) => return Err(Error::Media(format!("fan-out floor task: {e}"))),
        };
        let node = NodeProcess::start(&cfg.sfu, cfg.node_workers)?;
        let mut rc = cfg.base.clone();
        rc.url = node.url.clone();
        rc.plan = case.plan;
        rc.publishers = case.publishers;
        rc.viewers = case.viewers;
        rc.layer = case.layer;
        rc.server_pid = Some(node.child.id());
        rc.metrics_path = Some("/metrics".into());
        eprintln!("== {}", case.name);
        match run::run(rc).await {
            Ok(report) => {
                eprint!("{}", report.table());
                rows.push(row(&case.name, &report, &floor, fan.as_ref()));
            }
            Err(e) => rows.push(format!("| {} | run failed: {e} | | | | | | | | | | |", case.name)),
        }
        drop(node);
    }
    let section = format!(
        "{BEGIN}\n## loadtest bench (end to end, loopback)\n\n\
         Machine: {machine}. Node: `sfu serve --workers {workers}` (release); load tester: {threads} media thread(s), \
         one low-layer viewer in {full_every} a full str0m peer for the whole run (the other low-layer viewers full \
         until their first keyframe, then counted from RTP headers; other layers all full), join rate {rate}/s, {duration:.0} s measured after the last join; node and load tester share the machine \
         (and, when this was run, other jobs: see the load average).\n\n\
         Floor on this machine, same run: AES-128-GCM seal of 1,200 bytes (aws-lc-rs) {seal:.0} ns + its share of \
         a batched (GSO) loopback UDP send {send:.0} ns = **{total:.2} µs per packet**. The fan-out floor, measured \
         before each scenario for as many receiving loopback sockets as it has viewers: the sending thread's CPU per \
         datagram when each datagram gets its viewer's header and its own AES-128-GCM key and a slot in a 64-message \
         `sendmmsg` to distinct addresses (the receivers' path runs in that send, as for the node).\n\n\
         | scenario | viewers joined | node µs CPU / fwd pkt | fwd pkt/s | loss % | join p95 ms | latency p50 / p99 ms | node KiB / viewer | × floor | fan-out floor µs / × | node cores | tester µs / rcvd pkt, cores |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n{rows}\n\n\
         Join p95 is POST → first keyframe at the viewer, for every viewer. Loss is after NACK repair for full \
         viewers and before any repair for header-counted ones (they send no NACK). Latency is publisher send → viewer receive of the \
         same frame, measured at the full viewers from their second keyframe on (a viewer may start on a cached group up to 1 s old), both in the load tester's process, so it includes the load tester's own queueing. The last \
         column is the load tester's own CPU (all threads) per RTP packet its viewers received: where its cores \
         near what the machine has left, the tester, not the node, is the limit.\n{END}\n",
        BEGIN = BEGIN,
        END = END,
        workers = cfg.node_workers,
        threads = cfg.base.threads,
        full_every = cfg.base.full_every,
        rate = cfg.base.rate,
        duration = cfg.base.duration.as_secs_f64(),
        seal = floor.seal_ns,
        send = floor.send_ns,
        total = floor.total_us(),
        rows = rows.join("\n"),
    );
    // `--only cascade` leaves the single-node table as it is.
    let section = if rows.is_empty() {
        String::new()
    } else {
        let old = std::fs::read_to_string(&cfg.out).unwrap_or_default();
        std::fs::write(&cfg.out, replace_section(&old, &section))?;
        section
    };
    let cascade = cfg.only.is_empty() || cfg.only.iter().any(|o| "cascade".starts_with(o.as_str()));
    if !cascade {
        return Ok(section);
    }
    eprintln!("== cascade");
    let more = crate::cascade::bench(&cfg.sfu, cfg.node_workers, &cfg.base, &cfg.out, &machine).await?;
    Ok(format!("{section}\n{more}"))
}

const BEGIN: &str = "<!-- loadtest-bench:begin -->";
const END: &str = "<!-- loadtest-bench:end -->";

/// Replaces the marked section of `doc`, or appends it.
pub fn replace_section(doc: &str, section: &str) -> String {
    replace_marked(doc, section, BEGIN, END)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_is_replaced_in_place() {
        let doc = "# Benchmarks\n\nother\n";
        let s1 = format!("{BEGIN}\nfirst\n{END}\n");
        let once = replace_section(doc, &s1);
        assert_eq!(once, format!("# Benchmarks\n\nother\n\n{s1}"));
        let s2 = format!("{BEGIN}\nsecond\n{END}\n");
        let twice = replace_section(&format!("{once}after\n"), &s2);
        assert_eq!(
            twice,
            format!("# Benchmarks\n\nother\n\n{BEGIN}\nsecond\n{END}\nafter\n")
        );
    }

    #[test]
    fn cases_are_the_issue_s() {
        let names: Vec<String> = cases().into_iter().map(|c| c.name).collect();
        assert_eq!(names.len(), 8);
        assert!(names.contains(&"fanout 1×2000 low".to_string()));
        assert!(names.contains(&"churn 200 @20/s".to_string()));
    }
}
