//! The engine benchmark: the Sans-IO engine alone, in-process, one simulcast
//! publisher (3 VP8 layers + Opus) and N WHEP viewers on simulated time, over
//! the in-memory network of `tests/common/sim.rs` (real str0m client peers
//! that complete ICE and DTLS). No sockets.
//!
//! For each N it prints the engine's CPU nanoseconds per forwarded packet
//! (time inside engine calls, SRTP encryption included, divided by
//! `rtp_forwarded`) and the memory each viewer costs.
//!
//! `cargo bench -p sfu` runs N = 10, 100, 1000, each in a child process of
//! its own so memory readings do not share a heap. Options after `--`:
//! a list of N, `--sink count|discard` (see `Sink`), `--window SECONDS`.

#[allow(dead_code)]
#[path = "../tests/common/sim.rs"]
mod sim;

use std::alloc::System;
use std::time::{Duration, Instant};

use sim::{Sim, Sink};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const TARGET_NS_PER_PACKET: f64 = 2_000.0;
const TARGET_BYTES_PER_VIEWER: f64 = 64.0 * 1024.0;
const ROOM: &str = "bench";

/// Bytes currently allocated on the Rust heap by the whole process.
/// `stats_alloc` already adds a realloc's growth to `bytes_allocated` (and its
/// shrinkage to `bytes_deallocated`); `bytes_reallocated` is the same delta
/// again, so it must not be added. C allocations (aws-lc's cipher contexts,
/// ~6 KB per peer by heaptrack) are not seen here.
fn live_heap() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

fn rss() -> i64 {
    wave_metrics::process::sample().rss_bytes as i64
}

#[derive(Debug)]
struct Outcome {
    n: usize,
    forwarded: u64,
    engine_ns: u128,
    window_s: f64,
    /// Lowest and highest RTP packets one viewer received in the window.
    per_viewer: (u64, u64),
    /// Heap the engine keeps per viewer (client peers dropped before reading).
    heap_per_viewer: f64,
    /// Process RSS growth per viewer: engine plus the in-process client peers.
    rss_per_viewer: f64,
    /// Engine time per forwarded packet at setup: ICE, DTLS, SDP.
    setup_s: f64,
    process_cpu_s: f64,
    /// Wall time of the window: with `process_cpu_s`, whether the thread was preempted.
    wall_s: f64,
}

impl Outcome {
    fn ns_per_packet(&self) -> f64 {
        self.engine_ns as f64 / self.forwarded.max(1) as f64
    }

    fn line(&self) -> String {
        format!(
            "RESULT {} {} {} {} {} {} {} {} {} {} {}",
            self.n,
            self.forwarded,
            self.engine_ns,
            self.window_s,
            self.per_viewer.0,
            self.per_viewer.1,
            self.heap_per_viewer,
            self.rss_per_viewer,
            self.setup_s,
            self.process_cpu_s,
            self.wall_s
        )
    }

    fn parse(line: &str) -> Option<Outcome> {
        let f: Vec<&str> = line.strip_prefix("RESULT ")?.split_whitespace().collect();
        Some(Outcome {
            n: f.first()?.parse().ok()?,
            forwarded: f.get(1)?.parse().ok()?,
            engine_ns: f.get(2)?.parse().ok()?,
            window_s: f.get(3)?.parse().ok()?,
            per_viewer: (f.get(4)?.parse().ok()?, f.get(5)?.parse().ok()?),
            heap_per_viewer: f.get(6)?.parse().ok()?,
            rss_per_viewer: f.get(7)?.parse().ok()?,
            setup_s: f.get(8)?.parse().ok()?,
            process_cpu_s: f.get(9)?.parse().ok()?,
            wall_s: f.get(10)?.parse().ok()?,
        })
    }
}

