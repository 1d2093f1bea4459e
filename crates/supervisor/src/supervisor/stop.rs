//! Stopping the workers: `SIGTERM` once to each (they drain); a second stop signal sends
//! `SIGINT` (they quit at once); at `stop_timeout` the rest get `SIGKILL`; the loop quits
//! when the last one is reaped.

use duo_reactor::{EventLoop, Signal};

use super::{State, AFTER_KILL};

impl State {
    pub(super) fn stop(&mut self, lp: &mut EventLoop, sig: Signal) {
        if self.stopping {
            log::warn!("{sig} again: workers quit now (SIGINT)");
            let pids = self.pids_where(|_| true);
            self.retire(&pids, Signal::INT);
            return;
        }
        self.stopping = true;
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

    /// `SIGKILL` at `stop_timeout` for the workers of the failed `generation` (retired
    /// with `SIGTERM`) still running then: one stuck in its start may not react to
    /// `SIGTERM`. (Not a later worker that reuses a PID: its generation differs.)
    pub(super) fn kill_at_stop_timeout(&mut self, lp: &mut EventLoop, generation: u64) {
        self.after_running(lp, self.cfg.stop_timeout, move |_, st| {
            for pid in st.pids_where(|w| w.generation == generation) {
                if let Err(e) = duo_sys::kill_process(pid) {
                    log::warn!("killing worker {pid}: {e}");
                }
            }
        });
    }

    /// After an upgrade: adopted retiring workers of a generation newer than the serving
    /// one are what is left of a failed reload, whose deadline went with the previous
    /// image; they get one again, from now.
    pub(super) fn kill_leftovers_of_failed_reloads(&mut self, lp: &mut EventLoop) {
        let serving = self.generation;
        let failed: std::collections::BTreeSet<u64> = self
            .workers
            .values()
            .filter(|w| w.retiring && w.generation > serving)
            .map(|w| w.generation)
            .collect();
        for generation in failed {
            self.kill_at_stop_timeout(lp, generation);
        }
    }
}
