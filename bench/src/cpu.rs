//! CPU time of processes from `/proc/<pid>/stat` (user + system), for CPU per operation.

use anyhow::Context;

/// The processes whose CPU time is summed (a cluster's nodes).
#[derive(Debug, Clone, Default)]
pub struct CpuClock {
    pids: Vec<u32>,
}

impl CpuClock {
    pub fn of(pids: Vec<u32>) -> Self {
        Self { pids }
    }

    /// This process (the load generator).
    pub fn own() -> Self {
        Self {
            pids: vec![std::process::id()],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    /// Total CPU seconds (user + system, all threads) used so far by the processes.
    pub fn sample(&self) -> anyhow::Result<f64> {
        let mut total = 0.0;
        for pid in &self.pids {
            total += process_cpu_seconds(*pid)?;
        }
        Ok(total)
    }
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of one process, in seconds.
pub fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_ticks(&stat)
        .map(|ticks| ticks as f64 / ticks_per_second())
        .with_context(|| format!("unexpected format of {path}"))
}

/// Fields 14 and 15 (utime, stime) of a stat line. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, so index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime_even_with_odd_command_names() {
        let line =
            "1234 (we ird) (name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 5 0 0";
        assert_eq!(parse_stat_ticks(line), Some(325));
    }

    #[test]
    fn own_cpu_time_grows_with_work() {
        let before = CpuClock::own().sample().unwrap();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(200) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(CpuClock::own().sample().unwrap() > before);
    }
}
