//! [`EventLoop`]: one reactor, driven by one thread at a time.

use std::any::{Any, TypeId};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_sys::{EventFd, Interest, Ready};
use parking_lot::Mutex;

use crate::channel::{Channel, Handler, Token};
use crate::channel_slab::{ChannelEntry, ChannelSlab, Entry, Removal, TakeOutcome};
use crate::error::{InsertError, LoopError};
use crate::health::{CallbackKind, HealthConfig, HealthTracker};
use crate::loop_handle::{self, LoopHandle, LoopShared, MetricCounters, Queued, SendTask};
use crate::poller::Poller;
use crate::thread_id::current_thread_id;
use crate::timer_queue::{Timer, TimerId, TimerQueue};

mod clock;
mod group;
mod locals;
mod queued;
mod settings;
mod unwind;

/// Reserved token (epoll data) of the loop's own wake-up eventfd.
const WAKER_TOKEN: u64 = u64::MAX;
/// Reserved token (epoll data) of the loop's timerfd.
const TIMERFD_TOKEN: u64 = u64::MAX - 1;

/// The threads (`current_thread_id`) whose loop made by [`EventLoop::new`] lives, wherever
/// it has been moved (one loop per thread): a drop on any thread frees its maker.
static LOOP_MAKERS: parking_lot::Mutex<Vec<u64>> = parking_lot::Mutex::new(Vec::new());

/// A function queued on the loop itself (no lock, no wake-up).
type LocalTask = Queued<dyn FnOnce(&mut EventLoop) + Send>;

