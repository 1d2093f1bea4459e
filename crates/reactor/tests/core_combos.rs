//! Combinations of reactor states no other test combines: a loop thread or pool stopped
//! from one of its own loops, stopped twice or dropped without a stop; channels removed
//! from their own handler and from another channel's handler in the same iteration, with
//! the descriptor number reused at once; quits from a timer, a queued function and another
//! thread while functions keep queuing more; handles outliving their loop; timers
//! cancelled by another timer of the same due batch.

mod util;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use duo_reactor::{
    EventLoop, EventLoopThread, EventLoopThreadPool, FnHandler, Interest, LoopClosed, TimerId,
    Token,
};
use duo_testkit::{join_within, nonblocking_pair, wait_until, LIMIT};
use util::{drain, guard};

/// An `EventLoopThread` stopped (here: dropped) by a function running on its own loop
/// cannot join itself: it must not panic in the loop's callback, and its loop must still
/// end (the thread finishes on its own).
#[test]
fn a_loop_thread_dropped_from_its_own_loop_ends_without_panicking() {
    let t = EventLoopThread::spawn("cc-self-stop", None).unwrap();
    let h = t.handle().clone();
    let (tx, rx) = mpsc::channel();
    let slot = Arc::new(Mutex::new(Some(t)));
    let s = slot.clone();
    h.queue_in_loop(move |_| {
        let t = s.lock().take();
        let outcome = catch_unwind(AssertUnwindSafe(move || drop(t)));
        let _ = tx.send(outcome.is_ok());
    })
    .unwrap();
    let ok = rx.recv_timeout(LIMIT).expect("the function ran");
    assert!(ok, "dropping the loop thread from its own loop panicked");
    wait_until("the loop ends", || h.is_closed());
}

/// The same for `EventLoopThread::stop`, which reports the situation as an error.
#[test]
fn a_loop_thread_stopped_from_its_own_loop_is_an_error_and_still_ends() {
    let t = EventLoopThread::spawn("cc-self-stop2", None).unwrap();
    let h = t.handle().clone();
    let (tx, rx) = mpsc::channel();
    let slot = Arc::new(Mutex::new(Some(t)));
    let s = slot.clone();
    h.queue_in_loop(move |_| {
        let t = s.lock().take().expect("the thread");
        let outcome = catch_unwind(AssertUnwindSafe(move || t.stop()));
        let _ = tx.send(outcome.map(|r| r.is_err()).ok());
    })
    .unwrap();
    let got = rx.recv_timeout(LIMIT).expect("the function ran");
    assert_eq!(
        got,
        Some(true),
        "stop from its own loop: an error, not a panic"
    );
    wait_until("the loop ends", || h.is_closed());
}

/// A pool dropped from one of its own loops (its last owner was a callback there) quits
/// and joins the other threads, and does not panic joining the one it runs on.
#[test]
fn a_pool_dropped_from_one_of_its_loops_ends_every_loop() {
    for loops in [0, 5] {
        let base = EventLoop::new().unwrap();
        let mut pool = EventLoopThreadPool::new(base.handle(), "cc-pool-self", 3);
        pool.set_loops(loops);
        pool.start().unwrap();
        let handles = pool.handles();
        let slot = Arc::new(Mutex::new(Some(pool)));
        let (tx, rx) = mpsc::channel();
        let s = slot.clone();
        handles[1]
            .queue_in_loop(move |_| {
                let pool = s.lock().take();
                let outcome = catch_unwind(AssertUnwindSafe(move || drop(pool)));
                let _ = tx.send(outcome.is_ok());
            })
            .unwrap();
        assert!(
            rx.recv_timeout(LIMIT).expect("the function ran"),
            "dropping the pool from one of its loops panicked ({loops} loops)"
        );
        wait_until("every loop ends", || handles.iter().all(|h| h.is_closed()));
    }
}

