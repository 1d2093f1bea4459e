//! A burst of functions queued from other threads (a producer faster than its loop: a
//! worker pool answering, a broadcast from outside) runs over several iterations, at
//! most a batch per iteration, so that the loop's I/O and timers are served between
//! batches: in the order queued, none lost, on a loop thread and on the loops of a
//! group (whose turns only readiness of the loop brings).

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duo_reactor::{EventLoop, EventLoopThread, LoopGroup, LoopHandle, LoopSharing};
use duo_testkit::{wait_until, LIMIT};
use util::assert_a_batch_per_iteration;

mod util;

const N: usize = 5000;
/// The most queued functions one iteration may run.
const BATCH: usize = 256;

/// Holds `h`'s loop in a queued function while `N` more are queued, then lets it go; checks
/// that they all run, in order, at most `BATCH` per iteration.
fn a_burst_runs_a_batch_per_iteration(h: &LoopHandle) {
    let release = hold(h);
    // Per function: its number and the iteration of its loop it ran in.
    let ran: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let (done_tx, done) = mpsc::channel();
    for i in 0..N {
        let (ran, done_tx) = (ran.clone(), done_tx.clone());
        h.queue_in_loop(move |lp| {
            let iteration = lp.handle().metrics().iterations;
            let mut ran = ran.lock().unwrap();
            ran.push((i, iteration));
            if ran.len() == N {
                done_tx.send(()).unwrap();
            }
        })
        .unwrap();
    }
    release.send(()).unwrap();
    done.recv_timeout(LIMIT)
        .expect("every queued function runs");
    let ran = ran.lock().unwrap();
    assert!(
        ran.iter().enumerate().all(|(k, &(i, _))| k == i),
        "queued functions run in the order queued"
    );
    assert_a_batch_per_iteration(ran.iter().map(|&(_, it)| it), BATCH, "queued functions");
}

/// Holds `h`'s loop in a queued function until the returned sender is used (or dropped).
fn hold(h: &LoopHandle) -> mpsc::Sender<()> {
    let (held_tx, held) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    h.queue_in_loop(move |_| {
        held_tx.send(()).unwrap();
        let _ = release_rx.recv_timeout(LIMIT);
    })
    .unwrap();
    held.recv_timeout(LIMIT).unwrap();
    release
}

/// Runs `check` on a loop thread's loop, then on a loop of each kind of group.
fn on_every_kind_of_loop(name: &str, check: impl Fn(&LoopHandle)) {
    let thread = EventLoopThread::spawn(name, None).unwrap();
    check(thread.handle());
    drop(thread);
    for sharing in [LoopSharing::Owned, LoopSharing::Any] {
        let group = LoopGroup::start_sharing(name, 2, 4, sharing, None).unwrap();
        check(&group.handles()[1]);
        group.stop().unwrap();
    }
}

#[test]
fn a_burst_of_queued_functions_runs_a_batch_per_iteration() {
    on_every_kind_of_loop("burst", a_burst_runs_a_batch_per_iteration);
}

/// A function queued in slices runs one slice per iteration, and the functions queued
/// after it (by the same producer, and by the slices themselves through a handle) wait
/// until its last slice: order as if it ran in one go. On a loop thread and on a group.
#[test]
fn a_function_in_slices_runs_a_slice_per_iteration_and_holds_what_follows() {
    on_every_kind_of_loop("slices", slices_hold_what_follows);
}

