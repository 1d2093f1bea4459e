//! A matrix of reactor states that no other test combines: timers cancelled and re-added
//! within one late batch, a stalled repeating timer, functions queued while the loop
//! quits, a quit during a long batch, removal and slot reuse within one batch of events,
//! callbacks that panic out of `run`, loop groups whose loops quit, panic or change
//! threads, and pools stopped with work still queued.

mod util;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use duo_reactor::{
    EventLoop, EventLoopThreadPool, FnHandler, Interest, LoopClosed, LoopGroup, LoopHandle,
    TimerId, Token,
};
use duo_testkit::{join_within, nonblocking_pair, wait_until, LIMIT};
use util::{drain, guard};

/// Blocks the calling thread until `t` (a known instant, not a guess).
fn sleep_until(t: Instant) {
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        thread::sleep(t - now);
    }
}

/// Runs `f` on the loop and returns its result (`None` if the loop refused it or ended
/// before answering).
fn on_loop<R: Send + 'static>(
    h: &LoopHandle,
    f: impl FnOnce(&mut EventLoop) -> R + Send + 'static,
) -> Option<R> {
    let (tx, rx) = mpsc::channel();
    h.queue_in_loop(move |lp| {
        let _ = tx.send(f(lp));
    })
    .ok()?;
    rx.recv_timeout(LIMIT).ok()
}

/// Whether the peer of `ours` has closed its end: a blocking read sees end of file (or a
/// reset, if the peer closed with input it had not read).
fn peer_closed(ours: &UnixStream) -> bool {
    ours.set_nonblocking(false).unwrap();
    ours.set_read_timeout(Some(LIMIT)).unwrap();
    let mut buf = [0u8; 16];
    match (&*ours).read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// In one late batch timers cancel and re-add timers; nothing runs after its cancellation.
#[test]
fn timers_cancelled_and_re_added_within_one_late_batch() {
    let mut lp = EventLoop::new().unwrap();
    let (guard_id, timed_out) = guard(&mut lp);
    let log: Arc<Mutex<Vec<(&'static str, u64)>>> = Arc::default();
    let push = |name: &'static str| {
        let log = log.clone();
        move |lp: &mut EventLoop| log.lock().push((name, lp.metrics().iterations))
    };
    // Deadlines in this order: a, e (same period, scheduled later), b, c.
    let a = lp.run_every(Duration::from_millis(5), push("a"));
    let e_id: Arc<Mutex<Option<TimerId>>> = Arc::default();
    let (e_self, e_push, e_again) = (e_id.clone(), push("e"), push("e again"));
    let e = lp.run_every(Duration::from_millis(5), move |lp| {
        e_push(lp);
        assert!(
            lp.cancel(e_self.lock().unwrap()),
            "a running repeating timer"
        );
        let at = lp.poll_time(); // already past
        lp.run_at(at, e_again.clone());
    });
    *e_id.lock() = Some(e);
    let c_id: Arc<Mutex<Option<TimerId>>> = Arc::default();
    let (c_victim, b_push) = (c_id.clone(), push("b"));
    lp.run_at(Instant::now() + Duration::from_millis(6), move |lp| {
        b_push(lp);
        assert!(lp.cancel(a), "a ran in this batch and was rescheduled");
        assert!(lp.cancel(c_victim.lock().unwrap()), "c is due but not run");
        assert!(!lp.cancel(e), "e cancelled itself");
        // Time for a (wrongly) rescheduled `a` to fire a few more times.
        lp.run_after(Duration::from_millis(30), |lp| lp.quit());
    });
    let c_deadline = Instant::now() + Duration::from_millis(7);
    *c_id.lock() = Some(lp.run_at(c_deadline, push("c")));
    // The loop is busy until every deadline has passed: one batch finds them all due.
    lp.queue_in_loop(move |_| sleep_until(c_deadline + Duration::from_millis(2)));
    lp.run().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst), "{:?}", log.lock());
    let log = log.lock();
    let names: Vec<&str> = log.iter().map(|&(n, _)| n).collect();
    assert_eq!(names, ["a", "e", "b", "e again"]);
    assert!(log[0].1 == log[1].1 && log[1].1 == log[2].1, "{log:?}");
    assert!(
        log[3].1 > log[2].1,
        "a past deadline runs next iteration: {log:?}"
    );
    assert!(lp.cancel(guard_id));
    assert_eq!(lp.timer_count(), 0);
}