/// Stopping a pool twice, dropping a stopped pool, dropping one never stopped, and
/// starting a stopped pool again all work.
#[test]
fn a_pool_stopped_twice_restarted_or_dropped_without_stop() {
    for loops in [0, 3] {
        let base = EventLoop::new().unwrap();
        let mut pool = EventLoopThreadPool::new(base.handle(), "cc-pool-twice", 2);
        pool.set_loops(loops);
        pool.start().unwrap();
        let first = pool.handles();
        assert!(pool.start().is_err(), "already started");
        pool.stop().unwrap();
        pool.stop().unwrap();
        assert!(first.iter().all(|h| h.is_closed()));
        assert!(pool.next_loop().same_loop(&base.handle()), "stopped: base");
        pool.start().unwrap();
        let second = pool.handles();
        assert_eq!(second.len(), first.len().max(loops));
        let (tx, rx) = mpsc::channel();
        for h in &second {
            let tx = tx.clone();
            h.queue_in_loop(move |_| tx.send(()).unwrap()).unwrap();
        }
        for _ in &second {
            rx.recv_timeout(LIMIT).expect("a restarted loop serves");
        }
        drop(pool); // never stopped this time
        assert!(second.iter().all(|h| h.is_closed()));
        drop(base);
    }
}

/// A handle whose loop is gone: every queuing call is a `LoopClosed` error, the rest is
/// harmless, and nothing panics.
#[test]
fn a_handle_outliving_its_loop_refuses_everything_cleanly() {
    let t = EventLoopThread::spawn("cc-gone", None).unwrap();
    let h = t.handle().clone();
    let id = h.run_after(LIMIT, |_| unreachable!()).unwrap();
    t.stop().unwrap();
    assert!(h.is_closed());
    assert_eq!(h.queue_in_loop(|_| unreachable!()), Err(LoopClosed));
    assert_eq!(h.queue_in_slices(|_| unreachable!()), Err(LoopClosed));
    assert_eq!(
        h.run_every(Duration::from_millis(1), |_| unreachable!()),
        Err(LoopClosed)
    );
    assert_eq!(
        h.run_at(Instant::now(), |_| unreachable!()),
        Err(LoopClosed)
    );
    assert_eq!(h.cancel(id), Err(LoopClosed));
    h.quit();
    h.quit();
    assert!(!h.is_in_loop_thread());
    let m = h.metrics();
    assert_eq!(m.tasks_queued, 0);
    let _ = format!("{h:?}");
    // A function whose destructor queues to the closed loop again: refused, no deadlock.
    struct Requeue(duo_reactor::LoopHandle, Arc<AtomicUsize>);
    impl Drop for Requeue {
        fn drop(&mut self) {
            if self.0.queue_in_loop(|_| {}).is_err() {
                self.1.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    let refused = Arc::new(AtomicUsize::new(0));
    let r = Requeue(h.clone(), refused.clone());
    assert_eq!(h.queue_in_loop(move |_| drop(r)), Err(LoopClosed));
    assert_eq!(refused.load(Ordering::SeqCst), 1);
}

/// In one batch of events: a handler removes another channel (at once) and itself
/// (deferred), then registers a new descriptor that gets the removed one's number; the
/// batch's event for the removed channel reaches nobody, and the new channel hears only
/// its own events.
#[test]
fn removal_from_own_and_other_handler_with_the_descriptor_number_reused_at_once() {
    let mut lp = EventLoop::new().unwrap();
    let (_, timed_out) = guard(&mut lp);
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let (a_peer, a) = nonblocking_pair();
    let (b_peer, b) = nonblocking_pair();
    // Both readable before the first poll: one batch holds both events.
    (&a_peer).write_all(b"a").unwrap();
    (&b_peer).write_all(b"b").unwrap();
    let tokens: Arc<Mutex<Vec<Token>>> = Arc::default();
    let keep: Arc<Mutex<Vec<std::os::unix::net::UnixStream>>> = Arc::default();
    let make = |name: &'static str| {
        let (log, tokens, keep) = (log.clone(), tokens.clone(), keep.clone());
        FnHandler::new().on_read(move |lp, ch| {
            log.lock()
                .push(format!("{name} read at {}", lp.metrics().iterations));
            drain(ch);
            let other = tokens
                .lock()
                .iter()
                .copied()
                .find(|&t| t != ch.token())
                .expect("the other channel");
            let freed = lp
                .with_channel(other, |_, ch, _| ch.fd().as_raw_fd())
                .expect("the other channel is in its slot");
            assert!(lp.remove_channel(other), "the other one goes at once");
            assert!(lp.remove_channel(ch.token()), "deferred for itself");
            // The other's descriptor number is free now: a new socket takes it (the
            // lowest free number goes to the first end of the pair).
            let (c, c_peer) = nonblocking_pair();
            let reused = c.as_raw_fd();
            // (Another test's thread may take the number first; then this run checks the
            // slot reuse alone.)
            let note = if reused == freed { "reused" } else { "other" };
            keep.lock().push(c_peer);
            let l = log.clone();
            let t = lp
                .add_channel(
                    c,
                    Interest::READABLE,
                    FnHandler::new()
                        .on_read(move |lp, ch| {
                            l.lock()
                                .push(format!("new read at {}", lp.metrics().iterations));
                            drain(ch);
                            lp.quit();
                        })
                        .on_close(|_, _| panic!("no hang-up for the new channel")),
                )
                .unwrap();
            log.lock().push(format!("new {note} {t:?}"));
            // Say something on the new one: the next iteration hears it.
            (&keep.lock()[0]).write_all(b"c").unwrap();
        })
    };
    let ta = lp.add_channel(a, Interest::READABLE, make("a")).unwrap();
    let tb = lp.add_channel(b, Interest::READABLE, make("b")).unwrap();
    tokens.lock().extend([ta, tb]);
    lp.run().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst));
    let log = log.lock();
    assert_eq!(log.len(), 3, "{log:?}");
    let at = |line: &str| -> u64 { line.rsplit(' ').next().unwrap().parse().unwrap() };
    assert!(
        log[0].starts_with("a read") || log[0].starts_with("b read"),
        "{log:?}"
    );
    assert!(log[1].starts_with("new "), "{log:?}");
    assert!(log[2].starts_with("new read"), "{log:?}");
    assert!(
        at(&log[2]) > at(&log[0]),
        "the stale event reached the new channel: {log:?}"
    );
    assert_eq!(lp.channel_count(), 1);
    drop((a_peer, b_peer));
}

