//! How busy the machine was during the run, from /proc: the share of CPU time spent by processes other
//! than the bench and its two servers (another build or test run skews every figure on a 2-core machine).

/// Cumulative CPU counters, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// All CPU time, busy or idle, of all CPUs.
    total: u64,
    /// user + nice + system + irq + softirq.
    busy: u64,
    /// Time the hypervisor gave to someone else.
    steal: u64,
    /// user + system of the watched processes (all their threads).
    ours: u64,
}

/// The run's CPU use, as shares of the machine's capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub ours: f64,
    pub others: f64,
    pub steal: f64,
}

impl Snapshot {
    pub fn take(pids: &[u32]) -> Option<Snapshot> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let (total, busy, steal) = parse_cpu_line(&stat)?;
        let ours = pids
            .iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .filter_map(|s| parse_process_ticks(&s))
            .sum();
        Some(Snapshot {
            total,
            busy,
            steal,
            ours,
        })
    }

    /// Shares of capacity between `self` (earlier) and `later`.
    pub fn usage_until(&self, later: &Snapshot) -> Option<Usage> {
        let total = later.total.checked_sub(self.total)?;
        if total == 0 {
            return None;
        }
        let busy = later.busy.saturating_sub(self.busy);
        let ours = later.ours.saturating_sub(self.ours);
        let steal = later.steal.saturating_sub(self.steal);
        let share = |ticks: u64| ticks as f64 / total as f64;
        Some(Usage {
            ours: share(ours),
            others: share(busy.saturating_sub(ours)),
            steal: share(steal),
        })
    }
}

/// Microseconds in one clock tick of /proc's CPU counters (`USER_HZ`, 100 on Linux whatever the kernel's HZ).
pub const TICK_US: f64 = 10_000.0;

/// CPU time (user + system, all threads) `pid` has spent so far, in clock ticks.
pub fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_process_ticks(&stat)
}

/// `(total, busy, steal)` from the aggregate `cpu` line of /proc/stat.
fn parse_cpu_line(stat: &str) -> Option<(u64, u64, u64)> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    let total = (0..8).map(field).sum();
    let busy = field(0) + field(1) + field(2) + field(5) + field(6);
    Some((total, busy, field(7)))
}

/// utime + stime from /proc/PID/stat (fields 14 and 15; the command name may contain spaces).
fn parse_process_ticks(stat: &str) -> Option<u64> {
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_and_shares() {
        let stat = "cpu  100 0 50 800 10 5 5 30 0 0\ncpu0 50 0 25 400 5 2 3 15 0 0\n";
        assert_eq!(parse_cpu_line(stat), Some((1000, 160, 30)));
        let pid = "1234 (kimi proxy) S 1 1234 1234 0 -1 4194560 900 0 0 0 70 20 0 0 20 0 3 0";
        assert_eq!(parse_process_ticks(pid), Some(90));
        let before = Snapshot::default();
        let after = Snapshot {
            total: 1000,
            busy: 160,
            steal: 30,
            ours: 90,
        };
        let usage = before.usage_until(&after).unwrap_or_default();
        assert!((usage.ours - 0.09).abs() < 1e-9);
        assert!((usage.others - 0.07).abs() < 1e-9);
        assert!((usage.steal - 0.03).abs() < 1e-9);
    }
}
