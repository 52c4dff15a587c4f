//! Process CPU share for the load report: the driver reads `/proc/self/stat`
//! and the clock; the arithmetic takes them as inputs.

use std::time::Instant;

/// Linux reports process times in USER_HZ ticks, 100 per second on every
/// architecture the kernel exports to user space (`sysconf(_SC_CLK_TCK)`).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU used by this process between two samples, as a share of all cores.
#[derive(Debug)]
pub struct CpuSampler {
    cores: f64,
    last: Option<(Instant, u64)>,
}

impl Default for CpuSampler {
    fn default() -> Self {
        CpuSampler::new()
    }
}

impl CpuSampler {
    pub fn new() -> CpuSampler {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuSampler {
            cores: cores as f64,
            last: None,
        }
    }

    /// Reads the process's CPU ticks now; 0 where `/proc` is unavailable.
    pub fn sample(&mut self) -> f64 {
        let ticks = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_ticks(&s))
            .unwrap_or(0);
        self.handle_sample(Instant::now(), ticks)
    }

    /// Feeds one reading (total user+system ticks) taken at `now`.
    pub fn handle_sample(&mut self, now: Instant, ticks: u64) -> f64 {
        let share = match self.last {
            Some((then, before)) if now > then => {
                let used = ticks.saturating_sub(before) as f64 / TICKS_PER_SEC;
                let wall = now.duration_since(then).as_secs_f64();
                (used / wall / self.cores).clamp(0.0, 1.0)
            }
            _ => 0.0,
        };
        self.last = Some((now, ticks));
        share
    }
}

/// utime + stime (fields 14 and 15 of `/proc/<pid>/stat`). The command name
/// (field 2) may contain spaces and parentheses, so count from the last `)`.
fn parse_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn share_of_all_cores_between_samples() {
        let t0 = Instant::now();
        let mut s = CpuSampler {
            cores: 2.0,
            last: None,
        };
        assert_eq!(s.handle_sample(t0, 1000), 0.0);
        // 100 ticks = 1 s of CPU over 2 s of wall time on 2 cores.
        let share = s.handle_sample(t0 + Duration::from_secs(2), 1100);
        assert!((share - 0.25).abs() < 1e-9, "{share}");
    }

    #[test]
    fn stat_line_with_spaces_in_the_name() {
        let line = "42 (my (odd) name) S 1 42 42 0 -1 4194304 100 0 0 0 37 5 0 0 20 0 4 0 100 0 0";
        assert_eq!(parse_ticks(line), Some(42));
        assert_eq!(parse_ticks("garbage"), None);
        assert!(CpuSampler::new().sample() >= 0.0);
    }
}
