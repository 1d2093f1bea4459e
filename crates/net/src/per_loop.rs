//! The net layer's state of one loop, [`NetLoop`]: installed in one place, typed, and
//! owned by the loop (a loop-local value; only the loop thread touches it).
//!
//! It holds the loop's services that are not one connection's:
//!
//! - **Idle wheels**, one per server that has an idle timeout (a [`TimingWheel`] ticked by
//!   a repeating timer, muduo's idle-connection eviction). Every read refreshes the
//!   connection's token in O(1); a connection that sees no traffic for the timeout falls
//!   off the wheel and is closed. Tokens carry a generation, so the token of a connection
//!   that closed and whose slot was reused cannot close the new one. The wheel ticks every
//!   1/8 of the timeout (10 ms to 1 s), so a silent connection closes between the timeout
//!   and the timeout plus one tick. Each read, and each write of queued output (a slow
//!   download is not idle), refreshes the connection; with `idle_refresh_on_read(false)`
//!   only `ConnCtx::refresh_idle` does (the bank refreshes on complete requests, so a
//!   slow-loris peer that trickles bytes is evicted too). Connections that fall off
//!   together (a burst of clients that went quiet at once) are closed
//!   [`IDLE_CLOSES_PER_BATCH`] per loop iteration, so that the loop serves its other
//!   connections between batches instead of stalling for the whole burst.
//! - **Buffer trimming**: connections take their blocks from a [`BufPool`], which keeps
//!   freed blocks for reuse: after 10 000 clients each sent a megabyte and left, the pool
//!   would hold that memory for good. Each loop a server runs on therefore checks the
//!   server's pool on a repeating timer, and when the free blocks exceed both
//!   [`TRIM_FLOOR`] and the blocks in use (the burst is over), returns the shared free
//!   lists and its own thread's cache to the system ([`BufPool::trim`], then
//!   `malloc_trim` through [`duo_sys::release_free_heap`]). Under steady load the free
//!   blocks are the thread caches a loop reuses at once, few next to what is in use, and
//!   nothing is trimmed. One timer per loop, however many servers share it: the first
//!   server to start on a loop installs it (with its interval), the last to stop removes
//!   it; it trims every pool its servers use.
//!
//! - **Visit budget**: the visits of every connection of a server
//!   ([`ServerConnections::for_each`](crate::ServerConnections::for_each), a broadcast, a
//!   graceful shutdown) run in slices, and all of a loop's visits together look at
//!   [`VISITS_PER_ITERATION`] of its channels per loop iteration: ten broadcasts queued
//!   together do not visit ten times that.
//!
//! Dependencies run one way: connections and servers use this module, never the reverse;
//! what an expired idle token means (closing a connection) is passed in as a function.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use duo_buffer::BufPool;
use duo_reactor::{EventLoop, TimerId, TimingWheel, Token};

/// Free pool memory below which a loop does not bother trimming: 2 MiB.
pub(crate) const TRIM_FLOOR: usize = 2 << 20;

/// What an expired idle token means: called with each one.
pub(crate) type OnIdle = fn(&mut EventLoop, Token);

/// Idle connections a loop closes per iteration at most: about 3 ms of closing on this
/// project's 2-core test machine (release build; 10 000 connections expiring together
/// held their loop 61 ms in one callback before), after which the loop's other events
/// and timers get their turn.
pub(crate) const IDLE_CLOSES_PER_BATCH: usize = 128;

/// Channels the visits of every connection look at on one loop per iteration, all visits
/// together: a loop with 10 000 connections serves its other events between slices
/// instead of stalling for a whole visit.
pub(crate) const VISITS_PER_ITERATION: usize = 128;

/// The net layer's state of one loop.
#[derive(Default)]
pub(crate) struct NetLoop {
    /// Idle wheels by server key.
    idle: HashMap<u64, IdleWheel>,
    /// The buffer-trim timer, if a server on this loop trims.
    trim: Option<TrimTimer>,
    /// The iteration the visit budget counts for ([`EventLoop::iteration`]: not its poll
    /// time, which two iterations may share on a coarse clock, the second then finding
    /// the budget spent and visiting nothing), and what is left of it.
    visits: Option<(u64, usize)>,
}

struct IdleWheel {
    wheel: TimingWheel<Token>,
    timer: TimerId,
    /// Tokens fallen off the wheel and not yet closed, oldest first.
    expired: VecDeque<Token>,
    /// The batch being closed (reused: no allocation per batch).
    batch: Vec<Token>,
    /// A batch is queued on the loop (it queues the next one while tokens are left).
    closing: bool,
}

