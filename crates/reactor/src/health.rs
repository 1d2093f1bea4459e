//! Loop health: where each loop's time goes, how busy its iterations are, how late its
//! timers fire, and two detectors that report a loop in trouble: the **stall detector**
//! (one callback ran too long: everything else on the loop waited) and the **spin
//! detector** (the loop keeps waking without getting anything done: a level-triggered
//! readiness nobody consumes, or a storm of empty wake-ups).
//!
//! Everything here is always on and lock-free: the loop thread measures with one clock
//! read per callback (the same reads serve the time split, the longest callback and the
//! stall detector) and publishes into counters only it writes, which any thread reads
//! with [`EventLoop::metrics`](crate::EventLoop::metrics) or
//! [`LoopHandle::metrics`](crate::LoopHandle::metrics).

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_sys::monotonic_nanos;

use crate::loop_handle::LoopShared;

/// Number of buckets of [`LoopMetrics::events_per_iteration`](crate::LoopMetrics).
pub const EVENT_BUCKETS: usize = 8;

/// Inclusive upper bounds of the first `EVENT_BUCKETS - 1` buckets of
/// [`LoopMetrics::events_per_iteration`](crate::LoopMetrics); the last bucket holds
/// iterations with more than 63 I/O events.
pub const EVENT_BUCKET_BOUNDS: [u64; EVENT_BUCKETS - 1] = [0, 1, 3, 7, 15, 31, 63];

/// Number of buckets of a [`LatencyHistogram`].
pub const LATENCY_BUCKETS: usize = 8;

/// Inclusive upper bounds of the first `LATENCY_BUCKETS - 1` buckets of a
/// [`LatencyHistogram`]; the last bucket is unbounded.
pub const LATENCY_BUCKET_BOUNDS: [Duration; LATENCY_BUCKETS - 1] = [
    Duration::from_micros(100),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_millis(5),
    Duration::from_millis(25),
    Duration::from_millis(100),
    Duration::from_secs(1),
];

/// A histogram of durations with the fixed buckets of [`LATENCY_BUCKET_BOUNDS`]: counts
/// per bucket (not cumulative) and the sum of all observations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Observations per bucket: `counts[i]` counts those `≤ LATENCY_BUCKET_BOUNDS[i]` and
    /// above the previous bound; the last bucket, those above one second.
    pub counts: [u64; LATENCY_BUCKETS],
    /// The sum of all observations.
    pub sum: Duration,
}

impl LatencyHistogram {
    /// The number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The bucket of `d` in a [`LatencyHistogram`].
fn latency_bucket(d: Duration) -> usize {
    LATENCY_BUCKET_BOUNDS
        .iter()
        .position(|&bound| d <= bound)
        .unwrap_or(LATENCY_BUCKETS - 1)
}

/// The bucket of `n` events in `events_per_iteration`.
fn event_bucket(n: u64) -> usize {
    // 0 → 0, 1 → 1, 2..=3 → 2, 4..=7 → 3, ... , 64.. → 7
    let b = (u64::BITS - n.leading_zeros()) as usize;
    b.min(EVENT_BUCKETS - 1)
}

/// How a loop watches itself: the stall and spin thresholds.
///
/// Every new loop starts with the process default ([`HealthConfig::process_default`],
/// initially [`HealthConfig::default`]); change one loop with
/// [`EventLoop::set_health_config`](crate::EventLoop::set_health_config), or every loop
/// created afterwards with [`HealthConfig::set_process_default`] (servers create their
/// I/O loops themselves, so that is the way to configure them).
///
/// ```
/// use duo_reactor::{EventLoop, HealthConfig};
/// use std::time::Duration;
///
/// let mut lp = EventLoop::new()?;
/// lp.set_health_config(HealthConfig {
///     stall_threshold: Some(Duration::from_millis(100)),
///     spin_threshold: None, // off
/// });
/// assert_eq!(lp.health_config().stall_threshold, Some(Duration::from_millis(100)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// A single callback (an I/O event's handler, a timer, a queued function) running
    /// longer than this is a stall: counted, and logged (at most once per second per
    /// loop) with what ran. `None` switches the detector off. Default 25 ms.
    pub stall_threshold: Option<Duration>,
    /// A spin is counted, and logged (at most once per second per loop), when either
    /// - one channel is dispatched this many times in a row with the same readiness, the
    ///   loop never sleeping in between, and nothing gets done: its handler neither reports
    ///   progress ([`Channel::progressed`](crate::Channel::progressed)) nor changes the
    ///   interest nor removes it (for a handler that never reports progress, the socket's
    ///   queue lengths must not have moved either, nor may the loop's thread have lost its
    ///   CPU during the handler); other channels' traffic does not hide
    ///   it; or
    /// - the loop wakes this many times in a row with nothing to do, each wake-up less
    ///   than a millisecond after the previous iteration (for a loop of a
    ///   [`LoopGroup`](crate::LoopGroup): after the group began the wait that found the
    ///   loop ready; the time a ready loop waits for a thread is no pause).
    ///
    /// `None` switches the detector off. Default 10 000.
    pub spin_threshold: Option<u32>,
}

