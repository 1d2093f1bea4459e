//! [`LoopHandle`]: the `Send + Sync` side of a loop, usable from any thread.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use duo_sys::EventFd;
use parking_lot::Mutex;

use crate::error::LoopClosed;
use crate::health::{HealthCounters, LatencyHistogram, EVENT_BUCKETS};
use crate::thread_id::current_thread_id;
use crate::timer_queue::{Timer, TimerId};
use crate::EventLoop;
use std::ops::ControlFlow;

/// A function queued to run on a loop through its shared queue (from any thread, so `Send`).
pub(crate) type SendTask = Queued<dyn FnOnce(&mut EventLoop) + Send>;

/// A queued function with the name of its type (the closure's path in the source, for the
/// stall report).
pub(crate) struct Queued<F: ?Sized> {
    pub(crate) name: &'static str,
    pub(crate) f: Box<F>,
}

impl Queued<dyn FnOnce(&mut EventLoop) + Send> {
    pub(crate) fn new(f: impl FnOnce(&mut EventLoop) + Send + 'static) -> Self {
        Queued {
            name: std::any::type_name_of_val(&f),
            f: Box::new(f),
        }
    }

    /// A function run in slices ([`LoopHandle::queue_in_slices`]): one slice per run; a
    /// slice that asks for more puts the rest back at the front of the loop's queue.
    pub(crate) fn sliced<F>(mut f: F) -> Self
    where
        F: FnMut(&mut EventLoop) -> ControlFlow<()> + Send + 'static,
    {
        Queued {
            name: std::any::type_name::<F>(),
            f: Box::new(move |lp: &mut EventLoop| {
                if f(lp).is_continue() {
                    lp.continue_first(Queued::sliced(f));
                }
            }),
        }
    }
}

/// Every loop of the process (weakly: a dropped loop's entry is pruned).
static LOOPS: Mutex<Vec<Weak<LoopShared>>> = Mutex::new(Vec::new());

/// Makes a new loop's shared part with `make`, given a name unique among the live loops
/// of the process (`name`, or `name#<thread id>` if a live loop has it already: two
/// servers with the same name, say; `name#g<n>` for a loop of a group, which has no thread
/// of its own), and records it in the process's list.
pub(crate) fn register(
    name: String,
    thread_id: u64,
    make: impl FnOnce(String) -> Arc<LoopShared>,
) -> Arc<LoopShared> {
    let mut loops = LOOPS.lock();
    loops.retain(|w| w.upgrade().is_some_and(|s| s.queue.lock().is_some()));
    let taken = loops
        .iter()
        .filter_map(Weak::upgrade)
        .any(|s| s.name == name);
    let name = if taken && thread_id != 0 {
        format!("{name}#{thread_id}")
    } else if taken {
        // A loop of a `LoopGroup` has no thread of its own to tell it apart.
        static DETACHED: AtomicU64 = AtomicU64::new(1);
        format!("{name}#g{}", DETACHED.fetch_add(1, Ordering::Relaxed))
    } else {
        name
    };
    let shared = make(name);
    loops.push(Arc::downgrade(&shared));
    shared
}

/// Handles of every loop of this process that has not been dropped, oldest first: what
/// a metrics endpoint or a debugging page walks to show every loop's
/// [`LoopMetrics`].
///
/// ```
/// use duo_reactor::EventLoop;
///
/// let lp = EventLoop::new()?;
/// assert!(duo_reactor::loops().iter().any(|h| h.same_loop(&lp.handle())));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn loops() -> Vec<LoopHandle> {
    LOOPS
        .lock()
        .iter()
        .filter_map(Weak::upgrade)
        .map(|shared| LoopHandle { shared })
        .filter(|h| !h.is_closed())
        .collect()
}

