//! [`duo_workers::ThreadPool`] in states the other suites do not combine: a job that never
//! returns while the pool stops (`stop_within` bounds the wait, from outside and from a
//! job), `stop` from a job while many threads submit, a panicking job that held the last
//! slot, and a name no thread can have.
//!
//! Every wait has a deadline; scenarios that could deadlock run on a helper thread
//! watched by [`within`].

mod common;

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{eventually, recv, within, DEADLINE};
use duo_workers::{SubmitError, ThreadPool};

/// Occupies one worker with a job that waits for its gate; returns the gate's sender once
/// the job is running.
fn occupy(pool: &ThreadPool) -> Sender<()> {
    let (started_tx, started) = mpsc::channel();
    let (open_tx, open) = mpsc::channel::<()>();
    pool.submit(move || {
        started_tx.send(()).unwrap();
        open.recv_timeout(DEADLINE).expect("gate never opened");
    })
    .unwrap();
    recv(&started, "the gate job to start");
    open_tx
}

/// A thread name must not hold a NUL byte (the kernel's names are C strings): `new`
/// refuses such a name with `InvalidInput`, as it refuses a capacity it cannot hold,
/// instead of panicking in `std::thread::Builder::spawn` (which it did before).
#[test]
fn a_name_with_a_nul_byte_is_an_error_not_a_panic() {
    let made = within("new", || {
        std::panic::catch_unwind(|| ThreadPool::new("ps\0nul", 2, 8).map(drop))
            .map(|r| r.map_err(|e| e.kind()))
    });
    assert_eq!(
        made.ok(),
        Some(Err(std::io::ErrorKind::InvalidInput)),
        "new with a NUL in the name"
    );
}

