//! A minimal Prometheus text endpoint: `GET /metrics` on its own port.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;
use wave_metrics::{Kind, single};

use crate::core::Stats;

/// Prometheus exposition of the core's counters.
pub fn render(s: &Stats) -> String {
    let lines: [(&str, Kind, &str, u64); 10] = [
        (
            "turn_allocations",
            Kind::Gauge,
            "Current allocations.",
            s.allocations,
        ),
        (
            "turn_allocations_created_total",
            Kind::Counter,
            "Allocations created.",
            s.allocations_created,
        ),
        (
            "turn_packets_relayed_total",
            Kind::Counter,
            "Packets relayed, both directions.",
            s.packets_relayed,
        ),
        (
            "turn_bytes_relayed_total",
            Kind::Counter,
            "Application bytes relayed, both directions.",
            s.bytes_relayed,
        ),
        (
            "turn_auth_failures_total",
            Kind::Counter,
            "Requests with bad or unknown credentials.",
            s.auth_failures,
        ),
        (
            "turn_denied_peers_total",
            Kind::Counter,
            "Requests or packets for peers the filter denies.",
            s.denied_peers,
        ),
        (
            "turn_rate_limited_total",
            Kind::Counter,
            "Unauthenticated requests dropped by the rate limit.",
            s.rate_limited,
        ),
        (
            "turn_malformed_total",
            Kind::Counter,
            "Datagrams or frames that did not parse.",
            s.malformed,
        ),
        (
            "turn_dropped_total",
            Kind::Counter,
            "Packets dropped: no allocation, permission or bandwidth.",
            s.dropped,
        ),
        (
            "turn_limiter_tracked_ips",
            Kind::Gauge,
            "Source IPs tracked by the unauthenticated rate limit.",
            s.limiter_tracked_ips,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in lines {
        single(&mut out, name, kind, help, value);
    }
    out
}

/// Serves `/metrics` until the task is aborted.
pub async fn serve(listener: TcpListener, stats: watch::Receiver<Stats>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut len = 0;
            // Only the request line matters; give up on slow or huge requests.
            let read = async {
                while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => len += n,
                    }
                }
                true
            };
            if !matches!(tokio::time::timeout(Duration::from_secs(5), read).await, Ok(true)) {
                return;
            }
            let ok = buf[..len].starts_with(b"GET /metrics ") || buf[..len].starts_with(b"GET /metrics?");
            let response = if ok {
                let body = render(&stats.borrow());
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
            };
            if let Err(e) = conn.write_all(response.as_bytes()).await {
                debug!(error = %e, "metrics write");
            }
        });
    }
}
