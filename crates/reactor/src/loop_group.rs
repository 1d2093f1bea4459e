//! [`LoopGroup`]: more loops than threads; a loop whose thread is off its core is run by
//! another.
//!
//! # Why
//!
//! With one loop per thread (muduo's model, [`EventLoopThreadPool`]), a connection waits
//! for its thread: when that thread loses its core (to another process, to the load
//! generator on a benchmark host) every connection of its loop waits a scheduler slice,
//! even if the other core is free. That is the tail of a reactor server on a busy
//! machine. A work-stealing runtime (tokio) moves single tasks to the free thread, at the
//! price of a lock or atomic handover per task. A group moves whole loops instead: a
//! connection still belongs to one loop that serves it without a lock, but a loop belongs
//! to no one thread. With several loops per thread, a loop whose thread is off its core is
//! run by another one, and only the connections of the one loop being run when a thread
//! is preempted wait for it.
//!
//! # How
//!
//! A loop is taken out of its slot for a turn (an `epoll_wait` without timeout on the
//! loop's own set, its events, timers and queued functions) and put back after it, so one
//! thread at a time runs it. For the length of its turn the running thread is the loop's
//! thread ([`LoopHandle::is_in_loop_thread`]); between turns no thread is. Which thread
//! runs a ready loop depends on the [`LoopSharing`]:
//!
//! - [`LoopSharing::Owned`] (the default): loop `i` is owned by thread `i mod N`. Each
//!   thread has an epoll set of its own loops' epoll descriptors, level-triggered, waits
//!   on it and runs a turn of each ready loop it returned (up to 64 per wait): no
//!   `epoll_ctl` per turn. Every thread stamps its progress (back from its wait, and
//!   after each turn of its own). After its own turns a thread looks at the others'
//!   stamps; a thread that has made no progress for [`LoopGroup::steal_after`] (200 µs
//!   unless set) is helped: this thread looks at its set without taking anything from it
//!   (level-triggered) and runs a turn of each ready loop that is in its slot. Meanwhile
//!   the owner parks the registration of a ready loop it finds taken, until the helper
//!   puts it back. A thread with nothing to do
//!   sleeps with a timeout (until another thread that runs turns would be due for help,
//!   and at most 10 ms), so that it can help a thread stuck in a long callback too (a
//!   thread that is woken but finds no core is helped by one that is running; if a core
//!   is idle, the scheduler gives it that one).
//! - [`LoopSharing::Any`]: every loop sits one-shot in one epoll set, each thread waits
//!   on it for one ready loop at a time (so it never holds readiness it is not serving),
//!   runs its turn, puts it back and re-arms it: one `epoll_ctl` per turn.
//!
//! A loop that quits (or whose turn fails or panics) is dropped, closing its channels;
//! when the last one is gone the group's threads end.
//!
//! What changes for a loop in a group: its own busy polling
//! ([`EventLoop::set_busy_poll`](crate::EventLoop::set_busy_poll)) has no effect (a turn
//! never blocks in the loop's own `epoll_wait`; the group's threads spin instead, with
//! [`LoopGroup::set_busy_poll`]), and the loop's poll time counts all the
//! time between two turns, including time it was ready and waiting for a free thread
//! (which the spin detector does not take for a sleep, nor for a pause between
//! wake-ups: only a wait of the group's that slept ends its runs of dispatches, and one
//! of a millisecond or more makes wake-ups far apart; a loop a helper finds ready again
//! after its turn at the helper's previous look left it ready counts as ready all
//! along). Stop the group from outside it: a thread of the group cannot join itself.
//!
//! [`EventLoopThreadPool`]: crate::EventLoopThreadPool

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use duo_sys::{Epoll, EventFd, Events, Interest};
use parking_lot::Mutex;

use crate::event_loop_thread::ThreadInit;
use crate::{EventLoop, LoopHandle};

mod looks;
mod sharing;
use looks::Looks;
pub use sharing::{LoopSharing, ParseLoopSharingError};

/// Token of the group's stop eventfd in every set threads wait on.
const STOP_TOKEN: u64 = u64::MAX;

/// Ready loops a thread takes from its home set per wait ([`LoopSharing::Owned`]).
const READY_BATCH: usize = 64;

/// How a loop is registered in the one set of [`LoopSharing::Any`].
const ARMED: Interest = Interest::READABLE.add(Interest::ONESHOT);

