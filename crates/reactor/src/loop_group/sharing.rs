//! [`LoopSharing`]: how a [`LoopGroup`](super::LoopGroup)'s threads share its loops,
//! and its names on a command line.

use std::fmt;

/// How a [`LoopGroup`](super::LoopGroup)'s threads share its loops. Either way a
/// connection belongs to one loop, which one thread at a time runs; they differ in which
/// thread runs a ready loop's next turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoopSharing {
    /// Each loop has an owner thread (loop `i` is thread `i mod N`'s), which waits on its
    /// own loops and runs the ready ones, a batch per wait, with nothing to re-arm (its
    /// loops are level-triggered in its own epoll set). A thread that has made no
    /// progress for [`LoopGroup::steal_after`](super::LoopGroup::steal_after) (preempted, blocked in a callback, or
    /// woken but given no core) gets help: another thread runs turns of its ready loops.
    /// So a loop per thread's cost, and a request waits for a core for about the help
    /// delay (rounded up to whole milliseconds when the thread that helps was asleep, up
    /// to 10 ms if it went to sleep before the stall began) when another thread of the
    /// group has one, longer when none has (a work-stealing runtime's tail), or when its
    /// own loop's turn is under way on a thread that lost its core. The default.
    #[default]
    Owned,
    /// No owners: every loop sits one-shot in one epoll set, each thread takes one ready
    /// loop per wait, runs its turn and re-arms it. A thread never holds readiness it is
    /// not serving, which gives the lowest tail, at the price of a wait and an `epoll_ctl`
    /// per turn (more CPU per request when turns are small).
    Any,
}

impl LoopSharing {
    /// The name [`Display`](fmt::Display) prints and [`FromStr`](std::str::FromStr)
    /// reads: `owned` or `any` (what a command line spells, e.g. echo's and the bank's
    /// `--loop-sharing`).
    pub const fn name(self) -> &'static str {
        match self {
            LoopSharing::Owned => "owned",
            LoopSharing::Any => "any",
        }
    }
}

impl fmt::Display for LoopSharing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a [`LoopSharing`] (neither `owned` nor `any`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown loop sharing {0:?}: expected `owned` or `any`")]
pub struct ParseLoopSharingError(String);

impl std::str::FromStr for LoopSharing {
    type Err = ParseLoopSharingError;

    /// Reads `owned` or `any` (ASCII case ignored).
    ///
    /// ```
    /// use duo_reactor::LoopSharing;
    ///
    /// assert_eq!("any".parse(), Ok(LoopSharing::Any));
    /// assert_eq!(LoopSharing::Owned.to_string().parse(), Ok(LoopSharing::Owned));
    /// assert!("sometimes".parse::<LoopSharing>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<LoopSharing, ParseLoopSharingError> {
        [LoopSharing::Owned, LoopSharing::Any]
            .into_iter()
            .find(|sharing| sharing.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseLoopSharingError(s.to_owned()))
    }
}
