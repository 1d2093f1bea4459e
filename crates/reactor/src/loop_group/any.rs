//! [`LoopSharing::Any`](super::LoopSharing::Any): every loop edge-triggered in one epoll
//! set, and a queue of ready loops that every thread takes from.
//!
//! A thread that comes back from the set with ready loops queues them all at once (and
//! wakes a sleeping thread if it queued more than it takes itself), then runs turns from
//! the queue. So a thread that loses its core holds only the loop whose turn it runs:
//! the loops it queued are run by the others. Each loop has a schedule state, so that it
//! is queued at most once and run by one thread at a time; readiness that arrives during
//! a turn queues the loop again after it.
//!
//! The loops are registered edge-triggered, and an epoll set signals its readiness to an
//! outer set each time a descriptor in it becomes ready: a loop reported once is reported
//! again only for new readiness. What a turn may leave behind that no new readiness will
//! report (a full event buffer, a level-triggered channel served) queues the loop again
//! at once ([`EventLoop::maybe_more`](crate::EventLoop)).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use duo_sys::{EventFd, Events};
use crossbeam_queue::ArrayQueue;

use super::{GroupCore, READY_BATCH, STOP_TOKEN};

/// Token of the queue's wake-up eventfd in the shared set.
pub(super) const WAKE_TOKEN: u64 = u64::MAX - 1;

/// A thread looks at the set without blocking after this many turns in a row from the
/// queue, so that loops that keep queueing themselves cannot starve those the set reports.
const LOOK_EVERY: u32 = 16;

/// Schedule states of a loop ([`Slot::sched`](super::Slot)).
pub(super) mod sched {
    /// Between turns, not queued: new readiness queues it.
    pub(in crate::loop_group) const IDLE: u8 = 0;
    /// In the ready queue.
    pub(in crate::loop_group) const QUEUED: u8 = 1;
    /// A thread runs its turn.
    pub(in crate::loop_group) const RUNNING: u8 = 2;
    /// A thread runs its turn, and new readiness came meanwhile: queued again after it.
    pub(in crate::loop_group) const NOTIFIED: u8 = 3;
    /// Ended: never queued again.
    pub(in crate::loop_group) const ENDED: u8 = 4;
}

/// The ready queue of [`LoopSharing::Any`](super::LoopSharing::Any).
pub(super) struct ReadyQueue {
    /// Loops ready for a turn, in the order they became ready (each at most once: room
    /// for all).
    queue: ArrayQueue<usize>,
    /// Threads asleep in the shared set.
    sleepers: AtomicUsize,
    /// Written to wake one sleeping thread (edge-triggered in the set: one event, one
    /// thread, per write).
    pub(super) wake: EventFd,
}

impl ReadyQueue {
    pub(super) fn new(loops: usize) -> std::io::Result<ReadyQueue> {
        Ok(ReadyQueue {
            queue: ArrayQueue::new(loops.max(1)),
            sleepers: AtomicUsize::new(0),
            wake: EventFd::new()?,
        })
    }

    fn pop(&self) -> Option<usize> {
        self.queue.pop()
    }

    fn push(&self, i: usize) {
        // A loop is queued only by the one who moved it to `QUEUED`, and left by its
        // turn: never twice, so there is room.
        let _ = self.queue.push(i);
    }

    fn len(&self) -> usize {
        self.queue.len()
    }

    /// More is queued than the thread about to run a turn takes: wake a sleeping thread.
    fn share(&self) {
        // Pairs with the sleeper's count-then-look: either it sees what was queued, or
        // this sees it counted.
        std::sync::atomic::fence(Ordering::SeqCst);
        if !self.queue.is_empty() && self.sleepers.load(Ordering::SeqCst) > 0 {
            if let Err(e) = self.wake.notify() {
                log::warn!("loop group: cannot wake a sleeping thread: {e}");
            }
        }
    }
}

impl GroupCore {
    /// The life of a thread with [`LoopSharing::Any`](super::LoopSharing::Any): run
    /// queued loops; with none queued, sleep in the shared set; queue what it reports.
    pub(super) fn serve_any(&self, rq: &ReadyQueue) {
        let set = &self.homes[0].set;
        let mut events = Events::fixed(READY_BATCH);
        let mut turns = 0u32;
        loop {
            let timeout = match rq.pop() {
                Some(i) => {
                    rq.share();
                    self.run_queued(rq, i);
                    turns += 1;
                    if turns < LOOK_EVERY {
                        continue;
                    }
                    Some(Duration::ZERO)
                }
                None => {
                    rq.sleepers.fetch_add(1, Ordering::SeqCst);
                    if rq.len() > 0 {
                        // Queued between the look and the announcement: no sleep.
                        rq.sleepers.fetch_sub(1, Ordering::SeqCst);
                        continue;
                    }
                    None
                }
            };
            turns = 0;
            let waited = set.wait(&mut events, timeout);
            if timeout.is_none() {
                rq.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
            if let Err(e) = waited {
                // Cannot happen with a valid epoll descriptor and buffer; do not spin.
                log::error!("loop group: waiting for ready loops failed: {e}");
                self.failures
                    .lock()
                    .push(format!("waiting for ready loops: {e}"));
                let _ = self.stop.notify();
                return;
            }
            for (token, _) in events.iter() {
                match token {
                    STOP_TOKEN => return,
                    WAKE_TOKEN => {
                        let _ = rq.wake.drain();
                    }
                    i => self.notify(rq, i as usize),
                }
            }
        }
    }

    /// Loop `i` has new readiness: queue it, or have its running turn queue it after.
    fn notify(&self, rq: &ReadyQueue, i: usize) {
        let Some(slot) = self.slots.get(i) else {
            return;
        };
        let mut now = slot.sched.load(Ordering::Acquire);
        loop {
            let next = match now {
                sched::IDLE => sched::QUEUED,
                sched::RUNNING => sched::NOTIFIED,
                _ => return,
            };
            match slot
                .sched
                .compare_exchange_weak(now, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if next == sched::QUEUED {
                        rq.push(i);
                    }
                    return;
                }
                Err(seen) => now = seen,
            }
        }
    }

    /// Runs a turn of queued loop `i` (this thread popped it: no other runs it), then
    /// puts it back, queues it again if readiness came meanwhile or may be left, or ends
    /// it.
    fn run_queued(&self, rq: &ReadyQueue, i: usize) {
        let slot = &self.slots[i];
        slot.sched.store(sched::RUNNING, Ordering::Release);
        let Some(mut lp) = slot.state.lock().lp.take() else {
            return;
        };
        let ended = self.turn_of(&mut lp, false);
        let more = lp.maybe_more();
        match ended {
            None => {
                slot.state.lock().lp = Some(lp);
                let again = more
                    || slot
                        .sched
                        .compare_exchange(
                            sched::RUNNING,
                            sched::IDLE,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_err();
                if again {
                    slot.sched.store(sched::QUEUED, Ordering::Release);
                    rq.push(i);
                }
            }
            Some(why) => {
                slot.sched.store(sched::ENDED, Ordering::Release);
                self.end(slot, lp, why);
            }
        }
    }
}
