//! `echo reload --wait SECS`: learning whether the reload (or upgrade) happened, without
//! any message from the supervisor (it takes nothing but signals). What it publishes
//! anyway is its children: every worker runs with `DUO_WORKER_GENERATION` in its
//! environment, which `/proc/PID/environ` still shows after the worker took it out. So:
//!
//! - the generations of the supervisor's workers are noted, the signal is sent;
//! - **reloaded** (exit 0) once workers of a newer generation run and none of the older
//!   ones is left (they drained and exited: the supervisor retires them only once the new
//!   generation is ready and still up 200 ms later);
//! - **failed** (exit 1) once workers of a newer generation ran and are all gone while
//!   older ones still serve (the new generation was not ready in time, or one of it died:
//!   the supervisor retired it);
//! - **not confirmed** (exit 1) at the deadline: no newer generation started (the
//!   supervisor ignored the signal: a reload or upgrade already under way, a stop, an
//!   upgrade whose check refused the binary; or it is stopped by job control), or the old
//!   workers are still draining. The supervisor's log says which.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The variable a worker's generation is in (the worker protocol).
const GENERATION_VAR: &[u8] = b"DUO_WORKER_GENERATION=";

/// What came of a reload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Generation `.0` serves alone.
    Reloaded(u64),
    /// Generation `.0` started and was retired; the older workers serve on.
    Failed(u64),
    /// No newer generation within the deadline.
    NotStarted,
    /// Generation `.0` started; older workers still run at the deadline (draining).
    Draining(u64),
    /// The supervisor is gone.
    SupervisorGone,
}

/// The workers of supervisor `pid` and their generations (a child without one, such as
/// an upgrade's check, is left out).
pub(crate) fn generations(pid: u32) -> BTreeMap<u32, u64> {
    children(pid)
        .into_iter()
        .filter_map(|child| generation_of(child).map(|g| (child, g)))
        .collect()
}

/// The children of `pid`, from `/proc/PID/task/*/children`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The generation in the environment `pid` was started with.
fn generation_of(pid: u32) -> Option<u64> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(GENERATION_VAR))
        .and_then(|g| std::str::from_utf8(g).ok()?.parse().ok())
}

/// Watches supervisor `pid` (whose workers were `before` when the signal was sent) until
/// the reload's outcome shows or `limit` passes.
pub(crate) fn watch(pid: u32, before: &BTreeMap<u32, u64>, limit: Duration) -> Outcome {
    let old_max = before.values().copied().max().unwrap_or(0);
    let deadline = Instant::now() + limit;
    let mut newest: Option<u64> = None;
    loop {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Outcome::SupervisorGone;
        }
        let now = generations(pid);
        let new = now.values().copied().filter(|g| *g > old_max).max();
        let old = now.values().any(|g| *g <= old_max);
        if let Some(g) = new {
            newest = Some(newest.map_or(g, |n| n.max(g)));
        }
        match (new, newest, old) {
            (Some(g), _, false) => return Outcome::Reloaded(g),
            (None, Some(g), true) => return Outcome::Failed(g),
            _ => {}
        }
        if Instant::now() >= deadline {
            return newest.map_or(Outcome::NotStarted, Outcome::Draining);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The line to print for `outcome` and whether it is a success.
pub(crate) fn describe(outcome: &Outcome, pid: u32, limit: Duration) -> (String, bool) {
    match outcome {
        Outcome::Reloaded(g) => (
            format!("echo reload: {pid} reloaded: generation {g} serves, the old workers have exited"),
            true,
        ),
        Outcome::Failed(g) => (
            format!(
                "echo reload: {pid} did not reload: generation {g} started and was retired (not \
                 ready in time, or a worker of it died); the old workers serve on (its log says why)"
            ),
            false,
        ),
        Outcome::NotStarted => (
            format!(
                "echo reload: {pid} started no new generation within {limit:?}: the signal was \
                 ignored (a reload or upgrade already under way, a stop, an upgrade check that \
                 refused the binary) or not handled yet (stopped); its log says which"
            ),
            false,
        ),
        Outcome::Draining(g) => (
            format!(
                "echo reload: {pid}: generation {g} started; older workers still run after \
                 {limit:?} (draining, or the reload is not done yet): not confirmed"
            ),
            false,
        ),
        Outcome::SupervisorGone => (format!("echo reload: {pid} exited"), false),
    }
}
