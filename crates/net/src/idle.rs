//! Idle-connection eviction: one [`TimingWheel`] per server per loop, kept as a loop-local
//! value and ticked by a repeating timer (seed 004, muduo's idleconnection example).
//!
//! Every read refreshes the connection's token in O(1); a connection that sees no bytes
//! for the timeout falls off the wheel and is closed. Tokens carry a generation, so a
//! token of a connection that closed and whose slot was reused cannot close the new one.

use std::collections::HashMap;
use std::time::Duration;

use duo_reactor::{EventLoop, TimerId, TimingWheel, Token};

use crate::connection::Conn;

struct Wheel {
    wheel: TimingWheel<Token>,
    timer: TimerId,
    expired: Vec<Token>,
}

/// The idle wheels of one loop, by server key.
#[derive(Default)]
pub(crate) struct IdleWheels {
    wheels: HashMap<u64, Wheel>,
}

/// Tick length and bucket count for a timeout: at most 1 s per tick, at least 8 buckets
/// for short timeouts, so a connection closes between `timeout` and `timeout + tick`.
pub(crate) fn wheel_shape(timeout: Duration) -> (Duration, usize) {
    let tick = (timeout / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let buckets = timeout.as_nanos().div_ceil(tick.as_nanos()).max(1) as usize;
    (tick, buckets)
}

impl IdleWheels {
    /// Starts an idle wheel for server `key` on this loop.
    pub(crate) fn install(lp: &mut EventLoop, key: u64, timeout: Duration) {
        if lp.local::<IdleWheels>().is_none() {
            lp.insert_local(IdleWheels::default());
        }
        let (tick, buckets) = wheel_shape(timeout);
        let timer = lp.run_every(tick, move |lp| IdleWheels::tick(lp, key));
        lp.with_local::<IdleWheels, _>(|_, w| {
            w.wheels.insert(
                key,
                Wheel {
                    wheel: TimingWheel::new(buckets),
                    timer,
                    expired: Vec::new(),
                },
            )
        });
    }

    /// Stops the idle wheel of server `key` on this loop.
    pub(crate) fn uninstall(lp: &mut EventLoop, key: u64) {
        if let Some(Some(w)) = lp.with_local::<IdleWheels, _>(|_, w| w.wheels.remove(&key)) {
            lp.cancel(w.timer);
        }
    }

    /// Marks `token` active now.
    pub(crate) fn refresh(lp: &mut EventLoop, key: u64, token: Token) {
        lp.with_local::<IdleWheels, _>(|_, w| {
            if let Some(w) = w.wheels.get_mut(&key) {
                w.wheel.insert(token);
            }
        });
    }

    /// Stops tracking `token` (its connection closed).
    pub(crate) fn forget(lp: &mut EventLoop, key: u64, token: Token) {
        lp.with_local::<IdleWheels, _>(|_, w| {
            if let Some(w) = w.wheels.get_mut(&key) {
                w.wheel.remove(&token);
            }
        });
    }

    fn tick(lp: &mut EventLoop, key: u64) {
        let expired = lp
            .with_local::<IdleWheels, _>(|_, w| {
                w.wheels.get_mut(&key).map(|w| {
                    let mut out = std::mem::take(&mut w.expired);
                    w.wheel.tick_into(&mut out);
                    out
                })
            })
            .flatten();
        let Some(mut expired) = expired else { return };
        for &token in &expired {
            lp.with_handler::<Conn, _>(token, |lp, ch, conn| conn.idle_timeout(lp, ch));
        }
        expired.clear();
        lp.with_local::<IdleWheels, _>(|_, w| {
            if let Some(w) = w.wheels.get_mut(&key) {
                w.expired = expired;
            }
        });
    }
}
