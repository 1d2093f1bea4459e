//! [`catch_panic`]: `catch_unwind` that tells a panic hook the panic will be caught.
//!
//! A panic hook runs before unwinding starts, so it cannot know whether someone will catch
//! the panic. duo catches the panics of user callbacks (one bad connection must not take
//! its loop down) and of worker jobs, and a hook that rate-limits their reports must never
//! silence a panic that nobody catches (it ends a thread or the process: its report is
//! all there is). Catching through [`catch_panic`] marks the thread for the time of the
//! call; a hook asks [`panic_will_be_caught`].

use std::cell::Cell;
use std::panic::{catch_unwind, UnwindSafe};

thread_local! {
    /// How many [`catch_panic`] calls are running on this thread, and whether the
    /// innermost one has already been handed a panic (a second one, raised while the
    /// first unwinds, aborts: nobody catches it).
    static CATCHING: Cell<(u32, bool)> = const { Cell::new((0, false)) };
}

/// [`std::panic::catch_unwind`], with the thread marked as catching for the time of the
/// call (see [`panic_will_be_caught`]).
///
/// ```
/// let r = duo_reactor::catch_panic(|| 41 + 1);
/// assert_eq!(r.ok(), Some(42));
/// assert!(duo_reactor::catch_panic(|| panic!("caught")).is_err());
/// ```
pub fn catch_panic<R>(f: impl FnOnce() -> R + UnwindSafe) -> std::thread::Result<R> {
    let outer = CATCHING.with(|c| {
        let outer = c.get();
        c.set((outer.0 + 1, false));
        outer
    });
    let r = catch_unwind(f);
    CATCHING.with(|c| c.set(outer));
    r
}

/// For a panic hook, once per panic: whether the panic being raised on this thread will
/// be caught by a [`catch_panic`] further up the stack. False for a panic outside any
/// (it ends the thread, or the process), and for a second panic raised while the first
/// one unwinds (the process aborts).
pub fn panic_will_be_caught() -> bool {
    CATCHING.with(|c| {
        let (depth, claimed) = c.get();
        if depth == 0 || claimed {
            return false;
        }
        c.set((depth, true));
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_first_panic_inside_catch_panic_is_caught() {
        assert!(!panic_will_be_caught(), "outside any catch_panic");
        let r = catch_panic(|| {
            let first = panic_will_be_caught();
            let second = panic_will_be_caught();
            let nested = catch_panic(panic_will_be_caught);
            (first, second, nested.ok())
        });
        assert_eq!(r.ok(), Some((true, false, Some(true))));
        assert!(!panic_will_be_caught());
    }
}
