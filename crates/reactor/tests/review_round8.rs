//! Review round 8: the loop's timers and its cross-thread handles (cancel from callbacks,
//! a panicking timer, huge and zero delays, many timers at one deadline, the timerfd after
//! the earliest timer is cancelled, handles outliving their loop, functions a loop queues
//! for itself while it is quitting).

mod util;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use duo_reactor::{EventLoop, EventLoopThread, LoopClosed, TimerId};
use duo_testkit::LIMIT;

use util::guard;

/// A function a loop queues for itself (`EventLoop::queue_in_loop`) from a function
/// queued through a handle, just before it asks the loop to quit (`EventLoop::quit`:
/// "once the functions queued before the call have run"), is left unrun when `run` returns
/// (and dropped with the loop: an `EventLoopThread`'s `stop`). The reverse order (quit,
/// then queue) waits for the next `run` by design (`matrix.rs`:
/// `functions_queued_while_the_loop_quits_are_not_lost`); the quit now counts the
/// loop's own functions queued before it, and `run` runs those before it returns.
#[test]
fn a_function_queued_on_the_loop_before_quit_from_a_queued_function_runs() {
    let mut lp = EventLoop::new().unwrap();
    let (_guard, timed_out) = guard(&mut lp);
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    lp.handle()
        .queue_in_loop(move |lp| {
            lp.queue_in_loop(move |_| r.store(true, Ordering::SeqCst));
            lp.quit();
        })
        .unwrap();
    lp.run().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst));
    assert!(
        ran.load(Ordering::SeqCst),
        "a function queued on the loop before quit() was left unrun when run returned"
    );
}

/// A timer callback that panics: the panic leaves `run`, the panicking repeating timer is
/// gone, and the other timers due in the same batch run at the next `run`, in order.
#[test]
fn a_panicking_timer_drops_itself_and_leaves_the_rest_of_its_batch_due() {
    let mut lp = EventLoop::new().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now() + Duration::from_millis(5);
    let l = log.clone();
    lp.run_at(t0, move |_| l.lock().push("first"));
    let bad = lp.run_every(Duration::from_millis(5), |_| {
        panic!("timer panics on purpose")
    });
    let l = log.clone();
    lp.run_at(t0 + Duration::from_millis(1), move |lp| {
        l.lock().push("after");
        lp.quit();
    });
    let (_guard, timed_out) = guard(&mut lp);
    // The repeating timer's first deadline is `now + 5 ms`, between the two others (or
    // equal to the first: then it runs after it, scheduled later).
    let panicked = catch_unwind(AssertUnwindSafe(|| lp.run()));
    assert!(panicked.is_err(), "the timer's panic leaves run");
    assert!(
        !lp.cancel(bad),
        "the panicking repeating timer is cancelled"
    );
    assert_eq!(
        lp.timer_count(),
        2,
        "the 'after' timer and the guard are pending"
    );
    lp.run().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst));
    assert_eq!(*log.lock(), ["first", "after"]);
}

/// Cancelling a timer that already fired is false and cancels nothing else; a repeating
/// timer that cancels itself from its callback stops, and its cancel was true.
#[test]
fn cancel_after_firing_and_a_repeating_timer_cancelling_itself() {
    let mut lp = EventLoop::new().unwrap();
    let (_guard, timed_out) = guard(&mut lp);
    let once = lp.run_after(Duration::ZERO, |_| {});
    let runs = Arc::new(AtomicUsize::new(0));
    let id: Arc<Mutex<Option<TimerId>>> = Arc::default();
    let (r, i) = (runs.clone(), id.clone());
    let (report, reports) = mpsc::channel();
    let every = lp.run_every(Duration::from_millis(1), move |lp| {
        if r.fetch_add(1, Ordering::SeqCst) == 2 {
            let me = i.lock().expect("id stored");
            let _ = report.send((lp.cancel(me), lp.cancel(me), lp.cancel(once)));
            // Later than any further run of the repeating timer would be.
            lp.run_after(Duration::from_millis(20), |lp| lp.quit());
        }
    });
    *id.lock() = Some(every);
    lp.run().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst));
    assert_eq!(reports.try_recv().unwrap(), (true, false, false));
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(lp.timer_count(), 1, "only the guard is left");
}

