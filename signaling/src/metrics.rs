//! Counters of the HTTP front door, in Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use hyper::StatusCode;

/// Requests answered, by route label and status. Route labels are a fixed
/// set of `&'static str`, so the label space stays bounded.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

impl HttpMetrics {
    pub fn record(&self, route: &'static str, status: StatusCode) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((route, status.as_u16())).or_default() += 1;
    }

    /// Appends the exposition; `sessions` is the size of the session table.
    pub fn render(&self, sessions: usize, out: &mut String) {
        let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        // `write!` to a String cannot fail.
        out.push_str("# HELP wave_http_requests_total HTTP requests answered, by route and status.\n");
        out.push_str("# TYPE wave_http_requests_total counter\n");
        for ((route, status), n) in map.iter() {
            let _ = writeln!(
                out,
                "wave_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP wave_http_sessions WHIP and WHEP sessions the HTTP layer tracks.\n");
        out.push_str("# TYPE wave_http_sessions gauge\n");
        let _ = writeln!(out, "wave_http_sessions {sessions}");
    }
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
        m.render(1, &mut out);
        let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "wave_http_requests_total{route=\"healthz\",status=\"200\"} 1",
                "wave_http_requests_total{route=\"whip\",status=\"201\"} 2",
                "wave_http_sessions 1",
            ]
        );
    }
}
