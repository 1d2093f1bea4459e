//! The results of runs: one run of one server ([`Run`]), and one server's repetitions in
//! one scenario summarised by medians ([`Outcome`]).

use std::time::Duration;

use duo_testkit::loadgen_json::LoadgenJson;

/// One run of one server in one scenario.
pub(super) struct Run {
    /// `loadgen --json` output, or the error that prevented it.
    pub(super) result: Result<LoadgenJson, String>,
    /// Server CPU time (user + system) during the run: on PostgreSQL, of the front-end's
    /// processes, over the measured phase; `None` when it was not measured (an idle
    /// run's covers the whole run: it has no measured phase).
    pub(super) cpu: Option<Duration>,
    /// On PostgreSQL: the database server's CPU time (the postmaster and its backends)
    /// over the measured phase.
    pub(super) db_cpu: Option<Duration>,
    /// Hypervisor steal over the measured phase, as a percentage of the machine's CPU
    /// time (see [`super::steal`]); `None` when it could not be read.
    pub(super) steal_pct: Option<f64>,
    /// Attempts made for this run: more than 1 when steal spoiled the earlier ones.
    pub(super) attempts: u32,
    /// Every attempt's steal was above the threshold: this is the attempt with the least.
    pub(super) steal_high: bool,
    /// The server died during the run (its `result` says how): a failure a steal retry
    /// must not hide behind an earlier attempt.
    pub(super) server_exited: bool,
}

impl Run {
    /// A run that could not be made.
    pub(super) fn failed(why: String) -> Run {
        Run {
            result: Err(why),
            cpu: None,
            db_cpu: None,
            steal_pct: None,
            attempts: 1,
            steal_high: false,
            server_exited: false,
        }
    }

    /// A figure of the `loadgen` report, if the run made one.
    pub(super) fn get<T>(&self, f: impl Fn(&LoadgenJson) -> Option<T>) -> Option<T> {
        self.result.as_ref().ok().and_then(f)
    }

    pub(super) fn rate(&self) -> Option<f64> {
        self.get(LoadgenJson::rate)
    }

    pub(super) fn cpu_per_op_us(&self) -> Option<f64> {
        if self.get(|j| Some(j.mode == "pgbench")) == Some(true) {
            // pgbench is a client: there is no front-end (only `db_cpu`).
            return None;
        }
        let ops = self.get(LoadgenJson::work)?;
        let cpu = self.cpu?;
        (ops > 0).then(|| cpu.as_secs_f64() * 1e6 / ops as f64)
    }

    /// Database server CPU time per unit of work, in microseconds (PostgreSQL runs).
    pub(super) fn db_cpu_per_op_us(&self) -> Option<f64> {
        let ops = self.get(LoadgenJson::work)?;
        let cpu = self.db_cpu?;
        (ops > 0).then(|| cpu.as_secs_f64() * 1e6 / ops as f64)
    }

    pub(super) fn errors(&self) -> u64 {
        match &self.result {
            Ok(j) => j.errors.values().sum(),
            Err(_) => 1,
        }
    }

    pub(super) fn verification_failed(&self) -> bool {
        self.result.as_ref().is_ok_and(|j| j.verification_failed)
    }
}

/// Median, minimum and maximum of a figure over runs.
#[derive(Clone, Copy)]
pub(super) struct Stats {
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

/// The [`Stats`] of the values present.
pub(super) fn stats(values: impl Iterator<Item = Option<f64>>) -> Option<Stats> {
    let mut v: Vec<f64> = values.flatten().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    Some(Stats {
        median,
        min: v[0],
        max: v[v.len() - 1],
    })
}

/// One server's runs in one scenario (one per repetition), summarised by medians.
pub(super) struct Outcome {
    pub(super) server: String,
    pub(super) duo: bool,
    pub(super) runs: Vec<Run>,
}

impl Outcome {
    /// A figure of the `loadgen` reports over the runs.
    pub(super) fn stats(&self, f: impl Fn(&LoadgenJson) -> Option<f64>) -> Option<Stats> {
        stats(self.runs.iter().map(|r| r.get(&f)))
    }

