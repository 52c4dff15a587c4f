//! The `sfu` binary: `sfu serve` runs a node, `sfu token` prints a JWT.

use std::time::SystemTime;

use clap::Parser;
use sfu::config::{Cli, CliCommand, NodeConfig};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        CliCommand::Token(t) => {
            if !(t.publish || t.subscribe || t.role.is_some()) {
                anyhow::bail!("a token needs --publish, --subscribe, --role or several");
            }
            let mut claims = signaling::auth::Claims::new(&t.room, &t.identity, t.ttl, SystemTime::now());
            claims.publish = t.publish;
            claims.subscribe = t.subscribe;
            claims.role = t.role;
            claims.aud = t.audience.map(signaling::auth::Audience::One);
            let token = signaling::auth::issue_claims(t.secret.as_bytes(), &claims);
            println!("{token}");
            Ok(())
        }
        CliCommand::Serve(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(log_filter()?)
                .with_writer(std::io::stderr)
                .init();
            let config = NodeConfig::from_args(*args)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.http_threads)
                .enable_all()
                .build()?;
            runtime.block_on(sfu::run(
                config,
                shutdown_signal(),
                |b| match serde_json::to_string(&b) {
                    Ok(line) => println!("{line}"),
                    Err(e) => tracing::error!(error = %e, "cannot print where the node listens"),
                },
            ))
        }
    }
}

/// `RUST_LOG`, or `info`. stun-types warns on every malformed datagram the
/// embedded TURN server drops; that stays at `error` unless `RUST_LOG` names it.
fn log_filter() -> anyhow::Result<EnvFilter> {
    let given = std::env::var("RUST_LOG").unwrap_or_default();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if given.contains("stun_types") {
        return Ok(filter);
    }
    Ok(filter.add_directive("stun_types=error".parse()?))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