/// A job that does not return (a database that stopped answering) while the pool stops:
/// `stop_within` refuses new jobs at once and returns `false` at its deadline instead of
/// waiting for ever; the workers go on, the job queued behind the stuck one still runs
/// once it is free, and a later `stop` waits for them and sees the final counts.
#[test]
fn stop_within_gives_up_on_a_job_that_does_not_return_and_the_queue_still_drains() {
    let pool = Arc::new(ThreadPool::new("ps-stuck", 1, 4).unwrap());
    let gate = occupy(&pool);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    pool.submit(move || {
        r.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();

    let p = pool.clone();
    let (stopped, took) = within("stop_within", move || {
        let start = Instant::now();
        (p.stop_within(Duration::from_millis(200)), start.elapsed())
    });
    assert!(!stopped, "a worker is still in its job");
    assert!(
        took >= Duration::from_millis(200),
        "returned early: {took:?}"
    );
    assert!(pool.is_stopped());
    assert!(matches!(pool.submit(|| {}), Err(SubmitError::Stopped(_))));
    assert_eq!(ran.load(Ordering::SeqCst), 0, "queued behind the stuck job");

    // The stuck job returns: the worker drains the queue and exits by itself.
    gate.send(()).unwrap();
    eventually("the queued job to run", || ran.load(Ordering::SeqCst) == 1);
    let p = pool.clone();
    assert!(within("stop_within after the drain", move || {
        p.stop_within(DEADLINE)
    }));
    assert_eq!(pool.completed(), 2);
    // Idempotent, with any limit (one past the clock's range waits without a deadline).
    assert!(pool.stop_within(Duration::ZERO));
    assert!(pool.stop_within(Duration::MAX));
    pool.stop();
}

/// `stop_within` on an idle pool returns `true` at once; from inside a job it cannot wait
/// for its own worker and returns `false` without waiting, and the queue still drains.
#[test]
fn stop_within_when_idle_and_from_a_job() {
    let idle = ThreadPool::new("ps-idle", 2, 4).unwrap();
    let start = Instant::now();
    assert!(idle.stop_within(Duration::from_secs(60)));
    assert!(start.elapsed() < DEADLINE);

    let pool = Arc::new(ThreadPool::new("ps-self", 1, 4).unwrap());
    let gate = occupy(&pool);
    let (tx, rx) = mpsc::channel();
    let p = pool.clone();
    pool.submit(move || {
        let start = Instant::now();
        let stopped = p.stop_within(Duration::from_secs(60));
        tx.send((stopped, start.elapsed())).unwrap();
    })
    .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    pool.submit(move || {
        r.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    gate.send(()).unwrap();
    let (stopped, took) = recv(&rx, "the job's stop_within");
    assert!(!stopped);
    assert!(took < DEADLINE, "waited {took:?} for its own worker");
    let p = pool.clone();
    within("stop", move || p.stop());
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(pool.completed(), 3);
}

/// Four threads submit numbered jobs as fast as they can (retrying on `Full`) while a job
/// on one of the two workers calls `stop`: every job `submit` accepted runs exactly once
/// (none twice, none stranded), every refusal hands its job back, each thread ends on
/// `Stopped`, and nothing runs after the outside `stop` returns. A thread that has used up
/// its numbered jobs before the stop goes on submitting tallied ones, so every thread is
/// still submitting when the stop comes, however the threads were scheduled.
#[test]
fn stop_from_a_job_while_many_threads_submit() {
    const THREADS: usize = 4;
    const MAX_EACH: usize = 20_000;
    let pool = Arc::new(ThreadPool::new("ps-race", 2, 8).unwrap());
    let runs: Arc<Vec<AtomicU8>> =
        Arc::new((0..THREADS * MAX_EACH).map(|_| AtomicU8::new(0)).collect());
    // Runs of the tallied jobs a thread submits once its numbered ones are used up.
    let extra_runs = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(Barrier::new(THREADS + 1));
    let submitters: Vec<_> = (0..THREADS)
        .map(|t| {
            let (pool, runs, go) = (pool.clone(), runs.clone(), go.clone());
            let extra_runs = extra_runs.clone();
            thread::spawn(move || {
                go.wait();
                let mut accepted = Vec::new();
                let mut extra_accepted = 0usize;
                for i in 0.. {
                    let numbered = (i < MAX_EACH).then(|| t * MAX_EACH + i);
                    let (runs2, extra2) = (runs.clone(), extra_runs.clone());
                    let mut job: Box<dyn FnOnce() + Send> = Box::new(move || match numbered {
                        Some(id) => {
                            runs2[id].fetch_add(1, Ordering::SeqCst);
                        }
                        None => {
                            extra2.fetch_add(1, Ordering::SeqCst);
                        }
                    });
                    loop {
                        match pool.submit_boxed(job) {
                            Ok(()) => {
                                match numbered {
                                    Some(id) => accepted.push(id),
                                    None => extra_accepted += 1,
                                }
                                break;
                            }
                            Err(SubmitError::Full(back)) => {
                                job = back;
                                thread::yield_now();
                            }
                            Err(SubmitError::Stopped(back)) => {
                                drop(back); // handed back, never run
                                return (accepted, extra_accepted);
                            }
                        }
                    }
                }
                unreachable!("a submitter only ends on Stopped")
            })
        })
        .collect();
    go.wait();
    // Let some jobs through, then stop from a job.
    eventually("some jobs to run", || pool.completed() >= 1000);
    let p = pool.clone();
    let mut stopper: Box<dyn FnOnce() + Send> = Box::new(move || p.stop());
    while let Err(SubmitError::Full(back)) = pool.submit_boxed(stopper) {
        stopper = back;
        thread::yield_now();
    }
    let results: Vec<_> = submitters
        .into_iter()
        .map(|s| within("a submitter", move || s.join().unwrap()))
        .collect();
    let p = pool.clone();
    within("the outside stop", move || p.stop());
    let counts: Vec<u8> = runs.iter().map(|r| r.load(Ordering::SeqCst)).collect();
    let mut accepted_total = 0;
    for (accepted, extra_accepted) in results {
        accepted_total += extra_accepted;
        for id in &accepted {
            assert_eq!(
                counts[*id], 1,
                "accepted job {id} ran {} times",
                counts[*id]
            );
        }
        accepted_total += accepted.len();
    }
    let ran_total: usize =
        counts.iter().map(|&c| usize::from(c)).sum::<usize>() + extra_runs.load(Ordering::SeqCst);
    assert_eq!(ran_total, accepted_total, "a refused job ran");
    // The submitters' jobs, and the stopping job if it was accepted.
    assert!(pool.completed() as usize >= accepted_total);
    assert!(pool.completed() as usize <= accepted_total + 1);
}

/// A one-worker pool with a queue of one: the job that fills the last slot panics. While
/// it waits the queue is full (`Full`, job handed back); once it has run and panicked the
/// slot is free again and the same worker runs the next job.
#[test]
fn a_panicking_job_in_the_last_slot_frees_it() {
    let pool = ThreadPool::new("ps-lastslot", 1, 1).unwrap();
    let gate = occupy(&pool);
    pool.submit(|| panic!("ps-lastslot: the job in the last slot panics"))
        .unwrap();
    assert!(matches!(pool.submit(|| {}), Err(SubmitError::Full(_))));
    gate.send(()).unwrap();
    eventually("the panic to be counted", || pool.panicked() == 1);
    let (tx, rx) = mpsc::channel();
    let mut job: Box<dyn FnOnce() + Send> = Box::new(move || {
        tx.send(thread::current().name().map(str::to_owned))
            .unwrap();
    });
    // The slot frees as the worker takes the job; the count moves after it returns.
    loop {
        match pool.submit_boxed(job) {
            Ok(()) => break,
            Err(SubmitError::Full(back)) => {
                job = back;
                thread::yield_now();
            }
            Err(SubmitError::Stopped(_)) => panic!("stopped"),
        }
    }
    assert_eq!(
        recv(&rx, "the job after the panic").as_deref(),
        Some("ps-lastslot-0")
    );
    within("stop", move || pool.stop());
}
