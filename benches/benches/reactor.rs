//! Criterion benchmarks of the reactor layer (`duo-reactor`), each on a fresh
//! [`EventLoopThread`]:
//!
//! - `reactor-wakeup/{park,spin}`: cross-thread wake-up, one iteration is a round trip
//!   client thread → loop (`LoopHandle::queue_in_loop`) → client thread, with the client
//!   parked (futex) or spinning;
//! - `reactor-timers/cancel-{bulk,one-by-one}`: schedule then cancel timers on the loop
//!   thread (deadlines 60-120 s away, random order), one iteration per schedule+cancel
//!   pair; `reactor-timers/fire-100k-over-100ms`: 100 000 timers spread over 100 ms that
//!   must all fire, one iteration per batch, first schedule to last firing;
//! - `reactor-queue/{1,2}-producers`: `LoopHandle::queue_in_loop` calls from one and from
//!   two producer threads, one iteration per call, until the loop has run them all.
//!
//! ```text
//! cargo bench -p duo-benches --bench reactor [-- CRITERION OPTIONS]
//! ```
//! `cargo xtask bench` runs it and reports the medians.

use parking_lot::Mutex;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use duo_reactor::{EventLoop, EventLoopThread, LoopHandle};

/// Timers of one firing batch, and the time their deadlines are spread over.
const FIRE_TIMERS: usize = 100_000;
const FIRE_SPREAD: Duration = Duration::from_millis(100);

/// Runs `body` against a fresh loop thread, then stops the thread.
fn with_loop(name: &str, body: impl FnOnce(&LoopHandle)) {
    let thread = EventLoopThread::spawn(name, None).expect("start a loop thread");
    body(thread.handle());
    thread.stop().expect("stop the loop thread");
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what}: no answer from the loop"),
    )
}

// ---------------------------------------------------------------------------------------
// Cross-thread wake-up

/// How the client waits for the loop's answer.
#[derive(Clone, Copy, PartialEq)]
enum Wait {
    /// `thread::park`; the loop `unpark`s it (a futex wake): two sleeping threads.
    Park,
    /// Busy-wait on an atomic: isolates the loop's own wake-up (eventfd → epoll_wait).
    Spin,
}

// ---------------------------------------------------------------------------------------
// Timers

/// How schedule and cancel calls are interleaved.
#[derive(Clone, Copy, PartialEq)]
enum Pattern {
    /// Schedule all `n`, then cancel all: the queue holds up to `n` timers.
    Bulk,
    /// Schedule one and cancel it at once: the queue stays (nearly) empty.
    OneByOne,
}

/// One round trip to the loop and back, `iters` times; returns the total time.
fn wakeup_rounds(handle: &LoopHandle, wait: Wait, iters: u64) -> Duration {
    let answered = Arc::new(AtomicU64::new(0));
    let me = thread::current();
    let mut total = Duration::ZERO;
    for round in 1..=iters {
        let (flag, client) = (answered.clone(), me.clone());
        let start = Instant::now();
        handle
            .queue_in_loop(move |_| {
                flag.store(round, Ordering::Release);
                if wait == Wait::Park {
                    client.unpark();
                }
            })
            .expect("queue on the loop");
        let give_up = start + Duration::from_secs(10);
        while answered.load(Ordering::Acquire) != round {
            match wait {
                Wait::Park => thread::park_timeout(Duration::from_secs(1)),
                Wait::Spin => std::hint::spin_loop(),
            }
            assert!(
                Instant::now() < give_up,
                "{}",
                timed_out("wake-up round trip")
            );
        }
        total += start.elapsed();
    }
    total
}

fn wakeup(c: &mut Criterion) {
    let mut group = c.benchmark_group("reactor-wakeup");
    for (name, wait) in [("park", Wait::Park), ("spin", Wait::Spin)] {
        with_loop("bench-wakeup", |handle| {
            group.bench_function(name, |b| {
                b.iter_custom(|iters| wakeup_rounds(handle, wait, iters))
            });
        });
    }
    group.finish();
}

/// Schedules `n` timers (deadlines 60-120 s away, random order) and cancels them, on the
/// loop thread; returns the time the calls took. Every cancel must find its timer.
fn schedule_and_cancel(handle: &LoopHandle, n: usize, pattern: Pattern) -> Duration {
    let (tx, rx) = mpsc::channel();
    handle
        .queue_in_loop(move |lp: &mut EventLoop| {
            let mut rng = duo_testkit::Rng::new(0x9e37_79b9_7f4a_7c15);
            let delays: Vec<Duration> = (0..n)
                .map(|_| Duration::from_secs(60) + Duration::from_micros(rng.below(60_000_000)))
                .collect();
            let mut ids = Vec::with_capacity(n);
            let mut cancelled = 0;
            let start = Instant::now();
            match pattern {
                Pattern::Bulk => {
                    for &delay in &delays {
                        ids.push(lp.run_after(delay, |_| {}));
                    }
                    cancelled = ids.iter().filter(|&&id| lp.cancel(id)).count();
                }
                Pattern::OneByOne => {
                    for &delay in &delays {
                        let id = lp.run_after(delay, |_| {});
                        cancelled += usize::from(lp.cancel(id));
                    }
                }
            }
            let elapsed = start.elapsed();
            let _ = tx.send((elapsed, cancelled, lp.timer_count()));
        })
        .expect("queue on the loop");
    let (elapsed, cancelled, left) = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{}", timed_out("timer schedule/cancel")));
    assert_eq!(cancelled, n, "every cancel finds its timer");
    assert_eq!(left, 0, "timers left after cancelling all");
    elapsed
}

