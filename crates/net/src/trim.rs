//! Gives pooled buffer memory back to the system after a burst.
//!
//! Connections take their blocks from the process-wide [`BufPool`], which keeps freed
//! blocks for reuse: after 10 000 clients each sent a megabyte and left, the pool would
//! hold that memory for good. Each loop a server runs on therefore checks the pool on a
//! repeating timer, and when the free blocks exceed both [`TRIM_FLOOR`] and the blocks in
//! use (the burst is over), returns the shared free lists and its own thread's cache to
//! the system ([`BufPool::trim`], then `malloc_trim` through
//! [`duo_sys::release_free_heap`]). Under steady load the free blocks are the thread caches
//! a loop reuses at once, few next to what is in use, and nothing is trimmed.
//!
//! One timer per loop, however many servers share it: the first server to start on a loop
//! installs it (with its interval), the last to stop removes it.

use std::time::Duration;

use duo_buffer::BufPool;
use duo_reactor::{EventLoop, TimerId};

/// Free pool memory below which a loop does not bother trimming: 2 MiB.
pub(crate) const TRIM_FLOOR: usize = 2 << 20;

/// The trim timer of one loop and how many servers use it.
struct PoolTrim {
    timer: TimerId,
    users: usize,
}

/// Starts trimming on this loop every `interval` (or counts one more user of the timer a
/// previous server installed).
pub(crate) fn install(lp: &mut EventLoop, interval: Duration) {
    if let Some(()) = lp.with_local::<PoolTrim, _>(|_, t| t.users += 1) {
        return;
    }
    let timer = lp.run_every(interval, |_| {
        trim(BufPool::global());
    });
    lp.insert_local(PoolTrim { timer, users: 1 });
}

/// One server stopped using this loop's trim timer; the last one cancels it.
pub(crate) fn uninstall(lp: &mut EventLoop) {
    let last = lp.with_local::<PoolTrim, _>(|_, t| {
        t.users = t.users.saturating_sub(1);
        (t.users == 0).then_some(t.timer)
    });
    if let Some(Some(timer)) = last {
        lp.cancel(timer);
        let _ = lp.remove_local::<PoolTrim>();
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
    use duo_buffer::{BufPool, PoolConfig};

    use super::trim;

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
}
