//! [`BufPool`]: a size-class block pool with per-thread caches, a memory cap and counters.

use std::fmt;
use std::ptr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::IoBuf;

mod thread_cache;

use thread_cache::with_cache;

/// The block sizes the pool hands out, smallest first: 4 KiB, 16 KiB, 64 KiB, 256 KiB, 1 MiB,
/// 4 MiB and 8 MiB.
pub const SIZE_CLASSES: [usize; 7] = [
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    8 << 20,
];

/// The largest block the pool hands out (8 MiB); larger requests fail with
/// [`PoolError::TooLarge`].
pub const MAX_BLOCK: usize = SIZE_CLASSES[CLASS_COUNT - 1];

/// Number of size classes.
const CLASS_COUNT: usize = SIZE_CLASSES.len();

/// Upper bound on the blocks of one class a thread cache keeps.
const MAX_CACHED_BLOCKS: usize = 64;

/// With a memory cap, the free blocks of all thread caches together stay within
/// `cap / CACHE_SHARE_DIVISOR` bytes (see `thread_cache.rs`).
const CACHE_SHARE_DIVISOR: usize = 8;

/// Index of the smallest class that holds `n` bytes (`n = 0` gets the smallest class).
pub(crate) fn class_index(n: usize) -> Option<usize> {
    SIZE_CLASSES.iter().position(|&size| n <= size)
}

/// The classes other than `except` whose free blocks are released to make room for
/// `deficit` bytes, in order: the smallest class whose block covers the deficit first, then
/// the larger ones, then the smaller ones from the largest down.
fn release_order(except: usize, deficit: usize) -> impl Iterator<Item = usize> {
    let covering = (0..CLASS_COUNT).filter(move |&c| class_size(c) >= deficit);
    let smaller = (0..CLASS_COUNT)
        .rev()
        .filter(move |&c| class_size(c) < deficit);
    covering.chain(smaller).filter(move |&c| c != except)
}

/// Size in bytes of class `class`; 0 for an index out of range (never produced by this crate).
pub(crate) fn class_size(class: usize) -> usize {
    SIZE_CLASSES.get(class).copied().unwrap_or(0)
}

/// Why the pool could not hand out a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The request is larger than the largest size class ([`MAX_BLOCK`]).
    #[error("requested {requested} bytes, larger than the largest pool block ({max} bytes)")]
    TooLarge {
        /// Bytes requested.
        requested: usize,
        /// The largest block the pool serves.
        max: usize,
    },
    /// Obtaining a new block from the system would exceed the pool's memory cap, even after
    /// releasing the free blocks of other classes.
    #[error("buffer pool exhausted: a {requested}-byte block would exceed the cap of {cap} bytes ({allocated} bytes allocated)")]
    Exhausted {
        /// Size of the block the pool tried to obtain (the size class of the request).
        requested: usize,
        /// The configured [`PoolConfig::memory_cap`].
        cap: usize,
        /// Bytes allocated from the system and not yet released, when the request failed.
        allocated: usize,
    },
}

/// Configuration of a [`BufPool`].
///
/// ```
/// use duo_buffer::PoolConfig;
///
/// let config = PoolConfig { memory_cap: Some(64 << 20), ..PoolConfig::default() };
/// assert_eq!(config.thread_cache_bytes, 1 << 20);
/// assert_eq!(config.cache_blocks(4096), 64);
/// assert_eq!(config.cache_blocks(64 << 10), 16);
/// assert_eq!(config.cache_blocks(4 << 20), 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Upper bound on the bytes of blocks obtained from the system and not yet released
    /// (free or in use); `None` means unbounded. With a cap, the thread caches together
    /// keep at most an eighth of it, so a request is refused only when the blocks in use
    /// and the request exceed seven eighths of the cap (see [`BufPool`]).
    pub memory_cap: Option<usize>,
    /// Bytes of free blocks each thread may keep per size class, without touching the shared
    /// lists. The block count per class is `min(64, thread_cache_bytes / class_size)`, so the
    /// default of 1 MiB keeps 64 blocks of 4 KiB and 16 KiB, 16 of 64 KiB, 4 of 256 KiB, 1 of
    /// 1 MiB and none of the larger classes. 0 disables thread caches. With a
    /// [`memory_cap`](PoolConfig::memory_cap), the caches also share an allowance of an
    /// eighth of the cap.
    pub thread_cache_bytes: usize,
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            memory_cap: None,
            thread_cache_bytes: 1 << 20,
        }
    }
}

