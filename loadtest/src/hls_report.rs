//! The LL-HLS run's numbers: per-viewer samples aggregated, the node's
//! side (requests served per CPU core, the blocked-request answer delay from
//! its histogram), a table, JSON and the `--expect` metrics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use serde::Serialize;
use wave_metrics::BucketCounts;

use crate::report::{Expectable, Unit};
use crate::stats::Summary;

/// The node's histogram of "part published → blocked playlist answered".
pub const BLOCKED_HISTOGRAM: &str = "wave_hls_blocked_answer_seconds";

/// Client-side summaries `--expect` names as `{name}_p50|p95|p99|max`.
const SUMMARIES: [&str; 5] = ["tune_in", "part", "reload", "reload_wait", "playlist"];

/// One reading of the node.
#[derive(Debug, Clone)]
pub struct ServerSample {
    pub at: Instant,
    pub cpu_seconds: Option<f64>,
    /// `wave_hls_requests_total`.
    pub requests: Option<f64>,
    /// [`BLOCKED_HISTOGRAM`]; empty when the page had none.
    pub blocked: BucketCounts,
}

impl Default for ServerSample {
    fn default() -> Self {
        ServerSample {
            at: Instant::now(),
            cpu_seconds: None,
            requests: None,
            blocked: BucketCounts::default(),
        }
    }
}

/// What the node did in the measured window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerHls {
    /// HLS requests the node answered per second.
    pub requests_per_sec: Option<f64>,
    /// Share of one core the node used.
    pub cpu_cores: Option<f64>,
    /// Requests per second per core of node CPU.
    pub requests_per_core: Option<f64>,
    /// Blocked playlist requests answered in the window.
    pub blocked_answers: Option<f64>,
    /// Part published → blocked playlist answered (node side), ms.
    pub blocked_p50_ms: Option<f64>,
    pub blocked_p99_ms: Option<f64>,
}