/// A repeating timer after a stall of 20 periods skips them instead of firing a burst.
#[test]
fn a_stalled_repeating_timer_skips_its_missed_periods() {
    const PERIOD: Duration = Duration::from_millis(5);
    let mut lp = EventLoop::new().unwrap();
    let (_, timed_out) = guard(&mut lp);
    let fires = Arc::new(AtomicUsize::new(0));
    let f = fires.clone();
    lp.run_every(PERIOD, move |_| {
        f.fetch_add(1, Ordering::SeqCst);
    });
    let stall_end: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (s, f) = (stall_end.clone(), fires.clone());
    lp.queue_in_loop(move |lp| {
        sleep_until(Instant::now() + 20 * PERIOD);
        assert_eq!(f.load(Ordering::SeqCst), 0, "nothing ran during the stall");
        lp.run_after(6 * PERIOD, |lp| lp.quit());
        *s.lock() = Some(Instant::now());
    });
    lp.run().unwrap();
    let window = Instant::now() - stall_end.lock().expect("the stall ended");
    assert!(!timed_out.load(Ordering::SeqCst));
    let n = fires.load(Ordering::SeqCst);
    // After the first run past the stall, each deadline is at least a period after the
    // previous one, however late the loop is: at most window / period more runs.
    let bound = (window.as_nanos() / PERIOD.as_nanos()) as usize + 2;
    assert!(n >= 1, "the overdue timer fired");
    assert!(
        n <= bound,
        "{n} runs within {window:?} after a stall of 20 periods: missed periods fired in a burst"
    );
}

/// Functions queued while the loop quits run (in this iteration, or at the next `run`).
#[test]
fn functions_queued_while_the_loop_quits_are_not_lost() {
    let mut lp = EventLoop::new().unwrap();
    let (_, timed_out) = guard(&mut lp);
    let log: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let h = lp.handle();
    let (l, hh) = (log.clone(), h.clone());
    lp.run_after(Duration::from_millis(1), move |lp| {
        lp.quit();
        l.lock().push("timer");
        let l1 = l.clone();
        lp.queue_in_loop(move |_| l1.lock().push("timer: local"));
        let l2 = l.clone();
        hh.queue_in_loop(move |_| l2.lock().push("timer: handle"))
            .unwrap();
    });
    lp.run().unwrap();
    assert_eq!(*log.lock(), ["timer", "timer: handle", "timer: local"]);

    log.lock().clear();
    let (l, hh) = (log.clone(), h.clone());
    h.queue_in_loop(move |lp| {
        lp.quit();
        l.lock().push("task");
        let l1 = l.clone();
        lp.queue_in_loop(move |_| l1.lock().push("task: local"));
        let l2 = l.clone();
        hh.queue_in_loop(move |_| l2.lock().push("task: handle"))
            .unwrap();
    })
    .unwrap();
    lp.run().unwrap();
    assert_eq!(*log.lock(), ["task"], "queued by the last batch: next run");
    h.quit();
    lp.run().unwrap();
    assert_eq!(*log.lock(), ["task", "task: handle", "task: local"]);
    assert!(!timed_out.load(Ordering::SeqCst));
}

