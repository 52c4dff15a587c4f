//! Prometheus text exposition (format 0.0.4), written and read back.
//!
//! Writing: [`family`], [`sample`] and [`single`] append to the page a
//! service is building; [`Histogram`] is a lock-free latency histogram whose
//! bucket bounds belong to the metric ([`Bounds`]). Reading: [`value`] and
//! [`BucketCounts`], for benchmarks and the load tester.

pub mod process;

use std::fmt::{Display, Write as _};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A metric family's `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Appends the `# HELP` and `# TYPE` lines of the family `name`.
pub fn family(out: &mut String, name: &str, kind: Kind, help: &str) {
    // `write!` to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {}", kind.as_str());
}

/// Appends the sample `name{labels} value`; `labels` like `route="whip"`,
/// empty for none.
pub fn sample(out: &mut String, name: &str, labels: &str, value: impl Display) {
    let _ = if labels.is_empty() {
        writeln!(out, "{name} {value}")
    } else {
        writeln!(out, "{name}{{{labels}}} {value}")
    };
}

/// A family with one unlabelled sample: HELP, TYPE and the sample.
pub fn single(out: &mut String, name: &str, kind: Kind, help: &str, value: impl Display) {
    family(out, name, kind, help);
    sample(out, name, "", value);
}

/// Bucket upper bounds of one histogram metric, in µs, strictly ascending
/// (the `+Inf` bucket is implied). A type rather than a value so that a
/// struct of histograms can `#[derive(Default)]`.
pub trait Bounds {
    const US: &'static [u64];
}

/// A latency histogram (Prometheus `histogram`), lock-free: one observation
/// is two relaxed atomic adds. `B` gives the bucket bounds.
pub struct Histogram<B> {
    /// Per bucket (not cumulative), `B::US.len() + 1` of them: the last one
    /// is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_us: AtomicU64,
    bounds: PhantomData<fn() -> B>,
}

impl<B: Bounds> Default for Histogram<B> {
    fn default() -> Self {
        // A broken invariant of the metric's definition, not input: the
        // bucket search below needs ascending bounds.
        assert!(
            B::US.windows(2).all(|w| w[0] < w[1]),
            "histogram bounds must ascend: {:?}",
            B::US
        );
        Histogram {
            counts: (0..=B::US.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            bounds: PhantomData,
        }
    }
}

impl<B> std::fmt::Debug for Histogram<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("counts", &self.counts)
            .field("sum_us", &self.sum_us)
            .finish()
    }
}

impl<B: Bounds> Histogram<B> {
    /// Observes `d` rounded up to the µs, so that `d ≤ bound` holds exactly
    /// for the bucket it lands in.
    pub fn observe(&self, d: Duration) {
        self.observe_us(u64::try_from(d.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX));
    }

    pub fn observe_us(&self, us: u64) {
        let i = B::US.partition_point(|&b| b < us);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Appends the series `name{labels}` (`labels` like `hop="bus"`, empty
    /// for none): buckets in seconds, sum, count. The family's HELP and
    /// TYPE lines are the caller's ([`family`]).
    pub fn render(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let _ = match B::US.get(i) {
                Some(&b) => {
                    let le = b as f64 / 1e6;
                    writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}")
                }
                None => writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"),
            };
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        sample(out, &format!("{name}_sum"), labels, sum);
        sample(out, &format!("{name}_count"), labels, cumulative);
    }
}

/// The value of the unlabelled sample `name` on a `/metrics` page (the
/// first one; a trailing timestamp is ignored).
pub fn value(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The cumulative buckets of one histogram series read back from a
/// `/metrics` page (for benchmarks: two readings subtract, several nodes
/// add). Empty when the page has no such series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketCounts {
    /// `(le in seconds, cumulative count)`, ascending, `+Inf` last as
    /// `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
}

impl BucketCounts {
    /// The `{name}_bucket{<labels>,le="…"}` lines of `page`; `labels` is
    /// the text before `le` (like `hop="bus"`), empty for none. Lines that
    /// do not parse are skipped.
    pub fn parse(page: &str, name: &str, labels: &str) -> BucketCounts {
        let prefix = if labels.is_empty() {
            format!("{name}_bucket{{le=\"")
        } else {
            format!("{name}_bucket{{{labels},le=\"")
        };
        let mut buckets: Vec<(f64, u64)> = page
            .lines()
            .filter_map(|l| {
                let (le, rest) = l.strip_prefix(&prefix)?.split_once("\"}")?;
                let n = rest.split_whitespace().next()?.parse().ok()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, n))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        BucketCounts { buckets }
    }