/// Huge delays never panic, from the loop and from a handle, and never fire; a zero delay
/// runs in the next iteration.
#[test]
fn huge_and_zero_delays() {
    let mut lp = EventLoop::new().unwrap();
    let (_guard, timed_out) = guard(&mut lp);
    let h = lp.handle();
    let fired = Arc::new(AtomicUsize::new(0));
    for delay in [
        Duration::MAX,
        duo_reactor::FOREVER,
        Duration::from_secs(u64::MAX),
    ] {
        let f = fired.clone();
        lp.run_after(delay, move |_| {
            f.fetch_add(1, Ordering::SeqCst);
        });
        let f = fired.clone();
        lp.run_every(delay, move |_| {
            f.fetch_add(1, Ordering::SeqCst);
        });
        let f = fired.clone();
        h.run_after(delay, move |_| {
            f.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        let f = fired.clone();
        h.run_every(delay, move |_| {
            f.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    lp.run_after(Duration::ZERO, |lp| lp.quit());
    lp.run().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst));
    assert_eq!(fired.load(Ordering::SeqCst), 0);
    assert_eq!(lp.timer_count(), 13, "twelve far timers and the guard");
}

/// Cancelling the earliest timer leaves the timerfd armed for it; the next timer still
/// fires on time, also one added after the cancel between the two.
#[test]
fn the_timerfd_after_the_earliest_timer_is_cancelled() {
    let mut lp = EventLoop::new().unwrap();
    let (_guard, timed_out) = guard(&mut lp);
    let start = Instant::now();
    let early = lp.run_at(start + Duration::from_millis(10), |_| unreachable!());
    let late_at = start + Duration::from_millis(40);
    let fired_at: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let f = fired_at.clone();
    lp.run_at(late_at, move |lp| {
        f.lock().push(Instant::now());
        lp.quit();
    });
    assert!(lp.cancel(early));
    let mid_at = start + Duration::from_millis(20);
    let f = fired_at.clone();
    lp.run_at(mid_at, move |_| f.lock().push(Instant::now()));
    lp.run().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst));
    let fired = fired_at.lock().clone();
    assert_eq!(fired.len(), 2);
    assert!(fired[0] >= mid_at && fired[1] >= late_at, "never early");
    assert!(
        fired[1] < late_at + Duration::from_secs(2),
        "the last timer fired {:?} late",
        fired[1] - late_at
    );
}

/// Many timers at one deadline, scheduled on the loop and through a handle from another
/// thread alternately, run in scheduling order across several batches.
#[test]
fn many_timers_at_one_deadline_run_in_scheduling_order() {
    let mut lp = EventLoop::new().unwrap();
    let (_guard, timed_out) = guard(&mut lp);
    let h = lp.handle();
    let at = Instant::now() + Duration::from_millis(20);
    let order = Arc::new(Mutex::new(Vec::new()));
    for i in 0..300usize {
        let o = order.clone();
        if i % 2 == 0 {
            lp.run_at(at, move |_| o.lock().push(i));
        } else {
            let h = h.clone();
            std::thread::spawn(move || h.run_at(at, move |_| o.lock().push(i)).unwrap())
                .join()
                .unwrap();
        }
    }
    lp.run_at(at + Duration::from_millis(1), |lp| lp.quit());
    lp.run().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst));
    assert!(order.lock().iter().copied().eq(0..300));
}

/// A handle outliving its loop: scheduling, cancelling and queuing say `LoopClosed`, and
/// quitting or reading the metrics does not panic.
#[test]
fn a_handle_after_its_loop_is_dropped() {
    let thread = EventLoopThread::spawn("round8-dropped", None).unwrap();
    let h = thread.handle().clone();
    let id = h.run_after(Duration::from_secs(3600), |_| {}).unwrap();
    thread.stop().unwrap();
    assert!(h.is_closed());
    assert_eq!(h.run_after(Duration::ZERO, |_| {}).unwrap_err(), LoopClosed);
    assert_eq!(h.run_every(Duration::ZERO, |_| {}).unwrap_err(), LoopClosed);
    assert_eq!(h.run_at(Instant::now(), |_| {}).unwrap_err(), LoopClosed);
    assert_eq!(h.cancel(id).unwrap_err(), LoopClosed);
    assert_eq!(h.queue_in_loop(|_| {}).unwrap_err(), LoopClosed);
    h.quit();
    assert!(!h.is_in_loop_thread());
    let _ = h.metrics();
}