/// A reactor: waits for readiness on its channels, its timers and its queue of functions,
/// and runs the matching callbacks, on one thread at a time.
///
/// # Threading
///
/// An `EventLoop` made with [`EventLoop::new`] belongs to the thread that created it, which
/// runs it ([`EventLoop::run`]); a thread can have at most one such loop: a second
/// [`EventLoop::new`] on the same thread fails with [`LoopError::AlreadyExists`] until the
/// first is dropped (by whichever thread it was moved to). The loops
/// of a [`LoopGroup`](crate::LoopGroup) instead belong to no thread: any of the group's
/// threads runs a ready loop's next turn, one thread at a time. Either way the loop is
/// driven through `&mut EventLoop` by one thread at a time, so everything it owns
/// (channels, handlers, timers) is touched without a lock, and "the loop's thread"
/// ([`LoopHandle::is_in_loop_thread`]) is the thread running it now. Because a group's loop
/// changes threads between turns, the loop is `Send`, and so must be everything it owns:
/// handlers, timer callbacks, queued functions and loop-local values (`Arc` and a mutex
/// where a test or an application shares state with a callback, not `Rc` and `RefCell`).
/// Other threads reach the loop through a [`LoopHandle`] (`Send + Sync + Clone`, from
/// [`EventLoop::handle`]): they queue functions that later run on the loop with
/// `&mut EventLoop`, schedule timers, or quit it.
///
/// # Ordering of callbacks
///
/// One iteration of [`EventLoop::run`]:
/// 1. wait in `epoll_wait` until a channel, the timer `timerfd` or the wake-up `eventfd` is
///    ready (no timeout: timers are on the `timerfd`, so an idle loop uses no CPU);
/// 2. dispatch the ready events in the kernel's order: for each channel its handler's
///    `handle_error`, `handle_close`, `handle_read`, `handle_write`, as the event
///    requires; due timers run in deadline order when the `timerfd` event comes up;
/// 3. run the functions queued before this step began, in FIFO order: first those queued
///    through handles (at most [`EventLoop::TASK_BATCH`], 256: a larger backlog runs over
///    the next iterations, in order, between their I/O), then those queued with
///    [`EventLoop::queue_in_loop`]. Functions queued by these functions run in a later
///    iteration (or, through a handle, later in the same one when it started with a
///    backlog and had room left; never more than the bound).
///
/// A channel removed during step 2 receives no further events, even ones already returned
/// by the same `epoll_wait`: its slot's generation changes, and tokens carry it.
///
/// # Handlers and the loop
///
/// Every callback receives `&mut EventLoop`, so it can register channels, add or cancel
/// timers, queue functions, or quit. This is safe without `RefCell` or `unsafe` because a
/// channel's handler (or a timer's callback) is *taken out* of the loop while it runs and put
/// back afterwards; changes to the running channel's interest are applied then, in one
/// `epoll_ctl`.
///
/// # Timers
///
/// Timers are added with [`EventLoop::run_at`], [`run_after`](EventLoop::run_after) and
/// [`run_every`](EventLoop::run_every) on the loop thread, or the same methods of
/// [`LoopHandle`] from any thread, and cancelled with [`cancel`](EventLoop::cancel). They
/// live in a `BTreeMap` ordered by `(deadline, sequence)`, with one `timerfd` armed at the
/// earliest deadline, so the loop waits for timers and I/O in the same `epoll_wait`.
///
/// - A timer never runs before its deadline; it runs in the first loop iteration after the
///   `timerfd` reports the deadline passed, unless more than 128 timers are due at once:
///   an iteration runs at most 128, and the rest follow in the next iterations (in order,
///   after each iteration's I/O), so a burst of timeouts set together cannot stall the
///   loop.
/// - Timers run in deadline order; timers with the same deadline run in the order they
///   were scheduled.
/// - Cancelling is exact and O(log n); cancelling from inside any timer's callback works,
///   including a repeating timer cancelling itself.
/// - A timer scheduled by a timer callback for a deadline that has already passed runs in
///   the next iteration, not in the same batch, so timers cannot starve I/O.
/// - A repeating timer is rescheduled at `previous deadline + interval`, so it does not
///   drift; if the loop fell so far behind that this is already past, missed periods are
///   skipped (the next run is `now + interval`, now being when its callback returned)
///   instead of firing in a burst or back to back.
///
/// ```
/// use duo_reactor::EventLoop;
/// use std::time::{Duration, Instant};
///
/// let mut lp = EventLoop::new()?;
/// let mut fired = Vec::new();
/// let log = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
/// let (a, b) = (log.clone(), log.clone());
/// // Deadlines from one instant: their order does not depend on how fast we schedule.
/// let t0 = Instant::now();
/// lp.run_at(t0 + Duration::from_millis(2), move |_| a.lock().push("second"));
/// lp.run_at(t0 + Duration::from_millis(1), move |_| b.lock().push("first"));
/// let doomed = lp.run_after(Duration::from_millis(1), |_| unreachable!());
/// assert!(lp.cancel(doomed));
/// lp.run_at(t0 + Duration::from_millis(3), |lp| lp.quit());
/// lp.run()?;
/// fired.extend(log.lock().iter().copied());
/// assert_eq!(fired, ["first", "second"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Dropping
///
/// Dropping the loop drops every channel (closing its descriptor), every handler, timer and
/// queued function. Handles outlive it safely: queuing through them then returns
/// [`LoopClosed`](crate::LoopClosed).
///
/// # Example
///
/// ```
/// use duo_reactor::EventLoop;
/// use std::time::Duration;
///
/// let mut lp = EventLoop::new()?;
/// let handle = lp.handle();
/// let worker = std::thread::spawn(move || {
///     // From another thread: run a function on the loop, then stop it.
///     handle.queue_in_loop(|lp| println!("on the loop, {} timers", lp.timer_count())).unwrap();
///     handle.run_after(Duration::from_millis(5), |lp| lp.quit()).unwrap();
/// });
/// lp.run()?;
/// worker.join().unwrap();
/// assert_eq!(lp.metrics().tasks_run, 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct EventLoop {
    /// What handles share with the loop: its queue, flags, waker, counters.
    pub(crate) shared: Arc<LoopShared>,
    /// The epoll instance and its event buffer.
    poller: Poller,
    /// Every channel of the loop, with its handler.
    channels: ChannelSlab,
    /// Every timer of the loop, on one timerfd.
    pub(crate) timers: TimerQueue,
    /// Functions queued with [`EventLoop::queue_in_loop`], run after this iteration's events.
    local_tasks: Vec<LocalTask>,
    /// Loop-local values by type (`None` while taken out by `with_local`).
    locals: HashMap<TypeId, Option<Box<dyn Any + Send>>>,
    /// Functions taken from the shared queue and not run yet (see `event_loop/queued.rs`;
    /// its buffer and the queue's are swapped back and forth, neither allocates).
    running: VecDeque<SendTask>,
    /// The function just run was a slice, and put its rest back at the front of `running`.
    sliced_more: bool,
    /// The queue was taken once since quit was asked: a quitting loop takes it no more.
    took_quitting: bool,
    /// Reusable buffer `local_tasks` is swapped into while they run.
    running_local: Vec<LocalTask>,
    /// The loop's own functions queued after a quit, set aside while a quitting loop runs
    /// those queued before it (`run_quit_backlog`; a panic there puts them back).
    after_quit: Vec<LocalTask>,
    /// When the current iteration's poll returned, on the [`duo_sys::monotonic_nanos`]
    /// clock (read once per iteration, by the health tracker).
    poll_nanos: u64,
    /// The current iteration's number (see [`EventLoop::iteration`]).
    iteration: u64,
    /// I/O events dispatched in this iteration; with the next two, loop-confined counters
    /// published to `shared.metrics` once per iteration.
    iteration_events: u64,
    /// Queued functions run in this iteration.
    iteration_tasks: u64,
    /// Timer callbacks run in this iteration.
    iteration_timers: u64,
    /// Time split, longest callback, stall and spin detectors (see [`crate::health`]).
    health: HealthTracker,
    /// How long to poll without blocking before sleeping ([`EventLoop::set_busy_poll`]),
    /// in nanoseconds; 0 = never.
    busy_poll_nanos: u64,
    /// The last poll returned events (busy polling follows only such iterations).
    had_events: bool,
    /// The thread that made the loop with [`EventLoop::new`] (it counts as that thread's
    /// one loop until dropped there); `None` for a loop of a group.
    owner_thread: Option<u64>,
}

