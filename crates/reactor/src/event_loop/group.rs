//! What a [`LoopGroup`](crate::LoopGroup) needs of a loop: one made for no thread, its
//! epoll descriptor for the group's outer set, and one turn at a time.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::EventLoop;
use crate::error::LoopError;
use crate::loop_handle::MetricCounters;
use crate::thread_id::current_thread_id;

impl EventLoop {
    /// A loop of a [`LoopGroup`](crate::LoopGroup): bound to no thread (it runs on the
    /// group's threads one turn at a time) and not counted as the calling thread's loop.
    pub(crate) fn detached(name: String) -> Result<EventLoop, LoopError> {
        let lp = EventLoop::build(name, 0)?;
        log::debug!("event loop {} created for a loop group", lp.name());
        Ok(lp)
    }

    /// One turn of a loop of a [`LoopGroup`](crate::LoopGroup), on whichever of the
    /// group's threads took the loop's readiness: one iteration without blocking (its
    /// epoll set was ready), with the calling thread as the loop's thread for its length.
    /// Returns whether the loop was asked to quit and has nothing left of what it took
    /// off its queue, nor of what it queued for itself before an [`EventLoop::quit`].
    ///
    /// A panic out of the turn leaves the calling thread recorded as the loop's thread;
    /// the group then drops the loop, which clears it. `helped`: the turn is run by a
    /// thread other than the loop's owner (counted in [`LoopMetrics::helped_turns`]).
    /// `waited`: how long the group's wait that found the loop ready waited (its set had
    /// nothing ready meanwhile; zero for a loop a helper finds ready that its turn at the
    /// helper's previous look left ready, a look not sleeping): whether it slept is what
    /// ends the
    /// spin detector's runs of dispatches, and whether it waited a millisecond what makes
    /// an empty wake-up far apart from the previous iteration, not the time since the
    /// loop's previous turn (which includes the time it was ready and waited for a
    /// thread); `None`: judged by that time, as for a loop's own poll.
    ///
    /// [`LoopMetrics::helped_turns`]: crate::LoopMetrics::helped_turns
    pub(crate) fn turn(&mut self, helped: bool, waited: Option<Duration>) -> io::Result<bool> {
        self.shared
            .thread_id
            .store(current_thread_id(), Ordering::SeqCst);
        if helped {
            MetricCounters::add(&self.shared.metrics.helped_turns, 1);
        }
        // (Refuses a `run` from the turn's callbacks; a panic leaves it set, and the
        // group drops the loop.)
        self.shared.in_run.store(true, Ordering::Relaxed);
        self.health.next_poll_waited(waited);
        let result = self.run_once(false);
        self.shared.in_run.store(false, Ordering::Relaxed);
        // Functions this turn queued for itself run in the next turn, which only
        // readiness of the loop's epoll set brings.
        if !self.local_tasks.is_empty() {
            self.shared.wake();
        }
        self.health.idle(&self.shared.metrics.health);
        self.shared.thread_id.store(0, Ordering::SeqCst);
        // (As `run`: not done while something it took off its queue is left, nor before
        // what was queued before the quit has run: taken now, run in the next turn. That
        // includes the functions the loop queued for itself before an `EventLoop::quit`
        // (from a queued function, which runs after the turn's own functions were taken):
        // the next turn runs them, as `run_quit_backlog` does for `run`.)
        result.map(|()| {
            let done = self.shared.quit.load(Ordering::SeqCst) && self.running.is_empty();
            let own_before_quit = self
                .shared
                .quit_local
                .load(Ordering::Relaxed)
                .min(self.local_tasks.len());
            if done && (self.take_quit_backlog() || own_before_quit > 0) {
                self.shared.wake();
                return false;
            }
            done
        })
    }

    /// The loop's epoll descriptor: readable when the loop has work.
    pub(crate) fn poll_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.poller.as_fd()
    }
}
