//! [`LoopGroup`]: more loops than threads; any of the group's threads runs a loop's next
//! turn.
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
//! to no thread. With several loops per thread, a loop whose thread is off its core is
//! run by another one, and only the connections of the one loop being run when a thread
//! is preempted wait for it.
//!
//! # How
//!
//! Every loop's epoll descriptor sits in one outer epoll set, registered
//! [`Interest::ONESHOT`]. Each thread waits on the outer set for one ready loop at a time
//! (a fixed one-event buffer, so a thread never holds readiness it is not serving), takes
//! the loop out of its slot, runs one turn (an `epoll_wait` without timeout on the loop's
//! own set, its events, timers and queued functions), puts it back and re-arms it: one
//! `epoll_ctl` per turn, not per event. One-shot delivery means a loop is run by one
//! thread at a time, and re-arming reports readiness that arrived during the turn at
//! once. For the length of its turn the running thread is the loop's thread
//! ([`LoopHandle::is_in_loop_thread`]); between turns no thread is.
//!
//! A loop that quits (or whose turn fails or panics) is dropped, closing its channels;
//! when the last one is gone the group's threads end.
//!
//! What changes for a loop in a group: its own busy polling
//! ([`EventLoop::set_busy_poll`](crate::EventLoop::set_busy_poll)) has no effect (a turn
//! never blocks in the loop's own `epoll_wait`; the group's threads spin instead, with
//! [`LoopGroup::set_busy_poll`]), and the loop's poll time counts all the
//! time between two turns, including time it was ready and waiting for a free thread. Stop
//! the group from outside it: a thread of the group cannot join itself.
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

/// Token of the group's stop eventfd in the outer epoll set.
const STOP_TOKEN: u64 = u64::MAX;

/// How a loop is registered in the outer set.
const ARMED: Interest = Interest::READABLE.add(Interest::ONESHOT);

/// M loops served by N threads (M ≥ N): the loops stay what they are (a connection
/// belongs to one loop and is served without a lock), but any free thread of the group
/// runs a ready loop's next turn. See the module documentation for why and how.
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
    /// The outer set: every live loop's epoll descriptor (one-shot) and `stop`.
    outer: Epoll,
    /// The loops, each in its slot between turns.
    slots: Vec<Slot>,
    /// Loops not yet ended.
    live: AtomicUsize,
    /// Written when the last loop ends: every thread returns (level-triggered, never
    /// drained).
    stop: EventFd,
    /// How loops ended other than by quitting (failed poll, panic), for `stop`.
    failures: Mutex<Vec<String>>,
    /// Busy polling of the outer set ([`LoopGroup::set_busy_poll`]), in nanoseconds.
    busy_poll_nanos: AtomicU64,
}

/// One loop of the group.
struct Slot {
    /// The loop between turns (`None` while a thread runs its turn, and once it ended).
    lp: Mutex<Option<EventLoop>>,
    /// A duplicate of the loop's epoll descriptor: what the outer set watches, re-armed
    /// after each turn without the loop at hand (and removed from the set when the loop
    /// ends, since this duplicate keeps the epoll instance open).
    fd: OwnedFd,
}