impl EventLoop {
    /// Creates the loop of the calling thread.
    ///
    /// Fails with [`LoopError::AlreadyExists`] if this thread already has one.
    pub fn new() -> Result<EventLoop, LoopError> {
        let thread_id = current_thread_id();
        if LOOP_MAKERS.lock().contains(&thread_id) {
            return Err(LoopError::AlreadyExists);
        }
        let name = std::thread::current()
            .name()
            .map_or_else(|| format!("loop-{thread_id}"), str::to_owned);
        let mut lp = EventLoop::build(name, thread_id)?;
        lp.owner_thread = Some(thread_id);
        LOOP_MAKERS.lock().push(thread_id);
        log::debug!("event loop created on thread {thread_id}");
        Ok(lp)
    }

    fn build(name: String, thread_id: u64) -> Result<EventLoop, LoopError> {
        let poller = Poller::new()?;
        let timers = TimerQueue::new()?;
        let waker = EventFd::new()?;
        poller.add(waker.as_fd(), Interest::READABLE, WAKER_TOKEN)?;
        poller.add(timers.timerfd.as_fd(), Interest::READABLE, TIMERFD_TOKEN)?;
        let shared = loop_handle::register(name, thread_id, |name| {
            Arc::new(LoopShared {
                thread_id: AtomicU64::new(thread_id),
                queue: Mutex::new(Some(Vec::new())),
                closed: AtomicBool::new(false),
                notified: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                in_run: AtomicBool::new(false),
                quit: AtomicBool::new(false),
                quit_requests: AtomicU64::new(0),
                quit_backlog: AtomicUsize::new(0),
                quit_local: AtomicUsize::new(0),
                waker,
                next_timer: AtomicU64::new(0),
                pending_timers: Mutex::default(),
                metrics: MetricCounters::default(),
                name,
            })
        });
        Ok(EventLoop {
            shared,
            poller,
            channels: ChannelSlab::default(),
            timers,
            local_tasks: Vec::new(),
            locals: HashMap::new(),
            running: VecDeque::new(),
            sliced_more: false,
            took_quitting: false,
            running_local: Vec::new(),
            after_quit: Vec::new(),
            poll_nanos: duo_sys::monotonic_nanos(),
            iteration: 0,
            iteration_events: 0,
            iteration_tasks: 0,
            iteration_timers: 0,
            health: HealthTracker::new(HealthConfig::process_default()),
            busy_poll_nanos: 0,
            had_events: false,
            owner_thread: None,
        })
    }

