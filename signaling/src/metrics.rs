//! Counters of the HTTP front door, in Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

/// Upper bounds of [`Histogram`]'s buckets in µs: 1, 1.5, 2, 3, 5, 7 per
/// decade from 100 µs to 10 s (a quantile read from them is within ~25 %).
pub const BUCKETS_US: [u64; 31] = [
    100, 150, 200, 300, 500, 700, 1_000, 1_500, 2_000, 3_000, 5_000, 7_000, 10_000, 15_000, 20_000, 30_000,
    50_000, 70_000, 100_000, 150_000, 200_000, 300_000, 500_000, 700_000, 1_000_000, 1_500_000, 2_000_000,
    3_000_000, 5_000_000, 7_000_000, 10_000_000,
];

/// A latency histogram (Prometheus `histogram`), lock-free: one observation
/// is two relaxed atomic adds.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last one is `+Inf`.
    counts: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        self.observe_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn observe_us(&self, us: u64) {
        let i = BUCKETS_US.partition_point(|&b| b < us);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Appends the series of `name{labels}` (`labels` like `hop="bus"`);
    /// HELP and TYPE lines are the caller's.
    pub fn render(&self, name: &str, labels: &str, out: &mut String) {
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            match BUCKETS_US.get(i) {
                Some(b) => {
                    let le = *b as f64 / 1e6;
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// The cumulative buckets of one histogram series read back from a
/// `/metrics` page (for benchmarks: two readings subtract, several nodes add).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketCounts {
    /// `(le in seconds, cumulative count)`, `+Inf` last as `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
}

impl BucketCounts {
    /// The `{name}_bucket{<labels>,le="…"}` lines of `page`; `labels` is
    /// the text before `le` (like `hop="bus"`), empty for none.
    pub fn parse(page: &str, name: &str, labels: &str) -> BucketCounts {
        let prefix = if labels.is_empty() {
            format!("{name}_bucket{{le=\"")
        } else {
            format!("{name}_bucket{{{labels},le=\"")
        };
        let buckets = page
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|rest| {
                let (le, rest) = rest.split_once('"')?;
                let n = rest.rsplit(' ').next()?.parse().ok()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, n))
            })
            .collect();
        BucketCounts { buckets }
    }

    /// `self - earlier`, bucket by bucket (same bounds).
    pub fn since(&self, earlier: &BucketCounts) -> BucketCounts {
        self.combine(earlier, u64::saturating_sub)
    }

    /// `self + other`, bucket by bucket (same bounds).
    pub fn plus(&self, other: &BucketCounts) -> BucketCounts {
        if self.buckets.is_empty() {
            return other.clone();
        }
        self.combine(other, u64::saturating_add)
    }

    /// `f(mine, theirs)` per bucket of `self` (theirs 0 where `other`
    /// lacks the bound).
    fn combine(&self, other: &BucketCounts, f: fn(u64, u64) -> u64) -> BucketCounts {
        let theirs = |le: f64| other.buckets.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, n)| (le, f(n, theirs(le))))
            .collect();
        BucketCounts { buckets }
    }

    pub fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |b| b.1)
    }

    /// The `q` quantile in seconds, linear inside its bucket (the last
    /// finite bound when it falls in `+Inf`); `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let (mut lo, mut below) = (0.0, 0u64);
        for &(le, n) in &self.buckets {
            if n as f64 >= rank && n > below {
                if le.is_infinite() {
                    return Some(lo);
                }
                return Some(lo + (le - lo) * (rank - below as f64) / (n - below) as f64);
            }
            (lo, below) = (le, n);
        }
        Some(lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_and_reads_back() {
        let h = Histogram::default();
        for _ in 0..90 {
            h.observe(Duration::from_micros(800));
        }
        for _ in 0..10 {
            h.observe(Duration::from_millis(40));
        }
        h.observe(Duration::from_secs(30));
        let mut page = String::new();
        h.render("wave_x_seconds", "hop=\"a\"", &mut page);
        assert!(
            page.contains("wave_x_seconds_bucket{hop=\"a\",le=\"0.001\"} 90\n"),
            "{page}"
        );
        assert!(
            page.contains("wave_x_seconds_bucket{hop=\"a\",le=\"+Inf\"} 101\n"),
            "{page}"
        );
        assert!(page.contains("wave_x_seconds_count{hop=\"a\"} 101\n"), "{page}");
        let b = BucketCounts::parse(&page, "wave_x_seconds", "hop=\"a\"");
        assert_eq!(b.buckets.len(), BUCKETS_US.len() + 1);
        assert_eq!(b.count(), 101);
        // 50 % of 101 falls in (0.7 ms, 1 ms]; 95 % in (30 ms, 50 ms]; the
        // top one in +Inf reads as the last bound.
        let p50 = b.quantile(0.5).unwrap();
        assert!((0.0007..=0.001).contains(&p50), "{p50}");
        let p95 = b.quantile(0.95).unwrap();
        assert!((0.03..=0.05).contains(&p95), "{p95}");
        assert_eq!(b.quantile(1.0), Some(10.0));
        // Readings subtract and add.
        let none = BucketCounts::parse("", "wave_x_seconds", "hop=\"a\"");
        assert_eq!(b.since(&none), b);
        assert_eq!(b.since(&b).count(), 0);
        assert_eq!(b.since(&b).quantile(0.5), None);
        assert_eq!(none.plus(&b).plus(&b).count(), 202);
        assert!(
            BucketCounts::parse(&page, "wave_x_seconds", "hop=\"b\"")
                .buckets
                .is_empty()
        );
    }

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