    /// No series was read.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
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

    /// Observations in all buckets.
    pub fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |b| b.1)
    }

    /// The `q` quantile in seconds, linear inside its bucket as Prometheus'
    /// `histogram_quantile` does (the last finite bound when it falls in
    /// `+Inf`); `None` without observations.
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

    /// 1, 1.5, 2, 3, 5, 7 per decade, 100 µs to 10 s.
    struct Decades;
    impl Bounds for Decades {
        const US: &'static [u64] = &[
            100, 150, 200, 300, 500, 700, 1_000, 1_500, 2_000, 3_000, 5_000, 7_000, 10_000, 15_000, 20_000,
            30_000, 50_000, 70_000, 100_000, 150_000, 200_000, 300_000, 500_000, 700_000, 1_000_000,
            1_500_000, 2_000_000, 3_000_000, 5_000_000, 7_000_000, 10_000_000,
        ];
    }

    struct Coarse;
    impl Bounds for Coarse {
        const US: &'static [u64] = &[50, 1_000, 5_000];
    }

    /// 90 observations of 0.8 ms, 10 of 40 ms and one of 30 s, rendered
    /// as `wave_x_seconds{hop="a"}`.
    fn page_of_101() -> String {
        let h = Histogram::<Decades>::default();
        for _ in 0..90 {
            h.observe(Duration::from_micros(800));
        }
        for _ in 0..10 {
            h.observe(Duration::from_millis(40));
        }
        h.observe(Duration::from_secs(30));
        let mut page = String::new();
        h.render("wave_x_seconds", "hop=\"a\"", &mut page);
        page
    }

    #[test]
    fn histogram_renders_and_reads_back() {
        let page = page_of_101();
        assert!(
            page.contains("wave_x_seconds_bucket{hop=\"a\",le=\"0.0001\"} 0\n"),
            "{page}"
        );
        assert!(
            page.contains("wave_x_seconds_bucket{hop=\"a\",le=\"0.001\"} 90\n"),
            "{page}"
        );
        assert!(
            page.contains("wave_x_seconds_bucket{hop=\"a\",le=\"+Inf\"} 101\n"),
            "{page}"
        );
        assert!(page.contains("wave_x_seconds_sum{hop=\"a\"} 30.472\n"), "{page}");
        assert!(page.contains("wave_x_seconds_count{hop=\"a\"} 101\n"), "{page}");
        let b = BucketCounts::parse(&page, "wave_x_seconds", "hop=\"a\"");
        assert_eq!(b.buckets.len(), Decades::US.len() + 1);
        assert_eq!(b.count(), 101);
        assert!(
            BucketCounts::parse(&page, "wave_x_seconds", "hop=\"b\"").is_empty(),
            "another label set is another series"
        );
    }

    #[test]
    fn unlabelled_series_render_without_braces_and_read_back() {
        let h = Histogram::<Coarse>::default();
        h.observe(Duration::from_micros(50));
        // 50.001 µs rounds up past the 50 µs bound.
        h.observe(Duration::from_nanos(50_001));
        h.observe(Duration::from_millis(9));
        let mut page = String::new();
        h.render("wave_y_seconds", "", &mut page);
        assert_eq!(
            page,
            "wave_y_seconds_bucket{le=\"0.00005\"} 1\n\
             wave_y_seconds_bucket{le=\"0.001\"} 2\n\
             wave_y_seconds_bucket{le=\"0.005\"} 2\n\
             wave_y_seconds_bucket{le=\"+Inf\"} 3\n\
             wave_y_seconds_sum 0.009101\n\
             wave_y_seconds_count 3\n"
        );
        let b = BucketCounts::parse(&page, "wave_y_seconds", "");
        assert_eq!(
            b.buckets,
            [(0.00005, 1), (0.001, 2), (0.005, 2), (f64::INFINITY, 3)]
        );
        assert!(BucketCounts::parse("x 1\n", "wave_y_seconds", "").is_empty());
    }

    #[test]
    fn quantile_is_linear_inside_its_bucket() {
        let page = page_of_101();
        let b = BucketCounts::parse(&page, "wave_x_seconds", "hop=\"a\"");
        // 50 % of 101 falls in (0.7 ms, 1 ms]; 95 % in (30 ms, 50 ms]; the
        // top one in +Inf reads as the last bound.
        let p50 = b.quantile(0.5).unwrap();
        assert!((p50 - (0.0007 + 0.0003 * 50.5 / 90.0)).abs() < 1e-12, "{p50}");
        let p95 = b.quantile(0.95).unwrap();
        assert!((0.03..=0.05).contains(&p95), "{p95}");
        assert_eq!(b.quantile(1.0), Some(10.0));
        assert_eq!(BucketCounts::default().quantile(0.5), None);
    }

    #[test]
    fn readings_subtract_and_add() {
        let t0 = "wave_z_seconds_bucket{le=\"0.001\"} 10\n\
                  wave_z_seconds_bucket{le=\"0.005\"} 10\n\
                  wave_z_seconds_bucket{le=\"+Inf\"} 10\nwave_z_seconds_count 10\n";
        let t1 = "wave_z_seconds_bucket{le=\"0.001\"} 60\n\
                  wave_z_seconds_bucket{le=\"0.005\"} 109\n\
                  wave_z_seconds_bucket{le=\"+Inf\"} 110 1700000000000\n";
        let a = BucketCounts::parse(t0, "wave_z_seconds", "");
        let b = BucketCounts::parse(t1, "wave_z_seconds", "");
        let d = b.since(&a);
        // 100 new: 50 ≤ 1 ms, 49 in (1, 5] ms, 1 above.
        assert_eq!(d.buckets, [(0.001, 50), (0.005, 99), (f64::INFINITY, 100)]);
        let p50 = d.quantile(0.5).unwrap();
        assert!((p50 - 0.001).abs() < 1e-12, "{p50}");
        let p75 = d.quantile(0.75).unwrap();
        assert!((p75 - (0.001 + 0.004 * 25.0 / 49.0)).abs() < 1e-12, "{p75}");
        assert_eq!(d.quantile(1.0), Some(0.005));
        assert_eq!(b.since(&b).count(), 0);
        assert_eq!(b.since(&b).quantile(0.5), None);
        // Nothing read before: the whole reading.
        assert_eq!(b.since(&BucketCounts::default()), b);
        // Several nodes add; an empty sum takes the other's bounds.
        let sum = BucketCounts::default().plus(&a).plus(&b);
        assert_eq!(sum.buckets, [(0.001, 70), (0.005, 119), (f64::INFINITY, 120)]);
    }

    #[test]
    fn families_and_values() {
        let mut page = String::new();
        single(&mut page, "wave_rooms", Kind::Gauge, "Rooms.", 3);
        family(&mut page, "wave_req_total", Kind::Counter, "Requests.");
        sample(&mut page, "wave_req_total", "route=\"whip\"", 7);
        single(
            &mut page,
            "process_cpu_seconds_total",
            Kind::Counter,
            "CPU.",
            format_args!("{:.3}", 1.25),
        );
        assert_eq!(
            page,
            "# HELP wave_rooms Rooms.\n# TYPE wave_rooms gauge\nwave_rooms 3\n\
             # HELP wave_req_total Requests.\n# TYPE wave_req_total counter\n\
             wave_req_total{route=\"whip\"} 7\n\
             # HELP process_cpu_seconds_total CPU.\n# TYPE process_cpu_seconds_total counter\n\
             process_cpu_seconds_total 1.250\n"
        );
        assert_eq!(value(&page, "process_cpu_seconds_total"), Some(1.25));
        assert_eq!(value(&page, "wave_rooms"), Some(3.0));
        // Labelled samples and prefixes of other names are not it.
        assert_eq!(value(&page, "wave_req_total"), None);
        assert_eq!(value(&page, "wave_room"), None);
        assert_eq!(value("x 1 1700000000000\n", "x"), Some(1.0));
    }
}
