//! BufPool: class selection, counters, reuse, cap, cross-thread free, thread exit, trim.

use std::sync::mpsc;
use std::thread;

use duo_buffer::{BufPool, ClassStats, IoBuf, PoolConfig, PoolError, MAX_BLOCK, SIZE_CLASSES};

const K4: usize = 4 << 10;
const K16: usize = 16 << 10;
const K64: usize = 64 << 10;

fn no_cache(cap: Option<usize>) -> BufPool {
    BufPool::new(PoolConfig {
        memory_cap: cap,
        thread_cache_bytes: 0,
    })
}

/// The expected counters of the class of `size` (blocks released to the system aside:
/// [`class`] leaves them out, the trim and cap tests check them).
fn expected(size: usize, allocated: usize, free: usize, in_use: usize) -> ClassStats {
    ClassStats {
        size,
        allocated,
        free,
        in_use,
        released: 0,
    }
}

fn class(pool: BufPool, size: usize) -> ClassStats {
    ClassStats {
        released: 0,
        ..*pool.stats().class(size).expect("a size class")
    }
}

fn released(pool: BufPool, size: usize) -> u64 {
    pool.stats().class(size).expect("a size class").released
}

/// Every class: allocated == free + in_use, and nothing is in use.
fn assert_quiescent_and_idle(pool: BufPool) {
    let stats = pool.stats();
    for c in stats.classes {
        assert_eq!(c.in_use, 0, "{c:?}");
        assert_eq!(c.free, c.allocated, "{c:?}");
    }
    let bytes: usize = stats.classes.iter().map(|c| c.allocated * c.size).sum();
    assert_eq!(bytes, stats.allocated_bytes);
}

#[test]
fn size_classes_are_as_documented() {
    assert_eq!(
        SIZE_CLASSES,
        [K4, K16, K64, 256 << 10, 1 << 20, 4 << 20, 8 << 20]
    );
    assert_eq!(MAX_BLOCK, 8 << 20);
}

#[test]
fn class_selection_at_every_boundary() {
    let pool = no_cache(None);
    let check = |n: usize, expected: usize| {
        let buf = pool.alloc(n).unwrap_or_else(|e| panic!("alloc({n}): {e}"));
        assert_eq!(
            (buf.capacity(), buf.size_class()),
            (expected, expected),
            "alloc({n})"
        );
        assert!(buf.is_empty());
        assert_eq!(BufPool::class_size_for(n), Ok(expected));
    };
    check(0, K4);
    check(1, K4);
    for (i, &size) in SIZE_CLASSES.iter().enumerate() {
        check(size - 1, size);
        check(size, size);
        if let Some(&next) = SIZE_CLASSES.get(i + 1) {
            check(size + 1, next);
        }
    }
    let too_large = PoolError::TooLarge {
        requested: MAX_BLOCK + 1,
        max: MAX_BLOCK,
    };
    assert_eq!(pool.alloc(MAX_BLOCK + 1).err(), Some(too_large));
    assert_eq!(
        pool.alloc(usize::MAX).err(),
        Some(PoolError::TooLarge {
            requested: usize::MAX,
            max: MAX_BLOCK
        })
    );
    assert_eq!(BufPool::class_size_for(MAX_BLOCK + 1), Err(too_large));
    assert_quiescent_and_idle(pool);
}

#[test]
fn counters_are_exact_without_thread_cache() {
    let pool = no_cache(None);
    let bufs: Vec<IoBuf> = (0..3).map(|_| pool.alloc(100).expect("alloc")).collect();
    let big = pool.alloc(K64).expect("alloc");
    assert_eq!(class(pool, K4), expected(K4, 3, 0, 3));
    assert_eq!(class(pool, K64), expected(K64, 1, 0, 1));
    assert_eq!(pool.stats().allocated_bytes, 3 * K4 + K64);
    assert_eq!(pool.stats().in_use_bytes(), 3 * K4 + K64);
    drop(big);
    let mut bufs = bufs;
    bufs.pop();
    assert_eq!(class(pool, K4), expected(K4, 3, 1, 2));
    assert_eq!(class(pool, K64), expected(K64, 1, 1, 0));
    assert_eq!(pool.stats().free_bytes(), K4 + K64);
    drop(bufs);
    assert_quiescent_and_idle(pool);
}