impl PoolConfig {
    /// How many free blocks of `class_size` bytes a thread cache keeps under this
    /// configuration (0 for a size of 0).
    pub fn cache_blocks(&self, class_size: usize) -> usize {
        self.thread_cache_bytes
            .checked_div(class_size)
            .unwrap_or(0)
            .min(MAX_CACHED_BLOCKS)
    }
}

/// Counters of one size class, in blocks. See [`PoolStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClassStats {
    /// Block size of the class in bytes.
    pub size: usize,
    /// Blocks obtained from the system and not released.
    pub allocated: usize,
    /// Free blocks: on the shared list plus in every thread cache.
    pub free: usize,
    /// Blocks held by live [`IoBuf`]s (`allocated - free`).
    pub in_use: usize,
    /// Blocks returned to the system since the pool was created (by [`BufPool::trim`], or
    /// to stay under the memory cap): a cumulative count.
    pub released: u64,
}

/// A snapshot of a pool's counters, from [`BufPool::stats`].
///
/// The numbers are exact when the pool is quiescent (no allocation or free running on another
/// thread); while other threads work they are a close approximation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Per size class, in the order of [`SIZE_CLASSES`].
    pub classes: [ClassStats; CLASS_COUNT],
    /// Bytes obtained from the system and not released (what the cap limits).
    pub allocated_bytes: usize,
    /// The configured [`PoolConfig::memory_cap`].
    pub memory_cap: Option<usize>,
    /// Requests refused for the cap ([`PoolError::Exhausted`]) since the pool was
    /// created: a cumulative count.
    pub refused: u64,
}

impl PoolStats {
    /// The counters of the class whose block size is exactly `size`, if there is one.
    pub fn class(&self, size: usize) -> Option<&ClassStats> {
        self.classes.iter().find(|c| c.size == size)
    }

    /// Bytes of free blocks (shared lists and thread caches).
    pub fn free_bytes(&self) -> usize {
        self.classes.iter().map(|c| c.free * c.size).sum()
    }

    /// Bytes of blocks held by live [`IoBuf`]s.
    pub fn in_use_bytes(&self) -> usize {
        self.classes.iter().map(|c| c.in_use * c.size).sum()
    }

    /// Blocks held by live [`IoBuf`]s, over all classes.
    pub fn in_use_blocks(&self) -> usize {
        self.classes.iter().map(|c| c.in_use).sum()
    }
}