/// The part of a loop its handles share (`Arc`): what any thread may touch.
pub(crate) struct LoopShared {
    /// The id ([`current_thread_id`]) of the thread the loop runs on: the thread that made
    /// it, for its whole life, or for a loop of a [`LoopGroup`](crate::LoopGroup) the
    /// thread running its turn now (0 between turns).
    pub(crate) thread_id: AtomicU64,
    /// Queued functions; `None` once the loop is dropped.
    pub(crate) queue: Mutex<Option<Vec<SendTask>>>,
    /// Set (with `queue` taken) once the loop is dropped: what [`LoopHandle::is_closed`]
    /// reads, one atomic load (an acceptor asks it for each connection it places).
    pub(crate) closed: AtomicBool,
    /// Set when the waker has been written and the loop has not yet drained it, so that
    /// many wake-ups before the loop runs cost one `write`.
    pub(crate) notified: AtomicBool,
    /// Set while the loop runs queued functions: a function queued then (even from the
    /// loop thread) lands in the next batch and needs a wake-up.
    pub(crate) draining: AtomicBool,
    /// Set while [`EventLoop::run`] runs, or a group's turn: a `run` called from one of
    /// the loop's own callbacks is refused. (Written and read on the loop's thread only;
    /// here rather than in the loop so that the end of a `run` a panic unwinds clears it.)
    pub(crate) in_run: AtomicBool,
    /// Quit requested: `run` returns at the end of this iteration.
    pub(crate) quit: AtomicBool,
    /// How many quits were asked (written under `queue`'s lock): a quit asked after a
    /// returning `run` last looked is not cleared with the one that ended it.
    pub(crate) quit_requests: AtomicU64,
    /// How many functions at the head of `queue` were queued before the last quit and
    /// not taken since (written under `queue`'s lock): the loop runs them before `run`
    /// returns, though the pass under way took its queue before they came.
    pub(crate) quit_backlog: AtomicUsize,
    /// How many of the functions the loop queued for itself ([`EventLoop::queue_in_loop`],
    /// not taken yet) were queued before a quit asked from the loop thread: they too run
    /// before `run` returns; `usize::MAX` (a quit through a handle on the loop thread,
    /// which cannot count them): all it holds. (Loop thread only; reset when the loop
    /// takes them.)
    pub(crate) quit_local: AtomicUsize,
    /// The eventfd that wakes the loop out of `epoll_wait`.
    pub(crate) waker: EventFd,
    /// The sequence number of the next timer, unique for the loop's life.
    pub(crate) next_timer: AtomicU64,
    /// Timers scheduled through handles whose queued insertion has not run yet, so that
    /// [`EventLoop::cancel`] reaches them too: it takes them out of here, and the
    /// insertion then does nothing.
    pub(crate) pending_timers: Mutex<HashSet<u64>>,
    /// The counters behind [`LoopMetrics`].
    pub(crate) metrics: MetricCounters,
    /// The loop's name: its thread's name, else `loop-<thread id>`; in a group,
    /// `{group}-{i}`.
    pub(crate) name: String,
}

