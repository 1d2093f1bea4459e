//! `duo_loop_tasks_total` (`LoopMetrics::tasks_run`) is documented as the queued functions
//! run: each one once, the one that panicked included (it ran), none that did not run yet;
//! and, as every counter, published by the time the loop's `run` has returned.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duo_reactor::EventLoop;

/// Runs `lp` until its `run` unwinds with the panic of a queued function.
fn run_until_the_panic(lp: &mut EventLoop) {
    let out = catch_unwind(AssertUnwindSafe(|| lp.run()));
    assert!(
        out.is_err(),
        "run should unwind with the queued function's panic"
    );
}

/// Runs `lp` until a timer quits it (so that the loop goes through whole iterations).
fn run_to_a_quit(lp: &mut EventLoop) {
    lp.run_after(Duration::from_millis(1), |lp| lp.quit());
    lp.run().expect("the loop runs");
}

/// A function queued on the loop itself panics with two more queued behind it: they run at
/// the next `run`, and each of the three is counted once (the two were counted when first
/// taken and again when they ran).
#[test]
fn a_panic_among_local_functions_counts_each_function_once() {
    let mut lp = EventLoop::new().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    lp.run_after(Duration::ZERO, move |lp| {
        lp.queue_in_loop(|_| panic!("a queued function fails (expected by the test)"));
        for _ in 0..2 {
            let r = r.clone();
            lp.queue_in_loop(move |_| {
                r.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    run_until_the_panic(&mut lp);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(
        lp.metrics().tasks_run,
        1,
        "after the panic: the panicking function ran, the other two did not"
    );
    run_to_a_quit(&mut lp);
    assert_eq!(ran.load(Ordering::SeqCst), 2);
    assert_eq!(
        lp.metrics().tasks_run,
        3,
        "three functions ran, each once: {:?}",
        lp.metrics()
    );
}

/// A function queued through a handle panics while functions the loop queued for itself
/// wait behind it: those are counted once, when they run.
#[test]
fn a_panic_before_local_functions_counts_them_once() {
    let mut lp = EventLoop::new().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    lp.run_after(Duration::ZERO, move |lp| {
        lp.handle()
            .queue_in_loop(|_| panic!("a queued function fails (expected by the test)"))
            .unwrap();
        for _ in 0..2 {
            let r = r.clone();
            lp.queue_in_loop(move |_| {
                r.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    run_until_the_panic(&mut lp);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    run_to_a_quit(&mut lp);
    assert_eq!(ran.load(Ordering::SeqCst), 2);
    assert_eq!(
        lp.metrics().tasks_run,
        3,
        "three functions ran, each once: {:?}",
        lp.metrics()
    );
}

/// Functions queued before `run` run as it starts: when one of them quits the loop, `run`
/// returns without another iteration, and what ran must be counted all the same.
#[test]
fn functions_run_as_run_starts_are_counted_when_it_returns() {
    let mut lp = EventLoop::new().unwrap();
    let h = lp.handle();
    h.queue_in_loop(|_| {}).unwrap();
    h.queue_in_loop(|_| {}).unwrap();
    h.queue_in_loop(|lp| lp.quit()).unwrap();
    lp.queue_in_loop(|_| {});
    lp.run().expect("the loop runs");
    assert_eq!(lp.metrics().tasks_run, 4, "{:?}", lp.metrics());
}