impl Default for HealthConfig {
    fn default() -> HealthConfig {
        HealthConfig {
            stall_threshold: Some(Duration::from_millis(25)),
            spin_threshold: Some(10_000),
        }
    }
}

/// The process default, as two atomics (`u64::MAX` = off).
static DEFAULT_STALL_NANOS: AtomicU64 = AtomicU64::new(25_000_000);
static DEFAULT_SPIN: AtomicU64 = AtomicU64::new(10_000);

impl HealthConfig {
    /// The configuration new loops start with.
    pub fn process_default() -> HealthConfig {
        let stall = DEFAULT_STALL_NANOS.load(Ordering::Relaxed);
        let spin = DEFAULT_SPIN.load(Ordering::Relaxed);
        HealthConfig {
            stall_threshold: (stall != u64::MAX).then(|| Duration::from_nanos(stall)),
            spin_threshold: (spin != u64::MAX).then_some(spin as u32),
        }
    }

    /// Sets the configuration loops created from now on start with (existing loops keep
    /// theirs).
    pub fn set_process_default(config: HealthConfig) {
        let stall = config.stall_threshold.map_or(u64::MAX, |d| {
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1)
        });
        DEFAULT_STALL_NANOS.store(stall, Ordering::Relaxed);
        DEFAULT_SPIN.store(
            config.spin_threshold.map_or(u64::MAX, u64::from),
            Ordering::Relaxed,
        );
    }
}

/// What a callback was, for the stall report and the longest-callback record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackKind {
    /// An I/O event's handler.
    Io,
    /// A timer's callback.
    Timer,
    /// A queued function.
    Task,
}

impl CallbackKind {
    /// A short lowercase name (`io`, `timer`, `task`).
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackKind::Io => "io",
            CallbackKind::Timer => "timer",
            CallbackKind::Task => "task",
        }
    }
}

/// The health counters of one loop, written only by its thread (a plain load and store,
/// no locked instruction) and read by any.
#[derive(Default)]
pub(crate) struct HealthCounters {
    pub(crate) empty_wakeups: AtomicU64,
    pub(crate) events_per_iteration: [AtomicU64; EVENT_BUCKETS],
    pub(crate) poll_nanos: AtomicU64,
    pub(crate) io_nanos: AtomicU64,
    pub(crate) timer_nanos: AtomicU64,
    pub(crate) task_nanos: AtomicU64,
    pub(crate) timer_lateness: [AtomicU64; LATENCY_BUCKETS],
    pub(crate) timer_lateness_nanos: AtomicU64,
    pub(crate) largest_task_batch: AtomicU64,
    pub(crate) longest_callback_nanos: AtomicU64,
    pub(crate) stalls: AtomicU64,
    pub(crate) spins: AtomicU64,
    /// When the loop last returned from a callback or from `epoll_wait`, a reading of
    /// [`monotonic_nanos`] plus one (so that 0 can mean "waiting in `epoll_wait`").
    pub(crate) busy_since: AtomicU64,
}