/// A quit from another thread during a long batch lets the whole batch run first.
#[test]
fn quit_during_a_long_batch_runs_the_whole_batch() {
    const N: usize = 1_000;
    let mut lp = EventLoop::new().unwrap();
    let (_, timed_out) = guard(&mut lp);
    let h = lp.handle();
    let log: Arc<Mutex<Vec<usize>>> = Arc::default();
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    // Holds the loop in one batch while the next batch is queued.
    lp.queue_in_loop(move |_| {
        entered_tx.send(()).unwrap();
        release_rx.recv_timeout(LIMIT).expect("released");
    });
    let late_dropped = Arc::new(AtomicBool::new(false));
    let late_ran = Arc::new(AtomicBool::new(false));
    let (l, ld, lr) = (log.clone(), late_dropped.clone(), late_ran.clone());
    let producer = thread::spawn(move || {
        entered_rx
            .recv_timeout(LIMIT)
            .expect("the loop runs its first batch");
        let (started_tx, started_rx) = mpsc::channel();
        let (quit_tx, quit_rx) = mpsc::channel::<()>();
        // The first function of the batch waits, inside the batch, for the quit.
        let mut first = Some((started_tx, quit_rx));
        for i in 0..N {
            let l = l.clone();
            let first = first.take();
            h.queue_in_loop(move |_| {
                if let Some((started, quitted)) = first {
                    started.send(()).unwrap();
                    quitted.recv_timeout(LIMIT).expect("quit was asked");
                }
                l.lock().push(i);
            })
            .unwrap();
        }
        release_tx.send(()).unwrap();
        started_rx.recv_timeout(LIMIT).expect("the batch started");
        h.quit();
        quit_tx.send(()).unwrap();
        // Queued after the quit, while the batch still runs.
        struct Late(Arc<AtomicBool>);
        impl Drop for Late {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let late = Late(ld);
        h.queue_in_loop(move |_| {
            let _late = late;
            lr.store(true, Ordering::SeqCst);
        })
        .unwrap();
    });
    lp.run().unwrap();
    join_within("the producer", producer);
    assert!(!timed_out.load(Ordering::SeqCst));
    assert_eq!(*log.lock(), (0..N).collect::<Vec<_>>());
    assert!(
        !late_ran.load(Ordering::SeqCst),
        "queued after the batch began"
    );
    drop(lp);
    assert!(late_dropped.load(Ordering::SeqCst), "dropped with the loop");
    assert!(!late_ran.load(Ordering::SeqCst));
}

/// Channels removed (slot reused) within one batch never get that batch's stale events.
#[test]
fn removal_and_slot_reuse_within_one_batch_of_events() {
    let mut lp = EventLoop::new().unwrap();
    let (_, timed_out) = guard(&mut lp);
    let log: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let tokens: Arc<Mutex<Vec<Token>>> = Arc::default();
    let new_peers: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
    let mut peers = Vec::new();
    for i in 0..3 {
        let (a, b) = nonblocking_pair();
        (&a).write_all(b"x").unwrap();
        peers.push(a);
        let (log, all, new_peers) = (log.clone(), tokens.clone(), new_peers.clone());
        let handler = FnHandler::new().on_read(move |lp, ch| {
            log.lock()
                .push((format!("old {i}"), lp.metrics().iterations));
            drain(ch);
            let others: Vec<Token> = std::mem::take(&mut *all.lock())
                .into_iter()
                .filter(|&t| t != ch.token())
                .collect();
            for t in others {
                assert!(lp.remove_channel(t));
                assert!(lp.with_channel(t, |_, _, _| ()).is_none());
            }
            // Its own entry is out while it runs: not reachable by token.
            assert!(lp.with_channel(ch.token(), |_, _, _| ()).is_none());
            let (c, d) = nonblocking_pair();
            (&c).write_all(b"y").unwrap();
            new_peers.lock().push(c);
            let l = log.clone();
            lp.add_channel(
                d,
                Interest::READABLE,
                FnHandler::new().on_read(move |lp, ch| {
                    l.lock().push(("new".into(), lp.metrics().iterations));
                    drain(ch);
                    lp.quit();
                }),
            )
            .unwrap();
        });
        let t = lp.add_channel(b, Interest::READABLE, handler).unwrap();
        tokens.lock().push(t);
    }
    lp.run().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst));
    let log = log.lock();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log[0].0.starts_with("old"), "{log:?}");
    assert_eq!(log[1].0, "new", "{log:?}");
    assert!(log[1].1 > log[0].1, "{log:?}");
    assert_eq!(lp.channel_count(), 2);
    let first: usize = log[0].0["old ".len()..].parse().unwrap();
    for (i, peer) in peers.iter().enumerate() {
        if i != first {
            assert!(
                peer_closed(peer),
                "removed channel {i} closed its descriptor"
            );
        }
    }
}

