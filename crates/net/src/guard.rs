//! The one place that catches a panic from the application's code.
//!
//! A callback that panics must not take its loop (and every other connection of that
//! loop) down with it. Every call into user code that can panic (connection callbacks,
//! functions queued onto a connection, a client's connect-failed callback) goes through
//! [`catch_user_panic`]; it logs the panic once, naming who and what, and the caller
//! decides the consequence (a connection closes with
//! [`CloseReason::Panic`](crate::CloseReason::Panic)).

use std::panic::AssertUnwindSafe;

use duo_reactor::LogLimiter;

/// One kind for every caught panic, whoever's callback it was: a peer that can make one
/// callback panic can usually make it panic again.
static PANICS: LogLimiter = LogLimiter::new("panics in callbacks");

/// Runs `f(target)`; if it panics, logs `"{name(target)}: {what} panicked"` at `error`
/// level (rate-limited: see [`duo_reactor::log_limit`]) and returns `None`.
///
/// The panic is not resumed: the loop goes on. `target` is handed to `f` and, after a
/// panic, to `name`, so that the name can be taken from the same state `f` used
/// mutably (only formatted after a panic). Whatever `f` left half-done in `target` is the caller's to clean up (a
/// connection is closed, which drops its buffers).
pub(crate) fn catch_user_panic<T: ?Sized, R>(
    target: &mut T,
    f: impl FnOnce(&mut T) -> R,
    name: impl FnOnce(&T) -> String,
    what: &str,
) -> Option<R> {
    match duo_reactor::catch_panic(AssertUnwindSafe(|| f(&mut *target))) {
        Ok(r) => Some(r),
        Err(_) => {
            duo_reactor::log_limited!(
                limiter: PANICS,
                log::Level::Error,
                "{}: {what} panicked",
                name(target)
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::catch_user_panic;

    #[test]
    fn returns_the_value_or_none_after_a_panic() {
        let mut n = 1;
        assert_eq!(
            catch_user_panic(&mut n, |n| *n + 1, |_| "x".into(), "adding"),
            Some(2)
        );
        let r: Option<()> = catch_user_panic(
            &mut n,
            |n| {
                *n = 5;
                panic!("boom")
            },
            |n| format!("n={n}"),
            "a test closure",
        );
        assert_eq!(r, None);
        assert_eq!(n, 5, "the state the closure changed is kept for the caller");
    }
}
