//! Review round 9 of the event loop core (channels, dispatch, queued functions, quit,
//! loop threads and pools, handles after the loop): combinations the earlier rounds did
//! not combine.

mod util;

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use parking_lot::Mutex;

use duo_reactor::{
    EventLoop, EventLoopThread, EventLoopThreadPool, FnHandler, Interest, LoopClosed, Token,
};
use duo_testkit::{nonblocking_pair, wait_until, LIMIT};

use util::{drain, guard};

/// `LoopHandle::quit` promises that every function queued before it runs before `run`
/// returns, and `EventLoop::quit` keeps that promise for the loop's own functions
/// (`EventLoop::queue_in_loop`) queued by a queued function just before it. The same quit
/// asked through a handle on the loop's own thread (code that keeps a handle, not the
/// `&mut EventLoop`) left that function unrun when `run` returned.
#[test]
fn a_handle_quit_on_the_loop_thread_runs_the_loops_own_functions_queued_before_it() {
    let mut lp = EventLoop::new().unwrap();
    let (_guard, timed_out) = guard(&mut lp);
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let h = lp.handle();
    lp.handle()
        .queue_in_loop(move |lp| {
            lp.queue_in_loop(move |_| r.store(true, Ordering::SeqCst));
            h.quit();
        })
        .unwrap();
    lp.run().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst), "the loop did not quit");
    assert!(
        ran.load(Ordering::SeqCst),
        "a function queued on the loop before a handle's quit() was left unrun"
    );
}

/// A handle's quit on the loop thread counts every function the loop holds of its own,
/// not those they queue: a chain of functions that keeps queuing its successor still lets
/// `run` return.
#[test]
fn a_handle_quit_on_the_loop_thread_still_ends_a_chain_of_own_functions() {
    fn again(lp: &mut EventLoop) {
        lp.queue_in_loop(again);
    }
    let mut lp = EventLoop::new().unwrap();
    let (_guard, timed_out) = guard(&mut lp);
    let h = lp.handle();
    lp.handle()
        .queue_in_loop(move |lp| {
            lp.queue_in_loop(again);
            h.quit();
        })
        .unwrap();
    lp.run().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst), "the chain kept the loop");
}

/// The same from a loop thread: the function runs before the thread's loop ends.
#[test]
fn a_handle_quit_from_a_loop_threads_function_runs_what_it_queued_first() {
    let t = EventLoopThread::spawn("r9-quit", None).unwrap();
    let h = t.handle().clone();
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let hq = h.clone();
    h.queue_in_loop(move |lp| {
        lp.queue_in_loop(move |_| r.store(true, Ordering::SeqCst));
        hq.quit();
    })
    .unwrap();
    wait_until("the loop thread ends", || h.is_closed());
    t.stop().unwrap();
    assert!(ran.load(Ordering::SeqCst));
}

/// `LoopMetrics::io_events` counts "I/O events dispatched to channels". An event of the
/// same poll batch for a channel that an earlier handler of the batch removed reaches no
/// handler, and is not one.
#[test]
fn an_event_for_a_channel_removed_earlier_in_its_batch_is_not_counted() {
    let mut lp = EventLoop::new().unwrap();
    let (_guard, timed_out) = guard(&mut lp);
    let tokens: Arc<Mutex<Vec<Token>>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut peers = Vec::new();
    for _ in 0..2 {
        let (ours, theirs) = nonblocking_pair();
        (&ours).write_all(b"x").unwrap();
        peers.push(ours);
        let (all, calls) = (tokens.clone(), calls.clone());
        let handler = FnHandler::new().on_read(move |lp, ch| {
            calls.fetch_add(1, Ordering::SeqCst);
            drain(ch);
            let others: Vec<Token> = all.lock().clone();
            for t in others.into_iter().filter(|&t| t != ch.token()) {
                assert!(lp.remove_channel(t));
            }
            lp.quit();
        });
        let t = lp.add_channel(theirs, Interest::READABLE, handler).unwrap();
        tokens.lock().push(t);
    }
    lp.run().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one handler ran");
    assert_eq!(lp.channel_count(), 1);
    assert_eq!(
        lp.metrics().io_events,
        1,
        "only the event that reached a handler is counted"
    );
}

/// Two edge-triggered channels ready in one batch, the first handler panics: the second
/// one's edge was consumed by that poll, and the next `run` still delivers it.
#[test]
fn an_edge_triggered_channel_behind_a_panicking_handler_is_served_at_the_next_run() {
    let mut lp = EventLoop::new().unwrap();
    let served = Arc::new(AtomicBool::new(false));
    let first_seen: Arc<Mutex<Option<Token>>> = Arc::default();
    let mut peers = Vec::new();
    for _ in 0..2 {
        let (ours, theirs) = nonblocking_pair();
        (&ours).write_all(b"x").unwrap();
        peers.push(ours);
        let (served, first) = (served.clone(), first_seen.clone());
        let handler = FnHandler::new().on_read(move |lp, ch| {
            let mut first = first.lock();
            if first.is_none() {
                *first = Some(ch.token());
                drop(first);
                panic!("the first handler of the batch panics (expected)");
            }
            drain(ch);
            served.store(true, Ordering::SeqCst);
            lp.quit();
        });
        lp.add_channel(theirs, Interest::READABLE | Interest::EDGE, handler)
            .unwrap();
    }
    assert!(catch_unwind(AssertUnwindSafe(|| lp.run())).is_err());
    assert_eq!(lp.channel_count(), 1, "the panicked channel is gone");
    let (_guard, timed_out) = guard(&mut lp);
    lp.run().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst), "the edge was lost");
    assert!(served.load(Ordering::SeqCst));
}