/// A handler that panics out of `run` leaves no ghost channel, and the loop keeps serving.
#[test]
fn a_panicking_handler_leaves_no_ghost_channel() {
    let mut lp = EventLoop::new().unwrap();
    let (a, b) = nonblocking_pair();
    (&a).write_all(b"boom").unwrap();
    let t = lp
        .add_channel(
            b,
            Interest::READABLE,
            FnHandler::new().on_read(|_, _| panic!("a handler panics (expected)")),
        )
        .unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| lp.run())).is_err());
    assert!(
        peer_closed(&a),
        "the panicked channel's descriptor is closed"
    );
    let (_, timed_out) = guard(&mut lp);
    let (c, d) = nonblocking_pair();
    (&c).write_all(b"ok").unwrap();
    lp.add_channel(
        d,
        Interest::READABLE,
        FnHandler::new().on_read(|lp, ch| {
            drain(ch);
            lp.quit();
        }),
    )
    .unwrap();
    lp.run().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst), "the loop still serves");
    assert_eq!(lp.channel_count(), 1, "only the live channel is counted");
    assert!(!lp.channel_tokens().contains(&t));
    assert!(!lp.remove_channel(t), "the panicked channel is gone");
}

/// A timer that panics out of `run` does not strand the timers due with it or after it.
#[test]
fn a_panicking_timer_does_not_strand_the_other_timers() {
    let mut lp = EventLoop::new().unwrap();
    let h = lp.handle();
    let at = Instant::now() + Duration::from_millis(1);
    lp.run_at(at, |_| panic!("a timer panics (expected)"));
    let fired: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let f = fired.clone();
    lp.run_at(at, move |_| f.lock().push("same batch"));
    let f = fired.clone();
    lp.run_at(at + Duration::from_millis(20), move |lp| {
        f.lock().push("later");
        lp.quit();
    });
    assert!(catch_unwind(AssertUnwindSafe(|| lp.run())).is_err());
    // A watchdog that adds no timer (adding one would re-arm the timerfd).
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        let timed_out = done_rx.recv_timeout(Duration::from_secs(3)).is_err();
        h.quit();
        timed_out
    });
    lp.run().unwrap();
    let _ = done_tx.send(());
    let timed_out = join_within("the watchdog", watchdog);
    assert!(
        !timed_out,
        "the other timers never fired: {:?}",
        fired.lock()
    );
    assert_eq!(*fired.lock(), ["same batch", "later"]);
}

/// A repeating timer that panics out of `run` is dropped: no longer counted nor cancellable.
#[test]
fn a_panicking_repeating_timer_is_forgotten() {
    let mut lp = EventLoop::new().unwrap();
    let id = lp.run_every(Duration::from_millis(1), |_| {
        panic!("a repeating timer panics (expected)")
    });
    assert!(catch_unwind(AssertUnwindSafe(|| lp.run())).is_err());
    assert_eq!(lp.timer_count(), 0, "the panicked timer is dropped");
    assert!(!lp.cancel(id), "nothing left to cancel");
}

/// A queued function that panics out of `run` loses none of the functions queued with it.
#[test]
fn a_panicking_queued_function_loses_no_other_function() {
    let mut lp = EventLoop::new().unwrap();
    let h = lp.handle();
    let log: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    h.queue_in_loop(|_| panic!("a queued function panics (expected)"))
        .unwrap();
    let l = log.clone();
    h.queue_in_loop(move |_| l.lock().push("handle")).unwrap();
    let l = log.clone();
    lp.queue_in_loop(move |_| l.lock().push("local"));
    assert!(catch_unwind(AssertUnwindSafe(|| lp.run())).is_err());
    h.quit();
    lp.run().unwrap();
    assert_eq!(*log.lock(), ["handle", "local"]);
}