/// State shared by the timer callbacks of one firing batch (loop thread only).
struct FireState {
    fired: usize,
    /// Timers that ran before their deadline (must stay 0).
    early: usize,
    done: Option<mpsc::Sender<(Instant, usize)>>,
}

/// Schedules [`FIRE_TIMERS`] timers spread over [`FIRE_SPREAD`] and waits for all of them
/// to fire; returns the time from the first schedule to the last firing.
fn fire_batch(handle: &LoopHandle) -> Duration {
    let (n, spread) = (FIRE_TIMERS, FIRE_SPREAD);
    let (tx, rx) = mpsc::channel();
    let (stx, srx) = mpsc::channel();
    handle
        .queue_in_loop(move |lp: &mut EventLoop| {
            let state = Arc::new(Mutex::new(FireState {
                fired: 0,
                early: 0,
                done: Some(tx),
            }));
            let start = Instant::now();
            for i in 0..n {
                // A fixed permutation of 0..n (7919 is coprime to n = 100 000), so the
                // deadlines arrive in scrambled order.
                let slot = (i as u64 * 7919) % n as u64;
                let deadline = start + spread.mul_f64(slot as f64 / n as f64);
                let state = state.clone();
                lp.run_at(deadline, move |_| {
                    let now = Instant::now();
                    let mut s = state.lock();
                    s.fired += 1;
                    s.early += usize::from(now < deadline);
                    if s.fired == n {
                        let early = s.early;
                        if let Some(done) = s.done.take() {
                            let _ = done.send((now, early));
                        }
                    }
                });
            }
            let _ = stx.send(start);
        })
        .expect("queue on the loop");
    let wait = spread + Duration::from_secs(30);
    let start = srx
        .recv_timeout(wait)
        .unwrap_or_else(|_| panic!("{}", timed_out("timer scheduling")));
    let (end, early) = rx
        .recv_timeout(wait)
        .unwrap_or_else(|_| panic!("{}", timed_out("timer firing")));
    assert_eq!(early, 0, "timers fired before their deadline");
    end.duration_since(start)
}

fn timers(c: &mut Criterion) {
    let mut group = c.benchmark_group("reactor-timers");
    group.throughput(Throughput::Elements(1));
    for (name, pattern) in [
        ("cancel-bulk", Pattern::Bulk),
        ("cancel-one-by-one", Pattern::OneByOne),
    ] {
        with_loop("bench-timers", |handle| {
            group.bench_function(name, |b| {
                b.iter_custom(|iters| schedule_and_cancel(handle, iters as usize, pattern))
            });
        });
    }
    group
        .throughput(Throughput::Elements(FIRE_TIMERS as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10);
    with_loop("bench-timers", |handle| {
        group.bench_function("fire-100k-over-100ms", |b| {
            b.iter_custom(|iters| (0..iters).map(|_| fire_batch(handle)).sum())
        });
    });
    group.finish();
}

/// `iters` `queue_in_loop` calls shared by `producers` threads started together (each
/// then queues a marker); returns the time from the first call until the loop has run
/// every function.
fn queue_calls(handle: &LoopHandle, producers: usize, iters: u64) -> Duration {
    let per_producer = (iters as usize).div_ceil(producers);
    let (tx, rx) = mpsc::channel::<Instant>();
    let barrier = Arc::new(Barrier::new(producers));
    let ran = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..producers)
        .map(|p| {
            let (handle, tx, barrier) = (handle.clone(), tx.clone(), barrier.clone());
            let ran = ran.clone();
            thread::Builder::new()
                .name(format!("bench-producer-{p}"))
                .spawn(move || -> io::Result<Instant> {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..per_producer {
                        // Captures 8 bytes (the counter), so each call allocates its box
                        // like a real closure would; the count proves every one ran.
                        let ran = ran.clone();
                        handle.queue_in_loop(move |_| {
                            ran.fetch_add(1, Ordering::Relaxed);
                        })?;
                    }
                    // FIFO: when this runs, every function of this producer has run.
                    handle.queue_in_loop(move |_| {
                        let _ = tx.send(Instant::now());
                    })?;
                    Ok(start)
                })
                .expect("start a producer thread")
        })
        .collect();
    drop(tx);
    let start = workers
        .into_iter()
        .map(|w| {
            w.join()
                .expect("producer thread panicked")
                .expect("queue on the loop")
        })
        .min()
        .expect("one producer at least");
    let end = (0..producers)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("{}", timed_out("queued functions")))
        })
        .max()
        .expect("one producer at least");
    // Every producer's marker ran after its functions (FIFO): all of them have run.
    assert_eq!(
        ran.load(Ordering::Relaxed),
        per_producer * producers,
        "the loop ran every queued function"
    );
    end.duration_since(start)
}

fn queue(c: &mut Criterion) {
    let mut group = c.benchmark_group("reactor-queue");
    group.throughput(Throughput::Elements(1));
    for producers in [1, 2] {
        with_loop("bench-queue", |handle| {
            group.bench_function(format!("{producers}-producers"), |b| {
                b.iter_custom(|iters| queue_calls(handle, producers, iters))
            });
        });
    }
    group.finish();
}

/// What `criterion_main!` would generate, written out so that it is documented: the
/// benchmarks, configured from the command line (`--measurement-time`, `--sample-size`,
/// a name filter, ...).
fn main() {
    let mut c = Criterion::default().configure_from_args();
    wakeup(&mut c);
    timers(&mut c);
    queue(&mut c);
    c.final_summary();
}