/// One publisher, `n` viewers; measures a steady-state window of `window`.
fn run_one(n: usize, sink: Sink, window: Duration) -> Outcome {
    let setup = Instant::now();
    let mut sim = Sim::new();
    let _publisher = sim.publish(ROOM, 1);
    sim.run(Duration::from_millis(500));
    assert_eq!(sim.engine.stats().publishers, 1, "publisher connected");

    let heap0 = live_heap();
    let rss0 = rss();
    let mut viewers = Vec::with_capacity(n);
    for i in 0..n {
        viewers.push(sim.play_with(ROOM, None, sink));
        // Let each batch of viewers connect before the next one arrives.
        if i % 100 == 99 {
            sim.run(Duration::from_millis(20));
        }
    }
    let deadline = sim.now + Duration::from_secs(20);
    while !viewers.iter().all(|v| sim.client(*v).connected) {
        assert!(sim.now < deadline, "viewers did not connect");
        sim.run(Duration::from_millis(10));
    }
    // The switch to a layer waits for its keyframe (a PLI asks for it), then
    // let rates, BWE and RTCP settle.
    sim.run(Duration::from_millis(1500));
    if sink != Sink::Discard {
        let without = viewers.iter().filter(|v| sim.client(**v).keyframes == 0).count();
        assert_eq!(without, 0, "viewers without a keyframe");
    }
    let setup_s = setup.elapsed().as_secs_f64();

    let before: Vec<u64> = viewers.iter().map(|v| sim.client(*v).rtp_packets).collect();
    let fwd0 = sim.engine.stats().rtp_forwarded;
    let t0 = sim.engine_time;
    let cpu0 = wave_metrics::process::sample().cpu_seconds;
    let wall0 = Instant::now();
    sim.run(window);
    let wall_s = wall0.elapsed().as_secs_f64();
    let cpu1 = wave_metrics::process::sample().cpu_seconds;
    let engine_ns = (sim.engine_time - t0).as_nanos();
    let forwarded = sim.engine.stats().rtp_forwarded - fwd0;
    let got: Vec<u64> = viewers
        .iter()
        .zip(&before)
        .map(|(v, b)| sim.client(*v).rtp_packets - b)
        .collect();
    let per_viewer = (
        got.iter().copied().min().unwrap_or(0),
        got.iter().copied().max().unwrap_or(0),
    );
    let rss1 = rss();
    assert_eq!(
        sim.engine.stats().viewers,
        n as u64,
        "every viewer still in the engine"
    );
    // The client peers live in this process too: drop them (without telling
    // the engine) so the heap left is the engine's own.
    for v in &viewers {
        sim.forget(*v);
    }
    let heap1 = live_heap();
    // The process ends after this run: leaving the engine allocated makes a
    // heap profiler (`heaptrack engine-* --one N`) report exactly the heap it
    // keeps per viewer as "leaked", attributed to the call sites that hold it.
    std::mem::forget(sim);
    Outcome {
        n,
        forwarded,
        engine_ns,
        window_s: window.as_secs_f64(),
        per_viewer,
        heap_per_viewer: (heap1 - heap0) as f64 / n as f64,
        rss_per_viewer: (rss1 - rss0) as f64 / n as f64,
        setup_s,
        process_cpu_s: cpu1 - cpu0,
        wall_s,
    }
}