/// The longest a thread of [`LoopSharing::Owned`] sleeps before it looks at the others
/// (when they all slept as it went to sleep; else it wakes when one of them would be due
/// for help).
const IDLE_LOOK: Duration = Duration::from_millis(10);

/// Marks a progress stamp taken as its thread went to sleep in its home set.
const WAITING: u64 = 1 << 63;

/// M loops served by N threads (M ≥ N): the loops stay what they are (a connection
/// belongs to one loop and is served without a lock), but a ready loop whose thread is
/// busy elsewhere or off its core is run by another thread of the group, as its
/// [`LoopSharing`] says. See the module documentation for why and how.
///
/// Loops are named `{name}-{i}` and threads `{name}-t{j}`. Work reaches the loops
/// through their [`LoopHandle`]s, as with an [`EventLoopThreadPool`](crate::EventLoopThreadPool).
/// Dropping the group (or [`stop`](LoopGroup::stop)) quits every loop and joins every
/// thread.
///
/// Everything a loop owns is `Send` (handlers, timers, queued functions, loop-local
/// values), which is what lets a loop change threads between turns.
///
/// ```
/// use duo_reactor::LoopGroup;
///
/// let group = LoopGroup::start("io", 2, 8, None)?;
/// assert_eq!(group.handles().len(), 8);
/// let (tx, rx) = std::sync::mpsc::channel();
/// for h in group.handles() {
///     let tx = tx.clone();
///     h.queue_in_loop(move |lp| tx.send(lp.name().to_owned()).unwrap())?;
/// }
/// let mut names: Vec<String> = (0..8).map(|_| rx.recv().unwrap()).collect();
/// names.sort();
/// assert_eq!(names[0], "io-0");
/// group.stop()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LoopGroup {
    name: String,
    core: Arc<GroupCore>,
    handles: Vec<LoopHandle>,
    threads: Vec<JoinHandle<()>>,
    /// Some thread was started (from then on, the threads end the loops).
    started: bool,
}

/// What the group's threads share.
struct GroupCore {
    /// How the threads share the loops.
    sharing: LoopSharing,
    /// [`LoopSharing::Owned`]: one per thread, the loops it owns. [`LoopSharing::Any`]: one,
    /// every loop, waited on by every thread.
    homes: Vec<Home>,
    /// The loops, each in its slot between turns.
    slots: Vec<Slot>,
    /// Loops not yet ended.
    live: AtomicUsize,
    /// Written when the last loop ends: every thread returns (level-triggered, never
    /// drained).
    stop: EventFd,
    /// How loops ended other than by quitting (failed poll, panic), for `stop`.
    failures: Mutex<Vec<String>>,
    /// Busy polling of the home sets ([`LoopGroup::set_busy_poll`]), in nanoseconds.
    busy_poll_nanos: AtomicU64,
    /// [`LoopGroup::set_steal_after`], in nanoseconds (0: off).
    steal_after_nanos: AtomicU64,
}

/// What a [`Slot`]'s lock guards.
struct SlotState {
    /// The loop between turns (`None` while a thread runs its turn, and once it ended).
    lp: Option<EventLoop>,
    /// [`LoopSharing::Owned`]: the owner found the loop out of its slot (a helper runs
    /// it) and disabled its level-triggered registration, which would otherwise report it
    /// ready again and again while the helper runs it; whoever puts the loop back
    /// enables it again.
    parked: bool,
}

/// A set of loops that threads wait on: a thread's own ([`LoopSharing::Owned`]) or all.
// Aligned to a cache line: each thread writes its progress stamp at every turn.
#[repr(align(64))]
struct Home {
    /// The epoll descriptors of the loops (level-triggered for an owner, one-shot for
    /// [`LoopSharing::Any`]) and `stop`.
    set: Epoll,
    /// When the thread last made progress (`monotonic_nanos`: it finished a turn of its
    /// own or came back from its wait), with [`WAITING`] set while it sleeps in its wait.
    progress: AtomicU64,
}

/// One loop of the group.
struct Slot {
    /// The loop between turns, and whether its registration is parked.
    state: Mutex<SlotState>,
    /// A duplicate of the loop's epoll descriptor: what its owner's home set watches
    /// (removed from the set when the loop ends, since this duplicate keeps the epoll
    /// instance open).
    fd: OwnedFd,
    /// Index of the set the loop is in (its owner's, with [`LoopSharing::Owned`]).
    home: usize,
}

