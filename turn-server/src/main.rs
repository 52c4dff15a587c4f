//! `turn-server serve` and `turn-server credentials`.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser as _;
use tracing_subscriber::EnvFilter;
use turn_server::config::{Cli, Command};

// One thread: the core, relay readers and stream tasks hand packets to each
// other without cross-thread wakeups. Run one process per core to scale.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Credentials(args) => {
            let unix_now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            let uris = if args.uris.is_empty() {
                vec![
                    format!("turn:{}?transport=udp", args.host),
                    format!("turn:{}?transport=tcp", args.host),
                ]
            } else {
                args.uris
            };
            let creds = turn_server::rest_credentials(
                &args.auth_secret,
                &args.user,
                args.ttl.0.as_secs(),
                unix_now,
                uris,
            );
            println!("{}", serde_json::to_string(&creds)?);
            Ok(())
        }
        Command::Serve(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                    EnvFilter::new("info,stun_types=error,turn_types=error,stun_proto=error")
                }))
                .with_writer(std::io::stderr)
                .init();
            let config = args.resolve().context("configuration")?;
            let bound = turn_server::bind(config).await.context("starting")?;
            let addrs = bound.local_addrs();
            // Scripts and tests read the bound ports from this line.
            let mut line = format!("turn-server listening udp={} tcp={}", addrs.udp, addrs.tcp);
            if let Some(tls) = addrs.tls {
                line.push_str(&format!(" tls={tls}"));
            }
            if let Some(metrics) = addrs.metrics {
                line.push_str(&format!(" metrics={metrics}"));
            }
            println!("{line}");
            bound
                .run(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
                .context("serving")?;
            Ok(())
        }
    }
}
