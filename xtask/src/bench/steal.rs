//! Hypervisor steal time: the share of the machine's CPU time the hypervisor gave to
//! other guests while a run was measured, read from the `cpu` line of `/proc/stat`.
//!
//! Tail latency on a shared VM is easily spoiled by steal (a vCPU not running for a few
//! milliseconds shows up as p99.9), so every run records it, the report shows it, and a
//! run where it was high is repeated (see `bench::run_scenario`).

use std::io;

/// The machine-wide CPU time counters of `/proc/stat`'s `cpu` line, in `USER_HZ` ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CpuTicks {
    /// Time stolen by the hypervisor (the 8th field).
    pub(super) steal: u64,
    /// All the time accounted: user, nice, system, idle, iowait, irq, softirq, steal
    /// (guest time is already counted in user and nice).
    pub(super) total: u64,
}

impl CpuTicks {
    /// The counters now.
    pub(super) fn read() -> io::Result<CpuTicks> {
        let text = std::fs::read_to_string("/proc/stat")
            .map_err(|e| io::Error::new(e.kind(), format!("/proc/stat: {e}")))?;
        parse(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "/proc/stat: no `cpu` line with 8 counters",
            )
        })
    }

    /// Steal as a percentage of the machine's CPU time between `self` and `later`
    /// (`None` when no time was accounted, or the counters went backwards).
    pub(super) fn steal_pct_until(self, later: CpuTicks) -> Option<f64> {
        let total = later.total.checked_sub(self.total)?;
        let steal = later.steal.checked_sub(self.steal)?;
        (total > 0).then(|| steal as f64 * 100.0 / total as f64)
    }
}

/// The `cpu` line (all CPUs together) of `/proc/stat`'s text.
fn parse(stat: &str) -> Option<CpuTicks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if fields.len() < 8 {
        return None;
    }
    Some(CpuTicks {
        steal: fields[7],
        total: fields.iter().sum(),
    })
}

/// Samples the counters around one measured phase.
pub(super) struct StealMeter(Option<CpuTicks>);

impl StealMeter {
    /// Reads the counters at the start of the phase (a failure leaves the steal of the
    /// run unknown, with a warning: it does not stop the bench).
    pub(super) fn start() -> StealMeter {
        StealMeter(CpuTicks::read().map_err(warn).ok())
    }

    /// Steal over the phase, as a percentage of the machine's CPU time.
    pub(super) fn finish(self) -> Option<f64> {
        let after = CpuTicks::read().map_err(warn).ok()?;
        self.0?.steal_pct_until(after)
    }
}

fn warn(e: io::Error) {
    eprintln!("warning: cannot read steal time: {e}");
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  3219621 33119 1225089 7582269 36276 0 386740 75817 0 0\n\
                        cpu0 1567811 15242 610741 3844199 8180 0 197308 37800 0 0\n\
                        intr 1 2 3\n";

    #[test]
    fn reads_the_all_cpus_line() {
        let t = parse(STAT).unwrap();
        assert_eq!(t.steal, 75817);
        assert_eq!(
            t.total,
            3219621 + 33119 + 1225089 + 7582269 + 36276 + 386740 + 75817
        );
    }

    #[test]
    fn older_kernels_and_garbage() {
        // Fewer than 8 counters (no steal field), a non-number, no `cpu` line at all.
        assert_eq!(parse("cpu  1 2 3 4 5 6 7\n"), None);
        assert_eq!(parse("cpu  1 2 3 4 5 6 7 x\n"), None);
        assert_eq!(parse("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(parse(""), None);
        // Without guest fields.
        assert_eq!(
            parse("cpu 1 1 1 1 1 1 1 3\n"),
            Some(CpuTicks {
                steal: 3,
                total: 10
            })
        );
    }

    #[test]
    fn steal_percentage_over_a_phase() {
        let a = CpuTicks {
            steal: 100,
            total: 1000,
        };
        let b = CpuTicks {
            steal: 110,
            total: 1200,
        };
        assert_eq!(a.steal_pct_until(b), Some(5.0));
        assert_eq!(a.steal_pct_until(a), None);
        assert_eq!(b.steal_pct_until(a), None);
    }

    #[test]
    fn the_real_counters_can_be_read() {
        let a = CpuTicks::read().unwrap();
        assert!(a.total >= a.steal);
    }
}
