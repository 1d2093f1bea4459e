//! [`LoopHandle`]: the `Send + Sync` side of a loop, usable from any thread.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_sys::EventFd;
use parking_lot::Mutex;

use crate::error::LoopClosed;
use crate::thread_id::current_thread_id;
use crate::timer_queue::{Timer, TimerId};
use crate::EventLoop;

/// A function queued to run on a loop through its shared queue (from any thread, so `Send`).
pub(crate) type SendTask = Box<dyn FnOnce(&mut EventLoop) + Send>;

/// The part of a loop its handles share (`Arc`): what any thread may touch.
pub(crate) struct LoopShared {
    /// The loop thread's id ([`current_thread_id`]).
    pub(crate) thread_id: u64,
    /// Queued functions; `None` once the loop is dropped.
    pub(crate) queue: Mutex<Option<Vec<SendTask>>>,
    /// Set when the waker has been written and the loop has not yet drained it, so that
    /// many wake-ups before the loop runs cost one `write`.
    pub(crate) notified: AtomicBool,
    /// Set while the loop runs queued functions: a function queued then (even from the
    /// loop thread) lands in the next batch and needs a wake-up.
    pub(crate) draining: AtomicBool,
    /// Quit requested: `run` returns at the end of this iteration.
    pub(crate) quit: AtomicBool,
    /// The eventfd that wakes the loop out of `epoll_wait`.
    pub(crate) waker: EventFd,
    /// The sequence number of the next timer, unique for the loop's life.
    pub(crate) next_timer: AtomicU64,
    /// The counters behind [`LoopMetrics`].
    pub(crate) metrics: MetricCounters,
}

/// The loop's counters, written only by the loop thread and read by any.
#[derive(Default)]
pub(crate) struct MetricCounters {
    pub(crate) iterations: AtomicU64,
    pub(crate) io_events: AtomicU64,
    pub(crate) tasks_run: AtomicU64,
    pub(crate) timers_fired: AtomicU64,
}

impl MetricCounters {
    /// Adds to a counter only the loop thread writes: a plain load and store, no locked
    /// read-modify-write on the hot path.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
        }
    }
}

/// Counters of one loop, read with [`LoopHandle::metrics`] or [`EventLoop::metrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoopMetrics {
    /// Returns from `epoll_wait`.
    pub iterations: u64,
    /// I/O events dispatched to channels (wake-ups and timer events not included).
    pub io_events: u64,
    /// Queued functions run.
    pub tasks_run: u64,
    /// Timer callbacks run.
    pub timers_fired: u64,
}

impl LoopShared {
    /// Whether the caller runs on the loop thread.
    pub(crate) fn is_in_loop_thread(&self) -> bool {
        current_thread_id() == self.thread_id
    }

    /// Queues `task`, waking the loop if it might not otherwise see it this round.
    pub(crate) fn push(&self, task: SendTask) -> Result<(), LoopClosed> {
        self.queue.lock().as_mut().ok_or(LoopClosed)?.push(task);
        // The loop runs queued functions after dispatching I/O, before it waits again, so
        // a function queued on the loop thread needs no wake-up, unless the loop is
        // running the queue right now (the function then waits for the next round).
        if !self.is_in_loop_thread() || self.draining.load(Ordering::Relaxed) {
            self.wake();
        }
        Ok(())
    }

    /// Writes the waker unless a wake-up is already pending.
    pub(crate) fn wake(&self) {
        if !self.notified.swap(true, Ordering::SeqCst) {
            if let Err(e) = self.waker.notify() {
                log::error!("cannot wake the event loop: {e}");
            }
        }
    }

    /// A snapshot of the counters.
    pub(crate) fn metrics(&self) -> LoopMetrics {
        let m = &self.metrics;
        LoopMetrics {
            iterations: m.iterations.load(Ordering::Relaxed),
            io_events: m.io_events.load(Ordering::Relaxed),
            tasks_run: m.tasks_run.load(Ordering::Relaxed),
            timers_fired: m.timers_fired.load(Ordering::Relaxed),
        }
    }
}

/// A cheap, cloneable, `Send + Sync` reference to an [`EventLoop`], for use from any
/// thread: queue functions onto the loop, schedule and cancel timers, quit it, read its
/// metrics.
///
/// Functions run on the loop thread and receive the loop (`&mut EventLoop`), which is how
/// work from other threads reaches loop-owned state (channels, connections, timers)
/// without locks.
///
/// # Ordering
///
/// Functions queued through handles run in the order they were queued (one FIFO per loop,
/// so in particular FIFO per producer thread), once per loop iteration after I/O events
/// were dispatched. Functions queued while the loop runs that batch run in the next
/// iteration, so a function that keeps re-queueing itself cannot starve I/O.
///
/// # Wake-ups
///
/// The loop sleeps in `epoll_wait`; an `eventfd` wakes it. It is written only when the
/// caller is another thread (or the loop is running its queue), and at most once until
/// the loop has drained it: a burst of `queue_in_loop` calls costs one `write`.
///
/// # When the loop is gone
///
/// Once the loop is dropped, queuing returns [`LoopClosed`] and the function is dropped
/// without running. Functions still queued when the loop is dropped are dropped too.
#[derive(Clone)]
pub struct LoopHandle {
    pub(crate) shared: Arc<LoopShared>,
}

