//! A timer scheduled through a `LoopHandle` and cancelled on its loop with
//! `EventLoop::cancel` before the handle's queued insertion has run: the handle returned
//! the timer's id, so the timer exists for the caller, and the cancel holds. (Before the
//! fix the loop's `cancel` missed it, returned false, and the timer fired afterwards: a
//! review helper found it.)

use std::io::{IoSliceMut, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use duo_reactor::{EventLoop, EventLoopThread, FnHandler, Interest, TimerId};
use duo_testkit::{nonblocking_pair, LIMIT};

/// A timer scheduled through a `LoopHandle` (its id handed to the loop) and cancelled on
/// the loop with `EventLoop::cancel` before the handle's queued insertion has run: the
/// cancel is lost and the timer fires after it.
#[test]
fn a_handle_timer_cancelled_on_the_loop_before_its_insertion_ran_does_not_fire() {
    let thread = EventLoopThread::spawn("handle-timer-cancel", None).unwrap();
    let h = thread.handle().clone();
    let (ours, theirs) = nonblocking_pair();
    let victim: Arc<Mutex<Option<(TimerId, Instant)>>> = Arc::default();
    let fired = Arc::new(AtomicUsize::new(0));
    let (report, reports) = mpsc::channel::<(bool, usize)>();
    {
        let victim = victim.clone();
        let fired = fired.clone();
        h.queue_in_loop(move |lp| {
            let handler = FnHandler::new().on_read(move |lp, ch| {
                let mut buf = [0u8; 16];
                let _ = duo_sys::readv(ch.fd(), &mut [IoSliceMut::new(&mut buf)]);
                let (id, deadline) = victim.lock().expect("id stored before the write");
                // The response came in: the timeout is no longer wanted.
                let cancelled = lp.cancel(id);
                let (fired, report) = (fired.clone(), report.clone());
                // A witness after the victim's deadline: timers run in deadline order.
                lp.run_at(deadline + Duration::from_millis(5), move |_| {
                    let _ = report.send((cancelled, fired.load(Ordering::SeqCst)));
                });
            });
            lp.add_channel(theirs, Interest::READABLE, handler).unwrap();
        })
        .unwrap();
    }
    // Hold the loop in a queued function while a worker schedules the timeout and the
    // response arrives, so both are seen by the same iteration.
    let (release, held) = mpsc::channel::<()>();
    let (entered, is_held) = mpsc::channel::<()>();
    h.queue_in_loop(move |_| {
        entered.send(()).unwrap();
        let _ = held.recv_timeout(LIMIT);
    })
    .unwrap();
    is_held.recv_timeout(LIMIT).unwrap();
    let deadline = Instant::now() + Duration::from_millis(30);
    let f = fired.clone();
    let id = h
        .run_at(deadline, move |_| {
            f.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    *victim.lock() = Some((id, deadline));
    (&ours).write_all(b"x").unwrap();
    release.send(()).unwrap();
    let (cancelled, fired_before_witness) = reports.recv_timeout(LIMIT).unwrap();
    assert_eq!(
        (cancelled, fired_before_witness),
        (true, 0),
        "the timer was scheduled (its id returned) before the loop cancelled it, yet \
         cancel returned {cancelled} and the timer fired {fired_before_witness} time(s)"
    );
    thread.stop().unwrap();
}

/// The same on the loop thread alone: a handle's `run_after` then the loop's `cancel`.
#[test]
fn a_handle_timer_cancelled_at_once_on_the_loop_thread_does_not_fire() {
    let mut lp = EventLoop::new().unwrap();
    let fired = Arc::new(AtomicUsize::new(0));
    let f = fired.clone();
    let id = lp
        .handle()
        .run_after(Duration::ZERO, move |_| {
            f.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    let cancelled = lp.cancel(id);
    lp.run_after(Duration::from_millis(5), |lp| lp.quit());
    let guard = lp.run_after(LIMIT, |lp| lp.quit());
    lp.run().unwrap();
    lp.cancel(guard);
    assert_eq!(
        (cancelled, fired.load(Ordering::SeqCst)),
        (true, 0),
        "cancel of a timer whose id was returned lost; the timer fired"
    );
}
