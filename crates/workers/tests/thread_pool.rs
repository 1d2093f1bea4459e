//! Tests of [`duo_workers::ThreadPool`]: bounded queue, `Full`/`Stopped`, draining stop, panics,
//! counters, thread names, many producers, lost wakeups and shutdown races.
//!
//! Every wait has a deadline: tests wait on channels or barriers with timeouts (never on
//! a sleep that guesses how long something takes), and scenarios that could deadlock run on
//! a helper thread watched with [`within`].

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{eventually, recv, within, DEADLINE};
use duo_workers::{SubmitError, ThreadPool};

/// A gate a job can wait on until the test opens it (or the deadline passes).
fn gate() -> (Sender<()>, Receiver<()>) {
    mpsc::channel()
}

/// Submits a job that signals `started` and then blocks until `open` is signalled,
/// occupying one worker; returns once the job is running.
fn occupy_worker(pool: &ThreadPool, open: Receiver<()>) {
    let (started_tx, started) = mpsc::channel();
    pool.submit(move || {
        started_tx.send(()).unwrap();
        open.recv_timeout(DEADLINE).expect("gate never opened");
    })
    .unwrap();
    recv(&started, "the blocking job to start");
}

#[test]
fn jobs_run_on_the_pools_named_threads() {
    let pool = ThreadPool::new("tp-names", 3, 64).unwrap();
    let (tx, rx) = mpsc::channel();
    for _ in 0..30 {
        let tx = tx.clone();
        pool.submit(move || {
            let t = thread::current();
            tx.send((t.id(), t.name().map(str::to_owned))).unwrap();
        })
        .unwrap();
    }
    let me = thread::current().id();
    let mut names = HashSet::new();
    for _ in 0..30 {
        let (id, name) = recv(&rx, "a job");
        assert_ne!(id, me, "a job ran on the submitting thread");
        names.insert(name.expect("workers are named"));
    }
    assert!(!names.is_empty() && names.len() <= 3, "{names:?}");
    for name in &names {
        assert!(
            ["tp-names-0", "tp-names-1", "tp-names-2"].contains(&name.as_str()),
            "unexpected worker name {name}"
        );
    }
    pool.stop();
    assert_eq!(pool.completed(), 30);
}

#[test]
fn threads_and_capacity_are_at_least_one() {
    let pool = ThreadPool::new("tp-min", 0, 0).unwrap();
    assert_eq!(pool.capacity(), 1);
    let (tx, rx) = mpsc::channel();
    pool.submit(move || {
        tx.send(thread::current().name().map(str::to_owned))
            .unwrap()
    })
    .unwrap();
    assert_eq!(recv(&rx, "the job").as_deref(), Some("tp-min-0"));
    let debug = format!("{pool:?}");
    assert!(
        debug.contains("tp-min") && debug.contains("capacity: 1"),
        "{debug}"
    );
}

