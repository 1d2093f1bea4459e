//! [`Looks`]: what a thread of a [`LoopGroup`](super::LoopGroup) remembers of its looks
//! at the other threads' loops ([`LoopSharing::Owned`](super::LoopSharing::Owned)), for
//! the spin detector of the loops it helps.

use std::time::Duration;

/// The loops a thread found ready at its previous look at each other thread's set.
///
/// A helper's look does not sleep, and it comes a help delay or more after the previous
/// one: the time since a helped loop's previous turn says nothing about whether the loop
/// slept meanwhile. A loop found ready at two looks in a row (its previous turn between
/// them left it ready, or it became ready again) is taken as ready all along, as for a
/// wait that returned at once; one the previous look did not find ready is judged by the
/// time since its previous turn, as before.
#[derive(Debug)]
pub(super) struct Looks {
    /// Per set (by home index): the loops found ready at this thread's previous look.
    ready: Vec<Vec<u64>>,
    /// The loops the look under way found ready so far.
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
    /// turn (`EventLoop::turn`): no time if the previous look at that set found it ready
    /// too, else unknown (`None`).
    pub(super) fn found(&mut self, home: usize, token: u64) -> Option<Duration> {
        self.now.push(token);
        self.ready
            .get(home)
            .is_some_and(|before| before.contains(&token))
            .then_some(Duration::ZERO)
    }

    /// The look at set `home` is over: what it found is the previous look's from now on.
    pub(super) fn end(&mut self, home: usize) {
        if let Some(before) = self.ready.get_mut(home) {
            std::mem::swap(before, &mut self.now);
        }
    }
}