/// Adds to a counter only one thread writes, saturating (a sum of nanoseconds may be
/// given a lateness of centuries: a deadline far in the past).
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    if n != 0 {
        counter.store(
            counter.load(Ordering::Relaxed).saturating_add(n),
            Ordering::Relaxed,
        );
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl HealthCounters {
    /// How long the loop has been running without coming back to `epoll_wait` or
    /// finishing a callback; `None` while it waits in `epoll_wait`.
    pub(crate) fn busy_for(&self) -> Option<Duration> {
        match self.busy_since.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_nanos(
                monotonic_nanos().saturating_sub(at - 1),
            )),
        }
    }

    pub(crate) fn latency_histogram(
        buckets: &[AtomicU64; LATENCY_BUCKETS],
        sum: &AtomicU64,
    ) -> LatencyHistogram {
        LatencyHistogram {
            counts: buckets.each_ref().map(|c| c.load(Ordering::Relaxed)),
            sum: Duration::from_nanos(sum.load(Ordering::Relaxed)),
        }
    }
}

/// Held by [`EventLoop::run`](crate::EventLoop::run) for its length: however `run` ends,
/// the loop is no longer running (`run` may be called again). A panic that unwinds out of
/// a callback, and so out of `run`, also leaves the loop not busy, as a `run` that
/// returns does (it no longer runs anything), instead of busy for ever in `/healthz`;
/// and it clears the quit requests asked so far, as a `run` that returns does: the run
/// they asked to end has ended (else the next `run` would return after one pass).
pub(crate) struct EndOfRun(pub(crate) Arc<LoopShared>);

impl Drop for EndOfRun {
    fn drop(&mut self) {
        self.0.in_run.store(false, Ordering::Relaxed);
        if std::thread::panicking() {
            self.0.metrics.health.busy_since.store(0, Ordering::Relaxed);
            // Under the queue's lock, as `request_quit` sets them (see `end_run`).
            let _queue = self.0.queue.lock();
            self.0.quit.store(false, Ordering::SeqCst);
            self.0.quit_backlog.store(0, Ordering::Relaxed);
            self.0.quit_local.store(0, Ordering::Relaxed);
        }
    }
}

/// An `epoll_wait` that returns within this time is taken not to have slept: the events
/// were ready when it was called. (Returning events that were already pending costs well
/// under a microsecond; sleeping and being woken, several.)
pub(crate) const SLEPT: Duration = Duration::from_micros(5);

/// How many times a run of dispatches without progress samples the queues of a channel
/// whose handler never reports progress.
const PROBES: u32 = 4;

/// A socket's receive and send queue lengths, where it has them.
pub(crate) type Queues = (Option<usize>, Option<usize>);

/// What a probe samples before and after a handler: the socket's queues, and how often
/// the loop's thread has been switched off its CPU so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Probe {
    queues: Queues,
    switches: Option<u64>,
}

/// Samples the lengths of a socket's receive and send queues (`None` where the
/// descriptor has no such queue: an eventfd, a listening socket), to tell a busy stream
/// from a stuck one, and this thread's context switches: a peer that answers while the
/// handler's thread is off its CPU (both on one core: the handler's write wakes the peer,
/// which preempts it, reads and sends the next request) leaves the queues exactly as they
/// were, but not the switch count.
pub(crate) fn probe(fd: BorrowedFd<'_>) -> Probe {
    Probe {
        queues: (
            duo_sys::bytes_available(fd).ok(),
            duo_sys::bytes_unacknowledged(fd).ok(),
        ),
        switches: duo_sys::thread_context_switches().ok(),
    }
}

