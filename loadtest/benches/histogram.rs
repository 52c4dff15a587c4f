//! The load tester's latency histogram (`stats::Histogram`: hdrhistogram
//! at 2 significant figures, exact max) against hdrhistogram at 3 on the
//! same data: memory, record and merge cost, and the error of what the
//! report prints (p50/p95/p99/max) against exact nearest-rank percentiles.
//!
//! `cargo bench -p loadtest --bench histogram`

use std::time::Instant;

use hdrhistogram::Histogram as Hdr;
use loadtest::stats::{Histogram, percentile};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// Samples per run: an hour of 300 viewers' part delays, roughly.
const SAMPLES: usize = 1_000_000;
/// Shards merged at the end, as the media threads' histograms are.
const SHARDS: usize = 8;

fn main() {
    // Log-normal latencies in microseconds (median ~25 ms, long tail up to
    // seconds) plus a few sub-millisecond loopback answers.
    let mut rng = StdRng::seed_from_u64(14);
    let samples: Vec<u64> = (0..SAMPLES)
        .map(|i| {
            if i % 50 == 0 {
                return rng.random_range(50..1_000);
            }
            let n: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
            ((25_000.0f64).ln() + 0.9 * n).exp() as u64
        })
        .collect();
    let mut sorted: Vec<f64> = samples.iter().map(|&v| v as f64).collect();
    sorted.sort_by(f64::total_cmp);
    let exact = [
        percentile(&sorted, 50.0),
        percentile(&sorted, 95.0),
        percentile(&sorted, 99.0),
        sorted[sorted.len() - 1],
    ];
    println!(
        "{SAMPLES} samples in {SHARDS} shards; exact p50/p95/p99/max {:.0}/{:.0}/{:.0}/{:.0} us",
        exact[0], exact[1], exact[2], exact[3]
    );
    println!(
        "{:<28} {:>9} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "", "bytes", "record ns", "merge us", "p50 err", "p95 err", "p99 err", "max err"
    );

    let chunk = SAMPLES / SHARDS;
    let t = Instant::now();
    let shards: Vec<Histogram> = samples
        .chunks(chunk)
        .map(|c| {
            let mut h = Histogram::default();
            c.iter().for_each(|&v| h.record(v));
            h
        })
        .collect();
    let record = t.elapsed();
    let t = Instant::now();
    let mut all = Histogram::default();
    shards.iter().for_each(|h| all.merge(h));
    let merge = t.elapsed();
    let s = all.summary_ms();
    let got = [s.p50, s.p95, s.p99, s.max].map(|v| v * 1000.0);
    row("stats::Histogram", all.bytes(), record, merge, &got, &exact);

    {
        let sigfig = 3u8;
        let t = Instant::now();
        let shards: Vec<Hdr<u64>> = samples
            .chunks(chunk)
            .map(|c| {
                let mut h = Hdr::new(sigfig).expect("3 significant figures are valid");
                c.iter()
                    .for_each(|&v| h.record(v).expect("auto-resizing histograms take any u64"));
                h
            })
            .collect();
        let record = t.elapsed();
        let t = Instant::now();
        let mut all = Hdr::<u64>::new(sigfig).expect("valid");
        for h in &shards {
            all.add(h).expect("auto-resizing histograms accept any range");
        }
        let merge = t.elapsed();
        let q = |p: f64| all.value_at_quantile(p / 100.0) as f64;
        let got = [q(50.0), q(95.0), q(99.0), all.max() as f64];
        let bytes = all.distinct_values() * std::mem::size_of::<u64>();
        row(
            &format!("hdrhistogram, {sigfig} sig. figures"),
            bytes,
            record,
            merge,
            &got,
            &exact,
        );
    }
}

fn row(
    name: &str,
    bytes: usize,
    record: std::time::Duration,
    merge: std::time::Duration,
    got: &[f64; 4],
    exact: &[f64; 4],
) {
    let err = |i: usize| format!("{:+.2}%", (got[i] - exact[i]) / exact[i] * 100.0);
    println!(
        "{name:<28} {bytes:>9} {:>10.1} {:>10.1} {:>8} {:>8} {:>8} {:>8}",
        record.as_nanos() as f64 / SAMPLES as f64,
        merge.as_secs_f64() * 1e6,
        err(0),
        err(1),
        err(2),
        err(3)
    );
}