/// A pool of fixed-size memory blocks in [`SIZE_CLASSES`], handed out as [`IoBuf`]s.
///
/// A request of `n` bytes is served by the smallest class of at least `n` bytes (`n = 0` gets
/// 4 KiB); more than [`MAX_BLOCK`] fails with [`PoolError::TooLarge`]. Dropping the
/// [`IoBuf`] gives the block back: there is no manual `free`/`revert`.
///
/// ```
/// use duo_buffer::{BufPool, PoolConfig};
///
/// let pool = BufPool::new(PoolConfig { memory_cap: Some(1 << 20), ..PoolConfig::default() });
/// let mut buf = pool.alloc(3000)?;
/// assert_eq!(buf.capacity(), 4096); // the smallest class that fits
/// buf.append(b"hello");
/// assert_eq!(buf.data(), b"hello");
/// assert_eq!(pool.stats().class(4096).map(|c| c.in_use), Some(1));
/// drop(buf); // back to this thread's cache
/// let stats = pool.stats();
/// assert_eq!((stats.classes[0].allocated, stats.classes[0].free), (1, 1));
/// let _again = pool.alloc(100)?; // the same block, no new memory
/// assert_eq!(pool.stats().classes[0].allocated, 1);
/// # Ok::<(), duo_buffer::PoolError>(())
/// ```
///
/// # Lifetime: a pool lives as long as the process
///
/// A pool is created once and never destroyed, like an allocator. `BufPool` is a `Copy`
/// handle (one pointer) to a leaked, `'static` pool, so every [`IoBuf`] carries an 8-byte
/// pool pointer and allocating or freeing touches no reference count. An `Arc` clone per
/// allocation would make two threads that allocate from the same pool contend on the cache
/// line of the count, which alone is enough to lose to `malloc`. [`BufPool::global`] is the
/// process-wide default; [`BufPool::new`] builds a separate pool (its small control block is
/// leaked on purpose; its free blocks can be returned with [`BufPool::trim`]).
///
/// # Allocation and free paths
///
/// 1. **Thread cache.** Each thread keeps, per pool, up to
///    [`PoolConfig::cache_blocks`] free blocks of each class. Allocation pops from it and
///    a free pushes to it: no lock, no atomic read-modify-write. An empty cache refills up to
///    half its bound from the shared list in one lock; a full one moves half to it. With a
///    memory cap, a cache keeps blocks only within an allowance from the caches' share of
///    the cap (an eighth of it), taken and given back in chunks on those slower paths.
/// 2. **Shared free list** per class (a `parking_lot` mutex around a `Vec`).
/// 3. **The system**: `vec![0; size]`, counted against [`PoolConfig::memory_cap`]. When the
///    cap would be exceeded, free blocks of other classes are released to the system first,
///    one at a time until it fits (from the shared lists, then from the calling thread's
///    cache); if the block still does not fit, the request fails with
///    [`PoolError::Exhausted`]. A request that could not fit even after releasing all of
///    them releases none. The pool never aborts.
///
/// A block may be freed on any thread (it lands in that thread's cache). When a thread exits,
/// its caches are flushed to the shared lists. Free blocks in the caches of other, still
/// running threads cannot be reclaimed for the cap (that would cost a lock on every
/// allocation and free), and a thread that went quiet may keep its cache for long: hence the
/// caches' share. Under a cap, a request fails with [`PoolError::Exhausted`] only when the
/// blocks in use plus the request exceed seven eighths of the cap, whatever the other
/// threads cache (the counters aside, which other threads may be changing meanwhile).
///
/// # Counters
///
/// [`BufPool::stats`] reports, per class, blocks allocated from the system, free and in use.
/// Each thread cache publishes its own counts with plain single-writer stores, summed by
/// `stats`; the shared counters change only on the shared-list and system paths.
#[derive(Clone, Copy)]
pub struct BufPool {
    inner: &'static PoolInner,
}

impl PartialEq for BufPool {
    /// Two handles are equal when they refer to the same pool.
    fn eq(&self, other: &BufPool) -> bool {
        ptr::eq(self.inner, other.inner)
    }
}

impl Eq for BufPool {}

impl fmt::Debug for BufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufPool")
            .field("at", &ptr::from_ref(self.inner))
            .field("memory_cap", &self.inner.config.memory_cap)
            .field("allocated_bytes", &self.inner.allocated_bytes.load(Relaxed))
            .finish()
    }
}

impl Default for BufPool {
    /// The process-wide pool, [`BufPool::global`].
    fn default() -> BufPool {
        BufPool::global()
    }
}

impl BufPool {
    /// Creates a new pool. Its control block is leaked on purpose: a pool lives for the rest
    /// of the process (see "Lifetime" above). Create pools once, not per connection.
    pub fn new(config: PoolConfig) -> BufPool {
        BufPool {
            inner: Box::leak(Box::new(PoolInner::new(config))),
        }
    }

    /// The process-wide default pool (no cap, 1 MiB thread caches per class), created on
    /// first use.
    pub fn global() -> BufPool {
        static GLOBAL: OnceLock<BufPool> = OnceLock::new();
        *GLOBAL.get_or_init(|| BufPool::new(PoolConfig::default()))
    }

    /// The configuration the pool was created with.
    pub fn config(self) -> PoolConfig {
        self.inner.config
    }