#[test]
fn submit_reports_full_and_hands_the_job_back() {
    let pool = ThreadPool::new("tp-full", 1, 2).unwrap();
    assert_eq!(pool.capacity(), 2);
    let (open_tx, open) = gate();
    occupy_worker(&pool, open);

    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let ran = ran.clone();
        pool.submit(move || {
            ran.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    assert_eq!(pool.queued(), 2);

    let (refused_tx, refused_rx) = mpsc::channel();
    let err = pool
        .submit(move || refused_tx.send("ran by the caller").unwrap())
        .unwrap_err();
    assert!(matches!(err, SubmitError::Full(_)), "{err:?}");
    assert_eq!(format!("{err:?}"), "Full(..)");
    assert_eq!(err.to_string(), "worker queue is full");
    // The refused job comes back intact: the caller may run it or answer BUSY.
    let SubmitError::Full(job) = err else {
        unreachable!()
    };
    job();
    assert_eq!(refused_rx.try_recv(), Ok("ran by the caller"));

    // Boxed submission sees the same bound.
    let err = pool.submit_boxed(Box::new(|| {})).unwrap_err();
    assert!(matches!(err, SubmitError::Full(_)));

    open_tx.send(()).unwrap();
    pool.stop();
    assert_eq!(ran.load(Ordering::SeqCst), 2);
    assert_eq!(pool.completed(), 3);
    assert_eq!(pool.queued(), 0);
}

#[test]
fn submit_after_stop_is_refused_with_the_job() {
    let pool = ThreadPool::new("tp-stopped", 2, 8).unwrap();
    assert!(!pool.is_stopped());
    pool.stop();
    assert!(pool.is_stopped());
    let (tx, rx) = mpsc::channel();
    let err = pool.submit(move || tx.send(1).unwrap()).unwrap_err();
    assert_eq!(format!("{err:?}"), "Stopped(..)");
    assert_eq!(err.to_string(), "worker pool is stopped");
    let SubmitError::Stopped(job) = err else {
        panic!("expected Stopped")
    };
    job();
    assert_eq!(rx.try_recv(), Ok(1));
    pool.stop(); // idempotent
    assert_eq!(pool.completed(), 0);
}

#[test]
fn stop_finishes_queued_jobs_then_joins() {
    let pool = Arc::new(ThreadPool::new("tp-drain", 1, 128).unwrap());
    let (open_tx, open) = gate();
    occupy_worker(&pool, open);
    let done = Arc::new(AtomicUsize::new(0));
    for _ in 0..100 {
        let done = done.clone();
        pool.submit(move || {
            done.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    assert_eq!(pool.queued(), 100);

    // Open the gate only once stop() has begun, so the 100 jobs are still queued when the
    // pool starts stopping; also check that new jobs are refused from then on.
    let opener = {
        let pool = pool.clone();
        thread::spawn(move || {
            eventually("stop() to begin", || pool.is_stopped());
            let refused = pool.submit(|| {});
            open_tx.send(()).unwrap();
            matches!(refused, Err(SubmitError::Stopped(_)))
        })
    };
    within("stop with queued jobs", {
        let pool = pool.clone();
        move || pool.stop()
    });
    assert!(opener.join().unwrap(), "submit during stop was not refused");
    assert_eq!(done.load(Ordering::SeqCst), 100);
    assert_eq!(pool.completed(), 101);
    assert_eq!(pool.queued(), 0);
}

#[test]
fn drop_stops_and_drains() {
    let done = Arc::new(AtomicUsize::new(0));
    let (open_tx, open) = gate();
    {
        let pool = ThreadPool::new("tp-drop", 2, 64).unwrap();
        occupy_worker(&pool, open);
        for _ in 0..50 {
            let done = done.clone();
            pool.submit(move || {
                done.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        }
        open_tx.send(()).unwrap();
        within("drop", move || drop(pool));
    }
    assert_eq!(done.load(Ordering::SeqCst), 50);
}

#[test]
fn panicking_job_is_counted_and_worker_survives() {
    let pool = ThreadPool::new("tp-panic", 1, 16).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx1 = tx.clone();
    pool.submit(move || {
        tx1.send(thread::current().id()).unwrap();
        panic!("intentional panic in a ThreadPool test job");
    })
    .unwrap();
    let first = recv(&rx, "the panicking job");
    eventually("the panic to be counted", || pool.panicked() == 1);
    pool.submit(move || tx.send(thread::current().id()).unwrap())
        .unwrap();
    let second = recv(&rx, "the job after the panic");
    assert_eq!(first, second, "the single worker went on");
    pool.stop();
    assert_eq!(pool.panicked(), 1);
    assert_eq!(pool.completed(), 2, "completed includes the panicked job");
}

#[test]
fn panic_with_a_panicking_payload_does_not_kill_the_worker() {
    struct Bomb;
    impl Drop for Bomb {
        fn drop(&mut self) {
            if !thread::panicking() {
                panic!("intentional panic while dropping a panic payload");
            }
        }
    }
    let pool = ThreadPool::new("tp-bomb", 1, 4).unwrap();
    pool.submit(|| std::panic::panic_any(Bomb)).unwrap();
    let (tx, rx) = mpsc::channel();
    pool.submit(move || tx.send(()).unwrap()).unwrap();
    recv(&rx, "the job after the bomb");
    pool.stop();
    assert_eq!(pool.panicked(), 1);
    assert_eq!(pool.completed(), 2);
}

#[test]
fn completed_counts_every_job() {
    let pool = ThreadPool::new("tp-count", 2, 1024).unwrap();
    for _ in 0..1000 {
        pool.submit(|| {}).unwrap();
    }
    within("stop", move || {
        pool.stop();
        assert_eq!(pool.completed(), 1000);
        assert_eq!(pool.panicked(), 0);
    });
}

/// Many producers submit many jobs through a small queue (retrying on `Full`); every job
/// runs exactly once. A lost wakeup would leave the queue full with every worker asleep,
/// and the producers' deadline (the queue staying full for `STAYED_FULL`, counted from
/// a producer's last accepted job) would fail the test.
#[test]
fn many_producers_every_job_runs_exactly_once() {
    /// As `duo_testkit::LIMIT` (not a dependency of this crate): long enough for a loaded
    /// machine, short enough that a hang fails.
    const STAYED_FULL: Duration = Duration::from_secs(10);
    const PRODUCERS: usize = 4;
    const PER_PRODUCER: usize = 5000;
    let pool = Arc::new(ThreadPool::new("tp-many", 3, 16).unwrap());
    let runs: Arc<Vec<AtomicU8>> = Arc::new(
        (0..PRODUCERS * PER_PRODUCER)
            .map(|_| AtomicU8::new(0))
            .collect(),
    );
    let start = Arc::new(Barrier::new(PRODUCERS));
    let full_seen = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (pool, runs, start, full_seen) =
                (pool.clone(), runs.clone(), start.clone(), full_seen.clone());
            thread::spawn(move || {
                start.wait();
                let mut deadline = Instant::now() + STAYED_FULL;
                for i in 0..PER_PRODUCER {
                    let id = p * PER_PRODUCER + i;
                    let runs = runs.clone();
                    let mut job: duo_workers::Job = Box::new(move || {
                        runs[id].fetch_add(1, Ordering::SeqCst);
                    });
                    loop {
                        match pool.submit_boxed(job) {
                            Ok(()) => {
                                // Progress: the queue only stalls if it stays full from here.
                                deadline = Instant::now() + STAYED_FULL;
                                break;
                            }
                            Err(SubmitError::Full(back)) => {
                                full_seen.fetch_add(1, Ordering::Relaxed);
                                assert!(
                                    Instant::now() < deadline,
                                    "queue stayed full for {STAYED_FULL:?}"
                                );
                                job = back;
                                thread::yield_now();
                            }
                            Err(SubmitError::Stopped(_)) => panic!("stopped early"),
                        }
                    }
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    within("stop", {
        let pool = pool.clone();
        move || pool.stop()
    });
    let total = PRODUCERS * PER_PRODUCER;
    assert_eq!(pool.completed(), total as u64);
    let wrong: Vec<(usize, u8)> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| (i, r.load(Ordering::SeqCst)))
        .filter(|&(_, n)| n != 1)
        .take(10)
        .collect();
    assert!(wrong.is_empty(), "jobs not run exactly once: {wrong:?}");
    eprintln!(
        "many_producers: {total} jobs, {} Full retries",
        full_seen.load(Ordering::Relaxed)
    );
}

/// Ping-pong: submit one job, wait for it, repeat. Each submit lands just as the workers
/// go idle, which is where a lost wakeup between "queue empty" and "sleep" would strand a
/// job; every round must finish within the deadline (each `recv` has its own, so a
/// stranded job fails the round it was submitted in; the total time, which a loaded
/// machine stretches, is not bounded).
#[test]
fn no_lost_wakeup_when_workers_go_idle() {
    let pool = ThreadPool::new("tp-pingpong", 2, 4).unwrap();
    let (tx, rx) = mpsc::channel();
    for i in 0..20_000u32 {
        let tx = tx.clone();
        pool.submit(move || tx.send(i).unwrap()).unwrap();
        assert_eq!(recv(&rx, "a ping-pong job"), i);
        // Let the worker reach its sleep now and then, so both paths are hit.
        if i % 64 == 0 {
            eventually("the worker to count the job", || {
                pool.completed() == u64::from(i) + 1
            });
        }
    }
    pool.stop();
    assert_eq!(pool.completed(), 20_000);
}

/// Producers keep submitting while another thread stops the pool: every job `submit`
/// accepted runs exactly once (none is stranded in the queue after the workers leave),
/// and everything after the stop is refused.
#[test]
fn submit_racing_stop_never_loses_an_accepted_job() {
    for round in 0..50 {
        let pool = Arc::new(ThreadPool::new("tp-race", 2, 64).unwrap());
        let ran = Arc::new(AtomicUsize::new(0));
        let go = Arc::new(Barrier::new(4));
        let producers: Vec<_> = (0..3)
            .map(|_| {
                let (pool, ran, go) = (pool.clone(), ran.clone(), go.clone());
                thread::spawn(move || {
                    go.wait();
                    let mut accepted = 0usize;
                    let deadline = Instant::now() + DEADLINE;
                    loop {
                        let ran = ran.clone();
                        match pool.submit(move || {
                            ran.fetch_add(1, Ordering::SeqCst);
                        }) {
                            Ok(()) => accepted += 1,
                            Err(SubmitError::Full(_)) => thread::yield_now(),
                            Err(SubmitError::Stopped(_)) => return accepted,
                        }
                        assert!(Instant::now() < deadline, "never saw Stopped");
                    }
                })
            })
            .collect();
        go.wait();
        // Let some jobs through first (an event, not a guess): wait for the first to run.
        eventually("a first job", || ran.load(Ordering::SeqCst) > 0);
        within("stop under load", {
            let pool = pool.clone();
            move || pool.stop()
        });
        let accepted: usize = producers.into_iter().map(|p| p.join().unwrap()).sum();
        assert_eq!(
            ran.load(Ordering::SeqCst),
            accepted,
            "round {round}: accepted jobs lost"
        );
        assert_eq!(pool.completed(), accepted as u64);
    }
}

/// `stop` called from inside a job while another thread is in `stop`: nobody deadlocks,
/// the queued jobs still run.
#[test]
fn stop_from_a_job_while_another_thread_stops() {
    let pool = Arc::new(ThreadPool::new("tp-selfstop", 2, 16).unwrap());
    let (open_tx, open) = gate();
    let (in_job_tx, in_job) = mpsc::channel();
    let (job_done_tx, job_done) = mpsc::channel();
    {
        let pool2 = pool.clone();
        pool.submit(move || {
            in_job_tx.send(()).unwrap();
            open.recv_timeout(DEADLINE).expect("gate");
            pool2.stop(); // from a worker: must not wait for itself
            job_done_tx.send(()).unwrap();
        })
        .unwrap();
    }
    recv(&in_job, "the job to start");
    let done = Arc::new(AtomicUsize::new(0));
    for _ in 0..10 {
        let done = done.clone();
        pool.submit(move || {
            done.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    let stopper = {
        let pool = pool.clone();
        thread::spawn(move || pool.stop())
    };
    eventually("the outside stop to begin", || pool.is_stopped());
    open_tx.send(()).unwrap();
    recv(&job_done, "the job calling stop() to return");
    within("the outside stop", move || stopper.join().unwrap());
    assert_eq!(done.load(Ordering::SeqCst), 10);
    assert_eq!(pool.completed(), 11);
}

/// The last handle to the pool dropped inside one of its own jobs: `Drop` runs `stop` on
/// a worker, which must neither deadlock nor panic; the other jobs still run.
#[test]
fn dropping_the_last_handle_inside_a_job() {
    let pool = Arc::new(ThreadPool::new("tp-lastdrop", 2, 16).unwrap());
    let (open_tx, open) = gate();
    let (tx, rx) = mpsc::channel();
    let done = Arc::new(AtomicUsize::new(0));
    {
        let pool2 = pool.clone();
        let tx = tx.clone();
        pool.submit(move || {
            open.recv_timeout(DEADLINE).expect("gate");
            drop(pool2); // the last handle by then
            tx.send("dropped").unwrap();
        })
        .unwrap();
    }
    for _ in 0..5 {
        let done = done.clone();
        pool.submit(move || {
            done.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    drop(pool);
    open_tx.send(()).unwrap();
    assert_eq!(recv(&rx, "the drop inside the job"), "dropped");
    eventually("the other jobs", || done.load(Ordering::SeqCst) == 5);
}

/// Two threads stop at once: neither returns before the running job has finished and the
/// workers have exited.
#[test]
fn concurrent_stops_both_wait_for_the_workers() {
    let pool = Arc::new(ThreadPool::new("tp-twostops", 1, 4).unwrap());
    let (open_tx, open) = gate();
    let finished = Arc::new(AtomicBool::new(false));
    {
        let finished = finished.clone();
        let (started_tx, started) = mpsc::channel();
        pool.submit(move || {
            started_tx.send(()).unwrap();
            open.recv_timeout(DEADLINE).expect("gate");
            finished.store(true, Ordering::SeqCst);
        })
        .unwrap();
        recv(&started, "the job to start");
    }
    let (ret_tx, ret) = mpsc::channel();
    let stoppers: Vec<_> = (0..2)
        .map(|_| {
            let (pool, finished, ret_tx) = (pool.clone(), finished.clone(), ret_tx.clone());
            thread::spawn(move || {
                pool.stop();
                ret_tx.send(finished.load(Ordering::SeqCst)).unwrap();
            })
        })
        .collect();
    eventually("stop to begin", || pool.is_stopped());
    open_tx.send(()).unwrap();
    for _ in 0..2 {
        assert!(
            recv(&ret, "a stop() to return"),
            "a stop() returned before the running job finished"
        );
    }
    for s in stoppers {
        s.join().unwrap();
    }
    assert_eq!(pool.completed(), 1);
}