impl ServerHls {
    pub fn compute(start: &ServerSample, end: &ServerSample) -> ServerHls {
        let secs = end.at.saturating_duration_since(start.at).as_secs_f64();
        let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?).filter(|_| secs > 0.0);
        let requests = diff(start.requests, end.requests);
        let cpu = diff(start.cpu_seconds, end.cpu_seconds);
        let blocked = end.blocked.since(&start.blocked);
        let q = |p: f64| blocked.quantile(p).map(|s| s * 1000.0);
        ServerHls {
            requests_per_sec: requests.map(|r| r / secs),
            cpu_cores: cpu.map(|c| c / secs),
            requests_per_core: match (requests, cpu) {
                (Some(r), Some(c)) if c > 0.0 => Some(r / c),
                _ => None,
            },
            blocked_answers: (!blocked.is_empty()).then(|| blocked.count() as f64),
            blocked_p50_ms: q(0.50),
            blocked_p99_ms: q(0.99),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HlsReport {
    pub scenario: String,
    pub seed: u64,
    pub room: String,
    /// "http/1.1" or "h2c".
    pub transport: String,
    pub duration_secs: f64,
    /// Our own publisher's state, when the run published.
    pub publisher: Option<String>,
    pub viewers_planned: usize,
    /// Viewers that held a first part.
    pub viewers_joined: usize,
    pub viewers_failed: usize,
    /// Start → first part held, ms.
    pub tune_in_ms: Summary,
    /// Part media end (PROGRAM-DATE-TIME) → whole part held, ms.
    pub part_ms: Summary,
    /// Part media end → blocking playlist answer listing it arrived, ms.
    pub reload_ms: Summary,
    /// How long a blocking playlist request was held, ms.
    pub reload_wait_ms: Summary,
    /// Non-blocking playlist round trip, ms.
    pub playlist_ms: Summary,
    /// Parts held in the window (every viewer, video and audio).
    pub parts: u64,
    /// Media the viewers received in the window.
    pub mbit_per_sec: f64,
    pub stalls: u64,
    pub stall_ms: f64,
    pub viewer_stalls: Summary,
    /// Failed requests: by HTTP status, "timeout", "connect", "body", "playlist".
    pub failures: BTreeMap<String, u64>,
    pub errors_total: u64,
    /// Why viewers never got going, by message.
    pub errors: BTreeMap<String, u64>,
    /// Requests the viewers sent per second in the window.
    pub client_requests_per_sec: f64,
    pub server: ServerHls,
}

impl HlsReport {
    /// The unit of a metric `--expect` can name; `None` for an unknown one.
    pub fn unit(metric: &str) -> Option<Unit> {
        Some(match metric {
            "joined" => Unit::Percent,
            "errors" | "timeouts" | "stalls" | "parts" | "requests_per_core" | "requests_per_sec" => {
                Unit::Count
            }
            "blocked_p50" | "blocked_p99" => Unit::Ms,
            m => {
                let (base, q) = m.rsplit_once('_')?;
                let known = SUMMARIES.contains(&base) && matches!(q, "p50" | "p95" | "p99" | "max");
                return known.then_some(Unit::Ms);
            }
        })
    }

    /// The table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "scenario hls (seed {}) room {} over {}, {:.1} s measured: viewers {}/{} got parts, {} failed{}",
            self.seed,
            self.room,
            self.transport,
            self.duration_secs,
            self.viewers_joined,
            self.viewers_planned,
            self.viewers_failed,
            self.publisher
                .as_ref()
                .map_or(String::new(), |p| format!("; publisher {p}"))
        );
        let _ = writeln!(
            o,
            "  {:<34} {:>9} {:>9} {:>9} {:>9}",
            "", "p50", "p95", "p99", "max"
        );
        let row = |o: &mut String, name: &str, s: &Summary| {
            let _ = writeln!(
                o,
                "  {name:<34} {:>9.2} {:>9.2} {:>9.2} {:>9.2}  ms ({} samples)",
                s.p50, s.p95, s.p99, s.max, s.count
            );
        };
        row(&mut o, "tune-in (start → first part)", &self.tune_in_ms);
        row(&mut o, "part: media end → held", &self.part_ms);
        row(&mut o, "reload: media end → answer", &self.reload_ms);
        row(&mut o, "reload: held by the server", &self.reload_wait_ms);
        row(&mut o, "playlist round trip (no block)", &self.playlist_ms);
        let _ = writeln!(
            o,
            "  {} parts held in the window, {:.1} Mbit/s; {} stalls ({:.0} ms); {:.0} requests/s sent",
            self.parts, self.mbit_per_sec, self.stalls, self.stall_ms, self.client_requests_per_sec
        );
        let s = &self.server;
        let f = |v: Option<f64>, d: usize| v.map_or("n/a".to_owned(), |v| format!("{v:.d$}"));
        let _ = writeln!(
            o,
            "  node: {} requests/s on {} cores = {} requests/s per core; blocked playlist answered {} ms p50, {} ms p99 after the part ({} answers)",
            f(s.requests_per_sec, 0),
            f(s.cpu_cores, 2),
            f(s.requests_per_core, 0),
            f(s.blocked_p50_ms, 2),
            f(s.blocked_p99_ms, 2),
            f(s.blocked_answers, 0),
        );
        let _ = writeln!(o, "  failed requests: {} {:?}", self.errors_total, self.failures);
        if !self.errors.is_empty() {
            let _ = writeln!(o, "  viewer errors: {:?}", self.errors);
        }
        o
    }
}

