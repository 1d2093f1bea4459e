//! Job control. Workers run in process groups of their own (so that a terminal's Ctrl-C
//! reaches them once, forwarded), so a terminal's Ctrl-Z (`SIGTSTP` to the foreground
//! group) and `fg`/`bg` (`SIGCONT`) reach only the supervisor, which passes them on, as
//! a shell does for a job:
//!
//! - `SIGTSTP` (also `SIGTTIN`, `SIGTTOU`): every worker gets `SIGSTOP`, then the
//!   supervisor stops itself by the signal's default action ([`duo_sys::stop_self`]).
//!   When it is continued it continues every worker (`SIGCONT`). In a process group the
//!   kernel deems orphaned (nobody could continue it) the supervisor does not stop, and
//!   continues its workers at once.
//! - `SIGCONT` on its own (the supervisor was stopped by `SIGSTOP`, say): every worker
//!   gets `SIGCONT`, which changes nothing for one that was not stopped.
//! - A stopped worker is not a dead one: workers are reaped without `WUNTRACED`, so a
//!   stop is never reported as an exit. Time spent stopped this way does not count
//!   towards the supervisor's deadlines ([`State::after_running`]): a generation still
//!   starting, or workers draining after a stop signal, get the time they had left
//!   before the Ctrl-Z once continued. (The restart back-off is not a deadline: a delay
//!   that elapsed while stopped restarts at once.)

use std::time::{Duration, Instant};

use duo_reactor::{EventLoop, HealthConfig, Signal, TimerId};

use super::State;

impl State {
    /// `SIGTSTP`, `SIGTTIN` or `SIGTTOU`: stops the workers, then this process; returns
    /// once it is continued, the workers continued too.
    pub(super) fn job_stop(&mut self, lp: &mut EventLoop, sig: Signal) {
        let pids = self.pids_where(|_| true);
        log::info!("{sig}: stopping workers {pids:?} (SIGSTOP), then the supervisor");
        for pid in &pids {
            if let Err(e) = duo_sys::stop_process(*pid) {
                log::warn!("SIGSTOP to worker {pid}: {e}");
            }
        }
        // This callback lasts as long as the stop: not a stall of the loop to report.
        // The detector is switched back on once the callback has returned.
        let health = lp.health_config();
        lp.set_health_config(HealthConfig {
            stall_threshold: None,
            ..health
        });
        lp.run_after(Duration::ZERO, move |lp| lp.set_health_config(health));
        let stopped = Instant::now();
        if let Err(e) = duo_sys::stop_self(sig) {
            log::error!("stopping the supervisor: {e}");
        }
        let took = stopped.elapsed();
        self.paused += took;
        log::info!("continued after {took:.1?} stopped");
        self.continue_workers();
    }

    /// `SIGCONT` to every worker.
    pub(super) fn continue_workers(&self) {
        let pids = self.pids_where(|_| true);
        log::info!("continuing workers {pids:?} (SIGCONT)");
        for pid in pids {
            if let Err(e) = duo_sys::signal_process(pid, Signal::CONT) {
                log::warn!("SIGCONT to worker {pid}: {e}");
            }
        }
    }

    /// Runs `f` once `delay` has passed with the supervisor running: time it spent stopped
    /// by job control meanwhile is added on. (The returned timer is the first one: once
    /// postponed, `f` runs from another, which is fine for the callers, each of which
    /// checks on firing that what it was for is still there.)
    pub(super) fn after_running<F>(&self, lp: &mut EventLoop, delay: Duration, f: F) -> TimerId
    where
        F: FnOnce(&mut EventLoop, &mut State) + Send + 'static,
    {
        let due = Instant::now() + delay;
        let paused = self.paused;
        let mut f = Some(f);
        lp.run_after(delay, move |lp| {
            let Some(f) = f.take() else { return };
            lp.with_local(|lp, st: &mut State| {
                let due = due + st.paused.saturating_sub(paused);
                let left = due.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    f(lp, st);
                } else {
                    st.after_running(lp, left, f);
                }
            });
        })
    }
}
