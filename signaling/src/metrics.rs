//! Counters of the HTTP front door and the bounds of the chat's hop
//! histogram, in Prometheus text format (written with `wave_metrics`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::StatusCode;
use wave_metrics::{Bounds, Kind, family, sample, single};

/// Requests answered, by route label and status. Route labels are a fixed
/// set of `&'static str`, so the label space stays bounded.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Connections closed at once for the per-client cap.
    pub refused_per_client: AtomicU64,
    /// Connections closed at once for the total cap.
    pub refused_total: AtomicU64,
}

impl HttpMetrics {
    pub fn record(&self, route: &'static str, status: StatusCode) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((route, status.as_u16())).or_default() += 1;
    }

    /// Appends the exposition; `sessions` is the size of the session
    /// table, `connections` the HTTP connections open.
    pub fn render(&self, sessions: usize, connections: usize, out: &mut String) {
        let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let name = "wave_http_requests_total";
        family(
            out,
            name,
            Kind::Counter,
            "HTTP requests answered, by route and status.",
        );
        for ((route, status), n) in map.iter() {
            sample(out, name, &format!("route=\"{route}\",status=\"{status}\""), n);
        }
        single(
            out,
            "wave_http_sessions",
            Kind::Gauge,
            "WHIP and WHEP sessions the HTTP layer tracks.",
            sessions,
        );
        single(
            out,
            "wave_http_connections",
            Kind::Gauge,
            "HTTP connections open.",
            connections,
        );
        let name = "wave_http_connections_refused_total";
        family(
            out,
            name,
            Kind::Counter,
            "HTTP connections closed at once for a connection cap, by cap.",
        );
        sample(
            out,
            name,
            "cap=\"per_client\"",
            self.refused_per_client.load(Ordering::Relaxed),
        );
        sample(
            out,
            name,
            "cap=\"total\"",
            self.refused_total.load(Ordering::Relaxed),
        );
    }
}

/// Bucket bounds of the chat's hop histogram: 1, 1.5, 2, 3, 5, 7 per
/// decade from 100 µs to 10 s (a quantile read from them is within ~25 %).
#[derive(Debug)]
pub struct HopBounds;

impl Bounds for HopBounds {
    const US: &'static [u64] = &[
        100, 150, 200, 300, 500, 700, 1_000, 1_500, 2_000, 3_000, 5_000, 7_000, 10_000, 15_000, 20_000,
        30_000, 50_000, 70_000, 100_000, 150_000, 200_000, 300_000, 500_000, 700_000, 1_000_000, 1_500_000,
        2_000_000, 3_000_000, 5_000_000, 7_000_000, 10_000_000,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sorted_counters() {
        let m = HttpMetrics::default();
        m.record("whip", StatusCode::CREATED);
        m.record("healthz", StatusCode::OK);
        m.record("whip", StatusCode::CREATED);
        let mut out = String::new();
        m.refused_per_client.fetch_add(2, Ordering::Relaxed);
        m.render(1, 3, &mut out);
        let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "wave_http_requests_total{route=\"healthz\",status=\"200\"} 1",
                "wave_http_requests_total{route=\"whip\",status=\"201\"} 2",
                "wave_http_sessions 1",
                "wave_http_connections 3",
                "wave_http_connections_refused_total{cap=\"per_client\"} 2",
                "wave_http_connections_refused_total{cap=\"total\"} 0",
            ]
        );
    }
}
