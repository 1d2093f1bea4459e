//! Running the loop's queued functions: a bounded batch per iteration, and what a panic in
//! one of them leaves behind.

use std::collections::VecDeque;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;

use super::{EventLoop, LocalTask};
use crate::health::CallbackKind;

impl EventLoop {
    /// The most functions queued through handles ([`LoopHandle::queue_in_loop`], from any
    /// thread) that one iteration runs. A producer faster than its loop (a worker pool
    /// answering, a broadcast from outside) would otherwise hold the loop in one pass for
    /// the whole backlog, its I/O and timers waiting; the rest runs in the next
    /// iterations, in order, after the loop has polled again (it wakes itself, so it does
    /// not sleep with work queued). A loop asked to quit takes its queue once more at
    /// most (or only what was queued before the quit, when the pass under way had taken
    /// its queue before it), and runs what it has taken (the rest of a function in slices
    /// a slice per iteration) before `run` returns; what is queued after that waits for
    /// the next `run` (or is dropped with the loop).
    ///
    /// [`LoopHandle::queue_in_loop`]: crate::LoopHandle::queue_in_loop
    pub const TASK_BATCH: usize = 256;

    /// Whether this loop was asked to quit ([`EventLoop::quit`],
    /// [`LoopHandle::quit`](crate::LoopHandle::quit)) and its `run` has not returned on
    /// it yet. A function queued now (by a function of the quit's backlog, say) waits for
    /// the next `run`: code on the loop that would queue the rest of its work for later
    /// can do it at once instead when this says so.
    pub fn is_quitting(&self) -> bool {
        self.shared.quit.load(Ordering::SeqCst)
    }