/// The spin detector's record of one channel (kept in the channel, touched only by its
/// loop).
///
/// Every channel of every loop carries one, so it is kept to 28 bytes: a channel is most
/// of what an idle connection costs (the counters and queue lengths are `u32`s, which is
/// plenty for a run of dispatches and for comparing queue lengths).
#[derive(Debug, Default)]
pub(crate) struct SpinWatch {
    /// Dispatches in a row with readiness `ready`, no progress, the loop never sleeping.
    count: u32,
    ready: u32,
    /// The low 32 bits of the loop's sleep count when the run began: a sleep in between
    /// ends the run (only compared for equality, so the truncation matters only after
    /// exactly 2^32 sleeps in between, and then at most delays a report).
    slept: u32,
    /// The queue lengths first sampled in this run ([`QueueSample`]), if any was.
    probe: QueueSample,
    /// The handler has reported progress at least once: its word is taken.
    reports: bool,
    /// The queues moved during this run.
    moved: bool,
}

/// [`Queues`] in 12 bytes: each length as a `u32`, [`QueueSample::NONE`] for "no such
/// queue", lengths from `NONE - 1` up clamped (a queue is never that long); `taken` false
/// (the default) means "no sample yet".
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct QueueSample {
    rx: u32,
    tx: u32,
    taken: bool,
}

impl QueueSample {
    const NONE: u32 = u32::MAX;

    fn of(queues: Queues) -> QueueSample {
        let len = |q: Option<usize>| {
            q.map_or(Self::NONE, |n| {
                u32::try_from(n)
                    .unwrap_or(Self::NONE - 1)
                    .min(Self::NONE - 1)
            })
        };
        QueueSample {
            rx: len(queues.0),
            tx: len(queues.1),
            taken: true,
        }
    }
}

/// Empty wake-ups at least this far apart do not make a spin: a loop woken now and then
/// for nothing is idle, not spinning.
const EMPTY_WAKEUPS_APART: Duration = Duration::from_millis(1);

/// Reports are rate-limited to one per this interval per loop and detector.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// The loop-confined side of health keeping: the clock chain, the spin run, the report
/// limiters. Lives inside the [`EventLoop`](crate::EventLoop).
pub(crate) struct HealthTracker {
    pub(crate) config: HealthConfig,
    /// The last clock read ([`monotonic_nanos`]): every callback's duration is the time
    /// since the previous read. (Plain nanoseconds, not `Instant`s: this is read and
    /// subtracted around every callback, and a `u64` difference is one instruction.)
    clock: u64,
    /// When the current iteration's poll began (the previous iteration's end).
    poll_began: u64,
    /// Empty wake-ups in a row (each soon after the previous iteration).
    spin_run: u32,
    /// How long this iteration's `epoll_wait` took (for a group's turn, the group's
    /// wait that found the loop ready: [`HealthTracker::next_poll_waited`]).
    waited: Duration,
    /// How many `epoll_wait`s slept (took longer than [`SLEPT`]) so far, plus one per
    /// change of the configuration: either ends every channel's run ([`SpinWatch`]).
    slept: u64,
    /// Timer callbacks and queued functions run in this iteration.
    work: u64,
    /// How long the coming poll counts as having waited, when the loop's own poll cannot
    /// tell: a group's turn never blocks in it, and the time since the previous turn is
    /// not the loop's wait ([`HealthTracker::next_poll_waited`]).
    next_waited: Option<Duration>,
    /// When a stall / spin was last logged, and how many were not logged since.
    stall_logged: Option<Instant>,
    stalls_unlogged: u64,
    spin_logged: Option<Instant>,
    spins_unlogged: u64,
    /// Local copies of the published maxima (to skip needless stores).
    longest_callback: u64,
    largest_task_batch: u64,
}

