//! Review round 7 of duo-buffer: what the pool does when the memory cap is hit.
//!
//! A request that cannot fit under the cap even after every free block the calling thread
//! can reach is released must fail without releasing them: releasing cannot help it, and
//! the blocks (ready for the next request of their class) would be lost to the churn.
//! One that fits once some are released releases what it needs, not the whole cache of
//! the calling thread.

use std::thread;

use duo_buffer::{BufPool, IoBuf, PoolConfig, PoolError};

const K4: usize = 4 << 10;
const K16: usize = 16 << 10;
const K64: usize = 64 << 10;
const K256: usize = 256 << 10;
const M1: usize = 1 << 20;

fn pool(cap: usize, cached: bool) -> BufPool {
    BufPool::new(PoolConfig {
        memory_cap: Some(cap),
        thread_cache_bytes: if cached { M1 } else { 0 },
    })
}

/// `(free, released)` of the class of `size`.
fn free_released(pool: BufPool, size: usize) -> (usize, u64) {
    let stats = pool.stats();
    let class = stats.class(size).expect("a class");
    (class.free, class.released)
}

/// Allocates `count` blocks of `size` and drops them: they become free blocks.
fn make_free(pool: BufPool, size: usize, count: usize) {
    let bufs: Vec<IoBuf> = (0..count)
        .map(|_| pool.alloc(size).expect("under the cap"))
        .collect();
    drop(bufs);
}

#[test]
fn a_request_larger_than_the_cap_releases_nothing() {
    let pool = pool(K64, false);
    make_free(pool, K4, 2);
    assert_eq!(
        pool.alloc(K64 + 1).err(),
        Some(PoolError::Exhausted {
            requested: K256,
            cap: K64,
            allocated: 2 * K4,
        })
    );
    assert_eq!(free_released(pool, K4), (2, 0), "free blocks thrown away");
    assert_eq!(pool.stats().allocated_bytes, 2 * K4);
}

#[test]
fn a_request_that_cannot_fit_beside_the_blocks_in_use_releases_nothing() {
    let pool = pool(K64, false);
    let held: Vec<IoBuf> = (0..12).map(|_| pool.alloc(K4).expect("fits")).collect();
    make_free(pool, K16, 1);
    // 48 KiB in use + a 64 KiB block > 64 KiB, whatever is released.
    assert!(matches!(
        pool.alloc(K16 + 1),
        Err(PoolError::Exhausted { requested: K64, .. })
    ));
    assert_eq!(free_released(pool, K16), (1, 0), "free block thrown away");
    // A request that fits once the free block is released still gets it released.
    let fits = pool
        .alloc(K4)
        .expect("fits once the free 16 KiB block is released");
    assert_eq!(free_released(pool, K16), (0, 1));
    drop((held, fits));
}

#[test]
fn an_unsatisfiable_request_keeps_the_calling_threads_cache() {
    let pool = pool(M1, true);
    let held: Vec<IoBuf> = (0..3).map(|_| pool.alloc(K256).expect("fits")).collect();
    make_free(pool, K4, 4);
    make_free(pool, K16, 2);
    // 768 KiB in use + a 1 MiB block > 1 MiB.
    assert!(matches!(
        pool.alloc(K256 + 1),
        Err(PoolError::Exhausted { requested: M1, .. })
    ));
    assert_eq!(free_released(pool, K4), (4, 0), "cached blocks thrown away");
    assert_eq!(
        free_released(pool, K16),
        (2, 0),
        "cached blocks thrown away"
    );
    drop(held);
}

#[test]
fn hitting_the_cap_releases_what_is_needed_from_the_calling_threads_cache() {
    let pool = pool(M1, true);
    // 32 free 4 KiB blocks: the caches' share of the cap (128 KiB), all in this thread's
    // cache (a trim on another thread finds nothing on the shared lists).
    make_free(pool, K4, 32);
    assert_eq!(thread::spawn(move || pool.trim()).join().expect("trim"), 0);
    assert_eq!(free_released(pool, K4), (32, 0));
    let mut held: Vec<IoBuf> = (0..3).map(|_| pool.alloc(K256).expect("fits")).collect();
    held.push(pool.alloc(K64).expect("fits"));
    held.push(pool.alloc(K16).expect("fits"));
    assert_eq!(pool.stats().allocated_bytes, 976 << 10);
    // 976 KiB + 64 KiB is 16 KiB over the cap: four 4 KiB blocks must go, not 32.
    held.push(pool.alloc(K64).expect("fits once 16 KiB are released"));
    assert_eq!(free_released(pool, K4), (28, 4));
    assert_eq!(pool.stats().allocated_bytes, M1);
    drop(held);
}
