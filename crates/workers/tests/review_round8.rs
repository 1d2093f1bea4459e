//! Review round 8: `stop` called from a job (directly, or by dropping the last handle to
//! the pool there) cannot wait for its own worker, and must not wait for the others
//! either: they may be running a job that waits for something only the stopping job's
//! worker can still do (run a job queued before the stop, or finish the stopping job).
//! Such a `stop` refuses new jobs and returns at once, as `stop_within` from a job does.
//!
//! Also: a job that panicked is counted in `completed` no later than in `panicked`, so a
//! reader never sees more panicked jobs than completed ones while the worker reports the
//! panic (a logger may take its time).

#[allow(dead_code)]
mod common;

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{recv, within, DEADLINE};
use duo_workers::{SubmitError, ThreadPool};
use log::{LevelFilter, Log, Metadata, Record};

/// How long a job waits for another one before the test calls it a deadlock: far more
/// than a free worker needs to pick a job up, less than [`DEADLINE`].
const WAIT: Duration = Duration::from_secs(2);

/// Job B waits for a job C it queued before the stop; job A, on the other worker, then
/// stops the pool. A's worker must go back to the queue and run C (an accepted job), not
/// sit joining B's worker, which waits for C.
#[test]
fn stop_from_a_job_leaves_its_worker_free_to_run_the_queued_jobs() {
    within(
        "stop from a job beside a job waiting for a queued one",
        || {
            let pool = Arc::new(ThreadPool::new("r8-queued", 2, 8).unwrap());
            let (go_tx, go) = mpsc::channel::<()>();
            let p = pool.clone();
            pool.submit(move || {
                go.recv_timeout(DEADLINE).expect("gate");
                p.stop();
            })
            .unwrap();
            let (queued_tx, queued) = mpsc::channel();
            let (got_tx, got) = mpsc::channel();
            let p = pool.clone();
            pool.submit(move || {
                let (c_tx, c_rx) = mpsc::channel();
                let accepted = p.submit(move || {
                    let _ = c_tx.send(());
                });
                queued_tx.send(accepted.is_ok()).unwrap();
                got_tx.send(c_rx.recv_timeout(WAIT)).unwrap();
            })
            .unwrap();
            assert!(recv(&queued, "job C to be queued"), "job C was refused");
            go_tx.send(()).unwrap();
            assert_eq!(
                recv(&got, "job B's wait for C"),
                Ok(()),
                "a job accepted before the stop did not run while a worker was free"
            );
            pool.stop();
            assert_eq!(pool.completed(), 3);
            assert!(matches!(pool.submit(|| {}), Err(SubmitError::Stopped(_))));
        },
    );
}

/// Job B waits for job A to get past its `stop`: A's `stop` must return without waiting
/// for B's worker.
#[test]
fn stop_from_a_job_does_not_wait_for_the_other_workers() {
    within("stop from a job beside a job waiting for it", || {
        let pool = Arc::new(ThreadPool::new("r8-peer", 2, 8).unwrap());
        let (b_running_tx, b_running) = mpsc::channel();
        let (past_stop_tx, past_stop) = mpsc::channel::<()>();
        let (got_tx, got) = mpsc::channel();
        pool.submit(move || {
            b_running_tx.send(()).unwrap();
            got_tx.send(past_stop.recv_timeout(WAIT)).unwrap();
        })
        .unwrap();
        recv(&b_running, "job B to start");
        let p = pool.clone();
        pool.submit(move || {
            p.stop();
            let _ = past_stop_tx.send(());
        })
        .unwrap();
        assert_eq!(
            recv(&got, "job B's wait for A"),
            Ok(()),
            "stop() called from a job waited for another worker"
        );
        pool.stop();
        assert_eq!(pool.completed(), 2);
    });
}

/// As above, with the last handle to the pool dropped inside job A (the drop stops the
/// pool on a worker): the drop returns at once, and the queued job still runs.
#[test]
fn dropping_the_last_handle_in_a_job_does_not_wait_for_the_other_workers() {
    within(
        "the last handle dropped in a job beside a waiting job",
        || {
            let pool = Arc::new(ThreadPool::new("r8-drop", 2, 8).unwrap());
            let (b_running_tx, b_running) = mpsc::channel();
            let (past_drop_tx, past_drop) = mpsc::channel::<()>();
            let (got_tx, got) = mpsc::channel();
            pool.submit(move || {
                b_running_tx.send(()).unwrap();
                got_tx.send(past_drop.recv_timeout(WAIT)).unwrap();
            })
            .unwrap();
            recv(&b_running, "job B to start");
            let (go_tx, go) = mpsc::channel::<()>();
            let p = pool.clone();
            pool.submit(move || {
                go.recv_timeout(DEADLINE).expect("gate");
                drop(p); // the last handle by now
                let _ = past_drop_tx.send(());
            })
            .unwrap();
            let (after_tx, after) = mpsc::channel();
            pool.submit(move || after_tx.send(()).unwrap()).unwrap();
            drop(pool);
            go_tx.send(()).unwrap();
            let waited: Result<(), RecvTimeoutError> = recv(&got, "job B's wait for A");
            assert_eq!(
                waited,
                Ok(()),
                "dropping the pool in a job waited for another worker"
            );
            recv(&after, "the job queued before the drop");
        },
    );
}

/// A logger that, on a record from a thread of the pool named `r8-counts`, tells
/// [`SlowLogger::entered`] and waits for [`SlowLogger::gate`] (a slow log sink).
struct SlowLogger {
    entered: Mutex<Option<Sender<()>>>,
    gate: Mutex<Option<Receiver<()>>>,
}

static LOGGER: SlowLogger = SlowLogger {
    entered: Mutex::new(None),
    gate: Mutex::new(None),
};

impl Log for SlowLogger {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, _: &Record<'_>) {
        let on_pool = thread::current()
            .name()
            .is_some_and(|n| n.starts_with("r8-counts"));
        if !on_pool {
            return;
        }
        if let Some(entered) = self.entered.lock().unwrap().take() {
            let _ = entered.send(());
        }
        if let Some(gate) = self.gate.lock().unwrap().take() {
            let _ = gate.recv_timeout(DEADLINE);
        }
    }

    fn flush(&self) {}
}

/// A job panics, and the worker's report of it is held up in the logger: meanwhile the
/// counts must not say more jobs panicked than completed ("also counted in
/// `completed`"); a monitor computing the jobs that succeeded (`completed - panicked`)
/// would underflow.
#[test]
fn a_panicked_job_is_never_counted_panicked_before_completed() {
    let (entered_tx, entered) = mpsc::channel();
    let (open, gate) = mpsc::channel();
    *LOGGER.entered.lock().unwrap() = Some(entered_tx);
    *LOGGER.gate.lock().unwrap() = Some(gate);
    log::set_logger(&LOGGER).expect("the only logger of this binary");
    log::set_max_level(LevelFilter::Error);

    let pool = ThreadPool::new("r8-counts", 1, 4).unwrap();
    pool.submit(|| std::panic::panic_any("r8-counts: this job panics"))
        .unwrap();
    recv(&entered, "the worker to report the panic");
    let (panicked, completed) = (pool.panicked(), pool.completed());
    open.send(()).unwrap();
    assert!(
        panicked <= completed,
        "{panicked} job(s) panicked but only {completed} completed"
    );
    let p = Arc::new(pool);
    let q = p.clone();
    within("stop", move || q.stop());
    assert_eq!((p.panicked(), p.completed()), (1, 1));
}
