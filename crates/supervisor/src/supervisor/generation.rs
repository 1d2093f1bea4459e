//! A new generation's start: ready worker by worker, then promoted (it serves, the older
//! ones drain), or aborted (not ready in time, or a worker of it died first: the serving
//! generation goes on).

use std::time::Duration;

use duo_reactor::{EventLoop, Signal};

use super::State;

/// How long every worker of a reload's generation must stay up after the last one
/// reported ready before that generation serves (and the serving one retires).
pub(super) const RELOAD_SETTLE: Duration = Duration::from_millis(200);

impl State {
    pub(super) fn on_ready(&mut self, lp: &mut EventLoop, pid: u32) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        if w.ready {
            return;
        }
        w.ready = true;
        log::info!("worker {pid} (generation {}) is ready", w.generation);
        let Some(p) = &mut self.pending else { return };
        if p.generation != w.generation {
            return;
        }
        // Counted here rather than among the live workers: one may report ready and
        // exit at once, and it still counts as having started.
        p.ready += 1;
        if p.ready < self.cfg.workers {
            return;
        }
        let generation = p.generation;
        if self.generation == 0 {
            return self.promote(lp, generation);
        }
        // A reload: promoted a moment later, so that a worker of it that reports ready
        // and dies at once (a configuration that cannot serve) fails the reload instead
        // of retiring the serving generation for it (its death, seen meanwhile, aborts
        // the pending one; see `on_exit`).
        self.after_running(lp, RELOAD_SETTLE, move |lp, st| {
            if st.pending.as_ref().map(|p| p.generation) == Some(generation) {
                st.promote(lp, generation);
            }
        });
    }

    /// Generation `generation` is all ready: it serves; the older ones drain.
    pub(super) fn promote(&mut self, lp: &mut EventLoop, generation: u64) {
        if let Some(p) = self.pending.take() {
            lp.cancel(p.timer);
        }
        self.generation = generation;
        let pids: Vec<u32> = self.pids_where(|w| w.generation == generation);
        log::info!("generation {generation} is serving: workers {pids:?}");
        let old = self.pids_where(|w| w.generation < generation && !w.retiring);
        if !old.is_empty() {
            log::info!("retiring the previous workers {old:?} (SIGTERM: they drain)");
        }
        self.retire(&old, Signal::TERM);
        self.kill_at_stop_timeout(lp, &old);
        if let Some(f) = self.on_ready.take() {
            if let Err(e) = f() {
                // Nobody learns where the server is: stop, as a single process fails.
                log::error!("{e}; stopping");
                self.unannounced = Some(e);
                self.stop(lp, Signal::TERM);
                return;
            }
        }
        // A worker that reported ready and then died before this point was not
        // restarted (its generation was not serving yet): make up the count.
        if pids.len() < self.cfg.workers {
            self.restart_young(lp);
        }
    }

    pub(super) fn ready_timeout(&mut self, lp: &mut EventLoop, generation: u64) {
        // (All ready and settling: not late.)
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.generation == generation && p.ready < self.cfg.workers)
        {
            let why = format!(
                "generation {generation} was not ready within {:?}",
                self.cfg.ready_timeout
            );
            self.abort_pending(lp, &why);
        }
    }

    /// The starting generation failed: kill it; the serving one (if any) goes on.
    pub(super) fn abort_pending(&mut self, lp: &mut EventLoop, why: &str) {
        let Some(p) = self.pending.take() else { return };
        lp.cancel(p.timer);
        let doomed = self.pids_where(|w| w.generation == p.generation);
        // They may have accepted connections from the shared socket already (a worker
        // accepts before it reports ready): SIGTERM, so that they drain as a retired
        // generation does; SIGKILL for those of it still running at `stop_timeout`.
        self.retire(&doomed, Signal::TERM);
        self.kill_at_stop_timeout(lp, &doomed);
        if self.generation == 0 {
            log::error!("{why}; giving up");
            self.failure = Some(why.to_owned());
            self.stop(lp, Signal::TERM);
        } else {
            log::error!(
                "{why}; retired it ({doomed:?}: SIGTERM, they drain), generation {} keeps \
                 serving",
                self.generation
            );
            // It may have been left short meanwhile (an upgrade that adopted nobody, say):
            // make up its count rather than serve with fewer workers, or none.
            let generation = self.generation;
            let live = self.pids_where(|w| w.generation == generation && !w.retiring);
            if live.len() < self.cfg.workers {
                self.restart_young(lp);
            }
        }
    }
}
