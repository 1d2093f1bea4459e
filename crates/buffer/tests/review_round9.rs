//! Review round 9 of duo-buffer: a trim running on one thread while another thread's
//! request needs the free blocks it is releasing; an input buffer on a capped pool against
//! a model, the cap hit half-way through a growth.
//!
//! A request fails with `Exhausted` only when the blocks in use plus the request do not fit
//! (see `BufPool`). A trim takes the free blocks off the shared lists and returns them to
//! the system: while it does, those blocks are neither on a list (for a request to
//! release) nor subtracted from the allocated bytes (for a request to use), and a request
//! on another thread that needed them failed although nothing was in use.

mod util;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use duo_buffer::{BufPool, BufferError, InputBuffer, IoBuf, PoolConfig, PoolError, ReadOutcome};
use proptest::prelude::*;
use util::{pattern, scatter};

const K4: usize = 4 << 10;
const K256: usize = 256 << 10;
const M1: usize = 1 << 20;

/// Longest a thread waits for the other.
const DEADLINE: Duration = Duration::from_secs(20);

/// Spins until `flag` holds `value` (both threads are busy at that moment, so that the
/// request lands while the trim runs), failing the test after the deadline.
fn spin_until(flag: &AtomicUsize, value: usize) {
    let start = Instant::now();
    while flag.load(SeqCst) != value {
        assert!(start.elapsed() < DEADLINE, "the other thread is stuck");
        std::hint::spin_loop();
        thread::yield_now();
    }
}

/// One thread frees many small blocks and trims; the other, told to go at the same moment,
/// asks for a block that fits only once those free blocks are gone (released by the trim
/// or by the request itself). Nothing else is in use, so the request must never fail.
#[test]
fn a_request_racing_a_trim_that_releases_what_it_needs_is_served() {
    const ROUNDS: usize = 400;
    const SMALL: usize = 2000; // 2000 blocks of 4 KiB: the trim takes a while
    let cap = SMALL * K4 + K256 / 2; // the request fits only once some are released
    for cached in [false, true] {
        let pool = BufPool::new(PoolConfig {
            memory_cap: Some(cap),
            thread_cache_bytes: if cached { M1 } else { 0 },
        });
        // Odd: round `n / 2` may start (the trimmer's blocks are free); even: it is over.
        let step = Arc::new(AtomicUsize::new(0));
        let trimmer = {
            let step = Arc::clone(&step);
            thread::spawn(move || {
                for round in 0..ROUNDS {
                    let small: Vec<IoBuf> =
                        (0..SMALL).map(|_| pool.alloc(K4).expect("fits")).collect();
                    // To the shared lists (this thread's cache keeps at most an eighth of
                    // the cap), then released by the trim.
                    drop(small);
                    step.store(2 * round + 1, SeqCst);
                    pool.trim();
                    spin_until(&step, 2 * round + 2);
                }
            })
        };
        let mut failures = Vec::new();
        for round in 0..ROUNDS {
            spin_until(&step, 2 * round + 1);
            match pool.alloc(K256) {
                Ok(buf) => drop(buf),
                Err(e) => failures.push((round, e)),
            }
            // Nothing may stay free for the next round but what a trim leaves.
            pool.trim();
            step.store(2 * round + 2, SeqCst);
        }
        trimmer.join().expect("trimmer");
        assert!(
            failures.is_empty(),
            "cached={cached}: {} of {ROUNDS} requests failed with nothing in use, first {:?}",
            failures.len(),
            failures.first()
        );
        assert_eq!(pool.stats().in_use_blocks(), 0);
    }
}