impl LoopGroup {
    /// How long a thread may make no progress before another runs its ready loops, unless
    /// set otherwise ([`LoopGroup::set_steal_after`]).
    pub const DEFAULT_STEAL_AFTER: Duration = Duration::from_micros(200);

    /// Creates `loops` loops, starts `threads` threads that serve them, and runs `init` (if
    /// any) on each loop (on a group thread, as the loop's thread) before returning.
    /// `threads` must be at least 1 and `loops` at least `threads`.
    ///
    /// The threads block the stop signals, as [`EventLoopThread`](crate::EventLoopThread)'s
    /// do. On failure nothing is left running.
    pub fn start(
        name: &str,
        threads: usize,
        loops: usize,
        init: Option<ThreadInit>,
    ) -> io::Result<LoopGroup> {
        LoopGroup::start_sharing(name, threads, loops, LoopSharing::Owned, init)
    }

    /// [`start`](LoopGroup::start) with the threads sharing the loops as `sharing` says.
    pub fn start_sharing(
        name: &str,
        threads: usize,
        loops: usize,
        sharing: LoopSharing,
        init: Option<ThreadInit>,
    ) -> io::Result<LoopGroup> {
        if threads == 0 || loops < threads {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "loop group {name}: needs at least one thread and at least as many \
                     loops as threads (got {threads} threads, {loops} loops)"
                ),
            ));
        }
        let stop = EventFd::new()?;
        let sets = match sharing {
            LoopSharing::Owned => threads,
            LoopSharing::Any => 1,
        };
        let homes = (0..sets)
            .map(|_| {
                let set = Epoll::new()?;
                // Level-triggered and never drained: every thread sees it, again and
                // again, until it returns.
                set.add(stop.as_fd(), Interest::READABLE, STOP_TOKEN)?;
                Ok(Home {
                    set,
                    progress: AtomicU64::new(duo_sys::monotonic_nanos() | WAITING),
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let mut made = Vec::with_capacity(loops);
        for i in 0..loops {
            let lp = EventLoop::detached(format!("{name}-{i}")).map_err(|e| {
                let e = io::Error::from(e);
                io::Error::new(
                    e.kind(),
                    format!("starting I/O loop {} of {loops} ({name}-{i}): {e}", i + 1),
                )
            })?;
            let fd = lp.poll_fd().try_clone_to_owned()?;
            let home = i % sets;
            let interest = match sharing {
                LoopSharing::Owned => Interest::READABLE,
                LoopSharing::Any => ARMED,
            };
            homes[home].set.add(fd.as_fd(), interest, i as u64)?;
            made.push(Slot {
                state: Mutex::new(SlotState {
                    lp: Some(lp),
                    parked: false,
                }),
                fd,
                home,
            });
        }
        let handles: Vec<LoopHandle> = made
            .iter()
            .filter_map(|slot| slot.state.lock().lp.as_ref().map(EventLoop::handle))
            .collect();
        let core = Arc::new(GroupCore {
            sharing,
            homes,
            slots: made,
            live: AtomicUsize::new(loops),
            stop,
            failures: Mutex::new(Vec::new()),
            busy_poll_nanos: AtomicU64::new(0),
            steal_after_nanos: AtomicU64::new(LoopGroup::DEFAULT_STEAL_AFTER.as_nanos() as u64),
        });
        let mut group = LoopGroup {
            name: name.to_owned(),
            core,
            handles,
            threads: Vec::with_capacity(threads),
            started: false,
        };
        for j in 0..threads {
            let core = group.core.clone();
            let spawned = thread::Builder::new()
                .name(format!("{name}-t{j}"))
                .spawn(move || {
                    if let Err(e) = duo_sys::block_termination_signals() {
                        log::warn!("cannot block stop signals on a loop thread: {e}");
                    }
                    if catch_unwind(AssertUnwindSafe(|| core.serve(j))).is_err() {
                        core.thread_died(j);
                    }
                });
            match spawned {
                Ok(t) => {
                    group.threads.push(t);
                    group.started = true;
                }
                Err(e) => {
                    let _ = group.stop_inner();
                    return Err(e);
                }
            }
        }
        if let Some(init) = init {
            group.init_each(&init)?;
        }
        log::debug!("loop group {name} started: {loops} loops on {threads} threads, {sharing:?}");
        Ok(group)
    }

    /// Runs `init` on every loop, as its first turn's work, and waits for all of them: a
    /// loop whose `init` panics ends, and so does the group, with an error.
    fn init_each(&mut self, init: &ThreadInit) -> io::Result<()> {
        let (done, finished) = std::sync::mpsc::channel();
        for h in &self.handles {
            let (init, done) = (init.clone(), done.clone());
            let queued = h.queue_in_loop(move |lp| {
                init(lp);
                let _ = done.send(());
            });
            if queued.is_err() {
                break; // counted below: fewer than all report
            }
        }
        drop(done);
        let ran = finished.iter().take(self.handles.len()).count();
        if ran < self.handles.len() {
            let why = self
                .stop_inner()
                .err()
                .map_or_else(|| "a loop ended".to_owned(), |e| e.to_string());
            return Err(io::Error::other(format!(
                "loop group {}: the init function failed: {why}",
                self.name
            )));
        }
        Ok(())
    }

    /// Busy polling for the group's threads (default off): after running a turn, a
    /// thread looks for the next ready loop without blocking for up to `spin` before it
    /// sleeps in `epoll_wait` (what [`EventLoop::set_busy_poll`] does for a loop of its
    /// own thread, which has no effect on a group's loops). With many small loops a
    /// thread otherwise sleeps and is woken between most turns; spinning trades that for
    /// CPU time while the group is busy. Takes effect from each thread's next wait.
    pub fn set_busy_poll(&self, spin: Duration) {
        let nanos = u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX);
        self.core.busy_poll_nanos.store(nanos, Ordering::Relaxed);
    }

    /// How long a thread may make no progress (finish no turn of its own, or not come
    /// back from its wait although its loops are ready: woken, but given no core) before
    /// another thread runs turns of its ready loops. Default
    /// [`LoopGroup::DEFAULT_STEAL_AFTER`]; `Duration::ZERO` turns helping off (each loop
    /// then runs on its owner only, unless its owner thread died of a panic outside a
    /// turn: then the others run its loops all the same). A thread that runs
    /// turns looks at the others after each batch of its own; a sleeping thread wakes
    /// to look when another that runs turns would be due (its wait's timeout, in whole
    /// milliseconds), and at least every 10 ms; each thread is looked at no more often
    /// than this delay. Only for [`LoopSharing::Owned`]. Takes effect from each thread's
    /// next wait, within 10 ms.
    pub fn set_steal_after(&self, after: Duration) {
        let nanos = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX / 4);
        self.core.steal_after_nanos.store(nanos, Ordering::Relaxed);
    }

    /// The delay set with [`set_steal_after`](LoopGroup::set_steal_after).
    pub fn steal_after(&self) -> Duration {
        Duration::from_nanos(self.core.steal_after_nanos.load(Ordering::Relaxed))
    }

    /// Turns run so far by a thread other than the loop's owner.
    pub fn helped_turns(&self) -> u64 {
        self.handles.iter().map(|h| h.metrics().helped_turns).sum()
    }

    /// The busy-polling time set with [`set_busy_poll`](LoopGroup::set_busy_poll).
    pub fn busy_poll(&self) -> Duration {
        Duration::from_nanos(self.core.busy_poll_nanos.load(Ordering::Relaxed))
    }

    /// Every loop of the group, in order.
    pub fn handles(&self) -> &[LoopHandle] {
        &self.handles
    }

    /// The number of threads serving the loops.
    pub fn num_threads(&self) -> usize {
        self.threads.len()
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Quits every loop, joins every thread, and reports a loop that ended by a failed
    /// poll or a panic.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> io::Result<()> {
        for h in &self.handles {
            h.quit();
        }
        if !self.started {
            // Never served: end the loops here.
            for slot in &self.core.slots {
                drop(slot.state.lock().lp.take());
            }
        }
        let me = thread::current().id();
        if self.threads.iter().any(|t| t.thread().id() == me) {
            // A thread cannot join itself. The loops were asked to quit, and the threads
            // end once the last one has (this one when its turn returns).
            self.threads.clear();
            return Err(io::Error::other(format!(
                "loop group {}: stopped from one of its own threads; its loops are quitting \
                 and its threads end on their own",
                self.name
            )));
        }
        let mut panicked = false;
        for t in self.threads.drain(..) {
            panicked |= t.join().is_err();
        }
        let failures = std::mem::take(&mut *self.core.failures.lock());
        if panicked {
            return Err(io::Error::other(format!(
                "loop group {}: a thread panicked",
                self.name
            )));
        }
        match failures.into_iter().next() {
            Some(first) => Err(io::Error::other(first)),
            None => Ok(()),
        }
    }
}