#[test]
fn counters_are_exact_with_thread_cache() {
    let pool = BufPool::new(PoolConfig::default());
    let bufs: Vec<IoBuf> = (0..200).map(|_| pool.alloc(K16).expect("alloc")).collect();
    assert_eq!(class(pool, K16), expected(K16, 200, 0, 200));
    drop(bufs); // 64 stay in this thread's cache at most, the rest go to the shared list
    assert_eq!(class(pool, K16), expected(K16, 200, 200, 0));
    let again: Vec<IoBuf> = (0..150).map(|_| pool.alloc(K16).expect("alloc")).collect();
    assert_eq!(class(pool, K16), expected(K16, 200, 50, 150));
    drop(again);
    assert_quiescent_and_idle(pool);
}

#[test]
fn blocks_are_reused() {
    for pool in [no_cache(None), BufPool::new(PoolConfig::default())] {
        for _ in 0..1000 {
            let mut a = pool.alloc(K4).expect("alloc");
            let b = pool.alloc(300 << 10).expect("alloc");
            a.append(b"x");
            drop((a, b));
        }
        let stats = pool.stats();
        assert_eq!(class(pool, K4).allocated, 1);
        assert_eq!(class(pool, 1 << 20).allocated, 1);
        assert_eq!(stats.allocated_bytes, K4 + (1 << 20));
        assert_quiescent_and_idle(pool);
    }
}

#[test]
fn a_reused_block_starts_empty() {
    let pool = no_cache(None);
    let mut a = pool.alloc(10).expect("alloc");
    a.append(b"old bytes");
    a.consume(3);
    drop(a);
    let b = pool.alloc(10).expect("alloc");
    assert_eq!((b.len(), b.prependable(), b.writable_len()), (0, 0, K4));
}

#[test]
fn cap_is_enforced_with_a_typed_error() {
    let pool = no_cache(Some(K64));
    let held: Vec<IoBuf> = (0..16)
        .map(|_| pool.alloc(K4).expect("within the cap"))
        .collect();
    let err = pool.alloc(K4).expect_err("over the cap");
    assert_eq!(
        err,
        PoolError::Exhausted {
            requested: K4,
            cap: K64,
            allocated: K64
        }
    );
    assert!(err.to_string().contains("exhausted"), "{err}");
    assert_eq!(pool.stats().allocated_bytes, K64);
    drop(held);
    // All 16 blocks are free on the shared list now: a 4 KiB request reuses one.
    let again = pool.alloc(K4).expect("reuse");
    assert_eq!(pool.stats().allocated_bytes, K64);
    drop(again);
}

#[test]
fn cap_reclaims_free_blocks_of_other_classes() {
    let cap = K64 + 2 * K16;
    let pool = no_cache(Some(cap));
    let small: Vec<IoBuf> = (0..16).map(|_| pool.alloc(K4).expect("alloc")).collect();
    let medium = pool.alloc(K16).expect("alloc");
    assert_eq!(pool.stats().allocated_bytes, 16 * K4 + K16);
    drop(small);
    // 64 KiB needs 12 of the 16 free 4 KiB blocks released (deficit 48 KiB).
    let big = pool.alloc(K64).expect("reclaimed from the 4 KiB class");
    assert_eq!(class(pool, K4), expected(K4, 4, 4, 0));
    assert_eq!(class(pool, K64).in_use, 1);
    assert_eq!(pool.stats().allocated_bytes, cap);
    // Nothing free can make room for another 64 KiB block.
    match pool.alloc(K64) {
        Err(PoolError::Exhausted {
            requested,
            cap: c,
            allocated,
        }) => {
            assert_eq!((requested, c), (K64, cap));
            assert!(allocated <= cap);
        }
        other => panic!("expected Exhausted, got {other:?}"),
    }
    // The failed attempt released no block: not one in use, and not the free ones either,
    // since releasing them all could not make room (review round 7).
    assert_eq!(class(pool, K4), expected(K4, 4, 4, 0));
    assert_eq!(class(pool, K16).in_use, 1);
    assert_eq!(class(pool, K64).in_use, 1);
    // And the room it made is usable.
    let again: Vec<IoBuf> = (0..4).map(|_| pool.alloc(K4).expect("alloc")).collect();
    assert_eq!(pool.stats().allocated_bytes, cap);
    drop((big, medium, again));
    assert_quiescent_and_idle(pool);
}

