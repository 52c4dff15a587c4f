//! The process's own CPU time and memory, from procfs (Linux).

/// One reading of this process's resource use.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sample {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

/// Linux reports /proc/<pid>/stat times in USER_HZ, fixed at 100 on every
/// architecture the kernel exposes to user space (proc(5)).
const USER_HZ: f64 = 100.0;

/// Reads `/proc/self`; zeros where procfs is unavailable.
pub fn sample() -> Sample {
    sample_pid("self")
}

/// Reads `/proc/<pid>`.
pub fn sample_pid(pid: &str) -> Sample {
    let mut out = Sample::default();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            out.cpu_seconds = (ticks(11) + ticks(12)) as f64 / USER_HZ;
        }
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        out.rss_bytes = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_process() {
        let s = super::sample();
        assert!(s.rss_bytes > 0);
    }
}