impl GroupCore {
    /// The life of thread `me`: run the ready loops of its set, help a thread that
    /// makes no progress ([`LoopSharing::Owned`]), until every loop has ended.
    fn serve(&self, me: usize) {
        let home = &self.homes[me % self.homes.len()];
        // One ready loop per wait when threads share a set: a thread never holds
        // readiness it is not serving.
        let mut events = Events::fixed(match self.sharing {
            LoopSharing::Owned => READY_BATCH,
            LoopSharing::Any => 1,
        });
        let mut stolen = Events::fixed(READY_BATCH);
        let mut tried = vec![0u64; self.homes.len()];
        let mut looks = Looks::new(self.homes.len());
        let mut ran = false;
        loop {
            let timeout = self.help_due(me, &tried);
            let before = duo_sys::monotonic_nanos();
            home.progress.store(before | WAITING, Ordering::Release);
            let waited = self.wait_home(home, &mut events, ran, timeout);
            let after = duo_sys::monotonic_nanos();
            home.progress.store(after, Ordering::Release);
            // How long the loops it returned were not ready, at least (for the spin
            // detector: not the time since their previous turns, which includes the time
            // they were ready and waited for this thread).
            let wait_time = Duration::from_nanos(after.saturating_sub(before));
            if let Err(e) = waited {
                // Cannot happen with a valid epoll descriptor and buffer; do not spin.
                log::error!("loop group: waiting for ready loops failed: {e}");
                self.failures
                    .lock()
                    .push(format!("waiting for ready loops: {e}"));
                let _ = self.stop.notify();
                return;
            }
            ran = false;
            for (token, _) in events.iter() {
                if token == STOP_TOKEN {
                    return;
                }
                if self.run(token, false, Some(wait_time)) {
                    ran = true;
                    home.progress
                        .store(duo_sys::monotonic_nanos(), Ordering::Release);
                }
            }
            if self.help(me, &mut tried, &mut stolen, &mut looks) {
                ran = true;
            }
        }
    }