fn slices_hold_what_follows(h: &LoopHandle) {
    const SLICES: u64 = 10;
    // ("slice" or "after", the iteration it ran in)
    let log: Arc<Mutex<Vec<(&'static str, u64)>>> = Arc::default();
    let (done_tx, done) = mpsc::channel();
    let (l1, l2, h2) = (log.clone(), log.clone(), h.clone());
    let mut left = SLICES;
    // Both functions are queued before the first slice runs.
    let release = hold(h);
    h.queue_in_slices(move |lp| {
        l1.lock()
            .unwrap()
            .push(("slice", lp.handle().metrics().iterations));
        if left == SLICES {
            // Queued from inside the first slice: after the whole function too.
            let l = l1.clone();
            h2.queue_in_loop(move |lp| {
                l.lock()
                    .unwrap()
                    .push(("queued by a slice", lp.handle().metrics().iterations));
            })
            .unwrap();
        }
        count_down(&mut left)
    })
    .unwrap();
    h.queue_in_loop(move |lp| {
        l2.lock()
            .unwrap()
            .push(("after", lp.handle().metrics().iterations));
        done_tx.send(()).unwrap();
    })
    .unwrap();
    release.send(()).unwrap();
    done.recv_timeout(LIMIT)
        .expect("the function queued after runs");
    wait_until("the function queued by a slice", || {
        log.lock().unwrap().len() == SLICES as usize + 2
    });
    let log = log.lock().unwrap();
    let kinds: Vec<&str> = log.iter().map(|&(k, _)| k).collect();
    let mut want = vec!["slice"; SLICES as usize];
    want.extend(["after", "queued by a slice"]);
    assert_eq!(kinds, want, "FIFO as if the function ran in one go");
    let slice_iterations: std::collections::HashSet<u64> =
        log[..SLICES as usize].iter().map(|&(_, it)| it).collect();
    assert_eq!(
        slice_iterations.len(),
        SLICES as usize,
        "one slice per iteration"
    );
}

/// A loop asked to quit while a function runs in slices runs the rest of it first.
#[test]
fn a_quitting_loop_finishes_a_function_in_slices() {
    let mut lp = EventLoop::new().unwrap();
    let h = lp.handle();
    let (mut left, ran) = (100, Arc::new(Mutex::new(0)));
    let r = ran.clone();
    h.queue_in_slices(move |lp| {
        *r.lock().unwrap() += 1;
        if left == 100 {
            lp.quit();
        }
        count_down(&mut left)
    })
    .unwrap();
    lp.run_after(LIMIT, |lp| lp.quit());
    lp.run().unwrap();
    assert_eq!(*ran.lock().unwrap(), 100);
}

/// A pass that ends at the bound with nothing left of what it had taken must still look at
/// the queue: a function queued on the loop thread (no wake-up: the loop runs it before it
/// next waits) sat there while the loop slept. On a loop thread and on a group.
#[test]
fn a_function_queued_when_exactly_a_batch_is_left_still_runs() {
    on_every_kind_of_loop("exact", exactly_a_batch_left);
}

fn exactly_a_batch_left(h: &LoopHandle) {
    let release = hold(h);
    let (late_tx, late) = mpsc::channel();
    // Two batches taken in one pass: one runs, exactly one is left.
    for i in 0..2 * BATCH {
        let late_tx = late_tx.clone();
        h.queue_in_loop(move |lp| {
            if i == 0 {
                // Runs in the next iteration's dispatch, on the loop thread, outside a
                // pass: queuing there writes no wake-up.
                lp.run_after(Duration::ZERO, move |lp| {
                    let late_tx = late_tx.clone();
                    lp.handle()
                        .queue_in_loop(move |_| {
                            let _ = late_tx.send(());
                        })
                        .unwrap();
                });
            }
        })
        .unwrap();
    }
    release.send(()).unwrap();
    let ran = late.recv_timeout(Duration::from_secs(2));
    // (Any wake-up from another thread would run it: give one, so the loop is not left
    // stuck if the check fails.)
    h.queue_in_loop(|_| {}).unwrap();
    assert!(
        ran.is_ok(),
        "a queued function sat in the queue while the loop slept"
    );
}

/// A loop asked to quit runs, before `run` returns, what was queued before its last pass
/// began, also when that pass started with functions left from the one before.
#[test]
fn a_quitting_pass_with_leftovers_runs_what_was_queued_before_it() {
    let mut lp = EventLoop::new().unwrap();
    let h = lp.handle();
    let ran = Arc::new(Mutex::new(false));
    for i in 0..BATCH + 44 {
        let ran = ran.clone();
        h.queue_in_loop(move |lp| {
            if i == 0 {
                // Queued behind the others; the quit comes in the next dispatch.
                lp.handle()
                    .queue_in_loop(move |_| *ran.lock().unwrap() = true)
                    .unwrap();
                lp.run_after(Duration::ZERO, |lp| lp.quit());
            }
        })
        .unwrap();
    }
    lp.run_after(LIMIT, |lp| lp.quit());
    lp.run().unwrap();
    assert!(
        *ran.lock().unwrap(),
        "a function queued before the quitting pass began did not run"
    );
}

/// A function in `n` slices that counts them in `ran` and, in its first, asks its loop to
/// quit once that slice is done (through a function the loop queues for itself).
fn slices_that_quit(
    n: usize,
    ran: Arc<AtomicUsize>,
) -> impl FnMut(&mut EventLoop) -> ControlFlow<()> + Send + 'static {
    let mut left = n as u64;
    move |lp| {
        ran.fetch_add(1, Ordering::SeqCst);
        if left == n as u64 {
            lp.queue_in_loop(|lp| lp.quit());
        }
        count_down(&mut left)
    }
}

