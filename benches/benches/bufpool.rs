//! Criterion benchmark: `BufPool::alloc` + drop against `Vec::<u8>::with_capacity` + drop
//! (the system allocator), for 4 KiB and 64 KiB blocks, on one thread and on two threads at
//! once (each thread its own loop). One iteration is one allocation, one written byte and
//! the free; with two threads the time is the mean of the threads' times.
//!
//! ```text
//! cargo bench -p duo-benches --bench bufpool [-- CRITERION OPTIONS]
//! ```
//! `cargo xtask bench` runs it and reports the medians.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use duo_buffer::BufPool;

#[derive(Clone, Copy, PartialEq)]
enum Subject {
    Pool,
    Vec,
}

/// One allocation + one written byte + free through the pool.
#[inline(never)]
fn pool_op(pool: BufPool, size: usize) {
    let mut buf = pool.alloc(size).expect("no cap on this pool");
    if let Some(byte) = buf.writable().first_mut() {
        *byte = 1;
    }
    buf.advance_tail(1);
    black_box(&buf);
}

/// One allocation + one written byte + free through the system allocator.
#[inline(never)]
fn vec_op(size: usize) {
    let mut v = Vec::<u8>::with_capacity(size);
    v.push(1);
    black_box(&v);
}

/// Runs `iterations` operations on this thread; returns the elapsed time.
fn run_loop(subject: Subject, size: usize, iterations: u64) -> Duration {
    let pool = BufPool::global();
    let start = Instant::now();
    for _ in 0..iterations {
        match subject {
            Subject::Pool => pool_op(pool, size),
            Subject::Vec => vec_op(size),
        }
    }
    start.elapsed()
}

/// `iterations` operations on each of `threads` threads started together; returns the
/// mean over the threads of each thread's time.
fn run_threads(subject: Subject, size: usize, threads: usize, iterations: u64) -> Duration {
    if threads == 1 {
        return run_loop(subject, size, iterations);
    }
    let barrier = Barrier::new(threads);
    let times: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    run_loop(subject, size, iterations / 10 + 1); // warm up this thread's cache
                    barrier.wait();
                    run_loop(subject, size, iterations)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect()
    });
    times.iter().sum::<Duration>() / threads as u32
}

fn bufpool(c: &mut Criterion) {
    let mut group = c.benchmark_group("bufpool");
    group.throughput(Throughput::Elements(1));
    for size in [4 << 10, 64 << 10] {
        for threads in [1, 2] {
            for (name, subject) in [("pool", Subject::Pool), ("vec", Subject::Vec)] {
                let id = BenchmarkId::new(name, format!("{}KiB-{threads}t", size >> 10));
                group.bench_function(id, |b| {
                    b.iter_custom(|iters| run_threads(subject, size, threads, iters))
                });
            }
        }
    }
    group.finish();
}

/// What `criterion_main!` would generate, written out so that it is documented: the
/// benchmarks, configured from the command line (`--measurement-time`, `--sample-size`,
/// a name filter, ...).
fn main() {
    let mut c = Criterion::default().configure_from_args();
    bufpool(&mut c);
    c.final_summary();
}
