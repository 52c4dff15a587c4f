//! What the server under test pays: its `/metrics` (Prometheus text:
//! process CPU seconds, resident memory, RTP packets forwarded) or, with a
//! pid, `/proc/<pid>` for CPU and memory (read with the node's own
//! `wave_metrics::process`).

use std::time::Instant;

use serde::Serialize;

use crate::http::Signaling;

/// One reading of the server's resource use and forwarding counter.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub cpu_seconds: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub forwarded: Option<u64>,
}

/// Where readings come from.
pub struct Probe {
    pub metrics_url: Option<String>,
    pub pid: Option<u32>,
}

impl Probe {
    pub async fn sample(&self, sig: &Signaling) -> Sample {
        let mut s = Sample {
            at: Instant::now(),
            cpu_seconds: None,
            rss_bytes: None,
            forwarded: None,
        };
        if let Some(url) = &self.metrics_url
            && let Ok(text) = sig.get(url).await
        {
            s.cpu_seconds = wave_metrics::value(&text, "process_cpu_seconds_total");
            s.rss_bytes = wave_metrics::value(&text, "process_resident_memory_bytes").map(|v| v as u64);
            s.forwarded = wave_metrics::value(&text, "wave_rtp_forwarded_total").map(|v| v as u64);
        }
        if let Some(pid) = self.pid
            && let Some(p) = wave_metrics::process::sample_pid(pid)
        {
            s.cpu_seconds = Some(p.cpu_seconds);
            s.rss_bytes = Some(p.rss_bytes).filter(|b| *b > 0).or(s.rss_bytes);
        }
        s
    }
}

/// Server cost over a measured window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerCost {
    /// CPU microseconds per forwarded RTP packet (the server's counter, or
    /// the packets the viewers received when it has none).
    pub cpu_us_per_packet: Option<f64>,
    pub packets_per_sec: Option<f64>,
    /// Share of one core the server used in the window.
    pub cpu_cores: Option<f64>,
    pub mem_per_viewer_kib: Option<f64>,
    pub rss_mib: Option<f64>,
    /// Where the packet count came from: "server" or "viewers".
    pub packet_source: String,
}

impl ServerCost {
    /// `before_viewers` is read before any viewer joined; `start`/`end`
    /// bound the steady window; `viewer_packets` is what viewers received in it.
    pub fn compute(
        before_viewers: &Sample,
        start: &Sample,
        end: &Sample,
        viewers: usize,
        viewer_packets: Option<u64>,
    ) -> ServerCost {
        let secs = end.at.saturating_duration_since(start.at).as_secs_f64();
        let cpu = match (start.cpu_seconds, end.cpu_seconds) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let (packets, source) = match (start.forwarded, end.forwarded) {
            (Some(a), Some(b)) => (Some(b.saturating_sub(a)), "server"),
            _ => (viewer_packets, "viewers"),
        };
        let cpu_us_per_packet = match (cpu, packets) {
            (Some(c), Some(p)) if p > 0 => Some(c * 1e6 / p as f64),
            _ => None,
        };
        let mem = match (before_viewers.rss_bytes, end.rss_bytes) {
            (Some(a), Some(b)) if viewers > 0 => Some((b as f64 - a as f64) / viewers as f64 / 1024.0),
            _ => None,
        };
        ServerCost {
            cpu_us_per_packet,
            packets_per_sec: packets.filter(|_| secs > 0.0).map(|p| p as f64 / secs),
            cpu_cores: cpu.filter(|_| secs > 0.0).map(|c| c / secs),
            mem_per_viewer_kib: mem,
            rss_mib: end.rss_bytes.map(|b| b as f64 / (1024.0 * 1024.0)),
            packet_source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_per_packet_and_viewer() {
        let t = Instant::now();
        let s = |dt: u64, cpu: f64, rss: u64, fwd: u64| Sample {
            at: t + std::time::Duration::from_secs(dt),
            cpu_seconds: Some(cpu),
            rss_bytes: Some(rss),
            forwarded: Some(fwd),
        };
        let c = ServerCost::compute(
            &s(0, 1.0, 100 << 20, 0),
            &s(1, 2.0, 110 << 20, 1000),
            &s(3, 3.0, 120 << 20, 501_000),
            100,
            None,
        );
        assert_eq!(c.cpu_us_per_packet, Some(2.0));
        assert_eq!(c.packets_per_sec, Some(250_000.0));
        assert_eq!(c.cpu_cores, Some(0.5));
        assert_eq!(c.mem_per_viewer_kib, Some(204.8));
    }
}