/// A loop asked to quit runs the remaining slices of a function in slices before `run`
/// returns, also when the quit comes from a function the loop queued for itself (run in the
/// same pass, after the handle functions: `run` returned after one slice).
#[test]
fn a_quit_from_a_local_function_still_finishes_the_slices() {
    let mut lp = EventLoop::new().unwrap();
    let h = lp.handle();
    let ran = Arc::new(AtomicUsize::new(0));
    h.queue_in_slices(slices_that_quit(10, ran.clone()))
        .unwrap();
    lp.run_after(LIMIT, |lp| lp.quit());
    lp.run().unwrap();
    assert_eq!(
        ran.load(Ordering::SeqCst),
        10,
        "run returned with the function in slices unfinished"
    );
}

/// The same for plain leftovers: a loop asked to quit runs what it has taken off its queue
/// before `run` returns (512 of 522 ran).
#[test]
fn a_quit_from_a_local_function_still_runs_what_was_taken() {
    let mut lp = EventLoop::new().unwrap();
    let h = lp.handle();
    let ran = Arc::new(AtomicUsize::new(0));
    for i in 0..2 * BATCH + 10 {
        let ran = ran.clone();
        h.queue_in_loop(move |lp| {
            ran.fetch_add(1, Ordering::SeqCst);
            if i == 0 {
                lp.queue_in_loop(|lp| lp.quit());
            }
        })
        .unwrap();
    }
    lp.run_after(LIMIT, |lp| lp.quit());
    lp.run().unwrap();
    assert_eq!(
        ran.load(Ordering::SeqCst),
        2 * BATCH + 10,
        "run returned with functions it had taken off its queue unrun"
    );
}

