//! `ThreadPool` with a logger that panics: a state no other test combines (found by a
//! review helper; the test failed before the fix).
//!
//! Every wait is bounded (a channel with a timeout, or a poll with a deadline).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use duo_workers::ThreadPool;
use log::{LevelFilter, Log, Metadata, Record};

/// The longest any wait may take before the test is declared failed.
const DEADLINE: Duration = Duration::from_secs(5);

/// A logger that panics once, on the first record logged from a thread of the pool named
/// `hk-logpanic` (the reactor's own tests hold the group to the same standard:
/// `loop_group_owned_edges.rs`, `a_thread_that_panics_while_ending_a_loop_does_not_hang_stop`).
struct PanicsOnce(AtomicBool);

static LOGGER: PanicsOnce = PanicsOnce(AtomicBool::new(false));

impl Log for PanicsOnce {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, _: &Record<'_>) {
        let on_pool = thread::current()
            .name()
            .is_some_and(|n| n.starts_with("hk-logpanic"));
        if on_pool && !self.0.swap(true, Ordering::SeqCst) {
            panic!("the logger panics");
        }
    }

    fn flush(&self) {}
}

fn install_logger() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        log::set_logger(&LOGGER).expect("the only logger of this binary");
        log::set_max_level(LevelFilter::Error);
    });
}

fn eventually(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "{what}: not after {DEADLINE:?}");
        thread::yield_now();
    }
}

/// "A job that panics is logged and counted; the worker goes on", and "every job for
/// which `submit` returned `Ok` runs exactly once": with a logger that panics while the
/// worker reports a job's panic, the report's panic escapes `work` (it is outside the
/// job's `catch_panic`), the only worker dies, and a job accepted afterwards never runs,
/// not even by `stop`, which returns at once (the dead worker dropped its `exit` sender).
#[test]
fn a_logger_that_panics_while_reporting_a_job_panic_does_not_kill_the_worker() {
    install_logger();
    let pool = ThreadPool::new("hk-logpanic", 1, 8).unwrap();
    pool.submit(|| panic!("a job panics")).unwrap();
    eventually("the job's panic counted", || pool.panicked() == 1);
    let (ran_tx, ran) = mpsc::channel();
    pool.submit(move || ran_tx.send(()).unwrap())
        .expect("the queue has room and the pool is not stopped");
    let got = ran.recv_timeout(DEADLINE);
    pool.stop();
    let after_stop = ran.try_recv();
    assert!(
        got.is_ok() || after_stop.is_ok(),
        "a job accepted by submit never ran, not even by stop (completed {}, panicked {})",
        pool.completed(),
        pool.panicked()
    );
    assert_eq!(pool.completed(), 2, "both jobs counted");
}
