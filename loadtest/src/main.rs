//! `loadtest`: run a scenario against a WHIP/WHEP server and report.

use std::process::ExitCode;

use loadtest::{bench, cli, hls_bench, report, run};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .init();
    let cli = match cli::parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadtest: {e}");
            return ExitCode::from(2);
        }
    };
    match execute(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::from(1)
        }
    }
}

fn execute(cli: &cli::Cli) -> Result<ExitCode, loadtest::Error> {
    if let cli::Scenario::Hls(_) | cli::Scenario::BenchHls(_) = &cli.command {
        return hls_bench::execute(cli);
    }
    let expect = match &cli.common.expect {
        Some(spec) => report::parse_expect(spec)?,
        None => Vec::new(),
    };
    let config = cli.run_config()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if let cli::Scenario::Bench(b) = &cli.command {
        let sfu = match &b.sfu {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("sfu"),
        };
        let cfg = bench::BenchConfig {
            sfu,
            out: b.out.clone(),
            node_workers: b.node_workers,
            base: config,
            only: b.only.clone(),
        };
        let section = runtime.block_on(bench::bench(cfg))?;
        println!("{section}");
        return Ok(ExitCode::SUCCESS);
    }
    let report = runtime.block_on(run::run(config))?;
    report::finish(&report, &report.table(), cli.common.json.as_deref(), &expect)
}