/// A timer cancels, from its callback, later timers of the same due batch: a one-shot,
/// a repeating one, and one a handle scheduled; it also cancels itself (a no-op for a
/// one-shot) and an earlier timer of the batch that already ran.
#[test]
fn timers_cancelled_by_another_timer_of_the_same_due_batch() {
    let mut lp = EventLoop::new().unwrap();
    let (_, timed_out) = guard(&mut lp);
    let log: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let t0 = Instant::now() + Duration::from_millis(5);
    let l = log.clone();
    let first = lp.run_at(t0, move |_| l.lock().push("first"));
    let ids: Arc<Mutex<Vec<TimerId>>> = Arc::default();
    let (i, l) = (ids.clone(), log.clone());
    let me: Arc<Mutex<Option<TimerId>>> = Arc::default();
    let m = me.clone();
    let canceller = lp.run_at(t0 + Duration::from_micros(1), move |lp| {
        l.lock().push("canceller");
        for id in i.lock().iter() {
            assert!(lp.cancel(*id), "a pending timer of the batch");
        }
        assert!(!lp.cancel(first), "already ran");
        assert!(
            !lp.cancel(m.lock().expect("own id")),
            "a one-shot that runs"
        );
        let l2 = l.clone();
        lp.run_at(t0, move |lp| {
            l2.lock().push("scheduled late");
            lp.quit();
        });
    });
    *me.lock() = Some(canceller);
    let l = log.clone();
    let one = lp.run_at(t0 + Duration::from_micros(2), move |_| l.lock().push("one"));
    let l = log.clone();
    let every = lp.run_every(Duration::from_millis(5), move |_| l.lock().push("every"));
    let l = log.clone();
    let from_handle = lp
        .handle()
        .run_at(t0 + Duration::from_micros(3), move |_| {
            l.lock().push("handle")
        })
        .unwrap();
    ids.lock().extend([one, every, from_handle]);
    // Everything is due before the loop first looks at its timers.
    while Instant::now() < t0 + Duration::from_millis(6) {
        thread::sleep(Duration::from_millis(1));
    }
    lp.run().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst));
    assert_eq!(*log.lock(), ["first", "canceller", "scheduled late"]);
    assert_eq!(lp.timer_count(), 1, "the guard alone");
}