/// The loop's counters, written only by the loop thread and read by any.
#[derive(Default)]
pub(crate) struct MetricCounters {
    pub(crate) iterations: AtomicU64,
    pub(crate) io_events: AtomicU64,
    pub(crate) tasks_run: AtomicU64,
    pub(crate) timers_fired: AtomicU64,
    pub(crate) helped_turns: AtomicU64,
    /// Functions taken off the queue and not run yet: set when the loop takes them (under
    /// the queue's lock), counted down when a pass ends with what it left for the next
    /// iterations (see [`EventLoop::TASK_BATCH`](crate::EventLoop::TASK_BATCH)).
    pub(crate) tasks_taken: AtomicU64,
    pub(crate) health: HealthCounters,
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

/// Counters of one loop, read with [`LoopHandle::metrics`] or [`EventLoop::metrics`]: a
/// snapshot of counters the loop thread keeps without locks (each value is exact; values
/// read together may be a few events apart).
///
/// Times are wall-clock time on the loop thread, split by what the thread was doing:
/// waiting in `epoll_wait` (`poll_time`), running I/O handlers (`io_time`), timer
/// callbacks (`timer_time`) and queued functions (`task_time`); the rest (the loop's own
/// bookkeeping) is small. See [`crate::health`] for the detectors.
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
    /// Iterations that found nothing to do: no I/O event, no timer due, no queued
    /// function (a wake-up for a function already run, a timer already cancelled).
    pub empty_wakeups: u64,
    /// Iterations by the number of I/O events they dispatched, in the buckets of
    /// [`EVENT_BUCKET_BOUNDS`](crate::health::EVENT_BUCKET_BOUNDS) (not cumulative).
    pub events_per_iteration: [u64; EVENT_BUCKETS],
    /// Time spent waiting in `epoll_wait`.
    pub poll_time: Duration,
    /// Time spent in I/O handlers.
    pub io_time: Duration,
    /// Time spent in timer callbacks.
    pub timer_time: Duration,
    /// Time spent in queued functions.
    pub task_time: Duration,
    /// How late timers fired (from their deadline to the start of their callback): the
    /// loop's lag.
    pub timer_lateness: LatencyHistogram,
    /// Functions queued through handles and not yet run, when the snapshot was taken
    /// (those the loop has taken off the queue included: the batch it is running, and
    /// what it left for its next iterations). Taken functions are counted down when
    /// their pass ends, so while a pass runs the figure may still include those it
    /// already ran: at most [`EventLoop::TASK_BATCH`](crate::EventLoop::TASK_BATCH) more
    /// than are waiting.
    pub tasks_queued: u64,
    /// The most queued functions one iteration found waiting (at most
    /// [`EventLoop::TASK_BATCH`] of those from handles run in that iteration).
    pub largest_task_batch: u64,
    /// The longest single callback (I/O handler, timer or queued function) so far.
    pub longest_callback: Duration,
    /// Stalls: callbacks that ran longer than the stall threshold.
    pub stalls: u64,
    /// Spins: a channel dispatched the spin threshold times in a row without progress, or
    /// as many empty wake-ups in a row (see [`HealthConfig::spin_threshold`](crate::HealthConfig)).
    pub spins: u64,
    /// How long the loop has been busy since it last finished a callback or returned
    /// from `epoll_wait`, when the snapshot was taken; `None` while it waits for events.
    /// A loop stuck in one callback shows it growing (a health check's figure).
    pub busy_for: Option<Duration>,
    /// Turns run by a thread other than the loop's owner, because the owner had made no
    /// progress for a while (a loop of a [`LoopGroup`](crate::LoopGroup) with
    /// [`LoopSharing::Owned`](crate::LoopSharing::Owned); 0 for any other loop). Their
    /// rate is how often the loop's thread was off its core or stuck with work waiting.
    pub helped_turns: u64,
}

impl LoopShared {
    /// Closes the queue (the loop is being dropped): from now on handles get
    /// [`LoopClosed`]. Returns the functions still queued.
    ///
    /// The timer insertions among them (and among those the loop took but did not run)
    /// never run, so their ids leave `pending_timers` now rather than stay there as long
    /// as a handle lives; a `schedule` racing with this takes its own id back when its
    /// push is refused.
    pub(crate) fn close(&self) -> Option<Vec<SendTask>> {
        let queued = {
            let mut queue = self.queue.lock();
            self.closed.store(true, Ordering::Release);
            queue.take()
        };
        *self.pending_timers.lock() = HashSet::new();
        queued
    }

    /// Whether the caller runs on the loop thread.
    pub(crate) fn is_in_loop_thread(&self) -> bool {
        current_thread_id() == self.thread_id.load(Ordering::Relaxed)
    }