    /// A handle for other threads (and for storing in `Send` callbacks).
    pub fn handle(&self) -> LoopHandle {
        LoopHandle {
            shared: self.shared.clone(),
        }
    }

    /// Runs the loop until [`EventLoop::quit`] or [`LoopHandle::quit`].
    ///
    /// If quit was requested before `run` (say, from another thread racing the start),
    /// `run` returns after one pass over already-queued functions. A quitting loop takes
    /// its queue once more at most, and first runs what it has taken, the rest of a
    /// function in slices ([`LoopHandle::queue_in_slices`]) a slice per iteration; what
    /// is queued later waits for the next `run`. After `run` returns the quit request is
    /// cleared, so `run` can be called again; but a quit asked (from another thread) as
    /// `run` returns, after its last look at the request, is not lost: it is kept for the
    /// next `run`, which then returns after one pass over what is queued (so the functions
    /// queued before that quit still run before a `run` returns).
    ///
    /// Returns an error only if `epoll_wait` itself fails, which means the loop cannot go
    /// on. A panic in a callback propagates out of `run`; the channel, timer or function
    /// that panicked is dropped (a channel's descriptor is closed, a repeating timer
    /// cancelled) and the rest of the loop stays usable: the other timers stay armed, the
    /// events of the same poll batch not dispatched yet come again at the next `run`
    /// (edge-triggered ones too), and the functions queued after the panicking one run
    /// first at the next `run` (which a quit asked before the panic does not end: the
    /// panic ended the run it asked to end). Libraries on top (`duo-net`) catch panics of
    /// user callbacks themselves so that one bad connection never unwinds the loop.
    ///
    /// Called from one of the loop's own callbacks (which the loop is running already),
    /// `run` returns an error of kind [`ResourceBusy`](io::ErrorKind::ResourceBusy) at
    /// once, and the loop goes on with the callback's iteration.
    pub fn run(&mut self) -> io::Result<()> {
        if self.shared.in_run.swap(true, Ordering::Relaxed) {
            return Err(already_running());
        }
        // Clears `in_run` however `run` ends, and leaves the loop not busy (`/healthz`)
        // when a panic out of a callback ends it.
        let _end = crate::health::EndOfRun(self.shared.clone());
        log::trace!("event loop {} running", self.shared.name);
        // The loop is `Send`: whoever runs it is its thread from now on.
        self.shared
            .thread_id
            .store(current_thread_id(), Ordering::SeqCst);
        // A panic out of an earlier `run` may have left these set.
        self.shared.draining.store(false, Ordering::SeqCst);
        self.took_quitting = false;
        // The functions queued on this thread before `run` (they did not wake us) run now.
        self.iteration = self.iteration.wrapping_add(1);
        self.run_queued_between_polls();
        let result = loop {
            // Not before what it took off its queue has run (slices one per iteration),
            // nor what was queued before the quit (`run_quit_backlog`).
            if self.shared.quit.load(Ordering::SeqCst) && self.running.is_empty() {
                // The quits asked so far end this run; one asked after this look (as
                // `run` returns) is kept for the next `run` (`end_run`).
                let seen = self.shared.quit_requests.load(Ordering::SeqCst);
                if !self.run_quit_backlog() {
                    break Ok(seen);
                }
                // Look again (a function in slices may have been left) without a poll,
                // which nothing may wake.
                continue;
            }
            if let Err(e) = self.run_once(true) {
                break Err(e);
            }
        };
        self.end_run(result.as_ref().ok().copied());
        self.health.idle(&self.shared.metrics.health);
        log::trace!("event loop {} stopped", self.shared.name);
        result.map(|_| ())
    }