    /// The median of a figure of the `loadgen` reports over the runs.
    pub(super) fn median(&self, f: impl Fn(&LoadgenJson) -> Option<f64>) -> Option<f64> {
        self.stats(f).map(|s| s.median)
    }

    /// The scenario's throughput figure (messages, requests, connections or transfers
    /// per second).
    pub(super) fn rate_stats(&self) -> Option<Stats> {
        stats(self.runs.iter().map(Run::rate))
    }

    pub(super) fn rate(&self) -> Option<f64> {
        self.rate_stats().map(|s| s.median)
    }

    /// Server CPU time per unit of work, in microseconds.
    pub(super) fn cpu_stats(&self) -> Option<Stats> {
        stats(self.runs.iter().map(Run::cpu_per_op_us))
    }

    pub(super) fn cpu_per_op_us(&self) -> Option<f64> {
        self.cpu_stats().map(|s| s.median)
    }

    /// Database server CPU time per unit of work, in microseconds (PostgreSQL runs).
    pub(super) fn db_cpu_stats(&self) -> Option<Stats> {
        stats(self.runs.iter().map(Run::db_cpu_per_op_us))
    }

    /// Front-end plus database CPU time per transfer, µs (the median run's of each), on
    /// PostgreSQL; `None` for a bank whose front-end was not measured.
    pub(super) fn total_cpu_per_op_us(&self) -> Option<f64> {
        let db = self.db_cpu_stats()?.median;
        // pgbench is a client: it has no front-end.
        let pgbench = self
            .runs
            .iter()
            .any(|r| r.get(|j| Some(j.mode == "pgbench")) == Some(true));
        let front = self.cpu_per_op_us().or(pgbench.then_some(0.0))?;
        Some(front + db)
    }

    /// Hypervisor steal over the kept runs, % of the machine's CPU time.
    pub(super) fn steal_stats(&self) -> Option<Stats> {
        stats(self.runs.iter().map(|r| r.steal_pct))
    }

    /// Extra attempts made because steal was high.
    pub(super) fn repeats(&self) -> u32 {
        self.runs.iter().map(|r| r.attempts.saturating_sub(1)).sum()
    }

    /// Whether some kept run had high steal in every attempt.
    pub(super) fn steal_high(&self) -> bool {
        self.runs.iter().any(|r| r.steal_high)
    }

    pub(super) fn errors(&self) -> u64 {
        self.runs.iter().map(Run::errors).sum()
    }

    /// The first run that could not be made at all.
    pub(super) fn failure(&self) -> Option<&str> {
        self.runs
            .iter()
            .find_map(|r| r.result.as_ref().err().map(String::as_str))
    }

    pub(super) fn failed(&self) -> bool {
        self.runs.is_empty() || self.runs.iter().all(|r| r.result.is_err())
    }

    pub(super) fn verification_failed(&self) -> bool {
        self.runs.iter().any(Run::verification_failed)
    }
}

pub(super) fn fmt_rate(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 1e6 => format!("{:.2} M/s", v / 1e6),
        Some(v) if v >= 1e3 => format!("{:.1} k/s", v / 1e3),
        Some(v) => format!("{v:.0} /s"),
        None => "-".into(),
    }
}

pub(super) fn fmt_us(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2} µs"))
}

/// A steal percentage, `-` when unknown.
pub(super) fn fmt_steal(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1} %"))
}

pub(super) fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

/// "median (min-max)" of a figure over `runs` runs, formatted by `f`.
pub(super) fn spread(st: Option<Stats>, runs: usize, f: impl Fn(f64) -> String) -> String {
    match st {
        Some(s) if runs > 1 => format!("{} ({}-{})", f(s.median), f(s.min), f(s.max)),
        Some(s) => f(s.median),
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        let s = stats([Some(3.0), None, Some(1.0), Some(2.0)].into_iter()).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = stats([Some(1.0), Some(4.0)].into_iter()).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(stats([None].into_iter()).is_none());
        assert_eq!(spread(Some(s), 2, |v| format!("{v:.1}")), "2.5 (1.0-4.0)");
    }
}
