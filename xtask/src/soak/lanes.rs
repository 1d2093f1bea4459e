//! The well-behaved load: `loadgen` lanes, each a thread running one `loadgen` child after
//! another against one server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use duo_testkit::loadgen_json::LoadgenJson;

use super::report::fmt_errors;
use super::{IDLE_CONNS, IDLE_HOLD, MAX_ANOMALIES, MIN_RUN};
use crate::process::run_bounded;

/// A `loadgen` mode run over and over against one server.
pub(super) struct Lane {
    pub(super) name: &'static str,
    pub(super) server: usize,
    pub(super) mode: &'static str,
    pub(super) args: &'static [&'static str],
    /// Length of the first run, to stagger lanes of the same mode.
    pub(super) first_secs: Option<f64>,
}

pub(super) const LANES: &[Lane] = &[
    Lane {
        name: "echo pingpong",
        server: 0,
        mode: "pingpong",
        args: &["--conns", "8", "--size", "16384"],
        first_secs: None,
    },
    Lane {
        name: "echo rr",
        server: 0,
        mode: "rr",
        args: &["--conns", "16", "--size", "64"],
        first_secs: None,
    },
    Lane {
        name: "echo churn",
        server: 0,
        mode: "churn",
        args: &["--conns", "4"],
        first_secs: None,
    },
    Lane {
        name: "echo idle",
        server: 0,
        mode: "idle",
        args: &[],
        first_secs: None,
    },
    Lane {
        name: "bank transfers A",
        server: 1,
        mode: "bank",
        args: &["--clients", "8", "--accounts", "8"],
        first_secs: None,
    },
    Lane {
        name: "bank transfers B",
        server: 1,
        mode: "bank",
        args: &["--clients", "8", "--accounts", "8"],
        first_secs: Some(4.0),
    },
];

/// What one lane's runs added up to.
#[derive(Default)]
pub(super) struct LaneResult {
    pub(super) runs: u64,
    /// Units of work: messages, requests, connections, confirmed idle connections or
    /// transfers.
    pub(super) work: u64,
    pub(super) errors: BTreeMap<String, u64>,
    /// Bank runs whose totals were checked and conserved.
    pub(super) conserved: u64,
    /// Why runs failed (exit status, no report, verification, lost money).
    pub(super) failures: Vec<String>,
}

impl LaneResult {
    /// The "conserved" cell: checked bank runs out of all runs, `-` for other modes.
    pub(super) fn conserved_cell(&self, lane: &Lane) -> String {
        if lane.mode == "bank" {
            format!("{}/{}", self.conserved, self.runs)
        } else {
            "-".into()
        }
    }

    /// The "errors" cell: `none`, or the error counts and failures.
    pub(super) fn errors_cell(&self) -> String {
        if self.errors.is_empty() && self.failures.is_empty() {
            "none".into()
        } else {
            format!("{} {}", fmt_errors(&self.errors), self.failures.join("; "))
        }
    }
}

/// Where and until when a lane runs.
pub(super) struct LaneSetting<'a> {
    /// The `loadgen` binary.
    pub(super) loadgen: &'a Path,
    /// The server of the lane.
    pub(super) addr: SocketAddr,
    /// No run starts that could not end by then.
    pub(super) load_end: Instant,
    /// Length of one run.
    pub(super) chunk: Duration,
    /// Set when every client must stop.
    pub(super) stop: &'a AtomicBool,
    /// Where `loadgen` logs go (kept only for runs that were not clean).
    pub(super) logs: &'a Path,
}

/// Runs `lane` over and over until the end of the load (or a stop); adds up its runs.
pub(super) fn run_lane(lane: &Lane, set: &LaneSetting<'_>) -> LaneResult {
    let mut res = LaneResult::default();
    let tag = lane.name.replace(' ', "-");
    loop {
        let remaining = set.load_end.saturating_duration_since(Instant::now());
        if set.stop.load(Ordering::Relaxed) || remaining < MIN_RUN {
            break;
        }
        let secs = match (res.runs, lane.first_secs) {
            (0, Some(first)) => Duration::from_secs_f64(first),
            _ => set.chunk,
        };
        let mut cmd = lane_command(lane, set, secs, remaining);
        let log = set.logs.join(format!("loadgen-{tag}-{}.log", res.runs));
        res.runs += 1;
        let bound = secs + Duration::from_secs(90);
        let clean = match run_bounded(&mut cmd, bound, &log) {
            Err(e) => {
                res.failures.push(e);
                false
            }
            Ok((ok, out)) => match LoadgenJson::find_in(&out) {
                None => {
                    res.failures.push(format!(
                        "run {} printed no report (exit {}; see {})",
                        res.runs,
                        if ok { "0" } else { "non-zero" },
                        log.display()
                    ));
                    false
                }
                Some(report) => lane_run(&mut res, &report, ok, &log),
            },
        };
        if clean {
            let _ = std::fs::remove_file(&log);
        }
    }
    res
}

/// The `loadgen` command of one run of `lane` of `secs` seconds, `remaining` before the
/// end of the load.
fn lane_command(
    lane: &Lane,
    set: &LaneSetting<'_>,
    secs: Duration,
    remaining: Duration,
) -> Command {
    let mut cmd = Command::new(set.loadgen);
    cmd.arg(lane.mode)
        .args(["--addr", &set.addr.to_string(), "--threads", "1", "--json"])
        .args(lane.args);
    let secs = match lane.mode {
        "idle" => {
            let hold = IDLE_HOLD.min(remaining - Duration::from_secs(1));
            cmd.args(["--conns", &IDLE_CONNS.to_string()])
                .args(["--hold", &format!("{:.1}", hold.as_secs_f64())]);
            return cmd;
        }
        // Set-up and the final balance check take about a second more.
        "bank" => secs.min(remaining - Duration::from_secs(1)),
        _ => secs.min(remaining),
    };
    cmd.args(["--secs", &format!("{:.1}", secs.as_secs_f64())]);
    cmd
}

/// Adds one run's report to the lane's result; returns whether the run was clean.
fn lane_run(res: &mut LaneResult, v: &LoadgenJson, ok: bool, log: &Path) -> bool {
    res.work += v.work().unwrap_or(0);
    let mut clean = true;
    for (kind, &n) in &v.errors {
        if n > 0 {
            *res.errors.entry(kind.clone()).or_default() += n;
            clean = false;
        }
    }
    match v.total_ok {
        Some(true) => res.conserved += 1,
        Some(false) => {
            let cents = |c: Option<i64>| c.map_or("null".into(), |c| c.to_string());
            res.failures.push(format!(
                "run {}: bank total NOT conserved (deposited {}, final {})",
                res.runs,
                cents(v.total_deposited),
                cents(v.total_final)
            ));
            clean = false;
        }
        None => {}
    }
    if let Some(f) = &v.failure {
        res.failures.push(format!("run {}: {f}", res.runs));
        clean = false;
    }
    if v.verification_failed {
        res.failures
            .push(format!("run {}: verification failed", res.runs));
        clean = false;
    }
    // A non-zero exit that nothing above explains.
    if !ok && clean {
        res.failures
            .push(format!("run {}: loadgen exited non-zero", res.runs));
        clean = false;
    }
    if !clean && res.failures.len() < MAX_ANOMALIES {
        res.failures
            .push(format!("run {}: see {}", res.runs, log.display()));
    }
    clean
}