#[test]
fn cap_reclaims_from_the_calling_threads_cache() {
    let pool = BufPool::new(PoolConfig {
        memory_cap: Some(K64),
        ..PoolConfig::default()
    });
    let small: Vec<IoBuf> = (0..16).map(|_| pool.alloc(K4).expect("alloc")).collect();
    drop(small); // all 16 in this thread's cache
    assert_eq!(class(pool, K4).free, 16);
    let big = pool.alloc(K64).expect("reclaimed from the thread cache");
    assert_eq!(class(pool, K4).allocated, 0);
    assert_eq!(pool.stats().allocated_bytes, K64);
    drop(big);
    assert_quiescent_and_idle(pool);
}

#[test]
fn cap_smaller_than_a_block_never_allocates() {
    let pool = no_cache(Some(100));
    assert_eq!(
        pool.alloc(1).err(),
        Some(PoolError::Exhausted {
            requested: K4,
            cap: 100,
            allocated: 0
        })
    );
    assert_eq!(pool.stats().allocated_bytes, 0);
}

#[test]
fn cross_thread_free() {
    let pool = BufPool::new(PoolConfig::default());
    let bufs: Vec<IoBuf> = (0..100)
        .map(|i| {
            pool.alloc(if i % 2 == 0 { K4 } else { K64 })
                .expect("alloc")
        })
        .collect();
    let (tx, rx) = mpsc::channel::<Vec<IoBuf>>();
    let freer = thread::spawn(move || drop(rx.recv().expect("bufs")));
    tx.send(bufs).expect("send");
    freer.join().expect("join");
    assert_eq!(class(pool, K4), expected(K4, 50, 50, 0));
    assert_eq!(class(pool, K64), expected(K64, 50, 50, 0));
    // The freeing thread flushed its cache on exit, so the blocks are reusable here.
    let again: Vec<IoBuf> = (0..50).map(|_| pool.alloc(K64).expect("alloc")).collect();
    assert_eq!(class(pool, K64).allocated, 50);
    drop(again);
    assert_quiescent_and_idle(pool);
}

#[test]
fn thread_exit_flushes_its_cache() {
    let pool = BufPool::new(PoolConfig::default());
    thread::spawn(move || {
        let bufs: Vec<IoBuf> = (0..10).map(|_| pool.alloc(K16).expect("alloc")).collect();
        drop(bufs);
        // Freed into this thread's cache.
        assert_eq!(class(pool, K16).free, 10);
    })
    .join()
    .expect("join");
    assert_eq!(class(pool, K16), expected(K16, 10, 10, 0));
    // The blocks are on the shared list: trim (which cannot reach other threads' caches)
    // releases all of them.
    assert_eq!(pool.trim(), 10 * K16);
    assert_eq!(class(pool, K16).allocated, 0);
}

#[test]
fn trim_releases_free_blocks_and_keeps_live_ones() {
    let pool = BufPool::new(PoolConfig::default());
    let keep = pool.alloc(K64).expect("alloc");
    let bufs: Vec<IoBuf> = (0..100).map(|_| pool.alloc(K4).expect("alloc")).collect();
    drop(bufs); // cache + shared list
    let huge = pool.alloc(MAX_BLOCK).expect("alloc");
    drop(huge); // 8 MiB is never cached: shared list
    assert_eq!(pool.trim(), 100 * K4 + MAX_BLOCK);
    let stats = pool.stats();
    assert_eq!(stats.allocated_bytes, K64);
    assert_eq!(class(pool, K4).allocated, 0);
    assert_eq!(released(pool, K4), 100, "every trimmed block is counted");
    assert_eq!(released(pool, MAX_BLOCK), 1);
    assert_eq!(class(pool, K64), expected(K64, 1, 0, 1));
    assert_eq!(released(pool, K64), 0);
    assert_eq!(pool.trim(), 0);
    drop(keep);
    assert_eq!(pool.trim(), K64);
    assert_eq!(released(pool, K64), 1);
    assert_eq!(pool.stats().allocated_bytes, 0);
}