/// A timer added from another thread while the loop sleeps with no timer armed wakes it
/// and fires on time; one cancelled through the handle before its deadline never fires.
#[test]
fn timers_added_and_cancelled_from_another_thread() {
    let thread = EventLoopThread::spawn("round8-cross", None).unwrap();
    let h = thread.handle().clone();
    let (tx, rx) = mpsc::channel();
    let doomed = h
        .run_after(Duration::from_millis(10), |_| unreachable!())
        .unwrap();
    h.cancel(doomed).unwrap();
    let start = Instant::now();
    h.run_after(Duration::from_millis(30), move |_| {
        let _ = tx.send(Instant::now());
    })
    .unwrap();
    let at = rx.recv_timeout(LIMIT).expect("the timer fired");
    assert!(at >= start + Duration::from_millis(30));
    thread.stop().unwrap();
}

/// The timers a batch ran before one panicked, and the panicking one (it ran), are in the
/// loop's metrics once the panic has left `run`, as the functions of a pass a queued
/// function's panic ended are: the loop may never run again (its thread dies with the
/// panic, and a metrics endpoint reads a handle). They were published only at the end of
/// the next iteration.
#[test]
fn timers_run_before_a_panic_are_counted_when_it_leaves_run() {
    let mut lp = EventLoop::new().unwrap();
    let at = Instant::now() + Duration::from_millis(2);
    lp.run_at(at, |_| {});
    lp.run_at(at, |_| {});
    lp.run_at(at, |_| panic!("timer panics on purpose"));
    let (_guard, _) = guard(&mut lp);
    assert!(catch_unwind(AssertUnwindSafe(|| lp.run())).is_err());
    assert_eq!(lp.metrics().timers_fired, 3);
    assert_eq!(lp.handle().metrics().timers_fired, 3);
}

/// The same for an I/O handler's panic: its event is counted.
#[test]
fn an_io_event_whose_handler_panicked_is_counted_when_the_panic_leaves_run() {
    use std::io::Write;
    let mut lp = EventLoop::new().unwrap();
    let (ours, theirs) = duo_testkit::nonblocking_pair();
    let handler = duo_reactor::FnHandler::new().on_read(|_, _| panic!("handler panics on purpose"));
    lp.add_channel(theirs, duo_reactor::Interest::READABLE, handler)
        .unwrap();
    (&ours).write_all(b"x").unwrap();
    let (_guard, _) = guard(&mut lp);
    assert!(catch_unwind(AssertUnwindSafe(|| lp.run())).is_err());
    assert_eq!(lp.metrics().io_events, 1);
}

/// A collection that takes one key, then panics (a bounded buffer at its capacity).
struct TakesOne(Vec<&'static str>);

impl Extend<&'static str> for TakesOne {
    fn extend<I: IntoIterator<Item = &'static str>>(&mut self, iter: I) {
        for key in iter {
            assert!(self.0.is_empty(), "full");
            self.0.push(key);
        }
    }
}

/// `TimingWheel::tick_into` into a collection that stops part way (here by panicking):
/// the keys it did not take were left tracked though out of the ring, so one inserted again
/// was "already tracked" and never expired. They are no longer tracked, as the ones taken.
#[test]
fn a_tick_into_a_collection_that_stops_part_way_leaves_the_wheel_consistent() {
    let mut wheel = duo_reactor::TimingWheel::new(1);
    for key in ["a", "b", "c"] {
        wheel.insert(key);
    }
    wheel.tick();
    let mut out = TakesOne(Vec::new());
    assert!(catch_unwind(AssertUnwindSafe(|| wheel.tick_into(&mut out))).is_err());
    assert_eq!(out.0.len(), 1);
    assert_eq!(
        wheel.len(),
        0,
        "keys left tracked with no place in the ring"
    );
    for key in ["a", "b", "c"] {
        wheel.insert(key);
    }
    wheel.tick();
    let mut expired = wheel.tick();
    expired.sort_unstable();
    assert_eq!(expired, ["a", "b", "c"], "inserted again, they expire");
    assert!(wheel.is_empty());
}