impl HealthTracker {
    pub(crate) fn new(config: HealthConfig) -> HealthTracker {
        let now = monotonic_nanos();
        HealthTracker {
            config,
            clock: now,
            poll_began: now,
            spin_run: 0,
            waited: Duration::ZERO,
            slept: 0,
            work: 0,
            next_waited: None,
            stall_logged: None,
            stalls_unlogged: 0,
            spin_logged: None,
            spins_unlogged: 0,
            longest_callback: 0,
            largest_task_batch: 0,
        }
    }

    /// Changes the thresholds. Both spin runs start over: one counted before the change
    /// (before a detector was switched off, say, which then stopped watching what would
    /// have ended the run) must not add to one under the new thresholds.
    pub(crate) fn set_config(&mut self, config: HealthConfig) {
        self.config = config;
        self.spin_run = 0;
        self.slept += 1;
    }

    /// The poll returned (just now); returns the clock read that says so.
    pub(crate) fn polled(&mut self, counters: &HealthCounters) -> u64 {
        let now = monotonic_nanos();
        let waited = now.saturating_sub(self.poll_began);
        self.waited = self
            .next_waited
            .take()
            .unwrap_or(Duration::from_nanos(waited));
        if self.waited > SLEPT {
            self.slept += 1;
        }
        bump(&counters.poll_nanos, waited);
        counters.busy_since.store(now + 1, Ordering::Relaxed);
        self.clock = now;
        now
    }

    /// The coming poll is a group's turn: how long the loop waited before it (whether it
    /// slept, and whether an empty wake-up came soon) is what the group's wait that
    /// brought the turn says (`Some`: how long that wait waited; zero for a loop a helper
    /// finds ready that its turn at the previous look left ready), not the time since the
    /// previous turn, which
    /// includes the time the loop was ready and waited for a thread (another loop's turn,
    /// or the help delay): a channel ready all along must not look like one that was
    /// reported again after a sleep, nor a loop woken again and again at once like one
    /// woken now and then. `None`: judged by the time since the previous turn, as for a
    /// loop's own poll.
    pub(crate) fn next_poll_waited(&mut self, waited: Option<Duration>) {
        self.next_waited = waited;
    }

    /// Callbacks are about to run outside an iteration (the functions `run` runs before
    /// its first poll): busy from now, as after a poll, and nobody charged for before.
    pub(crate) fn busy_now(&mut self, counters: &HealthCounters) {
        let now = monotonic_nanos();
        self.clock = now;
        counters.busy_since.store(now + 1, Ordering::Relaxed);
    }

    /// Restarts the clock without charging anyone (after the loop's own bookkeeping).
    pub(crate) fn restart_clock(&mut self) {
        self.clock = monotonic_nanos();
    }

    /// A callback of `kind` just returned; `what` names it for a stall report. Returns
    /// its duration.
    pub(crate) fn callback_done(
        &mut self,
        kind: CallbackKind,
        what: &dyn Fn() -> String,
        loop_name: &str,
        counters: &HealthCounters,
    ) -> Duration {
        let now = monotonic_nanos();
        let ns = now.saturating_sub(self.clock);
        let took = Duration::from_nanos(ns);
        self.clock = now;
        counters.busy_since.store(now + 1, Ordering::Relaxed);
        let total = match kind {
            CallbackKind::Io => &counters.io_nanos,
            CallbackKind::Timer => &counters.timer_nanos,
            CallbackKind::Task => &counters.task_nanos,
        };
        bump(total, ns);
        if kind != CallbackKind::Io {
            self.work += 1;
        }
        if ns > self.longest_callback {
            self.longest_callback = ns;
            counters.longest_callback_nanos.store(ns, Ordering::Relaxed);
        }
        if let Some(threshold) = self.config.stall_threshold {
            if took > threshold {
                self.stalled(kind, took, what, loop_name, counters);
            }
        }
        took
    }