#[test]
fn concurrent_alloc_free_with_handoff_stays_consistent() {
    let pool = BufPool::new(PoolConfig {
        memory_cap: Some(64 << 20),
        ..PoolConfig::default()
    });
    let producers: Vec<_> = (0..3)
        .map(|t| {
            thread::spawn(move || {
                let sizes = [K4, K16, K64, 100, 256 << 10];
                let mut local = Vec::new();
                for i in 0..3000usize {
                    let size = sizes[(i * 7 + t) % sizes.len()];
                    let buf = pool.alloc(size).expect("within the cap");
                    if i % 3 == 0 {
                        local.push(buf);
                        if local.len() > 20 {
                            local.clear();
                        }
                    } else {
                        drop(buf);
                    }
                }
            })
        })
        .collect();
    // Handoff in order from this thread, checked by the consumer.
    let (tx2, rx2) = mpsc::channel::<IoBuf>();
    let ordered = thread::spawn(move || {
        for (n, buf) in rx2.into_iter().enumerate() {
            assert_eq!(buf.data(), [(n % 251) as u8]);
        }
    });
    for n in 0..2000usize {
        let mut buf = pool.alloc(n % 5000).expect("alloc");
        buf.append(&[(n % 251) as u8]);
        tx2.send(buf).expect("send");
    }
    drop(tx2);
    for p in producers {
        p.join().expect("producer");
    }
    ordered.join().expect("ordered consumer");
    assert_quiescent_and_idle(pool);
}

#[test]
fn pools_are_independent_and_global_is_one() {
    assert_eq!(BufPool::global(), BufPool::global());
    assert_eq!(BufPool::default(), BufPool::global());
    let a = no_cache(None);
    let b = no_cache(None);
    assert_ne!(a, b);
    let buf = a.alloc(1).expect("alloc");
    assert_eq!(buf.pool(), a);
    assert_eq!(class(b, K4).allocated, 0);
    assert_eq!(class(a, K4).in_use, 1);
    let debug = format!("{a:?}");
    assert!(debug.contains("BufPool"), "{debug}");
}

#[test]
fn config_cache_bounds() {
    let config = PoolConfig::default();
    let blocks: Vec<usize> = SIZE_CLASSES
        .iter()
        .map(|&s| config.cache_blocks(s))
        .collect();
    assert_eq!(blocks, [64, 64, 16, 4, 1, 0, 0]);
    assert_eq!(config.memory_cap, None);
    assert_eq!(
        PoolConfig {
            thread_cache_bytes: 0,
            ..config
        }
        .cache_blocks(K4),
        0
    );
    assert_eq!(config.cache_blocks(0), 0);
}

#[test]
fn thread_cache_is_bounded() {
    let pool = BufPool::new(PoolConfig::default());
    let other = thread::spawn(move || {
        let bufs: Vec<IoBuf> = (0..500).map(|_| pool.alloc(K4).expect("alloc")).collect();
        drop(bufs);
        // At most 64 stay in this thread's cache; the rest went to the shared list, so trim
        // from this thread releases everything, and another thread could reuse at least 436.
        let (tx, rx) = mpsc::channel();
        let main_side = thread::spawn(move || {
            let got: Vec<IoBuf> = (0..436).map(|_| pool.alloc(K4).expect("alloc")).collect();
            tx.send(pool.stats().class(K4).map(|c| c.allocated))
                .expect("send");
            drop(got);
        });
        main_side.join().expect("join");
        rx.recv().expect("recv")
    });
    assert_eq!(other.join().expect("join"), Some(500));
}