    /// One iteration: wait (unless `block` is false), dispatch, run queued functions.
    fn run_once(&mut self, block: bool) -> io::Result<()> {
        let timeout = if block && self.local_tasks.is_empty() {
            None
        } else {
            Some(Duration::ZERO)
        };
        // Busy polling (off unless set): after an iteration that found work, look again
        // without blocking for a while before going to sleep, so that a loop under load
        // is not put to sleep and woken (and, on a crowded machine, made to wait for a
        // core) between two bursts that arrive microseconds apart.
        let n = if timeout.is_none() && self.busy_poll_nanos > 0 && self.had_events {
            self.poller.poll_spinning(self.busy_poll_nanos)?
        } else {
            self.poller.poll(timeout)?
        };
        self.had_events = n > 0;
        self.poll_nanos = self.health.polled(&self.shared.metrics.health);
        self.iteration = self.iteration.wrapping_add(1);
        MetricCounters::add(&self.shared.metrics.iterations, 1);
        for i in 0..n {
            let Some((data, ready)) = self.poller.event(i) else {
                break;
            };
            match data {
                WAKER_TOKEN => {
                    // Drain first, then clear the flag: a producer that sees the flag
                    // still set has queued its function before our swap below.
                    let _ = self.shared.waker.drain();
                    self.shared.notified.store(false, Ordering::SeqCst);
                    self.health.restart_clock();
                }
                TIMERFD_TOKEN => self.run_timers(),
                token => self.dispatch(Token(token), ready),
            }
        }
        self.run_queued();
        let io_events = self.iteration_events;
        self.publish_metrics();
        self.health
            .iteration_done(io_events, &self.shared.name, &self.shared.metrics.health);
        Ok(())
    }

    fn publish_metrics(&mut self) {
        let m = &self.shared.metrics;
        MetricCounters::add(&m.io_events, std::mem::take(&mut self.iteration_events));
        MetricCounters::add(&m.tasks_run, std::mem::take(&mut self.iteration_tasks));
        MetricCounters::add(&m.timers_fired, std::mem::take(&mut self.iteration_timers));
    }

    /// Calls the handler of `token` for `ready`, in the order error, close, read, write.
    fn dispatch(&mut self, token: Token, ready: Ready) {
        let TakeOutcome::Taken(mut entry) = self.channels.take_out(token) else {
            return; // removed earlier in the batch (or since reused): not dispatched
        };
        self.iteration_events += 1;
        type Step = fn(&mut dyn Handler, &mut EventLoop, &mut Channel);
        let steps: [(bool, Step); 4] = [
            (ready.is_error(), |h, lp, ch| h.handle_error(lp, ch)),
            (ready.is_hup() && !ready.is_readable(), |h, lp, ch| {
                h.handle_close(lp, ch)
            }),
            (ready.is_readable() || ready.is_read_hup(), |h, lp, ch| {
                h.handle_read(lp, ch)
            }),
            (ready.is_writable(), |h, lp, ch| h.handle_write(lp, ch)),
        ];
        entry.channel.ready = ready;
        let before = self
            .health
            .probe_due(&entry.channel.watch, ready.bits())
            .then(|| crate::health::probe(entry.channel.fd.as_fd()));
        let ran = catch_unwind(AssertUnwindSafe(|| {
            for (wanted, step) in steps {
                if !wanted {
                    continue;
                }
                if entry.channel.is_removed() || self.channels.removal_pending(token) {
                    break;
                }
                let entry = &mut *entry;
                step(&mut entry.handler, self, &mut entry.channel);
            }
        }));
        if let Err(panic) = ran {
            let what =
                || format!("a handler that panicked, channel {token:?}, readiness {ready:?}");
            self.panicked_callback_done(CallbackKind::Io, &what);
            self.drop_panicked(token, entry);
            self.rearm_rest_of_batch(token.0);
            resume_unwind(panic);
        }
        entry.channel.ready = Ready::from_bits(0);
        let describe = || {
            // User code, asked only for a report: a panic in it is the report's, not the
            // loop's (the handler returned normally, and its channel stays). Caught
            // through `catch_panic`, so that a panic hook knows it is caught.
            let label = crate::panic_scope::catch_panic(AssertUnwindSafe(|| entry.handler.label()))
                .unwrap_or_else(|_| Some("a handler whose label() panicked".to_owned()));
            let label = label.as_deref().unwrap_or("a handler without label");
            format!("{label}, channel {token:?}, readiness {ready:?}")
        };
        self.health.callback_done(
            CallbackKind::Io,
            &describe,
            &self.shared.name,
            &self.shared.metrics.health,
        );
        // Progress: the handler said so, or changed the interest, or the channel goes.
        let reported = std::mem::take(&mut entry.channel.progress);
        let changed = entry.channel.interest() != entry.channel.registered
            || entry.channel.is_removed()
            || self.channels.removal_pending(token);
        self.health.watch(
            &mut entry.channel.watch,
            ready.bits(),
            reported,
            changed,
            before,
            entry.channel.fd.as_fd(),
            &describe,
            &self.shared.name,
            &self.shared.metrics.health,
        );
        self.put_back(token, entry);
    }