/// Quits from a timer, from a queued function and from another thread while the loop
/// polls, each time with functions that queue more functions (through handles and on the
/// loop) as the loop quits: `run` returns, and the later functions run at the next `run`,
/// in order, none lost and none twice.
#[test]
fn quits_from_a_timer_a_function_and_another_thread_with_functions_queuing_more() {
    let mut lp = EventLoop::new().unwrap();
    let (_, timed_out) = guard(&mut lp);
    let h = lp.handle();
    let ran: Arc<Mutex<Vec<u32>>> = Arc::default();
    // A chain: each function queues the next (through the handle and on the loop).
    fn chain(h: duo_reactor::LoopHandle, ran: Arc<Mutex<Vec<u32>>>, n: u32) {
        let h2 = h.clone();
        let _ = h.queue_in_loop(move |lp| {
            ran.lock().push(n);
            if n < 30 {
                let r = ran.clone();
                lp.queue_in_loop(move |_| r.lock().push(1000 + n));
                chain(h2, ran, n + 1);
            }
        });
    }
    // 1. From a timer.
    chain(h.clone(), ran.clone(), 0);
    lp.run_after(Duration::from_millis(1), |lp| lp.quit());
    lp.run().unwrap();
    // 2. From a queued function.
    let hq = h.clone();
    h.queue_in_loop(move |_| hq.quit()).unwrap();
    lp.run().unwrap();
    // 3. From another thread while the loop polls.
    let (polling_tx, polling_rx) = mpsc::channel::<()>();
    let hh = h.clone();
    let quitter = thread::spawn(move || {
        polling_rx.recv_timeout(LIMIT).expect("the loop runs");
        // The loop sleeps in epoll_wait once its iteration count stops moving.
        let deadline = Instant::now() + LIMIT;
        let mut last = hh.metrics().iterations;
        loop {
            thread::sleep(Duration::from_millis(2));
            let now = hh.metrics().iterations;
            if now == last && hh.metrics().busy_for.is_none() {
                break;
            }
            assert!(Instant::now() < deadline, "the loop never went to sleep");
            last = now;
        }
        hh.quit();
    });
    lp.queue_in_loop(move |_| polling_tx.send(()).unwrap());
    let start = Instant::now();
    // Until the chain is over, each `run` may end early; run until it is done.
    lp.run().unwrap();
    join_within("the quitter", quitter);
    while ran.lock().len() < 61 && start.elapsed() < LIMIT {
        h.quit();
        lp.run().unwrap();
    }
    assert!(!timed_out.load(Ordering::SeqCst));
    let ran = ran.lock();
    let chain: Vec<u32> = ran.iter().copied().filter(|&n| n < 1000).collect();
    assert_eq!(chain, (0..=30).collect::<Vec<_>>(), "{ran:?}");
    let local: Vec<u32> = ran.iter().copied().filter(|&n| n >= 1000).collect();
    assert_eq!(local, (1000..1030).collect::<Vec<_>>(), "{ran:?}");
}

/// A loop thread stopped while functions keep queuing their successors (through the
/// handle, on the loop, and as zero-delay timers) still stops: a quitting loop takes its
/// queue once more at most and does not wait for the loop's own new work.
#[test]
fn a_loop_thread_stops_while_its_functions_keep_queuing_successors() {
    fn forever(h: duo_reactor::LoopHandle, runs: Arc<AtomicUsize>) {
        let h2 = h.clone();
        let _ = h.queue_in_loop(move |lp| {
            runs.fetch_add(1, Ordering::SeqCst);
            let r = runs.clone();
            lp.queue_in_loop(move |_| {
                r.fetch_add(1, Ordering::SeqCst);
            });
            let r = runs.clone();
            lp.run_after(Duration::ZERO, move |_| {
                r.fetch_add(1, Ordering::SeqCst);
            });
            forever(h2, runs);
        });
    }
    let t = EventLoopThread::spawn("cc-forever", None).unwrap();
    let h = t.handle().clone();
    let runs = Arc::new(AtomicUsize::new(0));
    forever(h.clone(), runs.clone());
    wait_until("the chain runs", || runs.load(Ordering::SeqCst) > 100);
    let stopper = thread::spawn(move || t.stop());
    join_within("stop", stopper).unwrap();
    assert!(h.is_closed());
}
