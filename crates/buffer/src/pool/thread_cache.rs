//! The per-thread caches of free blocks, and, for a pool with a memory cap, the allowance
//! that bounds what all of them keep together.
//!
//! # Why caches under a cap need an allowance
//!
//! A thread's cache is reachable only from its thread: another thread cannot take blocks
//! from it without a lock on every allocation and free. So free blocks kept by a thread
//! that has gone quiet (an I/O loop whose connections are idle, a worker that freed a
//! response) stay there until it uses the pool again or exits. Without a bound, the
//! caches could keep the whole cap, and every other thread would get
//! [`PoolError::Exhausted`](super::PoolError::Exhausted) with nothing in use.
//!
//! With a cap, a cache therefore keeps a block only within an allowance taken from the
//! pool's [cache share](super::CACHE_SHARE_DIVISOR) (an eighth of the cap) in chunks, on
//! the paths that already leave the fast path: a free into a cache at its allowance, a
//! refill of an empty cache, a trim, thread exit. An empty class gives its allowance back
//! at its next refill, a thread its whole allowance when it exits. The fast path compares
//! the list's length with the allowance instead of the configured bound: no more work
//! than without a cap. Without a cap the allowance is the configured bound from the start
//! and nothing here touches the shared counter.

use std::cell::RefCell;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use super::{class_size, release_order, CacheCounters, PoolInner, CLASS_COUNT};

/// One thread's free blocks for one pool.
pub(super) struct ThreadCache {
    pool: &'static PoolInner,
    lists: [Vec<Box<[u8]>>; CLASS_COUNT],
    /// Per class, how many blocks the list may keep: the configured bound without a cap;
    /// with one, the blocks' worth of the pool's cache share this thread holds (at most
    /// the bound). A list never holds more.
    room: [usize; CLASS_COUNT],
    counters: Arc<CacheCounters>,
}

impl ThreadCache {
    fn new(pool: &'static PoolInner) -> ThreadCache {
        let counters = Arc::new(CacheCounters {
            free: std::array::from_fn(|_| AtomicUsize::new(0)),
        });
        pool.caches.lock().push(Arc::clone(&counters));
        ThreadCache {
            pool,
            lists: std::array::from_fn(|c| {
                Vec::with_capacity(pool.cache_limits.get(c).copied().unwrap_or(0))
            }),
            room: if pool.bounded_caches {
                [0; CLASS_COUNT]
            } else {
                pool.cache_limits
            },
            counters,
        }
    }

    /// Publishes the free count of `class` (single writer: a plain store, no RMW).
    fn publish(&self, class: usize) {
        if let (Some(list), Some(counter)) = (self.lists.get(class), self.counters.free.get(class))
        {
            counter.store(list.len(), Relaxed);
        }
    }

    pub(super) fn pop(&mut self, class: usize) -> Option<Box<[u8]>> {
        let list = self.lists.get_mut(class)?;
        if list.is_empty() {
            return self.refill_and_pop(class);
        }
        let block = list.pop();
        self.publish(class);
        block
    }

    /// An empty list: refills up to half the bound from the shared list in one lock (with
    /// a cap, no more than the allowance it can get, besides the block handed out).
    #[cold]
    fn refill_and_pop(&mut self, class: usize) -> Option<Box<[u8]>> {
        let want = self
            .pool
            .cache_limits
            .get(class)
            .copied()
            .unwrap_or(0)
            .div_ceil(2);
        if want == 0 {
            return None;
        }
        let mut shared = self.pool.classes.get(class)?.free.lock();
        let available = shared.len().min(want);
        // The list is empty: its allowance is set anew to what the refill keeps.
        let kept = self.set_room(class, available.saturating_sub(1));
        let take = (kept + 1).min(available);
        let start = shared.len().saturating_sub(take);
        let list = self.lists.get_mut(class)?;
        list.extend(shared.drain(start..));
        drop(shared);
        let block = list.pop();
        self.publish(class);
        block
    }

    /// Takes the block out of `slot` if the cache has room (after moving half of a full
    /// list to the shared list, or taking more allowance).
    pub(super) fn push(&mut self, class: usize, slot: &mut Option<Box<[u8]>>) {
        let (Some(list), Some(&room)) = (self.lists.get(class), self.room.get(class)) else {
            return;
        };
        if list.len() >= room && !self.make_room(class) {
            return;
        }
        if let (Some(list), Some(block)) = (self.lists.get_mut(class), slot.take()) {
            list.push(block);
        }
        self.publish(class);
    }

    /// A list at its room: asks for more allowance (with a cap), else moves half of it to
    /// the shared list. False if the block must go to the shared list (no allowance).
    #[cold]
    fn make_room(&mut self, class: usize) -> bool {
        let limit = self.pool.cache_limits.get(class).copied().unwrap_or(0);
        let len = self.lists.get(class).map_or(0, Vec::len);
        if limit == 0 {
            return false;
        }
        if self.room(class) < limit {
            let chunk = self.pool.credit_chunk.get(class).copied().unwrap_or(1);
            let ask = (len + chunk).min(limit);
            if self.set_room(class, ask) > len {
                return true;
            }
            // The share is handed out: take back this thread's unused allowance of other
            // classes (a thread that moved on to another size) and ask again.
            if self.give_back_unused(class) && self.set_room(class, ask) > len {
                return true;
            }
        }
        let keep = self.room(class) / 2;
        if let Some(list) = self.lists.get_mut(class) {
            if list.len() > keep {
                self.pool.push_shared(class, list.drain(keep..));
            }
        }
        self.publish(class);
        self.lists.get(class).map_or(0, Vec::len) < self.room(class)
    }