    #[cold]
    fn stalled(
        &mut self,
        kind: CallbackKind,
        took: Duration,
        what: &dyn Fn() -> String,
        loop_name: &str,
        counters: &HealthCounters,
    ) {
        let now = Instant::now();
        bump(&counters.stalls, 1);
        if self
            .stall_logged
            .is_some_and(|at| now.duration_since(at) < REPORT_INTERVAL)
        {
            self.stalls_unlogged += 1;
            return;
        }
        let more = std::mem::take(&mut self.stalls_unlogged);
        let more = if more > 0 {
            format!(" ({more} more stalls since the last report)")
        } else {
            String::new()
        };
        log::warn!(
            "loop {loop_name} stalled: one {} callback ran {:.1} ms ({}); everything else \
             on this loop waited{more}",
            kind.as_str(),
            took.as_secs_f64() * 1e3,
            what(),
        );
        self.stall_logged = Some(now);
    }

    /// Whether the coming dispatch of the channel watched by `w` is one where its queues
    /// are probed (then the caller samples them before the handler runs, with [`probe`]).
    pub(crate) fn probe_due(&self, w: &SpinWatch, ready: u32) -> bool {
        let Some(threshold) = self.config.spin_threshold else {
            return false;
        };
        let continues = ready == w.ready && w.slept == self.slept as u32;
        let next = if continues { w.count + 1 } else { 1 };
        !w.reports && next % (threshold.max(1) / PROBES).max(1) == 0
    }

    /// A channel was dispatched with `ready` bits. `reported`: its handler called
    /// `progressed`; `changed`: the interest changed or the channel goes. `before`: its
    /// queues sampled before the handler, on probe dispatches ([`probe_due`]). Counts the
    /// dispatches in a row with the same readiness and no progress, the loop not sleeping
    /// once meanwhile; at the spin threshold, reports a spin, unless the handler never
    /// reports progress and its socket's queues moved meanwhile (a busy stream served by
    /// a handler that does not call `progressed`).
    ///
    /// [`probe_due`]: HealthTracker::probe_due
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn watch(
        &mut self,
        w: &mut SpinWatch,
        ready: u32,
        reported: bool,
        changed: bool,
        before: Option<Probe>,
        fd: BorrowedFd<'_>,
        what: &dyn Fn() -> String,
        loop_name: &str,
        counters: &HealthCounters,
    ) {
        w.reports |= reported;
        let Some(threshold) = self.config.spin_threshold else {
            return;
        };
        if reported || changed || ready != w.ready || w.slept != self.slept as u32 {
            *w = SpinWatch {
                ready,
                reports: w.reports,
                slept: self.slept as u32,
                ..SpinWatch::default()
            };
            return;
        }
        w.count += 1;
        let threshold = threshold.max(1);
        if let Some(before) = before {
            let now = probe(fd);
            // Moved during the handler (it consumed, or wrote, or its thread lost the CPU
            // meanwhile, so that the peer may have answered in between), or the queues
            // moved since the first probe.
            let sample = QueueSample::of(now.queues);
            if before != now || (w.probe.taken && w.probe != sample) {
                w.moved = true;
            }
            if !w.probe.taken {
                w.probe = sample;
            }
        }
        if w.count >= threshold {
            let confirmed = w.reports || !w.moved;
            *w = SpinWatch {
                ready,
                reports: w.reports,
                slept: self.slept as u32,
                ..SpinWatch::default()
            };
            if confirmed {
                self.spun(
                    &format!(
                        "{} was dispatched {threshold} times in a row with the same \
                         readiness and nothing got done (a level-triggered readiness \
                         nobody consumes?)",
                        what()
                    ),
                    loop_name,
                    counters,
                );
            }
        }
    }

    /// The loop is about to wait (or stops running): not busy, and the next poll's wait
    /// starts now.
    pub(crate) fn idle(&mut self, counters: &HealthCounters) {
        self.poll_began = monotonic_nanos();
        counters.busy_since.store(0, Ordering::Relaxed);
    }

