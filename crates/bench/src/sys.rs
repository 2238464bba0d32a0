//! CPU and memory from `/proc` (Linux). Missing files read as zero.

use std::time::Duration;

/// Clock ticks per second for `/proc` CPU fields.
fn ticks() -> f64 {
    rustix::param::clock_ticks_per_second().max(1) as f64
}

/// On-CPU time of this process's threads whose name starts with `prefix`.
pub fn thread_cpu(prefix: &str) -> Duration {
    let mut total = 0u64;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    for t in dir.flatten() {
        let p = t.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
        total += utime_stime(&stat);
    }
    Duration::from_secs_f64(total as f64 / ticks())
}

/// On-CPU time of the whole process.
pub fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    Duration::from_secs_f64(utime_stime(&stat) as f64 / ticks())
}

fn utime_stime(stat: &str) -> u64 {
    // Fields after the parenthesised name: state is 3rd, utime 14th, stime 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// Resident memory of this process, bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Busy and total jiffies per core, from `/proc/stat`.
#[derive(Debug, Clone, Default)]
pub struct CoreTimes(Vec<(u64, u64)>);

impl CoreTimes {
    pub fn now() -> Self {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cores = text
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .map(|l| {
                let v: Vec<u64> = l
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                let total: u64 = v.iter().sum();
                // idle + iowait
                let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
                (total - idle, total)
            })
            .collect();
        CoreTimes(cores)
    }

    /// Utilisation per core (0..=1) between `earlier` and `self`.
    pub fn busy_since(&self, earlier: &CoreTimes) -> Vec<f64> {
        self.0
            .iter()
            .zip(earlier.0.iter())
            .map(|((b1, t1), (b0, t0))| {
                let dt = t1.saturating_sub(*t0);
                if dt == 0 {
                    0.0
                } else {
                    b1.saturating_sub(*b0) as f64 / dt as f64
                }
            })
            .collect()
    }
}

/// Load average over one minute.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