    /// The block size that serves a request of `n` bytes: the smallest class of at least `n`.
    ///
    /// ```
    /// use duo_buffer::{BufPool, PoolError};
    ///
    /// assert_eq!(BufPool::class_size_for(0), Ok(4096));
    /// assert_eq!(BufPool::class_size_for(4097), Ok(16 << 10));
    /// assert!(matches!(BufPool::class_size_for((8 << 20) + 1), Err(PoolError::TooLarge { .. })));
    /// ```
    pub fn class_size_for(n: usize) -> Result<usize, PoolError> {
        class_index(n).map(class_size).ok_or(PoolError::TooLarge {
            requested: n,
            max: MAX_BLOCK,
        })
    }

    /// Hands out an empty [`IoBuf`] with a block of the smallest class that holds `n` bytes.
    ///
    /// # Errors
    ///
    /// [`PoolError::TooLarge`] if `n > MAX_BLOCK`; [`PoolError::Exhausted`] if a new block
    /// would exceed the memory cap.
    pub fn alloc(self, n: usize) -> Result<IoBuf, PoolError> {
        let class = class_index(n).ok_or(PoolError::TooLarge {
            requested: n,
            max: MAX_BLOCK,
        })?;
        let block = self.inner.take_block(class)?;
        Ok(IoBuf::from_block(self, class, block))
    }

    /// A snapshot of the pool's counters (exact when no other thread is using the pool).
    pub fn stats(self) -> PoolStats {
        self.inner.stats()
    }

    /// Returns every free block on the shared lists, and in the calling thread's cache, to the
    /// system. Returns the number of bytes released. Blocks cached by other running threads
    /// stay where they are. A request on another thread meanwhile that needs the bytes of
    /// the blocks being released is served, not refused.
    pub fn trim(self) -> usize {
        self.inner.trim()
    }

    /// Gives a block back (the [`IoBuf`] drop path).
    pub(crate) fn give_back(self, class: usize, block: Box<[u8]>) {
        self.inner.give_back(class, block);
    }
}

/// The shared state of one size class. Aligned to its own cache line(s) so that the classes'
/// locks do not share one.
#[repr(align(128))]
struct ClassShared {
    /// Free blocks not in any thread cache.
    free: Mutex<Vec<Box<[u8]>>>,
    /// Blocks obtained from the system and not released.
    allocated: AtomicUsize,
    /// Blocks returned to the system, ever.
    released: AtomicU64,
}

/// The free-block counts a thread cache publishes. Written only by its owning thread, read by
/// [`BufPool::stats`]; aligned so two threads' counters never share a cache line.
#[repr(align(128))]
struct CacheCounters {
    free: [AtomicUsize; CLASS_COUNT],
}

/// The pool proper; always `'static` (leaked by [`BufPool::new`]).
struct PoolInner {
    config: PoolConfig,
    /// Per class, how many free blocks a thread cache keeps.
    cache_limits: [usize; CLASS_COUNT],
    /// Whether any class has a non-zero thread-cache bound.
    caching: bool,
    /// Whether thread caches keep blocks only within an allowance from `cache_credit`
    /// (a cap is set).
    bounded_caches: bool,
    /// Bytes of the caches' share of the cap not held by any thread cache.
    cache_credit: AtomicUsize,
    /// Per class, the blocks' worth of allowance a thread cache asks for at once.
    credit_chunk: [usize; CLASS_COUNT],
    classes: [ClassShared; CLASS_COUNT],
    /// Bytes obtained from the system and not released; what the cap limits.
    allocated_bytes: AtomicUsize,
    /// Requests refused for the cap (see [`PoolStats::refused`]).
    refused: AtomicU64,
    /// Counters of every live thread cache of this pool.
    caches: Mutex<Vec<Arc<CacheCounters>>>,
}

