//! [`duo_workers::ThreadPool`] in combinations `thread_pool.rs` leaves out: many threads
//! submitting at once into a queue at its bound; `stop` while other threads submit;
//! a panicking job (the worker survives, the panic is reported once); jobs that submit
//! jobs, at the bound and during `stop`; the pool dropped without `stop`; `stop` twice
//! and from inside a job; a capacity the machine cannot hold.
//!
//! Every wait has a deadline; scenarios that could deadlock run on a helper thread
//! watched by [`within`].

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

use common::{eventually, recv, within, DEADLINE};
use duo_workers::{SubmitError, ThreadPool};

/// Occupies every one of `threads` workers with a job that waits for its gate; returns the
/// gates' senders once every worker is inside its job (the queue is then empty).
fn occupy_all(pool: &ThreadPool, threads: usize) -> Vec<Sender<()>> {
    let (started_tx, started) = mpsc::channel();
    let gates = (0..threads)
        .map(|_| {
            let (open_tx, open) = mpsc::channel::<()>();
            let started_tx = started_tx.clone();
            pool.submit(move || {
                started_tx.send(()).unwrap();
                open.recv_timeout(DEADLINE).expect("gate never opened");
            })
            .unwrap();
            open_tx
        })
        .collect();
    for _ in 0..threads {
        recv(&started, "a worker to take its gate job");
    }
    assert_eq!(pool.queued(), 0);
    gates
}

/// Eight threads, released together by a barrier, submit 32 jobs each into an empty queue
/// of 64 while every worker is busy: exactly 64 are accepted (never more, never fewer),
/// every refusal is `Full` and hands the job back, and each accepted job runs once.
#[test]
fn many_threads_at_the_bound_get_exactly_capacity_accepted() {
    const CAPACITY: usize = 64;
    const THREADS: usize = 8;
    const EACH: usize = 32;
    let pool = Arc::new(ThreadPool::new("pc-bound", 2, CAPACITY).unwrap());
    let gates = occupy_all(&pool, 2);
    let ran = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(Barrier::new(THREADS));
    let submitters: Vec<_> = (0..THREADS)
        .map(|_| {
            let (pool, ran, go) = (pool.clone(), ran.clone(), go.clone());
            thread::spawn(move || {
                go.wait();
                let (mut ok, mut full) = (0, 0);
                for _ in 0..EACH {
                    let ran = ran.clone();
                    match pool.submit(move || {
                        ran.fetch_add(1, Ordering::SeqCst);
                    }) {
                        Ok(()) => ok += 1,
                        Err(SubmitError::Full(job)) => {
                            full += 1;
                            drop(job);
                        }
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                }
                (ok, full)
            })
        })
        .collect();
    let (mut ok, mut full) = (0, 0);
    for s in submitters {
        let (o, f) = within("a submitter", move || s.join().unwrap());
        ok += o;
        full += f;
    }
    assert_eq!(ok, CAPACITY, "accepted at the bound");
    assert_eq!(full, THREADS * EACH - CAPACITY);
    assert_eq!(pool.queued(), CAPACITY);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "a job ran while every worker was busy"
    );
    for g in gates {
        g.send(()).unwrap();
    }
    let p = pool.clone();
    within("stop", move || p.stop());
    assert_eq!(ran.load(Ordering::SeqCst), CAPACITY);
    assert_eq!(pool.completed(), (CAPACITY + 2) as u64);
}

