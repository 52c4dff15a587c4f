//! The `sfu` binary: `sfu serve` runs a node, `sfu token` prints a JWT.

use std::future::Future;
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
            runtime.block_on(async {
                let (drain, stop) = stop_signals()?;
                sfu::run(config, drain, stop, |b| match serde_json::to_string(&b) {
                    Ok(line) => println!("{line}"),
                    Err(e) => tracing::error!(error = %e, "cannot print where the node listens"),
                })
                .await
            })
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

/// Two futures: the first SIGINT or SIGTERM resolves the first (the node
/// drains), the second resolves the other (the node stops at once). The
/// handlers are installed before this returns, so no signal is missed.
fn stop_signals() -> anyhow::Result<(impl Future<Output = ()>, impl Future<Output = ()>)> {
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let (second_tx, second_rx) = tokio::sync::oneshot::channel::<()>();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            for tx in [first_tx, second_tx] {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
                let _ = tx.send(());
            }
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        for tx in [first_tx, second_tx] {
            let _ = tokio::signal::ctrl_c().await;
            let _ = tx.send(());
        }
    });
    // A sender dropped without sending (no signal support) never stops the node.
    let wait = |rx: tokio::sync::oneshot::Receiver<()>| async move {
        if rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    Ok((wait(first_rx), wait(second_rx)))
}