impl Expectable for HlsReport {
    fn metric(&self, name: &str) -> Option<f64> {
        let (base, q) = name.rsplit_once('_').unwrap_or((name, ""));
        let summary = match base {
            "tune_in" => Some(&self.tune_in_ms),
            "part" => Some(&self.part_ms),
            "reload" => Some(&self.reload_ms),
            "reload_wait" => Some(&self.reload_wait_ms),
            "playlist" => Some(&self.playlist_ms),
            _ => None,
        };
        if let Some(s) = summary {
            return match q {
                "p50" => Some(s.p50),
                "p95" => Some(s.p95),
                "p99" => Some(s.p99),
                "max" => Some(s.max),
                _ => None,
            };
        }
        Some(match name {
            "joined" => {
                if self.viewers_planned == 0 {
                    100.0
                } else {
                    self.viewers_joined as f64 * 100.0 / self.viewers_planned as f64
                }
            }
            "errors" => self.errors_total as f64,
            "timeouts" => self.failures.get("timeout").copied().unwrap_or(0) as f64,
            "stalls" => self.stalls as f64,
            "parts" => self.parts as f64,
            "blocked_p50" => self.server.blocked_p50_ms?,
            "blocked_p99" => self.server.blocked_p99_ms?,
            "requests_per_core" => self.server.requests_per_core?,
            "requests_per_sec" => self.server.requests_per_sec?,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{check, parse_expect_with};

    #[test]
    fn node_side_from_two_readings() {
        let page = |cpu: f64, requests: u64, fast: u64, slow: u64| {
            format!(
                "process_cpu_seconds_total {cpu}\nwave_hls_requests_total {requests}\n\
                 {BLOCKED_HISTOGRAM}_bucket{{le=\"0.001\"}} {fast}\n\
                 {BLOCKED_HISTOGRAM}_bucket{{le=\"0.005\"}} {}\n\
                 {BLOCKED_HISTOGRAM}_bucket{{le=\"+Inf\"}} {}\n",
                fast + slow,
                fast + slow
            )
        };
        let t0 = Instant::now();
        let read = |at: Instant, text: &str| ServerSample {
            at,
            cpu_seconds: wave_metrics::value(text, "process_cpu_seconds_total"),
            requests: wave_metrics::value(text, "wave_hls_requests_total"),
            blocked: BucketCounts::parse(text, BLOCKED_HISTOGRAM, ""),
        };
        let start = read(t0, &page(1.0, 100, 10, 0));
        let end = read(t0 + std::time::Duration::from_secs(2), &page(2.0, 2_100, 60, 50));
        let s = ServerHls::compute(&start, &end);
        assert_eq!(s.requests_per_sec, Some(1_000.0));
        assert_eq!(s.cpu_cores, Some(0.5));
        assert_eq!(s.requests_per_core, Some(2_000.0));
        // 100 answers in the window: 50 within 1 ms, 50 in (1, 5] ms.
        assert_eq!(s.blocked_answers, Some(100.0));
        assert!((s.blocked_p50_ms.unwrap() - 1.0).abs() < 1e-9, "{s:?}");
        assert!(
            (s.blocked_p99_ms.unwrap() - (1.0 + 4.0 * 49.0 / 50.0)).abs() < 1e-9,
            "{s:?}"
        );
        // A node without the histogram: no blocked numbers, not zeros.
        let bare = read(
            t0 + std::time::Duration::from_secs(2),
            "process_cpu_seconds_total 2\n",
        );
        let s = ServerHls::compute(&start, &bare);
        assert_eq!((s.blocked_answers, s.blocked_p50_ms), (None, None));
    }

    #[test]
    fn expectations_on_hls_numbers() {
        let e = parse_expect_with(
            "part_p99<500ms,errors<1,joined>=100%,blocked_p99<=5ms",
            HlsReport::unit,
        )
        .unwrap();
        assert_eq!(e.len(), 4);
        let mut r = HlsReport {
            viewers_planned: 4,
            viewers_joined: 4,
            ..HlsReport::default()
        };
        r.part_ms.p99 = 120.0;
        r.server.blocked_p99_ms = Some(2.0);
        assert!(check(&r, &e).is_empty(), "{:?}", check(&r, &e));
        r.errors_total = 2;
        r.server.blocked_p99_ms = None;
        let missed = check(&r, &e);
        assert_eq!(missed.len(), 2, "{missed:?}");
        for bad in [
            "part_p98<1ms",
            "errors<1ms",
            "joined<1ms",
            "nosuch<1",
            "part_p99<1%",
        ] {
            assert!(parse_expect_with(bad, HlsReport::unit).is_err(), "{bad}");
        }
    }
}
