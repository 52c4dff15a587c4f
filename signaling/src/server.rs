//! The accept loop: HTTP/1.1 and h2 on one listener (h2c, or TLS with ALPN
//! when the node has a certificate), graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::config::HttpConfig;
use crate::drain::Drain;
use crate::media::MediaNode;
use crate::metrics::HttpMetrics;
use crate::ratelimit::ConnectionRefused;
use crate::routes::Shared;
use crate::sessions::Sessions;

/// Slow clients get this long to send their request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed `accept` (EMFILE and the like), wait before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Concurrent streams per HTTP/2 connection.
const MAX_H2_STREAMS: u32 = 64;
/// A TLS client gets this long to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate's files are checked for a renewal.
const TLS_RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The HTTP front door of one node.
pub struct Server<M> {
    shared: Arc<Shared<M>>,
}

impl<M: MediaNode> Server<M> {
    pub fn new(node: Arc<M>, config: HttpConfig) -> Self {
        Server {
            shared: Arc::new(Shared::new(node, config, Sessions::new())),
        }
    }

    /// Joins the cluster: WHIP claims rooms in its registry, WHEP and WHIP
    /// for rooms hosted elsewhere are redirected (307) to their node, and
    /// `/v1/rooms/{room}` shows the owner. Call before [`Server::serve`].
    pub fn with_cluster(mut self, cluster: crate::cluster::Cluster) -> Self {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => shared.cluster = Some(cluster),
            // `shared` is only cloned by `serve`, which consumes the server.
            None => unreachable!("Server::with_cluster after serve"),
        }
        self
    }

    /// The session table; the node calls [`Sessions::ended`] on it when it
    /// ends a session by itself.
    pub fn sessions(&self) -> Sessions {
        self.shared.sessions.clone()
    }

    /// The switch that starts draining (see [`Drain`]).
    pub fn drain(&self) -> Drain {
        self.shared.drain.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting and gives
    /// in-flight requests [`HttpConfig::shutdown_grace`] to finish.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let addr = listener.local_addr()?;
        let grace = self.shared.config.shutdown_grace;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_H2_STREAMS);
        let graceful = GracefulShutdown::new();
        let tls = match &self.shared.config.tls {
            Some(cert) => {
                let config = cert.server_config().map_err(io::Error::other)?;
                Some((
                    tokio_rustls::TlsAcceptor::from(config),
                    tokio::spawn(cert.clone().watch(TLS_RELOAD_EVERY)),
                ))
            }
            None => None,
        };
        info!(%addr, tls = tls.is_some(), "HTTP listening");
        let presence = tokio::spawn(self.shared.clone().run_presence());

        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let proxy = self.shared.config.trusted_proxies.contains(peer.ip());
            let permit = match self.shared.connections.admit(peer.ip(), proxy) {
                Ok(permit) => permit,
                Err(cap) => {
                    // Over TLS the plain answer would not parse: just close.
                    if tls.is_none() {
                        refuse_connection(&stream, &self.shared.metrics, cap);
                    }
                    debug!(%peer, ?cap, "connection refused: over the connection cap");
                    continue;
                }
            };
            // Small request/response pairs: do not wait for Nagle.
            let _ = stream.set_nodelay(true);
            let shared = self.shared.clone();
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(shared.handle(req, peer).await) }
            });
            if let Some((acceptor, _)) = &tls {
                let (acceptor, builder, watcher) = (acceptor.clone(), builder.clone(), graceful.watcher());
                tokio::spawn(async move {
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                    drop(permit);
                });
                continue;
            }
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
                drop(permit);
            });
        }
        if let Some((_, reload)) = &tls {
            reload.abort();
        }

        drop(listener);
        presence.abort();
        if let Some(hub) = self.shared.chat.get() {
            hub.close_all().await;
        }
        info!(%addr, connections = graceful.count(), "HTTP shutting down");
        if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
            warn!(?grace, "in-flight requests did not finish in time");
        }
        Ok(())
    }
}

/// The whole answer to a connection over a cap, written without waiting
/// (a fresh socket's send buffer takes it) before the socket is dropped.
const OVER_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: text/plain\r\n\
content-length: 29\r\nconnection: close\r\n\r\ntoo many connections, retry\r\n";

fn refuse_connection(stream: &TcpStream, metrics: &HttpMetrics, cap: ConnectionRefused) {
    let counter = match cap {
        ConnectionRefused::PerClient => &metrics.refused_per_client,
        ConnectionRefused::Total => &metrics.refused_total,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let _ = stream.try_write(OVER_CAP);
}

/// Serves `node` on `listener` until `shutdown` resolves.
pub async fn serve<M: MediaNode>(
    listener: TcpListener,
    node: Arc<M>,
    config: HttpConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    Server::new(node, config).serve(listener, shutdown).await
}