/// Whether `error` was the right answer of a pool used by this thread alone: every free
/// block is within its reach, so only the blocks still in use and the request can exceed
/// the cap.
fn refused_rightly(pool: BufPool, error: PoolError, cap: usize) -> bool {
    match error {
        PoolError::Exhausted { requested, .. } => pool.stats().in_use_bytes() + requested > cap,
        PoolError::TooLarge { .. } => false,
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A read of this many new stream bytes (the "socket" takes all it is offered).
    Read(usize),
    Append(usize),
    Consume(usize),
    Settle,
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![
        3 => 1usize..100,
        3 => 1usize..70_000,
        1 => 60_000usize..300_000,
    ];
    prop_oneof![
        5 => size.clone().prop_map(Op::Read),
        2 => size.clone().prop_map(Op::Append),
        4 => size.prop_map(Op::Consume),
        2 => Just(Op::Settle),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// An input buffer on a capped pool (with or without thread caches), its maximum above
    /// what the cap lets one block grow to: every operation either does what the model says,
    /// or fails with the pool's `Exhausted` and leaves the buffer valid, its bytes intact (a
    /// read that fails after reading keeps what reached the block, a prefix of what was
    /// read), the pool within its cap and its counters matching the block held.
    #[test]
    fn an_input_buffer_on_a_capped_pool_keeps_its_bytes_when_growth_fails(
        cap in prop_oneof![Just(80usize << 10), Just(300 << 10), Just(1 << 20)],
        cached in any::<bool>(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let pool = BufPool::new(PoolConfig {
            memory_cap: Some(cap),
            thread_cache_bytes: if cached { M1 } else { 0 },
        });
        let mut buf = InputBuffer::with_pool(pool, 1 << 20);
        let mut model: VecDeque<u8> = VecDeque::new();
        let mut next = 0usize;
        for op in ops {
            let room = buf.max_len() - model.len();
            match op {
                Op::Read(n) => {
                    let bytes = pattern(next, n);
                    let before = buf.len();
                    match buf.read_with(|iovs| Ok(scatter(iovs, &bytes))) {
                        Ok(ReadOutcome::Data { len, .. }) => {
                            prop_assert!(len <= n && len <= room);
                            model.extend(&bytes[..len]);
                            next += len;
                        }
                        Err(BufferError::Full { .. }) => prop_assert_eq!(room, 0),
                        Err(BufferError::Pool(e)) => {
                            prop_assert!(refused_rightly(pool, e, cap), "{:?}", e);
                            // The bytes that reached the block stay; the stream is broken
                            // after them (documented), so the model follows the buffer.
                            prop_assert!(buf.len() >= before);
                            let kept = buf.len() - before;
                            prop_assert!(kept <= n);
                            model.extend(&bytes[..kept]);
                            next += n;
                        }
                        other => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
                Op::Append(n) => {
                    let bytes = pattern(next, n);
                    match buf.append(&bytes) {
                        Ok(()) => {
                            model.extend(&bytes);
                            next += n;
                        }
                        Err(BufferError::Full { .. }) => prop_assert!(n > room),
                        Err(BufferError::Pool(e)) => {
                            prop_assert!(refused_rightly(pool, e, cap), "{:?}", e);
                        }
                        Err(e) => prop_assert!(false, "append: {}", e),
                    }
                }
                Op::Consume(n) => {
                    buf.consume(n);
                    model.drain(..n.min(model.len()));
                }
                Op::Settle => {
                    match buf.settle() {
                        Ok(()) => prop_assert!(!buf.is_unsettled()),
                        Err(e) => prop_assert!(refused_rightly(pool, e, cap), "{:?}", e),
                    }
                }
            }
            let expected = model.make_contiguous();
            prop_assert_eq!(buf.len(), expected.len());
            prop_assert!(buf.peek() == &*expected, "contents differ from the model");
            let stats = pool.stats();
            prop_assert!(stats.allocated_bytes <= cap);
            let held = usize::from(!buf.is_empty() && !buf.is_unsettled());
            prop_assert_eq!(stats.in_use_blocks(), held);
            if held == 1 {
                prop_assert_eq!(stats.in_use_bytes(), buf.capacity());
            }
        }
    }
}