    /// Thread `me` panicked outside a turn (a defect of the group itself): recorded as a
    /// failure, and its stamp made as old as can be, so that the other threads run its
    /// loops from now on, with helping off too ([`LoopSharing::Owned`]; with
    /// [`LoopSharing::Any`] they do anyway), the group can still stop, and `stop` reports
    /// it.
    fn thread_died(&self, me: usize) {
        let why = format!("loop group thread {me} panicked; its loops are run by the others");
        log::error!("{why}");
        self.failures.lock().push(why);
        if let Some(home) = self.homes.get(me) {
            home.progress.store(0, Ordering::Release);
        }
    }

    /// Waits on `home` for ready loops (or the stop event), for at most `timeout`. After
    /// turns (`ran`), with busy polling on, it looks without blocking until the spin time
    /// is up before it sleeps.
    fn wait_home(
        &self,
        home: &Home,
        events: &mut Events,
        ran: bool,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let spin = self.busy_poll_nanos.load(Ordering::Relaxed);
        if ran && spin > 0 {
            let start = duo_sys::monotonic_nanos();
            // Spinning does not postpone help: it ends when another thread is due.
            let help_at = timeout.map_or(u64::MAX, |t| {
                start.saturating_add(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX))
            });
            let deadline = start.saturating_add(spin).min(help_at);
            loop {
                let n = home.set.wait(events, Some(Duration::ZERO))?;
                if n > 0 {
                    return Ok(n);
                }
                let now = duo_sys::monotonic_nanos();
                if now >= help_at {
                    return Ok(0);
                }
                if now >= deadline {
                    let rest = timeout.map(|_| Duration::from_nanos(help_at - now));
                    return home.set.wait(events, rest);
                }
                std::hint::spin_loop();
            }
        }
        home.set.wait(events, timeout)
    }

    /// How long thread `me` may sleep before it should look at the others: until the
    /// earliest moment one of those that is running turns now would have made no
    /// progress for the help delay, and no longer than [`IDLE_LOOK`] (a thread that
    /// sleeps now may start a turn that blocks for long while this one sleeps). A
    /// thread that sleeps in its own wait is woken by its own loops; if it is woken and
    /// finds no core, a thread that runs turns helps it, and an idle core is the
    /// scheduler's to give. With helping off, [`IDLE_LOOK`] (so that turning it on
    /// reaches a sleeping thread); `None` (sleep until woken) with one set for all
    /// threads.
    fn help_due(&self, me: usize, tried: &[u64]) -> Option<Duration> {
        let after = self.steal_after_nanos.load(Ordering::Relaxed);
        if self.homes.len() == 1 {
            return None;
        }
        if after == 0 {
            // Helping off, for now: look again later, so that turning it on reaches a
            // thread that sleeps.
            return Some(IDLE_LOOK);
        }
        let now = duo_sys::monotonic_nanos();
        let due = self
            .homes
            .iter()
            .enumerate()
            .filter(|&(k, _)| k != me)
            .filter_map(|(k, other)| {
                let p = other.progress.load(Ordering::Acquire);
                (p & WAITING == 0)
                    .then(|| p.saturating_add(after).max(tried[k].saturating_add(after)))
            })
            .min()
            .map_or(IDLE_LOOK, |due| {
                Duration::from_nanos(due.saturating_sub(now))
            });
        Some(due.min(IDLE_LOOK))
    }

    /// Thread `me` runs a turn of every ready loop, not being run, of each other thread
    /// that has made no progress (finished no turn of its own, or not come back from its
    /// wait) for the help delay; each thread is looked at no more often than that, so a
    /// thread that runs turns beside one that sleeps makes an `epoll_wait` on its set
    /// every help delay. Returns whether a turn ran. (Looking at a thread as soon as it
    /// sleeps, to catch one woken but given no core at once, was measured: no better
    /// tail, more system calls.) `looks`: the loops this thread's turns at its previous
    /// looks left ready, for the spin detector of the loops it helps.
    fn help(&self, me: usize, tried: &mut [u64], stolen: &mut Events, looks: &mut Looks) -> bool {
        let steal_after = self.steal_after_nanos.load(Ordering::Relaxed);
        if self.homes.len() == 1 {
            return false;
        }
        let now = duo_sys::monotonic_nanos();
        let mut ran = false;
        for (k, other) in self.homes.iter().enumerate() {
            let p = other.progress.load(Ordering::Acquire);
            // A thread that died (`thread_died`: stamp 0) is helped even with helping off,
            // and within a sleeping thread's longest wait however long the delay: nothing
            // else runs its loops (a delay of hours would strand them, and `stop`).
            let after = match (p, steal_after) {
                (0, a) => a.clamp(1, IDLE_LOOK.as_nanos() as u64),
                (_, 0) => continue,
                (_, a) => a,
            };
            let since = p & !WAITING;
            if k == me || now < since.saturating_add(after) || now < tried[k].saturating_add(after)
            {
                continue;
            }
            tried[k] = now;
            // Level-triggered: looking takes nothing from the owner, which sees the same
            // loops ready when it comes back.
            if let Err(e) = other.set.wait(stolen, Some(Duration::ZERO)) {
                log::warn!("loop group: looking at another thread's loops: {e}");
                continue;
            }
            // A look does not sleep: a loop its turn at the previous look left ready,
            // ready again now, is judged as one found by a wait that returned at once, not
            // by the time since its previous turn (the help delay or more, no sleep of its
            // own); any other by that time ([`Looks`]).
            looks.begin();
            for (token, _) in stolen.iter() {
                if token != STOP_TOKEN && self.run(token, true, looks.found(k, token)) {
                    ran = true;
                    if let Some(slot) = self.slots.get(token as usize) {
                        looks.turn_ran(token, slot.fd.as_fd());
                    }
                }
            }
            looks.end(k);
        }
        ran
    }

    /// Runs one turn of loop `token` if no other thread is running it (returns whether
    /// it ran), then puts it back in its slot, or ends it. `helped`: this thread is not
    /// the loop's owner. `waited`: how long the wait that found it ready waited, if known
    /// ([`EventLoop::turn`]).
    fn run(&self, token: u64, helped: bool, waited: Option<Duration>) -> bool {
        let Some(slot) = self.slots.get(token as usize) else {
            return false;
        };
        // Taking the loop out of its slot is what makes this thread its only runner: a
        // thread that finds the slot empty (another thread's turn, or an ended loop)
        // skips it.
        let taken = {
            let mut state = slot.state.lock();
            let taken = state.lp.take();
            if taken.is_none() && !helped && !state.parked && self.sharing == LoopSharing::Owned {
                // The owner, while a helper runs the loop: quiet its registration until
                // the loop is back (an ended loop has left the set, and stays out).
                let set = &self.homes[slot.home].set;
                state.parked = set.modify(slot.fd.as_fd(), Interest::NONE, token).is_ok();
            }
            taken
        };
        let Some(mut lp) = taken else {
            return false;
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| lp.turn(helped, waited)));
        let ended = match outcome {
            Ok(Ok(false)) => None,
            Ok(Ok(true)) => Some(None),
            Ok(Err(e)) => Some(Some(format!("loop {}: {e}", lp.name()))),
            Err(_) => Some(Some(format!("loop {} panicked", lp.name()))),
        };
        match ended {
            None => {
                // Back in its slot (the slot's lock also hands this turn's writes, the
                // loop's single-writer counters among them, to the thread that runs the
                // next turn). A parked owned loop is enabled again under the lock, so
                // that no owner parks it meanwhile (only this rare case holds the lock
                // across a system call). A one-shot loop is re-armed after the lock is
                // released: once re-armed, another thread may take its readiness at once,
                // and finds it in its slot (a thread that got it would otherwise wait for
                // the lock, and sleep on it).
                let set = &self.homes[slot.home].set;
                let rearmed = {
                    let mut state = slot.state.lock();
                    state.lp = Some(lp);
                    match self.sharing {
                        LoopSharing::Owned if std::mem::take(&mut state.parked) => {
                            set.modify(slot.fd.as_fd(), Interest::READABLE, token)
                        }
                        LoopSharing::Owned => Ok(()),
                        LoopSharing::Any => {
                            drop(state);
                            set.modify(slot.fd.as_fd(), ARMED, token)
                        }
                    }
                };
                if let Err(e) = rearmed {
                    if let Some(lp) = slot.state.lock().lp.take() {
                        let why = format!("loop {}: cannot re-arm it: {e}", lp.name());
                        self.end(slot, lp, Some(why));
                    }
                }
            }
            Some(why) => self.end(slot, lp, why),
        }
        true
    }

    /// A loop ended: take it out of its home set, drop it (closing its channels), and
    /// stop the threads after the last one.
    fn end(&self, slot: &Slot, lp: EventLoop, failure: Option<String>) {
        /// Counts the loop as ended however `end` is left (a logger that panics).
        struct Ended<'a>(&'a GroupCore);
        impl Drop for Ended<'_> {
            fn drop(&mut self) {
                if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
                    if let Err(e) = self.0.stop.notify() {
                        log::error!("loop group: cannot wake its threads to stop: {e}");
                    }
                }
            }
        }
        let _ended = Ended(self);
        if let Some(why) = failure {
            log::error!("{why}");
            self.failures.lock().push(why);
        }
        if let Err(e) = self.homes[slot.home].set.delete(slot.fd.as_fd()) {
            log::warn!("loop {}: removing it from its group's set: {e}", lp.name());
        }
        let name = lp.name().to_owned();
        // Dropping runs handlers' and closures' destructors: a panic there must not take
        // the thread down before the count below, or the other threads would wait forever.
        if catch_unwind(AssertUnwindSafe(move || drop(lp))).is_err() {
            let why = format!("loop {name}: dropping it panicked");
            log::error!("{why}");
            self.failures.lock().push(why);
        }
    }
}

impl Drop for LoopGroup {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            log::error!("loop group {}: {e}", self.name);
        }
    }
}

impl fmt::Debug for LoopGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopGroup")
            .field("name", &self.name)
            .field("loops", &self.handles.len())
            .field("threads", &self.threads.len())
            .field("sharing", &self.core.sharing)
            .field("live", &self.core.live.load(Ordering::Relaxed))
            .finish()
    }
}
