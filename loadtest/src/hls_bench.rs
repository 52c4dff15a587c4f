//! `loadtest hls` and `loadtest bench-hls`: the command-line side of the
//! LL-HLS scenario, and the HLS serving benchmark (a release `sfu` node,
//! our publisher, N LL-HLS viewers; requests/s per node core and the node's
//! blocked-request answer delay, written into BENCHMARKS.md).

use std::path::Path;
use std::process::ExitCode;

use crate::bench;
use crate::cli::{Cli, Common, HlsArgs, Scenario};
use crate::error::Error;
use crate::hls::{self, HlsConfig};
use crate::hls_report::HlsReport;
use crate::node_process::{NodeProcess, replace_marked};
use crate::report;
use crate::run::RunConfig;

/// The run `args` describe; `publisher` is the WHIP publisher's template.
pub fn config(c: &Common, args: &HlsArgs, publisher: RunConfig) -> Result<HlsConfig, Error> {
    if args.viewers == 0 {
        return Err(Error::Config("at least one viewer".into()));
    }
    if c.rate <= 0.0 {
        return Err(Error::Config("rate must be positive".into()));
    }
    let own = args.room.is_none();
    Ok(HlsConfig {
        url: c.url.clone(),
        path: args.hls_path.clone(),
        // The room `run` publishes to (`lt{seed}-{publisher}`).
        room: args.room.clone().unwrap_or_else(|| format!("lt{}-0", c.seed)),
        viewers: args.viewers,
        rate: c.rate,
        duration: publisher.duration,
        timeout: publisher.timeout,
        layer: args.layer,
        audio: !args.no_audio,
        h2: args.h2c,
        prefetch_hint: !args.no_hint,
        seed: c.seed,
        metrics_path: publisher.metrics_path.clone(),
        server_pid: c.server_pid,
        progress: !c.quiet,
        publish: own.then_some(publisher),
    })
}

/// Runs `loadtest hls` or `loadtest bench-hls`.
pub fn execute(cli: &Cli) -> Result<ExitCode, Error> {
    let c = &cli.common;
    let expect = match &c.expect {
        Some(spec) => report::parse_expect_with(spec, HlsReport::unit)?,
        None => Vec::new(),
    };
    let publisher = cli.run_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(c.threads.max(1))
        .enable_all()
        .build()?;
    let report = match &cli.command {
        Scenario::Hls(args) => runtime.block_on(hls::run(config(c, args, publisher)?))?,
        Scenario::BenchHls(b) => {
            let sfu = match &b.sfu {
                Some(p) => p.clone(),
                None => std::env::current_exe()?.with_file_name("sfu"),
            };
            // The benchmark watches its own publisher on its own node.
            let args = HlsArgs {
                room: None,
                ..b.hls.clone()
            };
            let cfg = config(c, &args, publisher)?;
            let out = (!b.out.as_os_str().is_empty()).then_some(b.out.as_path());
            runtime.block_on(bench_hls(cfg, &sfu, b.node_workers, out))?
        }
        _ => return Err(Error::Config("not an LL-HLS scenario".into())),
    };
    report::finish(&report, &report.table(), c.json.as_deref(), &expect)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Starts the node, runs the viewers against it with our publisher, and
/// writes the section into `out`.
pub async fn bench_hls(
    mut cfg: HlsConfig,
    sfu: &Path,
    workers: usize,
    out: Option<&Path>,
) -> Result<HlsReport, Error> {
    let machine = bench::machine();
    let node = NodeProcess::start(sfu, workers)?;
    cfg.url = node.url.clone();
    cfg.room = format!("lt{}-0", cfg.seed);
    cfg.server_pid = Some(node.child.id());
    cfg.metrics_path = Some("/metrics".into());
    let publish = cfg
        .publish
        .as_mut()
        .ok_or_else(|| Error::Config("the benchmark publishes its own stream (no --room)".into()))?;
    publish.url = node.url.clone();
    publish.metrics_path = None;
    publish.server_pid = None;
    let report = hls::run(cfg.clone()).await?;
    drop(node);
    let load_end = load_average();
    eprint!("{}", report.table());
    if let Some(out) = out {
        let section = section(&cfg, workers, &machine, &load_end, &report);
        let old = std::fs::read_to_string(out).unwrap_or_default();
        std::fs::write(out, replace_marked(&old, &section, BEGIN, END))?;
        println!("{section}");
    }
    Ok(report)
}

const BEGIN: &str = "<!-- loadtest-bench-hls:begin -->";
const END: &str = "<!-- loadtest-bench-hls:end -->";

fn section(cfg: &HlsConfig, workers: usize, machine: &str, load_end: &str, r: &HlsReport) -> String {
    let f = |v: Option<f64>, d: usize| v.map_or("n/a".to_owned(), |v| format!("{v:.d$}"));
    let s = &r.server;
    format!(
        "{BEGIN}\n## LL-HLS serving (`loadtest bench-hls`, loopback)\n\n\
         Machine: {machine}; load average at the end {load_end} (shared machine: other jobs ran too).\n\
         Node: `sfu serve --workers {workers}` (release), HLS served by its HTTP front door. One WHIP \
         publisher (the load tester's H.264 simulcast, 3 layers, + Opus). {viewers} LL-HLS viewers \
         over {transport} (hyper, one client each), started at {rate}/s, {dur:.0} s measured after the \
         last start: variant `{layer:?}`{audio}, blocking reloads with `_HLS_msn`/`_HLS_part`{hint}.\n\n\
         | viewers | transport | node requests/s | node cores | requests/s per core (target ≥ 20,000) | \
         blocked answer p50 / p99 ms (target p99 ≤ 5) | part media end → held p50 / p99 ms | stalls | failed requests |\n\
         |---|---|---|---|---|---|---|---|---|\n\
         | {joined}/{viewers} | {transport} | {rps} | {cores} | {rpc} | {b50} / {b99} ({answers} answers) | {p50:.1} / {p99:.1} | {stalls} | {errors} |\n\n\
         *Blocked answer* is measured in the node: from the instant the worker publishes the snapshot \
         that completes a part to the instant the blocked playlist response is ready \
         (`{hist}` on `/metrics`, p50/p99 interpolated inside its buckets). *Part media end → held* is \
         measured by the viewers: the wall time a part was held minus its media's end \
         (PROGRAM-DATE-TIME + part durations); it includes the packager waiting for the next frame \
         (one frame, 33 ms) and the load tester's own scheduling. Node CPU from `/proc/<pid>`.\n{END}\n",
        viewers = cfg.viewers,
        joined = r.viewers_joined,
        transport = r.transport,
        rate = cfg.rate,
        dur = cfg.duration.as_secs_f64(),
        layer = cfg.layer,
        audio = if cfg.audio { " + its audio rendition" } else { "" },
        hint = if cfg.prefetch_hint {
            ", the preload-hinted part fetched alongside"
        } else {
            ""
        },
        rps = f(s.requests_per_sec, 0),
        cores = f(s.cpu_cores, 2),
        rpc = f(s.requests_per_core, 0),
        b50 = f(s.blocked_p50_ms, 2),
        b99 = f(s.blocked_p99_ms, 2),
        answers = f(s.blocked_answers, 0),
        p50 = r.part_ms.p50,
        p99 = r.part_ms.p99,
        stalls = r.stalls,
        errors = r.errors_total,
        hist = crate::hls_report::BLOCKED_HISTOGRAM,
    )
}