    /// Runs the functions queued through handles (at most [`Self::TASK_BATCH`]), then
    /// those this loop queued for itself so far; later ones wait for the next iteration.
    pub(super) fn run_queued(&mut self) {
        // The queue is taken (whole) only once what was taken before has run, so order
        // holds; and in every pass that runs out of what it had taken, even at the bound.
        // A pass that does not (more than a batch left, or a slice that asked for more)
        // leaves something taken, and the loop wakes itself for it. Either way nothing
        // sits in the queue while the loop sleeps: neither a function queued on the loop
        // thread (which writes no wake-up) nor one whose producer found a wake-up pending
        // (one the loop wrote itself for its leftovers).
        let mut took = self.running.is_empty();
        if took {
            self.take_queue();
        }
        let mut local = std::mem::replace(
            &mut self.local_tasks,
            std::mem::take(&mut self.running_local),
        );
        if self.running.is_empty() && local.is_empty() {
            self.running_local = local;
            return;
        }
        // Taken: a quit asked before counts none of the loop's own functions left.
        self.shared.quit_local.store(0, Ordering::Relaxed);
        self.shared.draining.store(true, Ordering::SeqCst);
        let waiting = self.running.len() + local.len();
        self.health.task_batch(waiting, &self.shared.metrics.health);
        let mut ran = 0;
        loop {
            if self.running.is_empty() && !took {
                took = true;
                self.take_queue();
            }
            // A loop asked to quit runs what it has taken, as a loop without the bound
            // would have: everything queued before this pass began.
            if ran >= Self::TASK_BATCH && ran % Self::TASK_BATCH == 0 {
                if !self.shared.quit.load(Ordering::SeqCst) {
                    break;
                }
                // Past the bound (quitting): what is left is published a batch at a time.
                self.publish_taken();
            }
            let Some(task) = self.running.pop_front() else {
                break;
            };
            ran += 1;
            self.iteration_tasks += 1;
            self.sliced_more = false;
            let name = task.name;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (task.f)(self))) {
                // Accounted as one that returned (it may have stalled the loop first).
                self.task_done(name);
                self.requeue_after_panic(std::mem::take(&mut local));
                resume_unwind(panic);
            }
            self.task_done(name);
            // A slice of a sliced function asked for more: it is back at the front, and
            // the loop polls before it runs on (also when quitting: the rest may wait for
            // the loop's I/O or timers).
            if std::mem::take(&mut self.sliced_more) {
                break;
            }
        }
        let mut tasks = local.drain(..);
        while let Some(task) = tasks.next() {
            // Counted as it runs, as those taken through handles: a panic puts the ones
            // after it back, to be counted when they do run.
            self.iteration_tasks += 1;
            let name = task.name;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (task.f)(self))) {
                self.task_done(name);
                let rest = tasks.collect();
                self.requeue_after_panic(rest);
                resume_unwind(panic);
            }
            self.task_done(name);
        }
        drop(tasks);
        self.shared.draining.store(false, Ordering::SeqCst);
        self.running_local = local;
        self.wake_for_the_rest();
    }

    /// Takes the functions queued before the last quit that are still in the queue (the
    /// pass under way had taken its queue before they came); returns whether there were
    /// any. The loop takes nothing more before it returns.
    pub(super) fn take_quit_backlog(&mut self) -> bool {
        let mut queue = self.shared.queue.lock();
        let backlog = self.shared.quit_backlog.swap(0, Ordering::Relaxed);
        let Some(q) = queue.as_mut().filter(|_| backlog > 0) else {
            return false;
        };
        self.running.extend(q.drain(..backlog.min(q.len())));
        self.took_quitting = true;
        self.shared
            .metrics
            .tasks_taken
            .store(self.running.len() as u64, Ordering::Relaxed);
        !self.running.is_empty()
    }

    /// Runs, without a poll (as `run` runs what was queued before its first), the
    /// functions queued before the quit that a pass which had already taken its queue
    /// left behind; returns whether there were any.
    pub(super) fn run_quit_backlog(&mut self) -> bool {
        let shared = self.take_quit_backlog();
        // And those the loop queued for itself before the quit, not the ones after it.
        let own = self.shared.quit_local.swap(0, Ordering::Relaxed);
        let own = own.min(self.local_tasks.len());
        if !shared && own == 0 {
            return false;
        }
        // Set aside in the loop, not on the stack: a panic in what runs now puts them
        // back (`requeue_after_panic`) instead of dropping them unrun.
        self.after_quit = self.local_tasks.split_off(own);
        self.run_queued_between_polls();
        let after_quit = std::mem::take(&mut self.after_quit);
        let newer = std::mem::replace(&mut self.local_tasks, after_quit);
        self.local_tasks.extend(newer);
        true
    }

    /// `run` ends: clears the quit request it ended on (`seen`: how many quits had been
    /// asked at its last look; `None`, it failed: all of them), but not one asked after
    /// that look, which belongs to the next `run` (with the backlog it counted).
    pub(super) fn end_run(&mut self, seen: Option<u64>) {
        {
            // Under the queue's lock, as `request_quit` counts and sets: a quit is either
            // counted in `seen` or left set.
            let _queue = self.shared.queue.lock();
            let later = seen.is_some_and(|s| self.shared.quit_requests.load(Ordering::SeqCst) != s);
            if !later {
                self.shared.quit.store(false, Ordering::SeqCst);
                self.shared.quit_backlog.store(0, Ordering::Relaxed);
            }
        }
        self.shared.quit_local.store(0, Ordering::Relaxed);
        self.took_quitting = false;
    }

    /// Runs the queued functions outside an iteration (no poll before them).
    pub(super) fn run_queued_between_polls(&mut self) {
        // Time outside `run` is nobody's; busy from here (for `/healthz`), as after a poll.
        self.health.busy_now(&self.shared.metrics.health);
        self.run_queued();
        // Counted now: a function of this pass may have quit the loop, and `run` then
        // returns without another iteration (whose end would have published them).
        self.publish_metrics();
        self.health.idle(&self.shared.metrics.health);
    }

    /// The rest of a function run in slices ([`LoopHandle::queue_in_slices`]): it runs
    /// first in the next pass, before the functions queued after it.
    ///
    /// [`LoopHandle::queue_in_slices`]: crate::LoopHandle::queue_in_slices
    pub(crate) fn continue_first(&mut self, rest: crate::loop_handle::SendTask) {
        self.running.push_front(rest);
        self.sliced_more = true;
    }

    /// Takes the functions queued through handles (`running` is empty): an empty
    /// deque gives back its buffer as is, and the queue's becomes the deque.
    fn take_queue(&mut self) {
        // A quitting loop takes its queue once more at most (what was queued before the
        // quit was seen): a stream of new work, or a function that keeps queuing its
        // successor, must not keep it from returning. (The flag is read under the queue's
        // lock, as `request_quit` sets it: see `quit_backlog`.)
        let mut queue = self.shared.queue.lock();
        if self.shared.quit.load(Ordering::SeqCst) {
            if self.took_quitting {
                return;
            }
            self.took_quitting = true;
        }
        let mut taken = Vec::from(std::mem::take(&mut self.running));
        if let Some(q) = queue.as_mut() {
            std::mem::swap(q, &mut taken);
        }
        // Everything queued before a quit is taken.
        self.shared.quit_backlog.store(0, Ordering::Relaxed);
        // Counted as taken (not yet run) under the queue's lock, which a snapshot holds
        // while it reads both figures: the backlog is never missing from
        // `tasks_queued`, neither while this pass runs it nor in the middle of the swap.
        // (It is counted down when the pass ends, so during a pass the figure includes
        // the functions this pass already ran: at most a batch.)
        self.shared
            .metrics
            .tasks_taken
            .store(taken.len() as u64, Ordering::Relaxed);
        drop(queue);
        self.running = VecDeque::from(taken);
    }

    /// A queued function panicked: the local functions after it go back to the front of
    /// their queue, in order (followed by those a quitting loop had set aside, queued
    /// after its quit), and those taken through handles not run yet stay where they
    /// are, so that the next `run` runs them first (the panicking one is dropped; nothing
    /// else that was accepted is lost). What the iteration counted so far (the panicking
    /// function included: it ran) is published, as the iteration's end would have: the
    /// loop may never run again.
    fn requeue_after_panic(&mut self, local_rest: Vec<LocalTask>) {
        let set_aside = std::mem::take(&mut self.after_quit);
        self.local_tasks
            .splice(0..0, local_rest.into_iter().chain(set_aside));
        self.shared.draining.store(false, Ordering::SeqCst);
        self.wake_for_the_rest();
        self.publish_metrics();
    }

    /// Functions taken through handles and left for the next iteration: the loop must not
    /// sleep on them. A loop thread's next poll returns at once; a group's loop gets its
    /// next turn, which only readiness of its own epoll set brings.
    fn wake_for_the_rest(&self) {
        self.publish_taken();
        if !self.running.is_empty() {
            self.shared.wake();
        }
    }

    /// Publishes how many of the functions taken through handles have not run yet (part
    /// of [`LoopMetrics::tasks_queued`](crate::LoopMetrics::tasks_queued)).
    fn publish_taken(&self) {
        let left = self.running.len() as u64;
        let taken = &self.shared.metrics.tasks_taken;
        if taken.load(Ordering::Relaxed) != left {
            taken.store(left, Ordering::Relaxed);
        }
    }

    fn task_done(&mut self, name: &'static str) {
        self.health.callback_done(
            CallbackKind::Task,
            &|| format!("queued function {name}"),
            &self.shared.name,
            &self.shared.metrics.health,
        );
    }
}