/// A group loop's repeating timer ticks on its loop thread across turns, never after cancel.
#[test]
fn a_group_loops_timer_follows_it_across_threads_until_cancelled() {
    let group = LoopGroup::start("mx-hop", 2, 6, None).unwrap();
    let handles = group.handles().to_vec();
    let h0 = handles[0].clone();
    let (tick_tx, tick_rx) = mpsc::channel();
    let h = h0.clone();
    let id = h0
        .run_every(Duration::from_millis(1), move |lp| {
            let _ = tick_tx.send((lp.name().to_owned(), h.is_in_loop_thread()));
        })
        .unwrap();
    // Keep the other loops busy so that the group's threads take turns on loop 0.
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = handles[1..]
        .iter()
        .cloned()
        .map(|h| {
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    on_loop(&h, |_| thread::sleep(Duration::from_micros(200))).unwrap();
                }
            })
        })
        .collect();
    let deadline = Instant::now() + LIMIT;
    for _ in 0..30 {
        let (name, in_loop_thread) = tick_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the group loop's timer ticks");
        assert_eq!(name, "mx-hop-0");
        assert!(in_loop_thread);
    }
    h0.cancel(id).unwrap();
    assert_eq!(on_loop(&h0, |lp| lp.timer_count()), Some(0));
    while tick_rx.try_recv().is_ok() {}
    // The cancelled timer (and its sender) is gone: no tick can come any more.
    assert!(matches!(
        tick_rx.recv_timeout(LIMIT),
        Err(mpsc::RecvTimeoutError::Disconnected)
    ));
    stop.store(true, Ordering::SeqCst);
    for b in busy {
        join_within("a busy client", b);
    }
    group.stop().unwrap();
}

/// Group loops that quit or panic in a timer refuse work while the other loops serve.
#[test]
fn group_loops_that_quit_or_panic_in_a_timer_refuse_work_while_others_serve() {
    let group = LoopGroup::start("mx-end", 2, 5, None).unwrap();
    let handles = group.handles().to_vec();
    let (ran_tx, ran_rx) = mpsc::channel();
    handles[1]
        .run_after(Duration::from_millis(2), move |lp| {
            let ran_tx = ran_tx.clone();
            lp.queue_in_loop(move |lp| ran_tx.send(lp.name().to_owned()).unwrap());
            lp.quit();
        })
        .unwrap();
    handles[2]
        .run_after(Duration::from_millis(2), |_| {
            panic!("a group loop's timer panics (expected)")
        })
        .unwrap();
    assert_eq!(ran_rx.recv_timeout(LIMIT).unwrap(), "mx-end-1");
    wait_until("the quitting and the panicking loop end", || {
        handles[1].is_closed() && handles[2].is_closed()
    });
    for dead in &handles[1..3] {
        assert_eq!(dead.queue_in_loop(|_| unreachable!()), Err(LoopClosed));
        assert_eq!(
            dead.run_after(Duration::ZERO, |_| unreachable!()),
            Err(LoopClosed)
        );
        assert!(!dead.is_in_loop_thread());
        dead.quit(); // harmless
    }
    for round in 0..20 {
        for h in [&handles[0], &handles[3], &handles[4]] {
            assert_eq!(on_loop(h, move |_| round), Some(round));
        }
    }
    let e = group.stop().unwrap_err().to_string();
    assert!(e.contains("mx-end-2 panicked"), "{e}");
    assert!(!e.contains("mx-end-1"), "quitting is no failure: {e}");
    assert!(handles.iter().all(LoopHandle::is_closed));
}

