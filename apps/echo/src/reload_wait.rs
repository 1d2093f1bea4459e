//! `echo reload --wait SECS`: learning whether the reload (or upgrade) happened, without
//! any message from the supervisor (it takes nothing but signals). What it publishes
//! anyway is its children: every worker runs with `DUO_WORKER_GENERATION` in its
//! environment, which `/proc/PID/environ` still shows after the worker took it out. So:
//!
//! - the generations of the supervisor's workers are noted, the signal is sent;
//! - **reloaded** (exit 0) once workers of a newer generation run and none of the older
//!   ones is left (they drained and exited: the supervisor retires them only once the new
//!   generation is ready and still up 200 ms later);
//! - **failed** (exit 1) once workers of a newer generation ran and have all been gone
//!   for [`RESTART_GRACE`] while older ones still serve (the new generation was not ready
//!   in time, or one of it died: the supervisor retired it). Not as soon as they are
//!   gone: a new generation that took over and lost its workers at once (while the old
//!   ones still drain) is serving, and the supervisor starts them again after its
//!   restart back-off, with the same generation;
//! - **not confirmed** (exit 1) at the deadline: no newer generation started (the
//!   supervisor ignored the signal: a reload or upgrade already under way, a stop, an
//!   upgrade whose check refused the binary; or it is stopped by job control), or the old
//!   workers are still draining. The supervisor's log says which.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The variable a worker's generation is in (the worker protocol).
const GENERATION_VAR: &[u8] = b"DUO_WORKER_GENERATION=";

/// How long the workers of a new generation may all be gone, while older ones still run,
/// before the reload counts as failed: the supervisor's longest restart delay (its
/// `backoff_max`, 5 s by default, which echo keeps), and room. A generation that served
/// gets its dead workers back within that; a failed one never does.
pub(crate) const RESTART_GRACE: Duration = Duration::from_secs(6);

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
    // Since when the newer generation's workers have all been gone (older ones running).
    let mut gone_since: Option<Instant> = None;
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
            (None, Some(g), true) => {
                let since = *gone_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= RESTART_GRACE {
                    return Outcome::Failed(g);
                }
            }
            _ => gone_since = None,
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

#[cfg(test)]
mod tests {
    //! Review round 12 of the worker processes (`echo reload --wait`): a supervisor is
    //! modelled by a shell whose children carry `DUO_WORKER_GENERATION`, as workers do.

    use super::*;
    use std::process::Command;

    /// A reload that happened, after which the new generation's only worker died at once
    /// (while the old one still drained) and was restarted after the back-off, as the
    /// supervisor does for a serving generation: reported as a reload, not as a failure.
    #[test]
    fn a_new_generation_restarted_after_it_took_over_is_a_reload() {
        let dir = duo_testkit::TempDir::new("r12-reload-wait");
        let go = dir.join("go");
        let script = format!(
            "trap 'kill $old $new 2>/dev/null; exit 0' TERM\n\
             DUO_WORKER_GENERATION=1 sleep 20 & old=$!\n\
             while [ ! -e {go} ]; do sleep 0.02; done\n\
             DUO_WORKER_GENERATION=2 sleep 20 & new=$!\n\
             sleep 0.3; kill $new; wait $new\n\
             sleep 0.6\n\
             DUO_WORKER_GENERATION=2 sleep 20 & new=$!\n\
             sleep 0.3; kill $old; wait $old\n\
             wait $new\n",
            go = go.display()
        );
        let mut sup = Command::new("sh").arg("-c").arg(script).spawn().unwrap();
        let pid = sup.id();
        duo_testkit::wait_until("the old worker runs", || generations(pid).values().eq([&1]));
        let before = generations(pid);
        std::fs::write(&go, "").unwrap();
        let outcome = watch(pid, &before, duo_testkit::LIMIT);
        duo_sys::signal_process(pid, duo_sys::Signal::TERM).unwrap();
        sup.wait().unwrap();
        assert_eq!(outcome, Outcome::Reloaded(2));
    }
}