impl PoolInner {
    fn new(config: PoolConfig) -> PoolInner {
        let cache_limits = SIZE_CLASSES.map(|size| config.cache_blocks(size));
        let caching = cache_limits.iter().any(|&n| n > 0);
        let share = config.memory_cap.map_or(0, |cap| cap / CACHE_SHARE_DIVISOR);
        // At most a sixteenth of the share at once (one block at least), at most half a
        // list: one thread does not take the whole share for a few blocks.
        let mut credit_chunk = [1; CLASS_COUNT];
        for ((chunk, size), limit) in credit_chunk.iter_mut().zip(SIZE_CLASSES).zip(cache_limits) {
            *chunk = (share / 16 / size).min(limit.div_ceil(2)).max(1);
        }
        PoolInner {
            config,
            cache_limits,
            caching,
            bounded_caches: caching && config.memory_cap.is_some(),
            cache_credit: AtomicUsize::new(share),
            credit_chunk,
            classes: std::array::from_fn(|_| ClassShared {
                free: Mutex::new(Vec::new()),
                allocated: AtomicUsize::new(0),
                released: AtomicU64::new(0),
            }),
            allocated_bytes: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            caches: Mutex::new(Vec::new()),
        }
    }

    fn take_block(&'static self, class: usize) -> Result<Box<[u8]>, PoolError> {
        if let Some(block) = with_cache(self, true, |cache| cache.pop(class)).flatten() {
            return Ok(block);
        }
        if let Some(block) = self.pop_shared(class) {
            return Ok(block);
        }
        self.alloc_system(class)
    }

    fn give_back(&'static self, class: usize, block: Box<[u8]>) {
        debug_assert_eq!(
            block.len(),
            class_size(class),
            "block returned to the wrong class"
        );
        let mut slot = Some(block);
        with_cache(self, true, |cache| cache.push(class, &mut slot));
        if let Some(block) = slot {
            self.push_shared(class, std::iter::once(block));
        }
    }

    fn pop_shared(&self, class: usize) -> Option<Box<[u8]>> {
        self.classes.get(class)?.free.lock().pop()
    }

    fn push_shared(&self, class: usize, blocks: impl IntoIterator<Item = Box<[u8]>>) {
        match self.classes.get(class) {
            Some(shared) => shared.free.lock().extend(blocks),
            // Unreachable: class indices come from `class_index`. Release rather than keep.
            None => blocks
                .into_iter()
                .for_each(|b| self.release_block(class, b)),
        }
    }

    /// Gets a new block from the system, within the cap.
    fn alloc_system(&'static self, class: usize) -> Result<Box<[u8]>, PoolError> {
        let size = class_size(class);
        let mut futility_checked = false;
        loop {
            if let Some(block) = self.new_block(class) {
                return Ok(block);
            }
            // Over the cap. Another thread may have freed a block of this class meanwhile.
            if let Some(block) = self.pop_shared(class) {
                return Ok(block);
            }
            let cap = self.config.memory_cap.unwrap_or(usize::MAX);
            // The free blocks first, then the allocated bytes: a block a trim (or another
            // request) took off a list before it was counted here is already subtracted
            // (both release under the list's lock), so it is not missed by both.
            let releasable = (!futility_checked).then(|| self.releasable_except(class));
            let allocated = self.allocated_bytes.load(Relaxed);
            let deficit = allocated.saturating_add(size).saturating_sub(cap);
            if deficit == 0 {
                continue; // released by another thread since the reservation failed
            }
            // Once per request: if releasing every free block this thread can reach cannot
            // make room, release none (they would only be lost to the next requests).
            let futile = releasable.is_some_and(|r| deficit > r);
            futility_checked = true;
            if futile
                || (!self.release_other_shared(class, deficit)
                    && !self.release_other_cached(class, deficit))
            {
                // Nothing left to release here; a trim or another request may still have
                // released blocks since the allocated bytes were read.
                if let Some(block) = self.new_block(class) {
                    return Ok(block);
                }
                self.refused.fetch_add(1, Relaxed);
                log::debug!(
                    "buffer pool exhausted: {size}-byte block, cap {cap}, {allocated} allocated"
                );
                return Err(PoolError::Exhausted {
                    requested: size,
                    cap,
                    allocated,
                });
            }
        }
    }

    /// A new block from the system if the cap allows it.
    fn new_block(&self, class: usize) -> Option<Box<[u8]>> {
        let size = class_size(class);
        if !self.reserve(size) {
            return None;
        }
        if let Some(shared) = self.classes.get(class) {
            shared.allocated.fetch_add(1, Relaxed);
        }
        Some(vec![0u8; size].into_boxed_slice())
    }

