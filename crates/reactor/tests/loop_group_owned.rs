//! `LoopGroup` with `LoopSharing::Owned`: helped turns (an owner stuck in a callback while
//! another thread runs its loops) combined with quitting, panics, timers, stop, busy
//! polling, more threads, loops re-queuing their own work, and helping at every chance.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use duo_reactor::{EventLoop, LoopGroup, LoopHandle, LoopSharing};
use duo_testkit::{thread_cpu_time, wait_until, LIMIT};
use util::group::{current_thread_name, on_loop, owned_by, stick, timer_fires, EchoLoad};

mod util;

/// The name of the thread that runs the loop's next turn.
fn runner(h: &LoopHandle) -> String {
    on_loop(h, |_| current_thread_name())
}

#[test]
fn a_loop_that_quits_or_panics_in_a_helped_turn_ends_alone_and_stop_reports_it() {
    for (sharing, name) in [(LoopSharing::Owned, "hqo"), (LoopSharing::Any, "hqa")] {
        quit_and_panic_while_stuck(sharing, name);
    }
}

fn quit_and_panic_while_stuck(sharing: LoopSharing, name: &str) {
    const THREADS: usize = 2;
    const LOOPS: usize = 8;
    let group = LoopGroup::start_sharing(name, THREADS, LOOPS, sharing, None).unwrap();
    let handles: Vec<LoopHandle> = group.handles().to_vec();
    let mut stuck = stick(&handles[0]);
    let s = stuck.index();
    // Three loops whose owner is stuck: only a helper can run them.
    let stranded = owned_by(s, THREADS, LOOPS, 0);
    let (quits, panics, timer_panics) = (stranded[0], stranded[1], stranded[2]);
    for &i in &stranded {
        assert_ne!(
            runner(&handles[i]),
            stuck.thread,
            "loop {i} is run by a helper"
        );
    }
    handles[quits].quit();
    wait_until("the quitting loop ends", || handles[quits].is_closed());
    handles[panics]
        .queue_in_loop(|_| panic!("a callback panics in a helped turn"))
        .unwrap();
    wait_until("the panicking loop ends", || handles[panics].is_closed());
    handles[timer_panics]
        .run_after(Duration::from_millis(1), |_| {
            panic!("a timer panics in a helped turn")
        })
        .unwrap();
    wait_until("the loop whose timer panicked ends", || {
        handles[timer_panics].is_closed()
    });
    // Every other loop is still served, the stuck thread's remaining ones included.
    for (i, h) in handles.iter().enumerate() {
        if i != 0 && ![quits, panics, timer_panics].contains(&i) {
            assert_eq!(on_loop(h, move |_| i), i);
        }
    }
    if sharing == LoopSharing::Owned {
        assert!(group.helped_turns() >= 6, "{}", group.helped_turns());
    }
    stuck.release();
    assert_eq!(on_loop(&handles[0], |_| 0), 0);
    let e = group.stop().unwrap_err().to_string();
    assert!(e.contains(&format!("{name}-{panics} panicked")), "{e}");
    assert!(handles.iter().all(LoopHandle::is_closed));
}

#[test]
fn timers_keep_firing_on_a_loop_whose_owner_is_stuck() {
    let group = LoopGroup::start_sharing("htimer", 2, 4, LoopSharing::Owned, None).unwrap();
    let handles: Vec<LoopHandle> = group.handles().to_vec();
    let mut stuck = stick(&handles[0]);
    let helped = owned_by(stuck.index(), 2, 4, 0)[0];
    // A one-shot timer, then a repeating one, with the owner stuck all along.
    assert_ne!(
        timer_fires(&handles[helped], Duration::from_millis(3)),
        stuck.thread
    );
    let (tick_tx, tick_rx) = mpsc::channel();
    let id = handles[helped]
        .run_every(Duration::from_millis(2), move |_| {
            let _ = tick_tx.send(current_thread_name());
        })
        .unwrap();
    for _ in 0..5 {
        let t = tick_rx
            .recv_timeout(LIMIT)
            .expect("the repeating timer fires");
        assert_ne!(t, stuck.thread);
    }
    handles[helped].cancel(id).unwrap();
    stuck.release();
    group.stop().unwrap();
}