    fn room(&self, class: usize) -> usize {
        self.room.get(class).copied().unwrap_or(0)
    }

    /// With a cap: sets the allowance of `class` to `blocks` (at most the list's bound),
    /// giving back what is over it, or taking what the pool's share still has; returns the
    /// new allowance, which is at least the list's length. Without a cap: the bound.
    fn set_room(&mut self, class: usize, blocks: usize) -> usize {
        let current = self.room(class);
        if !self.pool.bounded_caches {
            return current;
        }
        let size = class_size(class);
        let len = self.lists.get(class).map_or(0, Vec::len);
        let limit = self.pool.cache_limits.get(class).copied().unwrap_or(0);
        let target = blocks.min(limit).max(len);
        let new = if target < current {
            self.pool
                .cache_credit
                .fetch_add((current - target) * size, Relaxed);
            target
        } else if target > current && size > 0 {
            let most = target - current;
            let granted = self
                .pool
                .cache_credit
                .fetch_update(Relaxed, Relaxed, |left| {
                    let n = (left / size).min(most);
                    (n > 0).then(|| left - n * size)
                })
                .map_or(0, |left| (left / size).min(most));
            current + granted
        } else {
            current
        };
        if let Some(room) = self.room.get_mut(class) {
            *room = new;
        }
        new
    }

    /// Gives back the allowance of every class but `except` that its list does not use.
    fn give_back_unused(&mut self, except: usize) -> bool {
        let mut any = false;
        for class in (0..CLASS_COUNT).filter(|&c| c != except) {
            let len = self.lists.get(class).map_or(0, Vec::len);
            if self.room(class) > len {
                self.set_room(class, len);
                any = true;
            }
        }
        any
    }

    /// Bytes of the free blocks of every class but `except`.
    pub(super) fn free_bytes_except(&self, except: usize) -> usize {
        (self.lists.iter().enumerate())
            .filter(|&(class, _)| class != except)
            .map(|(class, list)| list.len() * class_size(class))
            .sum()
    }

    /// Takes one free block of a class other than `except`, in the order in which the pool
    /// releases blocks to make room for `deficit` bytes, and gives back the allowance its
    /// class no longer uses.
    pub(super) fn take_one(&mut self, except: usize, deficit: usize) -> Option<(usize, Box<[u8]>)> {
        let (class, block) = release_order(except, deficit)
            .find_map(|class| Some((class, self.lists.get_mut(class)?.pop()?)))?;
        let len = self.lists.get(class).map_or(0, Vec::len);
        self.set_room(class, len);
        self.publish(class);
        Some((class, block))
    }

    /// Empties every class except `except`, returning the blocks with their class (and,
    /// with a cap, the allowance of the emptied classes to the pool).
    pub(super) fn take_all_except(&mut self, except: usize) -> Vec<(usize, Box<[u8]>)> {
        let mut out = Vec::new();
        for (class, list) in self.lists.iter_mut().enumerate() {
            if class != except {
                out.extend(list.drain(..).map(|b| (class, b)));
            }
        }
        for class in (0..CLASS_COUNT).filter(|&c| c != except) {
            self.set_room(class, 0);
        }
        for class in 0..CLASS_COUNT {
            self.publish(class);
        }
        out
    }
}

impl Drop for ThreadCache {
    /// Thread exit: flush every cached block to the shared lists, give the allowance back
    /// and deregister.
    fn drop(&mut self) {
        for (class, list) in self.lists.iter_mut().enumerate() {
            self.pool.push_shared(class, list.drain(..));
        }
        for class in 0..CLASS_COUNT {
            self.set_room(class, 0);
        }
        for counter in &self.counters.free {
            counter.store(0, Relaxed);
        }
        self.pool
            .caches
            .lock()
            .retain(|c| !Arc::ptr_eq(c, &self.counters));
    }
}

thread_local! {
    /// This thread's caches, one per pool it has used (usually one).
    static CACHES: RefCell<Vec<ThreadCache>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's cache for `pool`, creating it if `create`. Returns `None` when
/// the pool does not cache, the thread's caches are being destroyed (thread exit) or
/// borrowed (re-entrancy), so callers fall back to the shared lists.
pub(super) fn with_cache<R>(
    pool: &'static PoolInner,
    create: bool,
    f: impl FnOnce(&mut ThreadCache) -> R,
) -> Option<R> {
    if !pool.caching {
        return None;
    }
    CACHES
        .try_with(|caches| {
            let mut caches = caches.try_borrow_mut().ok()?;
            let index = match caches.iter().position(|c| ptr::eq(c.pool, pool)) {
                Some(index) => index,
                None if create => {
                    caches.push(ThreadCache::new(pool));
                    caches.len() - 1
                }
                None => return None,
            };
            caches.get_mut(index).map(f)
        })
        .ok()
        .flatten()
}