    /// Queues `task`, waking the loop if it might not otherwise see it this round.
    /// Asks the loop to quit (see [`LoopHandle::quit`]), marking what is queued now as
    /// to run first.
    pub(crate) fn request_quit(&self) {
        // Under the queue's lock, which the loop holds while it reads the flag and takes
        // the queue: either it took these functions already, or they are the backlog.
        let queue = self.queue.lock();
        let queued = queue.as_ref().map_or(0, Vec::len);
        self.quit_backlog.store(queued, Ordering::Relaxed);
        self.quit_requests.fetch_add(1, Ordering::SeqCst);
        self.quit.store(true, Ordering::SeqCst);
    }

    pub(crate) fn push(&self, task: SendTask) -> Result<(), LoopClosed> {
        self.queue.lock().as_mut().ok_or(LoopClosed)?.push(task);
        // The loop takes its queue after dispatching I/O, before it waits again (and wakes
        // itself while a backlog is left), so a function queued on the loop thread needs
        // no wake-up, unless the loop is running the queue right now (the function may
        // then wait for the next round).
        if !self.is_in_loop_thread() || self.draining.load(Ordering::Relaxed) {
            self.wake();
        }
        Ok(())
    }

    /// Writes the waker unless a wake-up is already pending.
    pub(crate) fn wake(&self) {
        if !self.notified.swap(true, Ordering::SeqCst) {
            if let Err(e) = self.waker.notify() {
                crate::log_limited!(log::Level::Error, "cannot wake the event loop: {e}");
            }
        }
    }