/// Four threads keep submitting (retrying on `Full`) while the main thread stops the pool:
/// every job for which `submit` returned `Ok` has run once `stop` returns, each thread
/// ends on `Stopped` with its job handed back, and nothing runs afterwards.
#[test]
fn stop_while_other_threads_submit_runs_every_accepted_job() {
    let pool = Arc::new(ThreadPool::new("pc-stop-race", 2, 8).unwrap());
    let ran = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let submitters: Vec<_> = (0..4)
        .map(|_| {
            let (pool, ran, accepted) = (pool.clone(), ran.clone(), accepted.clone());
            thread::spawn(move || loop {
                let r = ran.clone();
                match pool.submit(move || {
                    r.fetch_add(1, Ordering::SeqCst);
                }) {
                    Ok(()) => {
                        accepted.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(SubmitError::Full(_)) => thread::yield_now(),
                    Err(SubmitError::Stopped(_)) => return,
                }
            })
        })
        .collect();
    eventually("some jobs to run", || ran.load(Ordering::SeqCst) >= 200);
    let p = pool.clone();
    within("stop", move || p.stop());
    let after_stop = ran.load(Ordering::SeqCst);
    for s in submitters {
        within("a submitter", move || s.join().unwrap());
    }
    assert_eq!(
        after_stop,
        accepted.load(Ordering::SeqCst),
        "ran vs accepted"
    );
    assert_eq!(
        ran.load(Ordering::SeqCst),
        after_stop,
        "a job ran after stop"
    );
    assert_eq!(pool.completed(), after_stop as u64);
}

/// A panic hook that counts the panics whose message holds `marker` (other tests of this
/// binary panic too) and then passes every panic on to the hook before it.
fn count_panics(marker: &'static str) -> Arc<AtomicUsize> {
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if text.contains(marker) {
            s.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
    seen
}

/// A job panics on a one-worker pool: the same worker thread runs the jobs after it, the
/// panic is counted once and reaches the panic hook once, and `stop` joins the worker
/// cleanly.
#[test]
fn a_panicking_job_is_reported_once_and_its_worker_goes_on() {
    const MARKER: &str = "pc-panic-marker";
    let hooked = count_panics(MARKER);
    let pool = ThreadPool::new("pc-panic", 1, 8).unwrap();
    let (tx, rx) = mpsc::channel();
    let t = tx.clone();
    pool.submit(move || {
        t.send(thread::current().id()).unwrap();
        panic!("{MARKER}");
    })
    .unwrap();
    for _ in 0..3 {
        let t = tx.clone();
        pool.submit(move || t.send(thread::current().id()).unwrap())
            .unwrap();
    }
    let first = recv(&rx, "the panicking job");
    for _ in 0..3 {
        assert_eq!(recv(&rx, "a job after the panic"), first, "another thread");
    }
    within("stop", move || {
        pool.stop();
        assert_eq!(pool.panicked(), 1);
        assert_eq!(pool.completed(), 4);
    });
    assert_eq!(hooked.load(Ordering::SeqCst), 1, "panic hook calls");
}

/// A one-worker pool with a queue of 2: a job submits two more while the queue holds one
/// other job: the first is accepted, the second refused with `Full` at once (no wait for
/// room, which only this worker could make: a deadlock). A job running after `stop` was
/// called gets `Stopped` back with its job and the `stop` waiting for it returns.
#[test]
fn jobs_that_submit_jobs_neither_deadlock_at_the_bound_nor_during_stop() {
    let pool = Arc::new(ThreadPool::new("pc-nested", 1, 2).unwrap());
    let gates = occupy_all(&pool, 1);
    let (tx, rx) = mpsc::channel();
    let (p, t) = (pool.clone(), tx.clone());
    pool.submit(move || {
        let t2 = t.clone();
        let first = p.submit(move || t2.send("nested").unwrap());
        let second = p.submit(|| {});
        t.send(match (first, second) {
            (Ok(()), Err(SubmitError::Full(_))) => "ok, then full",
            _ => "unexpected",
        })
        .unwrap();
    })
    .unwrap();
    let t = tx.clone();
    pool.submit(move || t.send("filler").unwrap()).unwrap();
    for g in gates {
        g.send(()).unwrap();
    }
    assert_eq!(recv(&rx, "the submitting job"), "ok, then full");
    assert_eq!(recv(&rx, "the filler"), "filler");
    assert_eq!(recv(&rx, "the nested job"), "nested");

    // During stop: the job waits until `stop` has begun, then submits.
    let (open_tx, open) = mpsc::channel::<()>();
    let (p, t) = (pool.clone(), tx.clone());
    pool.submit(move || {
        open.recv_timeout(DEADLINE).expect("gate");
        t.send(match p.submit(|| {}) {
            Err(SubmitError::Stopped(job)) => {
                job();
                "stopped"
            }
            _ => "unexpected",
        })
        .unwrap();
    })
    .unwrap();
    let p = pool.clone();
    let stopper = thread::spawn(move || p.stop());
    eventually("stop to begin", || pool.is_stopped());
    open_tx.send(()).unwrap();
    assert_eq!(recv(&rx, "the job during stop"), "stopped");
    within("stop", move || stopper.join().unwrap());
    assert_eq!(pool.completed(), 5);
}

/// Dropping the pool without `stop`, with jobs queued behind a busy worker: the drop
/// returns only once every queued job has run.
#[test]
fn dropping_the_pool_without_stop_runs_every_queued_job() {
    let pool = ThreadPool::new("pc-drop", 1, 16).unwrap();
    let gates = occupy_all(&pool, 1);
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..10 {
        let ran = ran.clone();
        pool.submit(move || {
            ran.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    let dropper = thread::spawn(move || drop(pool));
    for g in gates {
        g.send(()).unwrap();
    }
    within("the drop", move || dropper.join().unwrap());
    assert_eq!(ran.load(Ordering::SeqCst), 10);
}

/// `stop` twice from a job (two workers) and twice from the main thread: no deadlock, no
/// panic, every queued job runs, and the main thread's calls return only once the workers
/// are gone (the final counts are in).
#[test]
fn stop_twice_from_a_job_and_from_outside() {
    let pool = Arc::new(ThreadPool::new("pc-stop-twice", 2, 16).unwrap());
    let gates = occupy_all(&pool, 2);
    let ran = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let p = pool.clone();
    pool.submit(move || {
        p.stop();
        p.stop();
        tx.send(p.is_stopped()).unwrap();
    })
    .unwrap();
    for _ in 0..8 {
        let ran = ran.clone();
        pool.submit(move || {
            ran.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    for g in gates {
        g.send(()).unwrap();
    }
    assert!(recv(&rx, "the job's stops to return"));
    let p = pool.clone();
    within("the outside stops", move || {
        p.stop();
        p.stop();
    });
    assert_eq!(ran.load(Ordering::SeqCst), 8);
    assert_eq!(pool.completed(), 11);
    assert!(matches!(pool.submit(|| {}), Err(SubmitError::Stopped(_))));
}

/// A queue capacity no machine can hold (`usize::MAX`, or a configuration's `u32::MAX`)
/// is refused with an error from `new`, not a panic or an abort while allocating it.
#[test]
fn a_capacity_too_large_is_an_error_not_a_panic() {
    for capacity in [usize::MAX, u32::MAX as usize] {
        let made = within("new", move || {
            let r = std::panic::catch_unwind(|| ThreadPool::new("pc-huge", 1, capacity));
            r.map(|r| r.map(drop).map_err(|e| e.kind()))
        });
        assert_eq!(
            made.ok(),
            Some(Err(std::io::ErrorKind::InvalidInput)),
            "capacity {capacity}"
        );
    }
    // Just above the maximum is refused too; a usual capacity works.
    let over = ThreadPool::new("pc-over", 1, ThreadPool::MAX_CAPACITY + 1);
    assert_eq!(
        over.map(drop).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::InvalidInput)
    );
    let pool = ThreadPool::new("pc-usual", 1, 1024).unwrap();
    assert_eq!(pool.capacity(), 1024);
    let got = Arc::new(Mutex::new(false));
    let g = got.clone();
    pool.submit(move || *g.lock().unwrap() = true).unwrap();
    pool.stop();
    assert!(*got.lock().unwrap());
}