impl LoopGroup {
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
        if threads == 0 || loops < threads {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "loop group {name}: needs at least one thread and at least as many \
                     loops as threads (got {threads} threads, {loops} loops)"
                ),
            ));
        }
        let outer = Epoll::new()?;
        let stop = EventFd::new()?;
        outer.add(stop.as_fd(), Interest::READABLE, STOP_TOKEN)?;
        let mut made = Vec::with_capacity(loops);
        for i in 0..loops {
            let lp = EventLoop::detached(format!("{name}-{i}")).map_err(io::Error::from)?;
            let fd = lp.poll_fd().try_clone_to_owned()?;
            outer.add(fd.as_fd(), ARMED, i as u64)?;
            made.push(Slot {
                lp: Mutex::new(Some(lp)),
                fd,
            });
        }
        let handles: Vec<LoopHandle> = made
            .iter()
            .filter_map(|slot| slot.lp.lock().as_ref().map(EventLoop::handle))
            .collect();
        let core = Arc::new(GroupCore {
            outer,
            slots: made,
            live: AtomicUsize::new(loops),
            stop,
            failures: Mutex::new(Vec::new()),
            busy_poll_nanos: AtomicU64::new(0),
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
                    core.serve();
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
        log::debug!("loop group {name} started: {loops} loops on {threads} threads");
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
                drop(slot.lp.lock().take());
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
    /// A thread's life: take a ready loop, run its turn, put it back, re-arm it; until
    /// every loop has ended.
    fn serve(&self) {
        let mut events = Events::fixed(1);
        let mut ran = false;
        loop {
            if let Err(e) = self.next_ready(&mut events, ran) {
                // Cannot happen with a valid epoll descriptor and buffer; do not spin.
                log::error!("loop group: waiting for ready loops failed: {e}");
                self.failures
                    .lock()
                    .push(format!("waiting for ready loops: {e}"));
                let _ = self.stop.notify();
                return;
            }
            let Some((token, _)) = events.get(0) else {
                continue; // interrupted by a signal
            };
            if token == STOP_TOKEN {
                return;
            }
            ran = true;
            let i = token as usize;
            let Some(slot) = self.slots.get(i) else {
                continue;
            };
            let Some(mut lp) = slot.lp.lock().take() else {
                // One-shot delivery hands a loop to one thread at a time, and an ended
                // loop has left the set: only a loop ended by a `stop` that never started
                // the threads is missing, and then no thread runs this.
                log::warn!("loop group: a ready loop (#{i}) was not in its slot");
                continue;
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| lp.turn()));
            let ended = match outcome {
                Ok(Ok(false)) => None,
                Ok(Ok(true)) => Some(None),
                Ok(Err(e)) => Some(Some(format!("loop {}: {e}", lp.name()))),
                Err(_) => Some(Some(format!("loop {} panicked", lp.name()))),
            };
            match ended {
                None => {
                    // Back in its slot before re-arming (the slot's lock also hands this
                    // turn's writes, the loop's single-writer counters among them, to the
                    // thread that runs the next turn): once re-armed, another thread
                    // may take its readiness at once, and must find it there. Until then
                    // it is disarmed, so nobody else takes it out meanwhile, and the slot
                    // is not locked across the system call (a thread that got the loop's
                    // readiness would otherwise wait for the lock, and sleep on it).
                    *slot.lp.lock() = Some(lp);
                    if let Err(e) = self.outer.modify(slot.fd.as_fd(), ARMED, token) {
                        if let Some(lp) = slot.lp.lock().take() {
                            let why = format!("loop {}: cannot re-arm it: {e}", lp.name());
                            self.end(slot, lp, Some(why));
                        }
                    }
                }
                Some(why) => self.end(slot, lp, why),
            }
        }
    }

    /// Waits for the next ready loop (or the stop event). After a turn (`ran`), with busy
    /// polling on, it looks without blocking until the spin time is up, then sleeps.
    fn next_ready(&self, events: &mut Events, ran: bool) -> io::Result<usize> {
        match self.busy_poll_nanos.load(Ordering::Relaxed) {
            spin if ran && spin > 0 => self.outer.wait_spinning(events, spin),
            _ => self.outer.wait(events, None),
        }
    }

    /// A loop ended: take it out of the outer set, drop it (closing its channels), and
    /// stop the threads after the last one.
    fn end(&self, slot: &Slot, lp: EventLoop, failure: Option<String>) {
        if let Some(why) = failure {
            log::error!("{why}");
            self.failures.lock().push(why);
        }
        if let Err(e) = self.outer.delete(slot.fd.as_fd()) {
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
        if self.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            if let Err(e) = self.stop.notify() {
                log::error!("loop group: cannot wake its threads to stop: {e}");
            }
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
            .field("live", &self.core.live.load(Ordering::Relaxed))
            .finish()
    }
}