/// A group stopped from its own timer while a loop is stuck ends every loop, no hang.
#[test]
fn a_group_stopped_from_its_own_timer_while_a_loop_is_stuck_ends_everything() {
    let group = LoopGroup::start("mx-self", 2, 4, None).unwrap();
    let handles = group.handles().to_vec();
    let (stuck_tx, stuck_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    handles[3]
        .queue_in_loop(move |_| {
            stuck_tx.send(()).unwrap();
            release_rx.recv_timeout(LIMIT).expect("released");
        })
        .unwrap();
    stuck_rx.recv_timeout(LIMIT).unwrap();
    let (result_tx, result_rx) = mpsc::channel();
    let slot = Arc::new(Mutex::new(Some(group)));
    handles[0]
        .run_after(Duration::from_millis(1), move |_| {
            if let Some(group) = slot.lock().take() {
                let _ = result_tx.send(group.stop().map_err(|e| e.to_string()));
            }
        })
        .unwrap();
    let e = result_rx.recv_timeout(LIMIT).unwrap().unwrap_err();
    assert!(e.contains("stopped from one of its own threads"), "{e}");
    // The stuck loop has been asked to quit too; it ends once its callback returns.
    assert!(!handles[3].is_closed());
    release_tx.send(()).unwrap();
    wait_until("every loop ends", || {
        handles.iter().all(LoopHandle::is_closed)
    });
}

/// Counts a queued function that was dropped without running.
struct Tracked {
    i: usize,
    ran: bool,
    dropped: Arc<AtomicUsize>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.ran {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A pool stopped with work queued ran a FIFO prefix per loop and dropped the rest unrun.
#[test]
fn a_pool_stopped_with_work_queued_runs_a_prefix_and_drops_the_rest() {
    const PER: usize = 20_000;
    for loops in [0, 4] {
        let base = EventLoop::new().unwrap();
        let mut pool = EventLoopThreadPool::new(base.handle(), "mx-pool", 2);
        pool.set_loops(loops);
        pool.start().unwrap();
        let handles = pool.handles();
        let dropped = Arc::new(AtomicUsize::new(0));
        let (first_tx, first_rx) = mpsc::channel();
        let producers: Vec<_> = handles
            .iter()
            .cloned()
            .map(|h| {
                let dropped = dropped.clone();
                let first_tx = first_tx.clone();
                let log: Arc<Mutex<Vec<usize>>> = Arc::default();
                let t = {
                    let log = log.clone();
                    thread::spawn(move || {
                        let mut refused = 0;
                        for i in 0..PER {
                            let job = Tracked {
                                i,
                                ran: false,
                                dropped: dropped.clone(),
                            };
                            let (log, first_tx) = (log.clone(), first_tx.clone());
                            let queued = h.queue_in_loop(move |_| {
                                // The whole job moves in (not just its fields).
                                let mut job = job;
                                job.ran = true;
                                log.lock().push(job.i);
                                if job.i == 0 {
                                    let _ = first_tx.send(());
                                }
                            });
                            if queued.is_err() {
                                refused += 1;
                            }
                        }
                        refused
                    })
                };
                (log, t)
            })
            .collect();
        drop(first_tx);
        // Stop once every loop ran something, while the producers are (likely) queuing.
        for _ in 0..handles.len() {
            first_rx.recv_timeout(LIMIT).expect("every loop runs work");
        }
        pool.stop().unwrap();
        assert!(handles.iter().all(LoopHandle::is_closed));
        let mut ran_total = 0;
        let mut logs = Vec::new();
        for (log, t) in producers {
            join_within("a producer", t);
            let ran = log.lock().clone();
            assert_eq!(ran, (0..ran.len()).collect::<Vec<_>>(), "a FIFO prefix");
            ran_total += ran.len();
            logs.push((log, ran.len()));
        }
        assert_eq!(
            ran_total + dropped.load(Ordering::SeqCst),
            PER * handles.len(),
            "each function either ran or was dropped ({loops} loops)"
        );
        for (log, n) in logs {
            assert_eq!(log.lock().len(), n, "nothing ran after stop");
        }
    }
}
