//! A process's CPU time and memory, from procfs (Linux): the node's own for
//! `/metrics`, and the load tester's reading of a node under test.

/// One reading of a process's resource use.
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
    read("self").unwrap_or_default()
}

/// Reads `/proc/<pid>`; `None` when the process (or procfs) is not there.
pub fn sample_pid(pid: u32) -> Option<Sample> {
    read(&pid.to_string())
}

fn read(pid: &str) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let cpu_seconds = (ticks(11)? + ticks(12)?) as f64 / USER_HZ;
    let rss_bytes = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    Some(Sample {
        cpu_seconds,
        rss_bytes,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_process() {
        let s = super::sample();
        assert!(s.rss_bytes > 0);
        let by_pid = super::sample_pid(std::process::id()).expect("own pid");
        assert!(by_pid.rss_bytes > 0 && by_pid.cpu_seconds >= s.cpu_seconds);
    }

    #[test]
    fn missing_process_is_none() {
        // Above the kernel's pid_max ceiling (2^22).
        assert!(super::sample_pid(u32::MAX).is_none());
    }
}
