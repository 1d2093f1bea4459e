//! Micro-benchmark: `BufPool::alloc` + drop against `Vec::<u8>::with_capacity` + drop (the
//! system allocator), for 4 KiB and 64 KiB blocks, on one thread and on two threads at once
//! (each thread its own loop). Prints the median ns/op of several repetitions per case and the
//! ratio pool/vec as a markdown table.
//!
//! ```text
//! cargo run --release -p duo-benches --bin bufpool [-- --quick]
//! ```

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use duo_buffer::BufPool;

/// Iterations and repetitions of one run.
#[derive(Clone, Copy)]
struct Plan {
    iterations: u32,
    repetitions: usize,
}

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
fn run_loop(subject: Subject, size: usize, iterations: u32) -> Duration {
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

/// One repetition on `threads` threads started together; returns ns/op (the mean over the
/// threads of each thread's time per operation).
fn repetition(subject: Subject, size: usize, threads: usize, iterations: u32) -> f64 {
    let barrier = Barrier::new(threads);
    let times: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    run_loop(subject, size, iterations / 10); // warm up this thread's cache
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
    let total: f64 = times.iter().map(Duration::as_secs_f64).sum();
    total / threads as f64 * 1e9 / f64::from(iterations)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn measure(subject: Subject, size: usize, threads: usize, plan: Plan) -> f64 {
    median(
        (0..plan.repetitions)
            .map(|_| repetition(subject, size, threads, plan.iterations))
            .collect(),
    )
}

fn main() {
    let quick = std::env::args().skip(1).any(|a| a == "--quick");
    let plan = if quick {
        Plan {
            iterations: 200_000,
            repetitions: 3,
        }
    } else {
        Plan {
            iterations: 2_000_000,
            repetitions: 9,
        }
    };
    println!(
        "bufpool: alloc + write 1 byte + free, median of {} runs x {} ops per thread{}\n",
        plan.repetitions,
        plan.iterations,
        if quick { " (--quick)" } else { "" }
    );
    println!("| block | threads | pool ns/op | Vec ns/op | pool/Vec |");
    println!("|---:|---:|---:|---:|---:|");
    for size in [4 << 10, 64 << 10] {
        for threads in [1, 2] {
            let pool = measure(Subject::Pool, size, threads, plan);
            let vec = measure(Subject::Vec, size, threads, plan);
            println!(
                "| {} KiB | {threads} | {pool:.1} | {vec:.1} | {:.2} |",
                size >> 10,
                pool / vec
            );
        }
    }
}
