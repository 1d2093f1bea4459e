//! Judging a soak: the pass criteria turned into checks and failures.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::hostile::Hostile;
use super::lanes::{LaneResult, LANES};
use super::report::fmt_errors;
use super::sample::{Mark, Proc, Sample, Srv};
use super::{FD_TOLERANCE, RSS_SLACK_KIB, RSS_TOLERANCE};

/// How a server stopped: seconds from SIGTERM to its exit and its exit code, or why not.
pub(super) type Stopped = Result<(f64, i32), String>;

/// Everything a soak observed, to be judged.
pub(super) struct Observed<'a> {
    pub(super) servers: &'a [Srv],
    pub(super) stops: &'a [Stopped],
    pub(super) samples: &'a [Sample],
    pub(super) lanes: &'a [LaneResult],
    pub(super) hostile: &'a [Arc<Hostile>],
}

/// The verdict: every failure, the checks for the report, and what the logs held.
pub(super) struct Verdict {
    pub(super) failures: Vec<String>,
    pub(super) checks: Vec<Check>,
    pub(super) logs: Vec<LogSummary>,
}

/// Applies the pass criteria (see the module docs of `soak`).
pub(super) fn judge(o: &Observed<'_>) -> Verdict {
    let mut failures = Vec::new();
    let logs = server_failures(o, &mut failures);
    lane_failures(o.lanes, &mut failures);
    hostile_failures(o.hostile, &mut failures);
    let mut checks = Vec::new();
    for i in 0..o.servers.len() {
        server_checks(o, i, &mut checks, &mut failures);
    }
    Verdict {
        failures,
        checks,
        logs,
    }
}

/// Servers that did not stop cleanly or panicked; returns the summaries of their logs.
fn server_failures(o: &Observed<'_>, failures: &mut Vec<String>) -> Vec<LogSummary> {
    for (s, r) in o.servers.iter().zip(o.stops) {
        if let Err(e) = r {
            failures.push(format!("{}: {e}", s.name));
        }
    }
    let logs: Vec<LogSummary> = o.servers.iter().map(|s| summarize_log(&s.log)).collect();
    for (s, l) in o.servers.iter().zip(&logs) {
        if l.panics > 0 {
            failures.push(format!(
                "{}: {} panic(s) in its log ({})",
                s.name,
                l.panics,
                s.log.display()
            ));
        }
    }
    logs
}

/// `loadgen` lanes with errors, failed runs or no run at all.
fn lane_failures(lanes: &[LaneResult], failures: &mut Vec<String>) {
    for (lane, r) in LANES.iter().zip(lanes) {
        if !r.errors.is_empty() {
            failures.push(format!(
                "{}: loadgen errors {}",
                lane.name,
                fmt_errors(&r.errors)
            ));
        }
        for f in &r.failures {
            failures.push(format!("{}: {f}", lane.name));
        }
        if r.runs == 0 {
            failures.push(format!("{}: no loadgen run happened", lane.name));
        }
    }
}

/// Anomalies the hostile clients saw.
fn hostile_failures(hostile: &[Arc<Hostile>], failures: &mut Vec<String>) {
    for h in hostile {
        let log = h.anomaly_log.lock().unwrap_or_else(|e| e.into_inner());
        for a in log.iter() {
            failures.push(format!("{}: {a}", h.name));
        }
        let n = h.get(&h.anomalies);
        if n as usize > log.len() {
            failures.push(format!(
                "{}: {} more anomalies",
                h.name,
                n as usize - log.len()
            ));
        }
    }
}

/// The sample of server `i` marked `mark`.
fn at(samples: &[Sample], i: usize, mark: Mark) -> Option<Proc> {
    samples
        .iter()
        .find(|s| s.mark == mark)
        .and_then(|x| x.procs[i])
}

/// The checks of server `i`: descriptors, VmRSS, threads, connections, its stop.
fn server_checks(o: &Observed<'_>, i: usize, checks: &mut Vec<Check>, failures: &mut Vec<String>) {
    let s = &o.servers[i];
    let (base, end, cool) = (
        at(o.samples, i, Mark::Baseline),
        at(o.samples, i, Mark::LoadEnd),
        at(o.samples, i, Mark::CoolDown),
    );
    checks.push(fd_check(s.name, base, cool, failures));
    checks.push(rss_check(o.samples, i, s.name, cool, failures));
    if let (Some(b), Some(c)) = (base, cool) {
        checks.push(Check {
            what: "threads: baseline → after cool-down",
            server: s.name,
            value: format!("{} → {}", b.threads, c.threads),
            ok: true,
        });
        if let Some(e) = end {
            checks.push(Check {
                what: "VmRSS after cool-down (reported only)",
                server: s.name,
                value: format!(
                    "{} KiB (baseline {}, end of load {}); RssAnon {} KiB",
                    c.rss_kib, b.rss_kib, e.rss_kib, c.anon_kib
                ),
                ok: true,
            });
        }
        if let Some(n) = c.conns {
            if n > 0 {
                failures.push(format!(
                    "{}: its statistics still count {n} open connections after the \
                     cool-down (descriptors: {})",
                    s.name, c.fds
                ));
            }
            checks.push(Check {
                what: "connections in its stats after cool-down",
                server: s.name,
                value: n.to_string(),
                ok: n == 0,
            });
        }
    }
    checks.push(Check {
        what: "alive to the end, exit 0 on SIGTERM",
        server: s.name,
        value: match &o.stops[i] {
            Ok((took, code)) => format!("exit {code} after {took:.2} s"),
            Err(e) => e.clone(),
        },
        ok: o.stops[i].is_ok(),
    });
}