/// On a group loop the same quit ended (dropped) the loop with its slices unfinished.
#[test]
fn a_quitting_group_loop_finishes_its_slices() {
    for sharing in [LoopSharing::Owned, LoopSharing::Any] {
        let group = LoopGroup::start_sharing("gq", 2, 2, sharing, None).unwrap();
        let h = group.handles()[1].clone();
        let ran = Arc::new(AtomicUsize::new(0));
        let (dropped_tx, dropped) = mpsc::channel::<()>();
        struct OnDrop(mpsc::Sender<()>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let guard = OnDrop(dropped_tx);
        let mut slices = slices_that_quit(10, ran.clone());
        h.queue_in_slices(move |lp| {
            let _keep = &guard;
            slices(lp)
        })
        .unwrap();
        dropped.recv_timeout(LIMIT).unwrap();
        let n = ran.load(Ordering::SeqCst);
        drop(group);
        assert_eq!(
            n, 10,
            "{sharing:?}: the group loop ended with its slices unfinished"
        );
    }
}

/// A quitting loop runs the remaining slices one per iteration, serving its I/O and timers
/// between them: a function in slices whose end depends on a timer (or on I/O) ends. (The
/// quitting pass ran them back to back: `run` never returned, at 100 % CPU.)
#[test]
fn a_quitting_loop_serves_its_timers_between_slices() {
    let unstick = Arc::new(AtomicBool::new(false));
    let (returned_tx, returned) = mpsc::channel();
    let u = unstick.clone();
    let t = std::thread::spawn(move || {
        let mut lp = EventLoop::new().unwrap();
        let h = lp.handle();
        let timer_fired = Arc::new(AtomicBool::new(false));
        let fired = timer_fired.clone();
        lp.run_after(Duration::from_millis(20), move |_| {
            fired.store(true, Ordering::SeqCst)
        });
        let mut first = true;
        h.queue_in_slices(move |lp| {
            if first {
                first = false;
                lp.quit(); // as EventLoopThread::stop from outside would
            }
            if timer_fired.load(Ordering::SeqCst) || u.load(Ordering::SeqCst) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        lp.run().unwrap();
        let _ = returned_tx.send(());
    });
    let ok = returned.recv_timeout(Duration::from_secs(2)).is_ok();
    unstick.store(true, Ordering::SeqCst);
    t.join().unwrap();
    assert!(
        ok,
        "run did not return: the quitting pass spun on the slice, its timer never ran"
    );
}

/// A quitting loop takes its queue once more at most: a function in slices that queues its
/// successor when it ends (a sweep that keeps rolling) does not keep it alive. (It did:
/// `run` returned only once a pass ended with nothing taken left, and each pass took the
/// successor.)
fn rolling(h: LoopHandle, stop: Arc<AtomicBool>, rounds: Arc<AtomicUsize>) {
    let again = h.clone();
    let mut slices = 0;
    h.queue_in_slices(move |_| {
        slices += 1;
        if slices < 3 {
            return ControlFlow::Continue(());
        }
        rounds.fetch_add(1, Ordering::SeqCst);
        if !stop.load(Ordering::SeqCst) {
            rolling(again.clone(), stop.clone(), rounds.clone());
        }
        ControlFlow::Break(())
    })
    .unwrap();
}

#[test]
fn a_rolling_sliced_function_does_not_keep_a_quitting_loop_thread_alive() {
    let thread = EventLoopThread::spawn("rolling", None).unwrap();
    let (stop, rounds) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    rolling(thread.handle().clone(), stop.clone(), rounds.clone());
    wait_until("a few rounds", || rounds.load(Ordering::SeqCst) >= 3);
    let (done_tx, done) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let _ = thread.stop();
        let _ = done_tx.send(());
    });
    let returned = done.recv_timeout(Duration::from_secs(2)).is_ok();
    let before = rounds.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst); // unstick it so the test can end
    t.join().unwrap();
    assert!(
        returned,
        "EventLoopThread::stop did not return: the quitting loop ran {before} more rounds"
    );
}

#[test]
fn a_rolling_sliced_function_does_not_keep_a_quitting_group_loop_alive() {
    for sharing in [LoopSharing::Owned, LoopSharing::Any] {
        let group = LoopGroup::start_sharing("gr", 2, 2, sharing, None).unwrap();
        let (stop, rounds) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        rolling(group.handles()[1].clone(), stop.clone(), rounds.clone());
        wait_until("a few rounds", || rounds.load(Ordering::SeqCst) >= 3);
        let (done_tx, done) = mpsc::channel();
        let t = std::thread::spawn(move || {
            let _ = group.stop();
            let _ = done_tx.send(());
        });
        let returned = done.recv_timeout(Duration::from_secs(2)).is_ok();
        stop.store(true, Ordering::SeqCst);
        t.join().unwrap();
        assert!(returned, "{sharing:?}: LoopGroup::stop did not return");
    }
}

/// One slice done of those `left`: asks for more while any are left.
fn count_down(left: &mut u64) -> ControlFlow<()> {
    *left -= 1;
    if *left > 0 {
        ControlFlow::Continue(())
    } else {
        ControlFlow::Break(())
    }
}