    /// A snapshot of the counters.
    pub(crate) fn metrics(&self) -> LoopMetrics {
        let m = &self.metrics;
        let h = &m.health;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let time = |c: &AtomicU64| Duration::from_nanos(c.load(Ordering::Relaxed));
        LoopMetrics {
            iterations: load(&m.iterations),
            io_events: load(&m.io_events),
            tasks_run: load(&m.tasks_run),
            timers_fired: load(&m.timers_fired),
            empty_wakeups: load(&h.empty_wakeups),
            events_per_iteration: h.events_per_iteration.each_ref().map(load),
            poll_time: time(&h.poll_nanos),
            io_time: time(&h.io_nanos),
            timer_time: time(&h.timer_nanos),
            task_time: time(&h.task_nanos),
            timer_lateness: HealthCounters::latency_histogram(
                &h.timer_lateness,
                &h.timer_lateness_nanos,
            ),
            tasks_queued: {
                // Both read under the queue's lock, under which the loop moves functions
                // from one count to the other (`take_queue`).
                let queue = self.queue.lock();
                queue.as_ref().map_or(0, |q| q.len() as u64) + load(&m.tasks_taken)
            },
            largest_task_batch: load(&h.largest_task_batch),
            longest_callback: time(&h.longest_callback_nanos),
            stalls: load(&h.stalls),
            spins: load(&h.spins),
            busy_for: h.busy_for(),
            helped_turns: load(&m.helped_turns),
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
/// were dispatched, at most [`EventLoop::TASK_BATCH`] per iteration (a larger backlog runs
/// over the next iterations, between their I/O). Functions queued while the loop runs
/// that batch run after it, within the same bound, so neither a function that keeps
/// re-queueing itself nor a producer faster than the loop can starve I/O. Long work queued with
/// [`LoopHandle::queue_in_slices`] runs a slice per iteration and holds the functions
/// queued after it until it is done.
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
    /// without a wake-up, and the loop runs it after the current batch of events and what
    /// was queued before it, without sleeping in between. (There is no muduo-style `run_in_loop`: code that holds
    /// `&mut EventLoop` runs in the loop already and simply calls `f(lp)`.)
    pub fn queue_in_loop(
        &self,
        f: impl FnOnce(&mut EventLoop) + Send + 'static,
    ) -> Result<(), LoopClosed> {
        self.shared.push(Queued::new(f))
    }

    /// Queues `f` to run on the loop in slices: for work on many items (every connection
    /// of the loop, say) that should not hold the loop in one long callback. The loop
    /// calls `f` once per iteration while it returns [`ControlFlow::Continue`], serving its
    /// I/O and timers between the calls, until it returns [`ControlFlow::Break`]. The
    /// functions queued through handles after `f` wait until `f` is done, so among them
    /// FIFO order holds as if `f` ran in one go (not with the loop's own work between
    /// slices: I/O callbacks, timers, and functions queued with
    /// [`EventLoop::queue_in_loop`] run there). `f` decides how much one slice does (a
    /// slice counts as one queued function against [`EventLoop::TASK_BATCH`]); everything
    /// queued through handles waits meanwhile, so a slice should be short and the slices
    /// few. A loop asked to quit runs the remaining slices, one per iteration, before it
    /// returns.
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// use duo_reactor::EventLoopThread;
    ///
    /// let thread = EventLoopThread::spawn("slices", None)?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let mut next = 0;
    /// thread.handle().queue_in_slices(move |lp| {
    ///     let iteration = lp.metrics().iterations;
    ///     for item in next..(next + 100).min(1000) {
    ///         let _ = tx.send((item, iteration));
    ///     }
    ///     next += 100;
    ///     if next < 1000 { ControlFlow::Continue(()) } else { ControlFlow::Break(()) }
    /// })?;
    /// let got: Vec<(u32, u64)> = rx.iter().take(1000).collect();
    /// assert!(got.iter().map(|&(i, _)| i).eq(0..1000));
    /// assert!(got[999].1 > got[0].1, "ten slices, not one callback");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn queue_in_slices(
        &self,
        f: impl FnMut(&mut EventLoop) -> ControlFlow<()> + Send + 'static,
    ) -> Result<(), LoopClosed> {
        self.shared.push(Queued::sliced(f))
    }

    /// Runs `f` once at `deadline` (at once if it has passed).
    pub fn run_at(
        &self,
        deadline: Instant,
        f: impl FnMut(&mut EventLoop) + Send + 'static,
    ) -> Result<TimerId, LoopClosed> {
        let name = std::any::type_name_of_val(&f);
        self.schedule(deadline, None, Box::new(f), name)
    }

    /// Runs `f` once after `delay` (at most [`FOREVER`](crate::FOREVER): a longer one,
    /// `Duration::MAX` say, never comes, and does not overflow the clock).
    pub fn run_after(
        &self,
        delay: Duration,
        f: impl FnMut(&mut EventLoop) + Send + 'static,
    ) -> Result<TimerId, LoopClosed> {
        let name = std::any::type_name_of_val(&f);
        self.schedule(
            crate::deadline_after(Instant::now(), delay),
            None,
            Box::new(f),
            name,
        )
    }

    /// Runs `f` every `interval`, first after one interval, until cancelled.
    ///
    /// A zero interval runs `f` in every iteration of the loop, which then never sleeps
    /// (busy: a full core) until the timer is cancelled.
    pub fn run_every(
        &self,
        interval: Duration,
        f: impl FnMut(&mut EventLoop) + Send + 'static,
    ) -> Result<TimerId, LoopClosed> {
        let name = std::any::type_name_of_val(&f);
        self.schedule(
            crate::deadline_after(Instant::now(), interval),
            Some(interval),
            Box::new(f),
            name,
        )
    }

    fn schedule(
        &self,
        deadline: Instant,
        interval: Option<Duration>,
        callback: Box<dyn FnMut(&mut EventLoop) + Send>,
        name: &'static str,
    ) -> Result<TimerId, LoopClosed> {
        // The id is taken here, in the caller's order, so timers with equal deadlines run
        // in the order their `run_*` calls were made, whichever thread made them.
        let seq = self.shared.next_timer.fetch_add(1, Ordering::Relaxed);
        // Pending until inserted: the id is the caller's now, and the loop's `cancel` of
        // it must hold even before the insertion runs.
        self.shared.pending_timers.lock().insert(seq);
        let pushed = self.shared.push(Queued::new(move |lp: &mut EventLoop| {
            if lp.shared.pending_timers.lock().remove(&seq) {
                let timer = Timer {
                    callback,
                    interval,
                    name,
                };
                lp.timers.insert(seq, deadline, timer);
            }
        }));
        if pushed.is_err() {
            self.shared.pending_timers.lock().remove(&seq);
        }
        pushed.map(|()| TimerId(seq))
    }

    /// Cancels a timer. The cancellation is queued like any function, so it takes effect
    /// after every function queued before it, in particular after the timer's own
    /// scheduling.
    pub fn cancel(&self, id: TimerId) -> Result<(), LoopClosed> {
        self.shared.push(Queued::new(move |lp: &mut EventLoop| {
            lp.cancel(id);
        }))
    }

    /// Asks the loop to quit: [`EventLoop::run`] returns after the current iteration (or,
    /// with a function in slices under way, after the one that runs its last slice).
    /// Works from any thread, before the loop runs, and more than once. Every function
    /// queued before the call runs before `run` returns (also one queued while the
    /// current pass ran, after it had taken its queue); one queued after it may wait for
    /// the next `run`. A quit that comes as `run` returns (after its last look) is kept
    /// for the next `run`, which then returns after one pass: never lost.
    ///
    /// On the loop's own thread (from one of its callbacks) the functions the loop queued
    /// for itself ([`EventLoop::queue_in_loop`]) count as queued before the call too, as
    /// with [`EventLoop::quit`].
    pub fn quit(&self) {
        self.shared.request_quit();
        if self.shared.is_in_loop_thread() {
            // A handle cannot count the loop's own functions (loop-confined): it marks
            // all of them, and the loop takes what it holds (see `quit_local`).
            self.shared.quit_local.store(usize::MAX, Ordering::Relaxed);
        } else {
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
            self.shared.thread_id.load(Ordering::Relaxed),
            current_thread_id()
        );
    }

    /// Whether the loop has been dropped (it ended, or its thread died of a panic): one
    /// atomic load.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// The loop's counters.
    pub fn metrics(&self) -> LoopMetrics {
        self.shared.metrics()
    }

    /// The loop's name: the name of its thread (`EventLoopThread` names its threads after
    /// the server and numbered, say `echo-0`), else `loop-<thread id>`, or for a loop of a
    /// [`LoopGroup`](crate::LoopGroup) the group's name and its number (`echo-12`); if a
    /// live loop of the process already has that name, `#<thread id>` (a group's loop:
    /// `#g<n>`) is appended, so that names are unique. Metrics label loops with it.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether two handles refer to the same loop.
    pub fn same_loop(&self, other: &LoopHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl fmt::Debug for LoopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopHandle")
            .field("thread", &self.shared.thread_id.load(Ordering::Relaxed))
            .field("closed", &self.is_closed())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    //! Review round 12 (odds and ends): what `pending_timers` keeps of a loop that is gone.
    use std::time::Duration;

    use crate::EventLoop;

    /// Timer insertions queued through a handle when the loop is dropped never run: their
    /// ids are not kept for as long as the handle lives; and a handle used again and again
    /// after its loop is gone adds nothing (each refused `run_after` takes its id back).
    #[test]
    fn a_gone_loop_keeps_no_pending_timer_ids() {
        let lp = EventLoop::new().unwrap();
        let handle = lp.handle();
        for _ in 0..1000 {
            handle.run_after(Duration::from_secs(60), |_| {}).unwrap();
        }
        assert_eq!(handle.shared.pending_timers.lock().len(), 1000);
        drop(lp);
        assert_eq!(
            handle.shared.pending_timers.lock().len(),
            0,
            "the ids of insertions dropped with the loop are kept"
        );
        for _ in 0..10_000 {
            assert!(handle.run_after(Duration::from_secs(60), |_| {}).is_err());
            assert!(handle.run_every(Duration::from_secs(1), |_| {}).is_err());
        }
        assert_eq!(handle.shared.pending_timers.lock().len(), 0);
    }
}