#[test]
fn stop_ends_the_other_loops_at_once_and_waits_for_a_stuck_thread() {
    for (sharing, name) in [(LoopSharing::Owned, "sto"), (LoopSharing::Any, "sta")] {
        stop_while_stuck(sharing, name);
    }
}

fn stop_while_stuck(sharing: LoopSharing, name: &str) {
    let group = LoopGroup::start_sharing(name, 2, 6, sharing, None).unwrap();
    let handles: Vec<LoopHandle> = group.handles().to_vec();
    let mut stuck = stick(&handles[0]);
    let stopper = thread::spawn(move || group.stop());
    wait_until("every loop but the stuck one ends", || {
        handles[1..].iter().all(LoopHandle::is_closed)
    });
    assert!(
        !handles[0].is_closed(),
        "the stuck loop is still in its turn"
    );
    assert!(!stopper.is_finished(), "stop waits for the stuck thread");
    stuck.release();
    duo_testkit::join_within("stop", stopper).unwrap();
    assert!(handles.iter().all(LoopHandle::is_closed));
}

#[test]
fn stop_waits_for_a_helper_stuck_in_another_threads_loop() {
    const LOOPS: usize = 6;
    let group = LoopGroup::start_sharing("sthelp", 2, LOOPS, LoopSharing::Owned, None).unwrap();
    let handles: Vec<LoopHandle> = group.handles().to_vec();
    let mut first = stick(&handles[0]);
    // A loop of the stuck thread: the other thread runs it, and gets stuck in it too.
    let helped = owned_by(first.index(), 2, LOOPS, 0)[0];
    let mut second = stick(&handles[helped]);
    assert_ne!(second.thread, first.thread);
    first.release();
    let stopper = thread::spawn(move || group.stop());
    wait_until("every loop but the helped one ends", || {
        handles
            .iter()
            .enumerate()
            .all(|(i, h)| i == helped || h.is_closed())
    });
    assert!(!stopper.is_finished(), "stop waits for the helper");
    second.release();
    duo_testkit::join_within("stop", stopper).unwrap();
    assert!(handles.iter().all(LoopHandle::is_closed));
}

#[test]
fn three_threads_serve_seven_loops_while_one_is_stuck() {
    const THREADS: usize = 3;
    const LOOPS: usize = 7;
    let group = LoopGroup::start_sharing("tri", THREADS, LOOPS, LoopSharing::Owned, None).unwrap();
    let handles: Vec<LoopHandle> = group.handles().to_vec();
    let mut stuck = stick(&handles[0]);
    let stranded = owned_by(stuck.index(), THREADS, LOOPS, 0);
    assert!(stranded.len() >= 2, "{stranded:?}");
    for round in 0..20 {
        for (i, h) in handles.iter().enumerate().skip(1) {
            let (r, t) = on_loop(h, move |_| (round, current_thread_name()));
            assert_eq!(r, round);
            assert!(t.starts_with("tri-t"), "{t}");
            if stranded.contains(&i) {
                assert_ne!(t, stuck.thread, "loop {i} of the stuck thread");
            }
        }
    }
    assert_ne!(
        timer_fires(
            &handles[*stranded.last().unwrap()],
            Duration::from_millis(5)
        ),
        stuck.thread
    );
    assert!(group.helped_turns() >= 40, "{}", group.helped_turns());
    // Counted per loop too (at the start of a turn: every answer above came from one).
    for &i in &stranded {
        assert!(handles[i].metrics().helped_turns >= 20, "loop {i}");
    }
    stuck.release();
    assert_eq!(on_loop(&handles[0], |_| 0), 0);
    group.stop().unwrap();
}

#[test]
fn more_ready_loops_than_a_batch_are_all_served_for_a_stuck_owner() {
    // 70 loops per thread: more than a wait takes at once (64).
    const THREADS: usize = 2;
    const LOOPS: usize = 140;
    let group =
        LoopGroup::start_sharing("batch", THREADS, LOOPS, LoopSharing::Owned, None).unwrap();
    let handles: Vec<LoopHandle> = group.handles().to_vec();
    let mut stuck = stick(&handles[0]);
    let stranded = owned_by(stuck.index(), THREADS, LOOPS, 0);
    for _round in 0..3 {
        let (tx, rx) = mpsc::channel();
        for &i in &stranded {
            let tx = tx.clone();
            handles[i]
                .queue_in_loop(move |_| tx.send(i).unwrap())
                .unwrap();
        }
        drop(tx);
        let mut got: Vec<usize> = rx.iter().take(stranded.len()).collect();
        got.sort_unstable();
        assert_eq!(got, stranded);
    }
    stuck.release();
    group.stop().unwrap();
}

