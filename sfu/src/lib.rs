//! WAVE's media node: the Sans-IO engine over str0m, the UDP workers that
//! drive it, and `run`, which composes a whole node.

pub mod config;
pub mod engine;
pub mod node;
pub mod process;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::NodeConfig;
use crate::engine::EngineConfig;
use crate::node::Node;

/// What a running node exposes to whoever started it (tests, the binary).
#[derive(Debug, Clone)]
pub struct Bound {
    pub http: SocketAddr,
    pub media: Vec<SocketAddr>,
}

/// Runs one node until `shutdown` resolves: media workers, then the HTTP
/// front door. On shutdown every peer is closed (RTCP BYE, DTLS close_notify)
/// before this returns. `on_bound` learns the actual addresses (port 0 picks).
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
    on_bound: impl FnOnce(Bound),
) -> anyhow::Result<()> {
    config.check()?;
    if config.auth_secret.is_none() {
        warn!(http = %config.http, "no --auth-secret: the node is open to anyone who can reach loopback");
    }
    let engine = EngineConfig {
        ice_lite: config.ice_lite,
        max_peers: config.max_peers,
        max_room_peers: config.max_room_peers,
        initial_bwe_bps: config.initial_bwe_bps,
        seed: rand::random(),
        ..EngineConfig::default()
    };
    let bind = SocketAddr::new(config.media_ip, config.media_port);
    let http_sessions = Arc::new(std::sync::OnceLock::new());
    let node = Arc::new(Node::start(
        config.workers,
        bind,
        config.public_ip,
        engine,
        config.max_peers,
        http_sessions.clone(),
    )?);
    let listener = tokio::net::TcpListener::bind(config.http).await?;
    let bound = Bound {
        http: listener.local_addr()?,
        media: node.media_addrs(),
    };
    info!(http = %bound.http, media = ?bound.media, "node ready");
    on_bound(bound);

    let http = signaling::HttpConfig {
        auth_secret: config.auth_secret.map(String::into_bytes),
        ice_servers: config.ice_servers,
        ..signaling::HttpConfig::default()
    };
    let server = signaling::Server::new(node.clone(), http);
    let _ = http_sessions.set(server.sessions());
    server.serve(listener, shutdown).await?;

    info!("closing peers");
    let closing = node.clone();
    let closed = tokio::time::timeout(Duration::from_millis(1500), async move {
        closing.shutdown().await;
        let _ = tokio::task::spawn_blocking(move || closing.join()).await;
    })
    .await;
    if closed.is_err() {
        warn!("workers did not stop in time");
    }
    Ok(())
}