    /// Returns a taken-out entry to its slot, applying interest changes or removal.
    fn put_back(&mut self, token: Token, mut entry: Entry) {
        if entry.channel.is_removed() || self.channels.removal_pending(token) {
            self.channels.free(token);
            self.deregister(&entry);
            return;
        }
        let want = entry.channel.interest();
        if want != entry.channel.registered {
            match self.poller.modify(entry.channel.fd(), want, token.0) {
                Ok(()) => entry.channel.registered = want,
                Err(e) => crate::log_limited!(
                    log::Level::Error,
                    "cannot change interest of {token:?} to {want:?}: {e}"
                ),
            }
        }
        self.channels.fill(token, entry);
    }

    fn deregister(&self, entry: &ChannelEntry) {
        if entry.channel.sole {
            return; // closing the descriptor, next, removes it from epoll
        }
        if let Err(e) = self.poller.delete(entry.channel.fd()) {
            crate::log_limited!(
                log::Level::Warn,
                "removing {:?}: {e}",
                entry.channel.token()
            );
        }
    }

    /// Runs due timers (the timerfd fired).
    fn run_timers(&mut self) {
        self.timers.fired();
        let now = Instant::now();
        let mut expired = self.timers.take_expired(now);
        for &key in &expired {
            let Some(mut timer) = self.timers.take(key) else {
                continue; // cancelled by an earlier callback of this batch
            };
            self.health.restart_clock();
            self.health
                .timer_fired(key.0, Instant::now(), &self.shared.metrics.health);
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (timer.callback)(self))) {
                // The panicking timer is dropped (a repeating one cancelled); the others
                // stay pending, and the timerfd is armed again for them.
                let name = timer.name;
                self.panicked_callback_done(CallbackKind::Timer, &|| format!("timer {name}"));
                self.timers.cancel(key.1);
                drop(timer);
                expired.clear();
                self.timers.put_expired_buffer(expired);
                self.timers.rearm();
                self.rearm_rest_of_batch(TIMERFD_TOKEN);
                resume_unwind(panic);
            }
            let name = timer.name;
            self.health.callback_done(
                CallbackKind::Timer,
                &|| format!("timer {name}"),
                &self.shared.name,
                &self.shared.metrics.health,
            );
            self.iteration_timers += 1;
            self.timers.reschedule(key, timer);
        }
        expired.clear();
        self.timers.put_expired_buffer(expired);
        self.timers.rearm();
    }

    /// Asks the loop to stop: [`EventLoop::run`] returns at the end of this iteration (or,
    /// with a function in slices under way, of the one that runs its last slice), once
    /// the functions queued before the call have run ([`LoopHandle::quit`]).
    pub fn quit(&self) {
        self.shared.request_quit();
        // Those this loop queued for itself and has not taken yet (from a queued
        // function: they would wait for a pass that a quitting loop does not make).
        let local = self.local_tasks.len();
        self.shared.quit_local.store(local, Ordering::Relaxed);
    }

    /// Registers `fd` with `interest` (readable, writable, edge or level) and `handler`;
    /// returns the channel's token.
    ///
    /// The loop owns `fd` from now on and closes it when the channel is removed. On
    /// failure the descriptor and handler are handed back in the error.
    pub fn add_channel(
        &mut self,
        fd: impl Into<OwnedFd>,
        interest: Interest,
        handler: impl Handler,
    ) -> Result<Token, InsertError> {
        let fd = fd.into();
        let Some(token) = self.channels.reserve() else {
            return Err(InsertError {
                error: io::Error::new(io::ErrorKind::OutOfMemory, "too many channels on one loop"),
                fd,
                handler: Box::new(handler),
            });
        };
        if let Err(error) = self.poller.add(fd.as_fd(), interest, token.0) {
            self.channels.free(token);
            return Err(InsertError {
                error,
                fd,
                handler: Box::new(handler),
            });
        }
        let channel = Channel::new(fd, token, interest);
        // One allocation for the channel and its handler together.
        self.channels
            .fill(token, Box::new(ChannelEntry { channel, handler }));
        Ok(token)
    }

    /// Removes a channel: deregisters it, closes its descriptor and drops its handler.
    ///
    /// Safe from inside any handler, including the channel's own: if the channel is in
    /// the middle of dispatch, removal takes effect when its handler returns, and no
    /// further event reaches it. Returns false if there is no such channel.
    pub fn remove_channel(&mut self, token: Token) -> bool {
        match self.channels.remove(token) {
            Removal::Now(entry) => {
                self.deregister(&entry);
                true
            }
            Removal::Deferred => true,
            Removal::Gone => false,
        }
    }

    /// Gives `f` the channel and handler of `token` (for instance to enable writing after a
    /// function queued from another thread appended output). Interest changes and removal
    /// made by `f` are applied when it returns.
    ///
    /// Returns `None` if there is no such channel, or if it is the channel whose handler is
    /// running further up the stack (whose state that handler already holds).
    pub fn with_channel<R>(
        &mut self,
        token: Token,
        f: impl FnOnce(&mut EventLoop, &mut Channel, &mut dyn Handler) -> R,
    ) -> Option<R> {
        let TakeOutcome::Taken(mut entry) = self.channels.take_out(token) else {
            return None;
        };
        let e = &mut *entry;
        let r = match catch_unwind(AssertUnwindSafe(|| f(self, &mut e.channel, &mut e.handler))) {
            Ok(r) => r,
            Err(panic) => {
                self.drop_panicked(token, entry);
                resume_unwind(panic);
            }
        };
        self.put_back(token, entry);
        Some(r)
    }

    /// Like [`EventLoop::with_channel`] for a handler of a known type `H`; `None` also if
    /// the handler is of another type.
    pub fn with_handler<H: Handler, R>(
        &mut self,
        token: Token,
        f: impl FnOnce(&mut EventLoop, &mut Channel, &mut H) -> R,
    ) -> Option<R> {
        self.with_channel(token, |lp, ch, handler| {
            let any: &mut dyn std::any::Any = handler;
            any.downcast_mut::<H>().map(|h| f(lp, ch, h))
        })
        .flatten()
    }

    /// The tokens of every registered channel, for visiting them one by one with
    /// [`with_channel`](EventLoop::with_channel) or [`with_handler`](EventLoop::with_handler)
    /// (a broadcast to every connection of a loop, say). A snapshot: channels added or
    /// removed while visiting are not reflected, and a removed one is simply not found.
    pub fn channel_tokens(&self) -> Vec<Token> {
        self.channels.tokens().collect()
    }

    /// Number of registered channels.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Queues `f` to run on this loop after the current batch of events: from code running
    /// on the loop, cheaper than [`LoopHandle::queue_in_loop`] (no lock, no wake-up).
    pub fn queue_in_loop(&mut self, f: impl FnOnce(&mut EventLoop) + Send + 'static) {
        self.local_tasks.push(Queued {
            name: std::any::type_name_of_val(&f),
            f: Box::new(f),
        });
    }

    /// Runs `f` once at `deadline` (in the next iteration if it has passed).
    pub fn run_at(
        &mut self,
        deadline: Instant,
        f: impl FnMut(&mut EventLoop) + Send + 'static,
    ) -> TimerId {
        let name = std::any::type_name_of_val(&f);
        self.schedule(deadline, None, Box::new(f), name)
    }

    /// Runs `f` once after `delay` (at most [`FOREVER`](crate::FOREVER): a longer one,
    /// `Duration::MAX` say, never comes, and does not overflow the clock).
    pub fn run_after(
        &mut self,
        delay: Duration,
        f: impl FnMut(&mut EventLoop) + Send + 'static,
    ) -> TimerId {
        let name = std::any::type_name_of_val(&f);
        self.schedule(
            crate::deadline_after(Instant::now(), delay),
            None,
            Box::new(f),
            name,
        )
    }

    /// Runs `f` every `interval` until cancelled, first after one interval.
    ///
    /// A zero interval runs `f` in every iteration of the loop, which then never sleeps
    /// (busy: a full core) until the timer is cancelled.
    pub fn run_every(
        &mut self,
        interval: Duration,
        f: impl FnMut(&mut EventLoop) + Send + 'static,
    ) -> TimerId {
        let name = std::any::type_name_of_val(&f);
        self.schedule(
            crate::deadline_after(Instant::now(), interval),
            Some(interval),
            Box::new(f),
            name,
        )
    }

    fn schedule(
        &mut self,
        deadline: Instant,
        interval: Option<Duration>,
        callback: Box<dyn FnMut(&mut EventLoop) + Send>,
        name: &'static str,
    ) -> TimerId {
        let seq = self.shared.next_timer.fetch_add(1, Ordering::Relaxed);
        let timer = Timer {
            callback,
            interval,
            name,
        };
        self.timers.insert(seq, deadline, timer);
        TimerId(seq)
    }

    /// Cancels a timer; true if it was pending (also one a handle scheduled whose insertion
    /// is still queued). Works from any callback, including the timer's own (a repeating
    /// timer then stops after this run).
    pub fn cancel(&mut self, id: TimerId) -> bool {
        self.timers.cancel(id.0) || self.shared.pending_timers.lock().remove(&id.0)
    }

    /// Number of timers in the loop's wheel: not those a handle scheduled whose insertion
    /// is still queued (they count once the loop has run the queued insertion).
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }
}

/// The error of a [`EventLoop::run`] (or a group's turn) inside the loop's own callback.
fn already_running() -> io::Error {
    io::Error::new(
        io::ErrorKind::ResourceBusy,
        "the event loop is already running (run called from one of its own callbacks)",
    )
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        // Close the queue first: from now on handles get `LoopClosed`.
        let queued = self.shared.close();
        drop(queued);
        for entry in self.channels.drain() {
            self.deregister(&entry);
        }
        // No thread is this loop's any more: a handle's "in the loop thread" check (which
        // lets a caller use the `&mut EventLoop` it has as this loop) fails everywhere.
        self.shared.thread_id.store(0, Ordering::SeqCst);
        if let Some(maker) = self.owner_thread {
            LOOP_MAKERS.lock().retain(|&t| t != maker);
        }
        log::debug!("event loop {} dropped", self.shared.name);
    }
}

impl fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoop")
            .field("thread", &self.shared.thread_id.load(Ordering::Relaxed))
            .field("channels", &self.channels.len())
            .field("timers", &self.timers)
            .field("local_tasks", &self.local_tasks.len())
            .finish()
    }
}