struct TrimTimer {
    timer: TimerId,
    /// The pools trimmed, each with the number of servers on this loop that use it.
    pools: Vec<(BufPool, usize)>,
}

/// Tick length and bucket count for a timeout: at most 1 s per tick, at least 8 buckets
/// for short timeouts, so a connection closes between `timeout` and `timeout + tick`.
/// Past [`TimingWheel::MAX_BUCKETS`] seconds (about 18 hours) the tick grows instead
/// (`timeout / MAX_BUCKETS`), so the wheel still spans the whole timeout.
fn wheel_shape(timeout: Duration) -> (Duration, usize) {
    let most = TimingWheel::<u64>::MAX_BUCKETS as u128;
    let mut tick = (timeout / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let shortest = timeout.as_nanos().div_ceil(most);
    if tick.as_nanos() < shortest {
        const NANOS: u128 = 1_000_000_000;
        let secs = u64::try_from(shortest / NANOS).unwrap_or(u64::MAX);
        tick = Duration::new(secs, (shortest % NANOS) as u32);
    }
    let buckets = timeout.as_nanos().div_ceil(tick.as_nanos()).clamp(1, most) as usize;
    (tick, buckets)
}

impl NetLoop {
    /// Runs `f` on this loop's state, installing it first if needed.
    fn with<R>(lp: &mut EventLoop, f: impl FnOnce(&mut EventLoop, &mut NetLoop) -> R) -> Option<R> {
        if lp.local::<NetLoop>().is_none() {
            lp.insert_local(NetLoop::default());
        }
        lp.with_local::<NetLoop, _>(f)
    }

    /// Runs `f` on this loop's state if it is installed (a loop no server or client of
    /// this crate has used has none).
    fn with_existing<R>(lp: &mut EventLoop, f: impl FnOnce(&mut NetLoop) -> R) -> Option<R> {
        lp.with_local::<NetLoop, _>(|_, n| f(n))
    }

    /// Takes up to `want` of this iteration's visit budget; 0 once it is spent (the visit
    /// then waits for the next iteration).
    pub(crate) fn take_visits(lp: &mut EventLoop, want: usize) -> usize {
        let iteration = lp.iteration();
        NetLoop::with(lp, |_, n| {
            let left = match &mut n.visits {
                Some((at, left)) if *at == iteration => left,
                other => &mut other.insert((iteration, VISITS_PER_ITERATION)).1,
            };
            let take = want.min(*left);
            *left -= take;
            take
        })
        .unwrap_or_else(|| want.min(VISITS_PER_ITERATION))
    }

    /// Starts an idle wheel for server `key` on this loop; `on_idle` is called with each
    /// token that expires.
    pub(crate) fn idle_install(lp: &mut EventLoop, key: u64, timeout: Duration, on_idle: OnIdle) {
        let (tick, buckets) = wheel_shape(timeout);
        let timer = lp.run_every(tick, move |lp| NetLoop::idle_tick(lp, key, on_idle));
        NetLoop::with(lp, |_, n| {
            n.idle.insert(
                key,
                IdleWheel {
                    wheel: TimingWheel::new(buckets),
                    timer,
                    expired: VecDeque::new(),
                    batch: Vec::new(),
                    closing: false,
                },
            )
        });
    }

    /// Stops the idle wheel of server `key` on this loop.
    pub(crate) fn idle_uninstall(lp: &mut EventLoop, key: u64) {
        if let Some(Some(w)) = NetLoop::with_existing(lp, |n| n.idle.remove(&key)) {
            lp.cancel(w.timer);
        }
    }

    /// Marks `token` active now on server `key`'s wheel.
    pub(crate) fn idle_refresh(lp: &mut EventLoop, key: u64, token: Token) {
        NetLoop::with_existing(lp, |n| {
            if let Some(w) = n.idle.get_mut(&key) {
                w.wheel.insert(token);
            }
        });
    }

    /// Stops tracking `token` (its connection closed).
    pub(crate) fn idle_forget(lp: &mut EventLoop, key: u64, token: Token) {
        NetLoop::with_existing(lp, |n| {
            if let Some(w) = n.idle.get_mut(&key) {
                w.wheel.remove(&token);
            }
        });
    }

    /// The wheel's tick: what fell off joins the tokens to close, and a batch is queued
    /// unless one already is.
    fn idle_tick(lp: &mut EventLoop, key: u64, on_idle: OnIdle) {
        let start = NetLoop::with_existing(lp, |n| {
            n.idle.get_mut(&key).is_some_and(|w| {
                w.wheel.tick_into(&mut w.expired);
                !w.expired.is_empty() && !std::mem::replace(&mut w.closing, true)
            })
        });
        if start == Some(true) {
            lp.queue_in_loop(move |lp| NetLoop::idle_close_batch(lp, key, on_idle));
        }
    }

    /// Closes up to [`IDLE_CLOSES_PER_BATCH`] expired connections, and queues the next
    /// batch if more are left: a function a queued function queues runs in the next
    /// iteration, after that iteration's events. A token whose connection was active
    /// again meanwhile is back on the wheel and stays open. (Not marked queued while it
    /// runs: should a close panic, the next tick queues a batch again.)
    fn idle_close_batch(lp: &mut EventLoop, key: u64, on_idle: OnIdle) {
        let batch = NetLoop::with_existing(lp, |n| {
            n.idle.get_mut(&key).map(|w| {
                w.closing = false;
                let take = w.expired.len().min(IDLE_CLOSES_PER_BATCH);
                let mut batch = std::mem::take(&mut w.batch);
                let wheel = &w.wheel;
                batch.extend(w.expired.drain(..take).filter(|t| !wheel.contains(t)));
                batch
            })
        })
        .flatten();
        // The server's wheel is gone (it stopped): nothing left to close.
        let Some(mut batch) = batch else { return };
        for &token in &batch {
            on_idle(lp, token);
        }
        batch.clear();
        let more = NetLoop::with_existing(lp, |n| {
            n.idle.get_mut(&key).is_some_and(|w| {
                w.batch = batch;
                if w.expired.is_empty() {
                    // A burst is over: do not keep its size for good.
                    w.expired.shrink_to(IDLE_CLOSES_PER_BATCH);
                }
                w.closing = !w.expired.is_empty();
                w.closing
            })
        });
        if more == Some(true) {
            lp.queue_in_loop(move |lp| NetLoop::idle_close_batch(lp, key, on_idle));
        }
    }

    /// One more server on this loop trims `pool`: starts the loop's trim timer (every
    /// `interval`) if it is the first.
    pub(crate) fn trim_install(lp: &mut EventLoop, pool: BufPool, interval: Duration) {
        NetLoop::with(lp, |lp, n| {
            let t = n.trim.get_or_insert_with(|| TrimTimer {
                timer: lp.run_every(interval, NetLoop::trim_tick),
                pools: Vec::new(),
            });
            match t.pools.iter_mut().find(|(p, _)| *p == pool) {
                Some((_, users)) => *users += 1,
                None => t.pools.push((pool, 1)),
            }
        });
    }

    /// A server stopped trimming `pool` on this loop; the last user of the timer cancels it.
    pub(crate) fn trim_uninstall(lp: &mut EventLoop, pool: BufPool) {
        let cancel = NetLoop::with_existing(lp, |n| {
            let t = n.trim.as_mut()?;
            if let Some(i) = t.pools.iter().position(|(p, _)| *p == pool) {
                t.pools[i].1 -= 1;
                if t.pools[i].1 == 0 {
                    t.pools.swap_remove(i);
                }
            }
            if t.pools.is_empty() {
                n.trim.take().map(|t| t.timer)
            } else {
                None
            }
        })
        .flatten();
        if let Some(timer) = cancel {
            lp.cancel(timer);
        }
    }

    fn trim_tick(lp: &mut EventLoop) {
        let pools: Vec<BufPool> = NetLoop::with_existing(lp, |n| {
            n.trim
                .as_ref()
                .map_or_else(Vec::new, |t| t.pools.iter().map(|(p, _)| *p).collect())
        })
        .unwrap_or_default();
        for pool in pools {
            trim(pool);
        }
    }
}

/// Trims `pool` if its free blocks outweigh the blocks in use and the floor; returns the
/// bytes released.
pub(crate) fn trim(pool: BufPool) -> usize {
    let stats = pool.stats();
    let free = stats.free_bytes();
    if free <= TRIM_FLOOR || free <= stats.in_use_bytes() {
        return 0;
    }
    let released = pool.trim();
    if released > 0 {
        // The pool's blocks went back to the C allocator; let it return the pages too
        // (its per-thread arenas otherwise keep them).
        duo_sys::release_free_heap();
    }
    log::debug!(
        "buffer pool: released {} KiB ({} KiB free, {} KiB in use before)",
        released >> 10,
        free >> 10,
        stats.in_use_bytes() >> 10
    );
    released
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use duo_buffer::{BufPool, PoolConfig};
    use duo_reactor::{EventLoop, Token};

    use super::{trim, wheel_shape, NetLoop, IDLE_CLOSES_PER_BATCH};
    use duo_reactor::TimingWheel;

    /// A burst of tokens falls off the wheel together; while the first batch is being
    /// closed, the connection of a token waiting in a later batch is active again (its
    /// token back on the wheel): it is not closed with the burst.
    #[test]
    fn a_connection_active_again_before_its_batch_stays_open() {
        const KEY: u64 = 7;
        const BURST: u64 = 2 * IDLE_CLOSES_PER_BATCH as u64 + 100;
        const REVIVED: u64 = BURST - 1;
        static CLOSED: Mutex<Vec<u64>> = Mutex::new(Vec::new());
        fn on_idle(lp: &mut EventLoop, token: Token) {
            let mut closed = CLOSED.lock().unwrap();
            if closed.is_empty() {
                NetLoop::idle_refresh(lp, KEY, Token::from_u64(REVIVED));
            }
            closed.push(token.as_u64());
            if closed.len() as u64 == BURST - 1 {
                lp.quit();
            }
        }
        let mut lp = EventLoop::new().unwrap();
        NetLoop::idle_install(&mut lp, KEY, Duration::from_millis(80), on_idle);
        for t in 0..BURST {
            NetLoop::idle_refresh(&mut lp, KEY, Token::from_u64(t));
        }
        // The revived token expires again 80 ms after the burst: long after it was closed.
        lp.run_after(duo_testkit::LIMIT, |lp| lp.quit());
        lp.run().unwrap();
        let closed = CLOSED.lock().unwrap();
        assert_eq!(closed.len() as u64, BURST - 1, "the burst, all but one");
        assert!(!closed.contains(&REVIVED));
        let tracked = NetLoop::with_existing(&mut lp, |n| {
            n.idle[&KEY].wheel.contains(&Token::from_u64(REVIVED))
        });
        assert_eq!(
            tracked,
            Some(true),
            "the revived token is on the wheel again"
        );
    }

    fn pool() -> BufPool {
        // No thread cache: every free block is on the shared lists, which trim empties.
        BufPool::new(PoolConfig {
            memory_cap: None,
            thread_cache_bytes: 0,
        })
    }

    #[test]
    fn trims_only_a_burst_that_is_over() {
        const BLOCK: usize = 64 << 10;
        let pool = pool();
        let mut burst: Vec<_> = (0..128).map(|_| pool.alloc(BLOCK).unwrap()).collect();
        assert_eq!(trim(pool), 0, "all 8 MiB in use: nothing to trim");
        burst.truncate(112);
        assert_eq!(trim(pool), 0, "1 MiB free is under the floor");
        burst.truncate(80);
        assert_eq!(trim(pool), 0, "3 MiB free, 5 MiB in use: load, not a burst");
        burst.truncate(16);
        assert_eq!(
            trim(pool),
            112 * BLOCK,
            "7 MiB free, 1 MiB in use: released"
        );
        assert_eq!(pool.stats().free_bytes(), 0);
        assert_eq!(pool.stats().in_use_bytes(), 16 * BLOCK);
        drop(burst);
        assert_eq!(trim(pool), 0, "1 MiB free is under the floor again");
    }

    /// The wheel of every idle timeout closes a connection between the timeout and one
    /// tick after it: never early, and never cut short by the wheel's bucket limit (a day
    /// was cut to 65 536 s, about 18 hours, with 1 s ticks).
    #[test]
    fn the_wheel_shape_covers_every_timeout() {
        let secs = Duration::from_secs;
        for timeout in [
            Duration::from_millis(1),
            Duration::from_millis(80),
            secs(1),
            secs(60),
            secs(65_536),
            secs(65_537),
            secs(86_400),
            secs(7 * 86_400),
            duo_reactor::FOREVER,
            Duration::MAX,
        ] {
            let (tick, buckets) = wheel_shape(timeout);
            assert!(
                (1..=TimingWheel::<u64>::MAX_BUCKETS).contains(&buckets),
                "{timeout:?}"
            );
            // (Past `Duration::MAX`, the wheel spans more than any timeout.)
            let Some(covered) = tick.checked_mul(u32::try_from(buckets).unwrap()) else {
                continue;
            };
            assert!(
                covered >= timeout,
                "{timeout:?}: {buckets} ticks of {tick:?}"
            );
            assert!(
                covered - timeout <= tick,
                "{timeout:?}: {buckets} ticks of {tick:?}"
            );
        }
    }
}