    /// A batch of `n` queued functions is about to run.
    pub(crate) fn task_batch(&mut self, n: usize, counters: &HealthCounters) {
        let n = n as u64;
        if n > self.largest_task_batch {
            self.largest_task_batch = n;
            counters.largest_task_batch.store(n, Ordering::Relaxed);
        }
    }

    /// A timer due at `deadline` fires at `now`.
    pub(crate) fn timer_fired(&mut self, deadline: Instant, now: Instant, c: &HealthCounters) {
        let late = now.saturating_duration_since(deadline);
        bump(&c.timer_lateness[latency_bucket(late)], 1);
        bump(&c.timer_lateness_nanos, nanos(late));
    }

    /// The iteration that dispatched `io_events` I/O events ends.
    pub(crate) fn iteration_done(
        &mut self,
        io_events: u64,
        loop_name: &str,
        counters: &HealthCounters,
    ) {
        self.poll_began = monotonic_nanos();
        counters.busy_since.store(0, Ordering::Relaxed);
        bump(&counters.events_per_iteration[event_bucket(io_events)], 1);
        let empty = io_events == 0 && self.work == 0;
        if empty {
            bump(&counters.empty_wakeups, 1);
        }
        self.work = 0;
        let Some(threshold) = self.config.spin_threshold else {
            return;
        };
        // Wake-ups far apart are an idle loop, not a spinning one. (Channels reported
        // again and again are watched one by one: `watch`.)
        if !empty || self.waited >= EMPTY_WAKEUPS_APART {
            self.spin_run = 0;
            return;
        }
        self.spin_run += 1;
        if self.spin_run >= threshold.max(1) {
            self.spin_run = 0;
            self.spun(
                &format!("{threshold} wake-ups in a row found nothing to do"),
                loop_name,
                counters,
            );
        }
    }

    #[cold]
    fn spun(&mut self, why: &str, loop_name: &str, counters: &HealthCounters) {
        let now = Instant::now();
        bump(&counters.spins, 1);
        if self
            .spin_logged
            .is_some_and(|at| now.duration_since(at) < REPORT_INTERVAL)
        {
            self.spins_unlogged += 1;
            return;
        }
        let more = std::mem::take(&mut self.spins_unlogged);
        let more = if more > 0 {
            format!(" ({more} more spins since the last report)")
        } else {
            String::new()
        };
        log::warn!("loop {loop_name} is spinning: {why}{more}");
        self.spin_logged = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_buckets_follow_their_bounds() {
        for n in 0..200u64 {
            let b = event_bucket(n);
            if b < EVENT_BUCKETS - 1 {
                assert!(n <= EVENT_BUCKET_BOUNDS[b], "{n} in {b}");
            }
            if b > 0 {
                assert!(n > EVENT_BUCKET_BOUNDS[b - 1], "{n} in {b}");
            }
        }
        assert_eq!(event_bucket(u64::MAX), EVENT_BUCKETS - 1);
    }

    #[test]
    fn latency_buckets_follow_their_bounds() {
        assert_eq!(latency_bucket(Duration::ZERO), 0);
        assert_eq!(latency_bucket(Duration::from_micros(100)), 0);
        assert_eq!(latency_bucket(Duration::from_micros(101)), 1);
        assert_eq!(latency_bucket(Duration::from_millis(25)), 4);
        assert_eq!(latency_bucket(Duration::from_secs(5)), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn process_default_round_trips() {
        let before = HealthConfig::process_default();
        assert_eq!(before, HealthConfig::default());
        let off = HealthConfig {
            stall_threshold: None,
            spin_threshold: None,
        };
        HealthConfig::set_process_default(off);
        assert_eq!(HealthConfig::process_default(), off);
        HealthConfig::set_process_default(before);
        assert_eq!(HealthConfig::process_default(), before);
    }
}