    /// Adds `size` to the allocated bytes if the cap allows it.
    fn reserve(&self, size: usize) -> bool {
        let cap = self.config.memory_cap.unwrap_or(usize::MAX);
        self.allocated_bytes
            .fetch_update(Relaxed, Relaxed, |a| {
                a.checked_add(size).filter(|&t| t <= cap)
            })
            .is_ok()
    }

    /// Bytes of the free blocks of classes other than `except` that the calling thread could
    /// release: on the shared lists and in its own cache.
    fn releasable_except(&'static self, except: usize) -> usize {
        let shared: usize = (self.classes.iter().zip(SIZE_CLASSES).enumerate())
            .filter(|&(c, _)| c != except)
            .map(|(_, (shared, size))| shared.free.lock().len() * size)
            .sum();
        let cached = with_cache(self, false, |cache| cache.free_bytes_except(except));
        shared + cached.unwrap_or(0)
    }

    /// Releases one free block of a class other than `except` from the shared lists. Prefers
    /// the smallest class whose block covers `deficit`, then the largest smaller one.
    fn release_other_shared(&self, except: usize, deficit: usize) -> bool {
        for class in release_order(except, deficit) {
            let Some(shared) = self.classes.get(class) else {
                continue;
            };
            let mut free = shared.free.lock();
            if let Some(block) = free.pop() {
                // Released before the list's lock is let go (see `alloc_system`).
                self.release_block(class, block);
                return true;
            }
        }
        false
    }

    /// Releases one free block of a class other than `except` from the calling thread's
    /// cache, chosen as in [`release_other_shared`](PoolInner::release_other_shared).
    fn release_other_cached(&'static self, except: usize, deficit: usize) -> bool {
        let taken = with_cache(self, false, |cache| cache.take_one(except, deficit)).flatten();
        let released = taken.is_some();
        if let Some((class, block)) = taken {
            self.release_block(class, block);
        }
        released
    }

    /// Returns a block to the system.
    fn release_block(&self, class: usize, block: Box<[u8]>) {
        debug_assert_eq!(block.len(), class_size(class));
        drop(block);
        self.count_released(class, 1);
    }

    /// Counts `blocks` blocks of `class` as returned to the system.
    fn count_released(&self, class: usize, blocks: usize) {
        if let Some(shared) = self.classes.get(class) {
            shared.allocated.fetch_sub(blocks, Relaxed);
            shared.released.fetch_add(blocks as u64, Relaxed);
        }
        self.allocated_bytes
            .fetch_sub(blocks * class_size(class), Relaxed);
    }

    fn stats(&self) -> PoolStats {
        let mut classes = [ClassStats::default(); CLASS_COUNT];
        for ((stats, shared), size) in classes.iter_mut().zip(&self.classes).zip(SIZE_CLASSES) {
            stats.size = size;
            stats.allocated = shared.allocated.load(Relaxed);
            stats.released = shared.released.load(Relaxed);
            stats.free = shared.free.lock().len();
        }
        for counters in self.caches.lock().iter() {
            for (stats, free) in classes.iter_mut().zip(&counters.free) {
                stats.free += free.load(Relaxed);
            }
        }
        for stats in &mut classes {
            stats.in_use = stats.allocated.saturating_sub(stats.free);
        }
        PoolStats {
            classes,
            allocated_bytes: self.allocated_bytes.load(Relaxed),
            refused: self.refused.load(Relaxed),
            memory_cap: self.config.memory_cap,
        }
    }

    fn trim(&'static self) -> usize {
        let cached =
            with_cache(self, false, |cache| cache.take_all_except(usize::MAX)).unwrap_or_default();
        let mut released = 0;
        for (class, block) in cached {
            released += block.len();
            self.release_block(class, block);
        }
        for (class, shared) in self.classes.iter().enumerate() {
            // Released while the list is locked: a request on another thread that finds
            // the list empty also finds the bytes gone (see `alloc_system`).
            let mut free = shared.free.lock();
            let blocks = std::mem::take(&mut *free);
            released += blocks.len() * class_size(class);
            let count = blocks.len();
            drop(blocks);
            self.count_released(class, count);
            drop(free);
        }
        log::debug!("buffer pool trimmed: {released} bytes released");
        released
    }
}