/// Descriptors after the cool-down against the baseline.
pub(super) fn fd_check(
    server: &'static str,
    base: Option<Proc>,
    cool: Option<Proc>,
    failures: &mut Vec<String>,
) -> Check {
    const WHAT: &str = "fds: baseline → after cool-down";
    let (Some(b), Some(c)) = (base, cool) else {
        return Check::not_sampled(WHAT, server, failures);
    };
    let ok = c.fds <= b.fds + FD_TOLERANCE;
    if !ok {
        failures.push(format!(
            "{server}: {} descriptors after the cool-down, baseline {} (+{FD_TOLERANCE} \
             allowed): a descriptor leak",
            c.fds, b.fds
        ));
    }
    Check {
        what: WHAT,
        server,
        value: format!("{} → {} (≤ +{FD_TOLERANCE})", b.fds, c.fds),
        ok,
    }
}

/// VmRSS after the cool-down against the warm-up peak of server `i`.
pub(super) fn rss_check(
    samples: &[Sample],
    i: usize,
    server: &'static str,
    cool: Option<Proc>,
    failures: &mut Vec<String>,
) -> Check {
    const WHAT: &str = "VmRSS: warm-up peak → after cool-down";
    let (Some(w), Some(c)) = (warm_peak(samples, i), cool) else {
        return Check::not_sampled(WHAT, server, failures);
    };
    let limit = rss_limit_kib(w);
    let ok = c.rss_kib <= limit;
    if !ok {
        failures.push(format!(
            "{server}: VmRSS after the cool-down is {} KiB, {:+.1} % over the warm-up peak \
             of {w} KiB (limit {limit} KiB): memory not given back after the clients left, \
             a leak?",
            c.rss_kib,
            pct(w, c.rss_kib),
        ));
    }
    Check {
        what: WHAT,
        server,
        value: format!(
            "{w} → {} KiB ({:+.1} %, limit {limit})",
            c.rss_kib,
            pct(w, c.rss_kib),
        ),
        ok,
    }
}

/// The warm-up peak of server `i`: the highest VmRSS sampled up to the end of warm-up
/// (none if the end of warm-up was not sampled).
fn warm_peak(samples: &[Sample], i: usize) -> Option<u64> {
    let warm = samples.iter().find(|s| s.mark == Mark::WarmUpEnd)?;
    warm.procs[i]?;
    samples
        .iter()
        .filter(|x| x.mark != Mark::Baseline && x.t <= warm.t)
        .filter_map(|x| x.procs[i].map(|p| p.rss_kib))
        .max()
}

/// The most VmRSS may be after the cool-down, given the warm-up peak: [`RSS_TOLERANCE`]
/// more, or [`RSS_SLACK_KIB`] more for a small server.
pub(super) fn rss_limit_kib(warm_peak: u64) -> u64 {
    let relative = (warm_peak as f64 * (1.0 + RSS_TOLERANCE)) as u64;
    relative.max(warm_peak + RSS_SLACK_KIB)
}

/// The change from `from` to `to`, in percent.
pub(super) fn pct(from: u64, to: u64) -> f64 {
    if from == 0 {
        0.0
    } else {
        (to as f64 / from as f64 - 1.0) * 100.0
    }
}

/// One line of the report's checks.
pub(super) struct Check {
    pub(super) what: &'static str,
    pub(super) server: &'static str,
    pub(super) value: String,
    pub(super) ok: bool,
}

impl Check {
    /// A check with nothing to judge: it fails (a leak check that saw nothing passes
    /// nothing), also in `failures`.
    fn not_sampled(what: &'static str, server: &'static str, failures: &mut Vec<String>) -> Check {
        failures.push(format!(
            "{server}: `{what}` could not be checked: a sample is missing"
        ));
        Check {
            what,
            server,
            value: "not sampled".into(),
            ok: false,
        }
    }
}

/// Warnings, errors and panics in a server's log.
#[derive(Default)]
pub(super) struct LogSummary {
    pub(super) warn: u64,
    pub(super) error: u64,
    pub(super) panics: u64,
    /// Distinct messages (connection names and numbers blanked), with counts.
    pub(super) kinds: BTreeMap<String, u64>,
}

/// Counts the warnings, errors and panics in a server's log.
pub(super) fn summarize_log(path: &Path) -> LogSummary {
    let mut s = LogSummary::default();
    let Ok(text) = std::fs::read_to_string(path) else {
        return s;
    };
    for line in text.lines() {
        if line.contains("panic") {
            s.panics += 1;
        }
        let level = if line.contains(" WARN ") {
            s.warn += 1;
            "WARN"
        } else if line.contains(" ERROR ") {
            s.error += 1;
            "ERROR"
        } else {
            continue;
        };
        // `[time LEVEL target] message`: keep the message, with digits blanked so that
        // connection names and counts fold together.
        let msg = line.split_once("] ").map_or(line, |(_, m)| m);
        let folded: String = msg
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        // At most 160 characters (a byte index could split a character).
        let key: String = format!("{level} {folded}").chars().take(160).collect();
        *s.kinds.entry(key).or_default() += 1;
    }
    s
}