fn parse_sink(s: &str) -> Sink {
    match s {
        "count" => Sink::Count,
        "discard" => Sink::Discard,
        other => panic!("--sink count|discard, not {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut ns: Vec<usize> = Vec::new();
    let mut one = None;
    let mut sink = "discard".to_string();
    let mut window = 2.0f64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--one" => one = it.next().and_then(|v| v.parse().ok()),
            "--sink" => sink = it.next().cloned().unwrap_or_default(),
            "--window" => window = it.next().and_then(|v| v.parse().ok()).unwrap_or(window),
            // `cargo bench` passes --bench; libtest's other flags are ignored too.
            a if a.starts_with('-') => {}
            a => ns.extend(a.parse::<usize>().ok()),
        }
    }
    let window_d = Duration::from_secs_f64(window);
    if let Some(n) = one {
        let out = run_one(n, parse_sink(&sink), window_d);
        println!("{}", out.line());
        return;
    }
    if ns.is_empty() {
        ns = vec![10, 100, 1000];
    }
    parse_sink(&sink);

    println!(
        "sfu engine benchmark: 1 publisher (VP8 simulcast q/h/f at 30 fps: 1+2+4 packets per frame, Opus 50 packets/s)"
    );
    println!(
        "N viewers on simulated time, {window} s steady-state window; viewers: real str0m peers (ICE+DTLS+SRTP), sink = {sink}"
    );
    match sink.as_str() {
        "discard" => println!(
            "  (discard: viewers count their RTP datagrams without decrypting them; STUN/DTLS/RTCP still reach their Rtc)"
        ),
        _ => println!("  (count: viewers decrypt every packet in str0m and send RTCP feedback, then count)"),
    }
    println!(
        "engine time = wall time inside Engine::handle_receive/handle_timeout/handle_command/poll_transmit (single thread)"
    );
    println!();
    let exe = std::env::current_exe().expect("own path");
    let mut results = Vec::new();
    for n in ns {
        let started = Instant::now();
        let out = std::process::Command::new(&exe)
            .args([
                "--one",
                &n.to_string(),
                "--sink",
                &sink,
                "--window",
                &window.to_string(),
            ])
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run child");
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(r) = text.lines().find_map(Outcome::parse) else {
            eprintln!("N={n}: child failed ({}):\n{text}", out.status);
            std::process::exit(1);
        };
        eprintln!(
            "N={n}: done in {:.1} s (setup {:.1} s)",
            started.elapsed().as_secs_f64(),
            r.setup_s
        );
        results.push(r);
    }
    println!(
        "{:>6} {:>10} {:>10} {:>14} {:>9} {:>9} {:>14} {:>14} {:>14}",
        "N",
        "forwarded",
        "ns/packet",
        "packets/s/core",
        "engine %",
        "on-CPU %",
        "heap B/viewer",
        "RSS B/viewer*",
        "pkts/viewer/s"
    );
    for r in &results {
        let ns = r.ns_per_packet();
        println!(
            "{:>6} {:>10} {:>10.0} {:>14.0} {:>8.0}% {:>8.0}% {:>14.0} {:>14.0} {:>6.0}..{:<6.0}",
            r.n,
            r.forwarded,
            ns,
            1e9 / ns,
            100.0 * r.engine_ns as f64 / 1e9 / r.process_cpu_s.max(1e-9),
            100.0 * r.process_cpu_s / r.wall_s.max(1e-9),
            r.heap_per_viewer,
            r.rss_per_viewer,
            r.per_viewer.0 as f64 / r.window_s,
            r.per_viewer.1 as f64 / r.window_s,
        );
    }
    println!(
        "  engine % = engine time / whole-process CPU in the window; on-CPU % = process CPU / wall time"
    );
    println!(
        "  (below ~95%: the thread was preempted, ns/packet is inflated); heap = live heap bytes the engine keeps per viewer;"
    );
    println!("  * RSS growth per viewer includes the in-process client peer (a second str0m Rtc)");
    let worst_ns = results.iter().map(Outcome::ns_per_packet).fold(0.0, f64::max);
    let worst_mem = results.iter().map(|r| r.heap_per_viewer).fold(0.0, f64::max);
    let ok = worst_ns <= TARGET_NS_PER_PACKET && worst_mem <= TARGET_BYTES_PER_VIEWER;
    println!(
        "verdict: {} — worst {:.0} ns/packet (target <= 2000), worst {:.1} KiB heap/viewer (target <= 64)",
        if ok { "PASS" } else { "FAIL" },
        worst_ns,
        worst_mem / 1024.0
    );
}