impl LoopHandle {
    /// Queues `f` to run on the loop.
    ///
    /// From another thread this queues `f` and wakes the loop. On the loop thread itself
    /// the loop is already borrowed by whoever called us (a handler, a timer, a queued
    /// function), so a handle cannot run `f` with `&mut EventLoop` right here: it queues `f`
    /// without a wake-up, and the loop runs it after the current batch of events, before it
    /// next waits for I/O. (There is no muduo-style `run_in_loop`: code that holds
    /// `&mut EventLoop` runs in the loop already and simply calls `f(lp)`.)
    pub fn queue_in_loop(
        &self,
        f: impl FnOnce(&mut EventLoop) + Send + 'static,
    ) -> Result<(), LoopClosed> {
        self.shared.push(Box::new(f))
    }

    /// Runs `f` once at `deadline` (at once if it has passed).
    pub fn run_at(
        &self,
        deadline: Instant,
        f: impl FnMut(&mut EventLoop) + Send + 'static,
    ) -> Result<TimerId, LoopClosed> {
        self.schedule(deadline, None, Box::new(f))
    }

    /// Runs `f` once after `delay`.
    pub fn run_after(
        &self,
        delay: Duration,
        f: impl FnMut(&mut EventLoop) + Send + 'static,
    ) -> Result<TimerId, LoopClosed> {
        self.schedule(Instant::now() + delay, None, Box::new(f))
    }

    /// Runs `f` every `interval`, first after one interval, until cancelled.
    pub fn run_every(
        &self,
        interval: Duration,
        f: impl FnMut(&mut EventLoop) + Send + 'static,
    ) -> Result<TimerId, LoopClosed> {
        self.schedule(Instant::now() + interval, Some(interval), Box::new(f))
    }

    fn schedule(
        &self,
        deadline: Instant,
        interval: Option<Duration>,
        callback: Box<dyn FnMut(&mut EventLoop) + Send>,
    ) -> Result<TimerId, LoopClosed> {
        // The id is taken here, in the caller's order, so timers with equal deadlines run
        // in the order their `run_*` calls were made, whichever thread made them.
        let seq = self.shared.next_timer.fetch_add(1, Ordering::Relaxed);
        self.shared.push(Box::new(move |lp: &mut EventLoop| {
            lp.timers
                .insert(seq, deadline, Timer { callback, interval });
        }))?;
        Ok(TimerId(seq))
    }

    /// Cancels a timer. The cancellation is queued like any function, so it takes effect
    /// after every function queued before it, in particular after the timer's own
    /// scheduling.
    pub fn cancel(&self, id: TimerId) -> Result<(), LoopClosed> {
        self.shared.push(Box::new(move |lp: &mut EventLoop| {
            lp.cancel(id);
        }))
    }

    /// Asks the loop to quit: [`EventLoop::run`] returns after the current iteration.
    /// Works from any thread, before the loop runs, and more than once.
    pub fn quit(&self) {
        self.shared.quit.store(true, Ordering::SeqCst);
        if !self.shared.is_in_loop_thread() {
            self.shared.wake();
        }
    }

    /// Whether the caller runs on the loop's thread (a thread-local integer compare).
    pub fn is_in_loop_thread(&self) -> bool {
        self.shared.is_in_loop_thread()
    }

    /// Panics unless called on the loop's thread: a guard for functions that must run
    /// there.
    #[track_caller]
    pub fn assert_in_loop_thread(&self) {
        assert!(
            self.is_in_loop_thread(),
            "called off the loop thread (loop thread {}, caller {})",
            self.shared.thread_id,
            current_thread_id()
        );
    }

    /// Whether the loop has been dropped.
    pub fn is_closed(&self) -> bool {
        self.shared.queue.lock().is_none()
    }

    /// The loop's counters.
    pub fn metrics(&self) -> LoopMetrics {
        self.shared.metrics()
    }

    /// Whether two handles refer to the same loop.
    pub fn same_loop(&self, other: &LoopHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl fmt::Debug for LoopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopHandle")
            .field("thread", &self.shared.thread_id)
            .field("closed", &self.is_closed())
            .finish()
    }
}
