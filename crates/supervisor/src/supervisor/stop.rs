//! Stopping the workers: `SIGTERM` once to each (they drain); a second stop signal sends
//! `SIGINT` (they quit at once); at `stop_timeout` the rest get `SIGKILL`; the loop quits
//! when the last one is reaped. And the deadlines of single workers: `SIGKILL` at
//! `stop_timeout` for one retired with `SIGTERM` (by a reload, say) that still runs; a
//! replacement not ready within `ready_timeout` is retired and replaced.

use duo_reactor::{EventLoop, Signal};

use super::{State, WorkerProc, AFTER_KILL};

impl State {
    pub(super) fn stop(&mut self, lp: &mut EventLoop, sig: Signal) {
        if self.stopping {
            log::warn!("{sig} again: workers quit now (SIGINT)");
            let pids = self.pids_where(|_| true);
            self.retire(&pids, Signal::INT);
            return;
        }
        self.stopping = true;
        self.abandon_probe(lp);
        if let Some(p) = self.pending.take() {
            lp.cancel(p.timer);
        }
        if let Some(t) = self.restart_timer.take() {
            lp.cancel(t);
        }
        let pids = self.pids_where(|w| !w.retiring);
        log::info!(
            "{sig}: stopping; SIGTERM to workers {pids:?} (they drain; SIGKILL after {:?})",
            self.cfg.stop_timeout
        );
        self.retire(&pids, Signal::TERM);
        if self.workers.is_empty() {
            lp.quit();
            return;
        }
        self.after_running(lp, self.cfg.stop_timeout, |lp, st| st.kill_stragglers(lp));
    }

    pub(super) fn kill_stragglers(&mut self, lp: &mut EventLoop) {
        let pids = self.pids_where(|_| true);
        if pids.is_empty() {
            return;
        }
        log::error!(
            "workers {pids:?} still running {:?} after the stop: SIGKILL",
            self.cfg.stop_timeout
        );
        for pid in pids {
            if let Err(e) = duo_sys::kill_process(pid) {
                log::warn!("SIGKILL to worker {pid}: {e}");
            }
        }
        lp.run_after(AFTER_KILL, |lp| {
            log::error!("killed workers not reaped after {AFTER_KILL:?}; exiting anyway");
            lp.quit();
        });
    }

    /// `SIGKILL` at `stop_timeout` for those of `pids` (just sent `SIGTERM`: retired by a
    /// reload, a failed generation, a replacement stuck in its start) still running then.
    /// One that ignores `SIGTERM`, or drains past its own deadline, would otherwise run
    /// (and accept connections) until the supervisor stops. (Not a later worker that
    /// reuses a PID: each is matched by its generation, and must still be retiring.)
    pub(super) fn kill_at_stop_timeout(&mut self, lp: &mut EventLoop, pids: &[u32]) {
        let doomed: Vec<(u32, u64)> = pids
            .iter()
            .filter_map(|pid| Some((*pid, self.workers.get(pid)?.generation)))
            .collect();
        if doomed.is_empty() {
            return;
        }
        self.after_running(lp, self.cfg.stop_timeout, move |_, st| {
            for (pid, generation) in doomed {
                let same = |w: &WorkerProc| w.generation == generation && w.retiring;
                if !st.workers.get(&pid).is_some_and(same) {
                    continue;
                }
                log::warn!(
                    "worker {pid} (generation {generation}) still running {:?} after its \
                     SIGTERM: SIGKILL",
                    st.cfg.stop_timeout
                );
                if let Err(e) = duo_sys::kill_process(pid) {
                    log::warn!("killing worker {pid}: {e}");
                }
            }
        });
    }

    /// After an upgrade: the adopted workers still draining (retired by a reload, or left
    /// of a failed one) had their deadline in the previous image's timers; they get one
    /// again, from now.
    pub(super) fn deadline_for_adopted_retiring(&mut self, lp: &mut EventLoop) {
        let retiring = self.pids_where(|w| w.retiring);
        self.kill_at_stop_timeout(lp, &retiring);
    }

    /// A replacement `pid` (started to make up the serving generation) that has not
    /// reported ready within `ready_timeout` is retired (`SIGTERM`, then `SIGKILL` at
    /// `stop_timeout`) and replaced after the back-off, as a worker that died young. One
    /// stuck in its start would otherwise leave the generation one short for good.
    pub(super) fn ready_deadline_for_replacement(&mut self, lp: &mut EventLoop, pid: u32) {
        let Some(generation) = self.workers.get(&pid).map(|w| w.generation) else {
            return;
        };
        self.after_running(lp, self.cfg.ready_timeout, move |lp, st| {
            let stuck = |w: &WorkerProc| w.generation == generation && !w.ready && !w.retiring;
            if st.stopping || !st.workers.get(&pid).is_some_and(stuck) {
                return;
            }
            log::error!(
                "worker {pid} (generation {generation}) was not ready within {:?}: retiring \
                 it (SIGTERM), a new one follows",
                st.cfg.ready_timeout
            );
            st.retire(&[pid], Signal::TERM);
            st.kill_at_stop_timeout(lp, &[pid]);
            if generation == st.generation {
                st.restart_young(lp);
            }
        });
    }
}