#[test]
fn work_a_helped_turn_queues_for_its_own_loop_runs_in_a_later_turn() {
    let group = LoopGroup::start_sharing("hself", 2, 4, LoopSharing::Owned, None).unwrap();
    let handles: Vec<LoopHandle> = group.handles().to_vec();
    let mut stuck = stick(&handles[0]);
    let helped = owned_by(stuck.index(), 2, 4, 0)[0];
    // Queued through `&mut EventLoop` (local, no wake-up) and through the loop's own
    // handle from inside its turn, three deep each: every step runs in a later turn,
    // none on the stuck thread.
    let (tx, rx) = mpsc::channel::<(&'static str, u64, String)>();
    let record = |lp: &EventLoop| (lp.handle().metrics().iterations, current_thread_name());
    let h = handles[helped].clone();
    let tx2 = tx.clone();
    handles[helped]
        .queue_in_loop(move |lp| {
            let (n, t) = record(lp);
            tx.send(("local", n, t)).unwrap();
            lp.queue_in_loop(move |lp| {
                let (n, t) = record(lp);
                tx.send(("local", n, t)).unwrap();
                lp.queue_in_loop(move |lp| {
                    let (n, t) = record(lp);
                    tx.send(("local", n, t)).unwrap();
                });
            });
        })
        .unwrap();
    handles[helped]
        .queue_in_loop(move |lp| {
            let (n, t) = record(lp);
            tx2.send(("handle", n, t)).unwrap();
            let h2 = h.clone();
            h.queue_in_loop(move |lp| {
                let (n, t) = record(lp);
                tx2.send(("handle", n, t)).unwrap();
                h2.queue_in_loop(move |lp| {
                    let (n, t) = record(lp);
                    tx2.send(("handle", n, t)).unwrap();
                })
                .unwrap();
            })
            .unwrap();
        })
        .unwrap();
    let mut seen: Vec<(&str, u64, String)> = Vec::new();
    for _ in 0..6 {
        seen.push(rx.recv_timeout(LIMIT).expect("every step runs"));
    }
    for kind in ["local", "handle"] {
        let turns: Vec<u64> = seen
            .iter()
            .filter(|(k, _, _)| *k == kind)
            .map(|&(_, n, _)| n)
            .collect();
        assert_eq!(turns.len(), 3, "{kind}: {seen:?}");
        assert!(
            turns.windows(2).all(|w| w[0] < w[1]),
            "{kind}: each step in a later turn: {seen:?}"
        );
    }
    assert!(seen.iter().all(|(_, _, t)| *t != stuck.thread), "{seen:?}");
    stuck.release();
    group.stop().unwrap();
}

#[test]
fn busy_polling_threads_help_a_stuck_owner() {
    const LOOPS: usize = 6;
    let group = LoopGroup::start_sharing("hspin", 2, LOOPS, LoopSharing::Owned, None).unwrap();
    group.set_busy_poll(Duration::from_micros(100));
    let handles: Vec<LoopHandle> = group.handles().to_vec();
    let mut stuck = stick(&handles[0]);
    let stranded = owned_by(stuck.index(), 2, LOOPS, 0);
    for round in 0..30 {
        for (i, h) in handles.iter().enumerate().skip(1) {
            let (r, t) = on_loop(h, move |_| (round, current_thread_name()));
            assert_eq!(r, round);
            if stranded.contains(&i) {
                assert_ne!(t, stuck.thread, "loop {i}");
            }
        }
    }
    assert_ne!(
        timer_fires(&handles[stranded[0]], Duration::from_millis(5)),
        stuck.thread
    );
    stuck.release();
    assert_eq!(on_loop(&handles[0], |_| 0), 0);
    group.stop().unwrap();
}

#[test]
fn helping_at_every_chance_with_three_threads_and_many_loops_loses_nothing() {
    for busy_poll in [Duration::ZERO, Duration::from_micros(50)] {
        echo_everywhere(busy_poll);
    }
}

fn echo_everywhere(busy_poll: Duration) {
    let helped = EchoLoad {
        threads: 3,
        loops: 24,
        rounds: 150,
        sharing: LoopSharing::Owned,
        steal_after: Duration::from_nanos(1),
        busy_poll,
        timers: true,
    }
    .run("hecho");
    assert!(helped > 0, "helping at every chance helped");
}

#[test]
fn an_owner_does_not_spin_while_a_helper_is_stuck_in_one_of_its_ready_loops() {
    // Thread s is stuck in loop 0; the other thread helps s's loop b and gets stuck in
    // it. Then s is released, and b gets more work: b is ready (level-triggered) in s's
    // set, but held by the helper. s must not burn its core on it until the helper
    // finishes. (A thread that only wakes to look at the others uses well under 1 % of
    // the window; one that spins, measured: 45-100 %, 15 % or more with two CPU hogs.)
    const LOOPS: usize = 4;
    const WINDOW: Duration = Duration::from_millis(400);
    let group = LoopGroup::start_sharing("spin", 2, LOOPS, LoopSharing::Owned, None).unwrap();
    let handles: Vec<LoopHandle> = group.handles().to_vec();
    let mut first = stick(&handles[0]);
    let owner = first.thread.clone();
    let b = owned_by(first.index(), 2, LOOPS, 0)[0];
    let mut second = stick(&handles[b]);
    assert_ne!(second.thread, owner);
    first.release();
    assert_eq!(on_loop(&handles[0], |_| 0), 0, "the owner is free again");
    let (done_tx, done_rx) = mpsc::channel();
    handles[b]
        .queue_in_loop(move |_| done_tx.send(()).unwrap())
        .unwrap();
    let cpu_before = thread_cpu_time(&owner).unwrap();
    let started = Instant::now();
    // A measurement window, not a wait for an event: the owner's CPU time over it.
    thread::sleep(WINDOW);
    let used = thread_cpu_time(&owner).unwrap() - cpu_before;
    let wall = started.elapsed();
    second.release();
    done_rx.recv_timeout(LIMIT).expect("the work on b runs");
    group.stop().unwrap();
    assert!(
        used < wall / 20,
        "the owner {owner} used {used:?} of CPU in {wall:?} while its ready loop was \
         held by a stuck helper"
    );
}

#[test]
fn a_huge_steal_after_means_no_help_and_no_overflow() {
    // Between u64::MAX / 4 and u64::MAX nanoseconds (146 to 584 years): the threads add
    // it to their stamps, which must saturate, not overflow (a debug build's overflow
    // panic killed a group thread). Run on a thread of its own: should a group thread
    // die with its loops stranded, `stop` would wait for ever.
    let body = thread::spawn(|| {
        let group = LoopGroup::start_sharing("huge", 2, 4, LoopSharing::Owned, None).unwrap();
        group.set_steal_after(Duration::from_nanos(u64::MAX - 1));
        let handles: Vec<LoopHandle> = group.handles().to_vec();
        let mut stuck = stick(&handles[0]);
        // A loop of the free thread, a few times: the thread computes its next wait in
        // between, with the stuck thread's stamp not marked waiting.
        let free = owned_by(1 - stuck.index(), 2, 4, 0)[0];
        for round in 0..3 {
            let (tx, rx) = mpsc::channel();
            handles[free]
                .queue_in_loop(move |_| tx.send(round).unwrap())
                .unwrap();
            if rx.recv_timeout(Duration::from_secs(2)) != Ok(round) {
                stuck.release();
                std::mem::forget(group); // its `stop` would hang
                panic!("loop {free} is not served (round {round})");
            }
        }
        stuck.release();
        assert_eq!(on_loop(&handles[0], |_| 0), 0);
        assert_eq!(group.helped_turns(), 0);
        group.stop()
    });
    duo_testkit::join_before(
        Instant::now() + Duration::from_secs(6),
        "a group with a huge steal_after",
        body,
    )
    .unwrap();
}
