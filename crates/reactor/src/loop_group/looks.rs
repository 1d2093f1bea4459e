//! [`Looks`]: what a thread of a [`LoopGroup`](super::LoopGroup) remembers of its looks
//! at the other threads' loops ([`LoopSharing::Owned`](super::LoopSharing::Owned)), for
//! the spin detector of the loops it helps.

use std::os::fd::BorrowedFd;
use std::time::Duration;

/// The loops a thread's turns at its previous look at each other thread's set left
/// ready.
///
/// A helper's look does not sleep, and it comes a help delay or more after the previous
/// one: the time since a helped loop's previous turn says nothing about whether the loop
/// slept meanwhile. A loop that its turn at the previous look left ready (its epoll set
/// still had events ready just after the turn: a readiness nobody consumes, a storm of
/// wake-ups) and that this look finds ready again is taken as ready all along, as for a
/// wait that returned at once. One its turn left not ready (it consumed its readiness,
/// and new traffic made it ready again in between), or that the previous look did not
/// run, is judged by the time since its previous turn, as before: finding a loop ready at
/// two looks in a row does not make it ready all along.
#[derive(Debug)]
pub(super) struct Looks {
    /// Per set (by home index): the loops left ready by the turns of the previous look.
    ready: Vec<Vec<u64>>,
    /// The loops the turns of the look under way left ready so far.
    now: Vec<u64>,
}

impl Looks {
    /// No looks yet at any of `homes` sets.
    pub(super) fn new(homes: usize) -> Looks {
        Looks {
            ready: vec![Vec::new(); homes],
            now: Vec::new(),
        }
    }

    /// A look at a set begins.
    pub(super) fn begin(&mut self) {
        self.now.clear();
    }

    /// The look at set `home` found loop `token` ready: how long the loop waited, for its
    /// turn (`EventLoop::turn`): no time if its turn at the previous look at that set left
    /// it ready, else unknown (`None`).
    pub(super) fn found(&self, home: usize, token: u64) -> Option<Duration> {
        self.ready
            .get(home)
            .is_some_and(|before| before.contains(&token))
            .then_some(Duration::ZERO)
    }

    /// This look ran a turn of loop `token`, whose epoll descriptor is `fd`: remembered
    /// for the next look if the turn left it ready (one system call, on helped turns
    /// only).
    pub(super) fn turn_ran(&mut self, token: u64, fd: BorrowedFd<'_>) {
        if duo_sys::has_ready_events(fd).unwrap_or(false) {
            self.now.push(token);
        }
    }

    /// The look at set `home` is over: what its turns left ready is the previous look's
    /// from now on.
    pub(super) fn end(&mut self, home: usize) {
        if let Some(before) = self.ready.get_mut(home) {
            std::mem::swap(before, &mut self.now);
        }
    }
}