/// A queued function that panics inside `with_channel`: the channel goes (slot freed,
/// descriptor closed), the count is right, and the function queued after it runs at the
/// next `run`.
#[test]
fn a_panic_inside_with_channel_from_a_queued_function() {
    let mut lp = EventLoop::new().unwrap();
    let (ours, theirs) = nonblocking_pair();
    let t = lp
        .add_channel(theirs, Interest::READABLE, FnHandler::new())
        .unwrap();
    let h = lp.handle();
    h.queue_in_loop(move |lp| {
        lp.with_channel(t, |_, _, _| panic!("inside with_channel (expected)"));
    })
    .unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    h.queue_in_loop(move |lp| {
        r.store(true, Ordering::SeqCst);
        lp.quit();
    })
    .unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| lp.run())).is_err());
    assert_eq!(lp.channel_count(), 0);
    assert!(!lp.remove_channel(t));
    let mut buf = [0u8; 1];
    assert!(
        matches!(std::io::Read::read(&mut &ours, &mut buf), Ok(0)),
        "the descriptor is closed"
    );
    let (_guard, timed_out) = guard(&mut lp);
    lp.run().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst));
    assert!(ran.load(Ordering::SeqCst));
}

/// A pool whose second thread's init panics: `start` fails, the first thread is stopped
/// (its loop closed), and the pool starts again once init behaves.
#[test]
fn a_pool_whose_thread_init_panics_stops_what_it_started_and_can_start_again() {
    let base = EventLoop::new().unwrap();
    let mut pool = EventLoopThreadPool::new(base.handle(), "r9-pool", 3);
    let inits = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<Vec<duo_reactor::LoopHandle>>> = Arc::default();
    let (i, s) = (inits.clone(), seen.clone());
    pool.set_thread_init(Arc::new(move |lp: &mut EventLoop| {
        s.lock().push(lp.handle());
        if i.fetch_add(1, Ordering::SeqCst) == 1 {
            panic!("the second loop's init panics (expected)");
        }
    }));
    assert!(pool.start().is_err());
    assert!(seen.lock().iter().all(|h| h.is_closed()), "no loop left");
    assert!(pool.handles()[0].same_loop(&base.handle()));
    pool.start().unwrap();
    let (tx, rx) = mpsc::channel();
    pool.next_loop()
        .queue_in_loop(move |_| tx.send(()).unwrap())
        .unwrap();
    rx.recv_timeout(LIMIT).unwrap();
    pool.stop().unwrap();
}

/// A loop thread whose handler panicked: the thread is gone, its handle refuses work, and
/// `stop` reports the panic without hanging.
#[test]
fn a_loop_thread_killed_by_a_handler_panic() {
    let t = EventLoopThread::spawn("r9-dies", None).unwrap();
    let h = t.handle().clone();
    let (ours, theirs) = nonblocking_pair();
    h.queue_in_loop(move |lp| {
        lp.add_channel(
            theirs,
            Interest::READABLE,
            FnHandler::new().on_read(|_, _| panic!("a handler panics (expected)")),
        )
        .unwrap();
    })
    .unwrap();
    (&ours).write_all(b"x").unwrap();
    wait_until("the loop is gone", || h.is_closed());
    assert_eq!(h.queue_in_loop(|_| {}), Err(LoopClosed));
    assert!(t.stop().is_err());
}

/// A loop-local value whose `with_local` closure panicked (a nested call into user code,
/// say) was left "taken further up the stack" for ever: gone from `local` and
/// `with_local`, though nothing holds it. The rest of the loop stays usable after a panic
/// (`EventLoop::run`), and the value with it: it is back in its place.
#[test]
fn a_panic_inside_with_local_puts_the_value_back() {
    let mut lp = EventLoop::new().unwrap();
    lp.insert_local(41u32);
    lp.handle()
        .queue_in_loop(|lp| {
            lp.with_local::<u32, _>(|_, n| {
                *n += 1;
                panic!("inside with_local (expected)");
            });
        })
        .unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| lp.run())).is_err());
    assert_eq!(lp.local::<u32>(), Some(&42));
    assert_eq!(lp.with_local::<u32, _>(|_, n| *n), Some(42));
    assert_eq!(lp.remove_local::<u32>(), Some(42));
}

/// A quitting loop runs the functions it queued for itself before the quit and keeps
/// those queued after it for the next `run`. When one of the former panicked, the latter
/// (set aside meanwhile) were dropped unrun: accepted, never run, no error. They run at
/// the next `run` now, after the rest of the former and before what those queued.
#[test]
fn a_panic_among_the_functions_a_quitting_loop_runs_loses_none_queued_after_the_quit() {
    let mut lp = EventLoop::new().unwrap();
    let log: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let l = log.clone();
    lp.handle()
        .queue_in_loop(move |lp| {
            let (a, b, c) = (l.clone(), l.clone(), l.clone());
            lp.queue_in_loop(move |lp| {
                a.lock().push("before quit, panics");
                let a = a.clone();
                lp.queue_in_loop(move |_| a.lock().push("queued by the panicking one"));
                panic!("a function the quitting loop runs panics (expected)");
            });
            lp.queue_in_loop(move |_| b.lock().push("before quit, after the panic"));
            lp.quit();
            lp.queue_in_loop(move |_| c.lock().push("after quit"));
        })
        .unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| lp.run())).is_err());
    let (_guard, timed_out) = guard(&mut lp);
    lp.queue_in_loop(|lp| lp.quit());
    lp.run().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst));
    assert_eq!(
        *log.lock(),
        [
            "before quit, panics",
            "before quit, after the panic",
            "after quit",
            "queued by the panicking one",
        ]
    );
}
