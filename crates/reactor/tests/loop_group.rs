//! `LoopGroup`: more loops than threads; a ready loop whose thread is busy or off its core
//! is run by another (both sharings).

use std::collections::HashSet;
use std::io::{ErrorKind, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use duo_reactor::{EventLoop, Handler, LoopGroup, LoopHandle, LoopSharing};
use duo_testkit::{nonblocking_pair, wait_until, LIMIT};
use util::group::{add_on, on_loop, stick, timer_fires, EchoLoad};

mod util;

#[test]
fn bad_sizes_are_refused() {
    for (threads, loops) in [(0, 4), (0, 0), (4, 2)] {
        let e = LoopGroup::start("bad", threads, loops, None).unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::InvalidInput,
            "{threads} threads, {loops} loops"
        );
        assert!(e.to_string().contains("loops"), "{e}");
    }
}

#[test]
fn every_loop_runs_on_the_group_threads_which_are_its_thread_only_during_a_turn() {
    let inits = Arc::new(AtomicUsize::new(0));
    let i = inits.clone();
    let group = LoopGroup::start(
        "grp",
        2,
        6,
        Some(Arc::new(move |lp: &mut EventLoop| {
            assert!(
                lp.handle().is_in_loop_thread(),
                "init runs as the loop's thread"
            );
            i.fetch_add(1, Ordering::SeqCst);
        })),
    )
    .unwrap();
    assert_eq!(inits.load(Ordering::SeqCst), 6);
    assert_eq!(group.num_threads(), 2);
    let mut names = Vec::new();
    let mut threads = HashSet::new();
    for h in group.handles() {
        assert!(
            !h.is_in_loop_thread(),
            "no thread is a loop's between turns"
        );
        let h2 = h.clone();
        let (name, thread, inside) = on_loop(h, move |lp| {
            (
                lp.name().to_owned(),
                thread::current().name().unwrap_or("").to_owned(),
                h2.is_in_loop_thread(),
            )
        });
        assert!(inside, "the thread running a turn is the loop's thread");
        assert!(thread.starts_with("grp-t"), "{thread}");
        names.push(name);
        threads.insert(thread);
    }
    assert_eq!(
        names,
        ["grp-0", "grp-1", "grp-2", "grp-3", "grp-4", "grp-5"]
    );
    assert!(threads.len() <= 2);
    group.stop().unwrap();
}

const SHARINGS: [LoopSharing; 2] = [LoopSharing::Owned, LoopSharing::Any];

#[test]
fn a_loop_blocked_in_a_callback_strands_only_its_own_work() {
    for sharing in SHARINGS {
        strand_one_loop(sharing);
    }
}

fn strand_one_loop(sharing: LoopSharing) {
    // Two threads, eight loops: while one thread is stuck in loop 0's turn, the other
    // serves all the other loops, those its stuck owner owns (2, 4, 6) included.
    let group = LoopGroup::start_sharing("strand", 2, 8, sharing, None).unwrap();
    let mut stuck = stick(&group.handles()[0]);
    for round in 0..20 {
        for h in &group.handles()[1..] {
            assert_eq!(on_loop(h, move |_| round), round);
        }
    }
    // A timer on another loop fires too, one of the stuck thread's among them.
    timer_fires(&group.handles()[3], Duration::from_millis(5));
    timer_fires(&group.handles()[2], Duration::from_millis(5));
    let per_loop: Vec<u64> = group
        .handles()
        .iter()
        .map(|h| h.metrics().helped_turns)
        .collect();
    if sharing == LoopSharing::Owned {
        // Each loop counts its own: the stuck thread's, not the other's. The stuck thread
        // is loop 0's owner (thread 0: loops 0, 2, 4, 6) unless thread 1 was helping loop
        // 0 when the blocking callback came (its owner off its core, on a loaded machine):
        // then thread 1 is stuck and its loops (1, 3, 5, 7) are the helped ones.
        assert!(
            per_loop.iter().sum::<u64>() >= 20 && group.helped_turns() >= 20,
            "the stuck thread's loops were run by the other: {per_loop:?}"
        );
        let even: u64 = per_loop.iter().skip(2).step_by(2).sum();
        let odd: u64 = per_loop.iter().skip(1).step_by(2).sum();
        assert!(
            (even > 0) != (odd > 0),
            "the loops of one thread only: {per_loop:?}"
        );
    } else {
        assert_eq!(group.helped_turns(), 0);
        assert!(
            per_loop.iter().all(|&n| n == 0),
            "no owners, no help: {per_loop:?}"
        );
    }
    stuck.release();
    assert_eq!(on_loop(&group.handles()[0], |_| 7), 7);
    group.stop().unwrap();
}

#[test]
fn an_idle_thread_helps_an_owner_stuck_in_a_callback() {
    // Thread 1 has nothing to do and sleeps; thread 0 then blocks in loop 0's turn. Work
    // for loop 2, also thread 0's, must not wait for thread 0 (nor for work of thread 1's
    // own to wake it).
    let group = LoopGroup::start_sharing("idle", 2, 4, LoopSharing::Owned, None).unwrap();
    let mut stuck = stick(&group.handles()[0]);
    for round in 0..3 {
        assert_eq!(on_loop(&group.handles()[2], move |_| round), round);
    }
    timer_fires(&group.handles()[2], Duration::from_millis(5));
    assert!(group.helped_turns() >= 3, "{}", group.helped_turns());
    stuck.release();
    assert_eq!(on_loop(&group.handles()[0], |_| 7), 7);
    group.stop().unwrap();
}

#[test]
fn owned_loops_run_on_their_owner_while_it_keeps_up() {
    // Helping off: every loop's turns run on its owner thread, loop i on thread i mod 2.
    let group = LoopGroup::start_sharing("own", 2, 6, LoopSharing::Owned, None).unwrap();
    assert_eq!(group.steal_after(), LoopGroup::DEFAULT_STEAL_AFTER);
    group.set_steal_after(Duration::ZERO);
    assert_eq!(group.steal_after(), Duration::ZERO);
    for _round in 0..5 {
        let threads: Vec<String> = group
            .handles()
            .iter()
            .map(|h| on_loop(h, |_| thread::current().name().unwrap_or("").to_owned()))
            .collect();
        for (i, t) in threads.iter().enumerate() {
            assert_eq!(t, &format!("own-t{}", i % 2), "loop {i}");
        }
    }
    assert_eq!(group.helped_turns(), 0);
    group.stop().unwrap();
}

#[test]
fn channels_on_many_loops_are_served_and_no_loop_runs_on_two_threads_at_once() {
    for sharing in SHARINGS {
        echo_on_every_loop(sharing, LoopGroup::DEFAULT_STEAL_AFTER);
    }
    // Helping at every chance: owners and helpers contend for the same loops all along.
    echo_on_every_loop(LoopSharing::Owned, Duration::from_nanos(1));
}

fn echo_on_every_loop(sharing: LoopSharing, steal_after: Duration) {
    EchoLoad {
        threads: 2,
        loops: 8,
        rounds: 300,
        sharing,
        steal_after,
        busy_poll: Duration::ZERO,
        timers: false,
    }
    .run("echo");
}

#[test]
fn work_a_turn_queues_for_its_own_loop_runs_in_a_later_turn() {
    let group = LoopGroup::start("self", 1, 2, None).unwrap();
    let (tx, rx) = mpsc::channel();
    group.handles()[1]
        .queue_in_loop(move |lp| {
            // Queued from the loop's own turn: no wake-up is written for it, so the group
            // must notice it by itself.
            lp.queue_in_loop(move |lp| {
                lp.queue_in_loop(move |lp| tx.send(lp.name().to_owned()).unwrap());
            });
        })
        .unwrap();
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), "self-1");
    group.stop().unwrap();
}

#[test]
fn a_loop_that_quits_ends_alone_and_a_panic_ends_only_its_loop() {
    let group = LoopGroup::start("end", 2, 4, None).unwrap();
    let handles: Vec<LoopHandle> = group.handles().to_vec();
    handles[1].quit();
    wait_until("loop 1 ends", || handles[1].is_closed());
    handles[2]
        .queue_in_loop(|_| panic!("a callback panics"))
        .unwrap();
    wait_until("loop 2 ends", || handles[2].is_closed());
    for h in [&handles[0], &handles[3]] {
        assert_eq!(on_loop(h, |_| 1), 1);
    }
    let e = group.stop().unwrap_err();
    assert!(e.to_string().contains("end-2 panicked"), "{e}");
    assert!(handles.iter().all(LoopHandle::is_closed));
}

#[test]
fn stop_ends_every_loop_and_thread_with_channels_closed() {
    let group = LoopGroup::start("close", 2, 3, None).unwrap();
    let (ours, theirs) = nonblocking_pair();
    add_on(&group.handles()[2], theirs, duo_reactor::FnHandler::new());
    let handles: Vec<LoopHandle> = group.handles().to_vec();
    drop(group);
    assert!(handles.iter().all(LoopHandle::is_closed));
    // The loop closed its channel's descriptor: the peer sees end of file.
    ours.set_nonblocking(false).unwrap();
    ours.set_read_timeout(Some(LIMIT)).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!((&ours).read(&mut buf).unwrap(), 0);
}

#[test]
fn a_failed_start_leaves_the_callers_own_loop_counted() {
    let _mine = EventLoop::new().unwrap();
    let e = LoopGroup::start(
        "failing",
        1,
        2,
        Some(Arc::new(|_: &mut EventLoop| panic!("init fails"))),
    )
    .unwrap_err();
    assert!(e.to_string().contains("init function failed"), "{e}");
    // The group's loops ended, but this thread still has its loop: one per thread.
    assert!(matches!(
        EventLoop::new(),
        Err(duo_reactor::LoopError::AlreadyExists)
    ));
}

#[test]
fn after_a_panic_no_thread_counts_as_the_dead_loops_thread() {
    // One thread: the turn after the panic runs on the thread that ran the panicking one.
    let group = LoopGroup::start("deadthread", 1, 2, None).unwrap();
    let dead = group.handles()[0].clone();
    dead.queue_in_loop(|_| panic!("a callback panics")).unwrap();
    wait_until("loop 0 ends", || dead.is_closed());
    let d = dead.clone();
    assert!(!on_loop(&group.handles()[1], move |_| d.is_in_loop_thread()));
    assert!(group.stop().is_err(), "the panic is reported");
}

/// A handler whose destructor panics.
struct PanicsOnDrop;

impl Handler for PanicsOnDrop {}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("a handler's destructor panics");
    }
}

#[test]
fn a_destructor_that_panics_as_a_loop_ends_does_not_hang_stop() {
    let group = LoopGroup::start("dropping", 2, 3, None).unwrap();
    let (_ours, theirs) = nonblocking_pair();
    add_on(&group.handles()[1], theirs, PanicsOnDrop);
    let handles: Vec<LoopHandle> = group.handles().to_vec();
    let stopper = thread::spawn(move || group.stop());
    let e = duo_testkit::join_within("stop", stopper).unwrap_err();
    assert!(
        e.to_string().contains("dropping-1: dropping it panicked"),
        "{e}"
    );
    assert!(handles.iter().all(LoopHandle::is_closed));
}

#[test]
fn stopping_from_a_group_thread_is_an_error_and_the_group_still_ends() {
    let group = LoopGroup::start("selfstop", 2, 4, None).unwrap();
    let handles: Vec<LoopHandle> = group.handles().to_vec();
    let (tx, rx) = mpsc::channel();
    handles[0]
        .queue_in_loop(move |_| {
            let _ = tx.send(group.stop().map_err(|e| e.to_string()));
        })
        .unwrap();
    let e = rx.recv_timeout(LIMIT).unwrap().unwrap_err();
    assert!(e.contains("stopped from one of its own threads"), "{e}");
    wait_until("every loop ends", || {
        handles.iter().all(LoopHandle::is_closed)
    });
}

#[test]
fn an_init_that_panics_is_an_error_and_leaves_nothing_running() {
    let e = LoopGroup::start(
        "badinit",
        2,
        4,
        Some(Arc::new(|lp: &mut EventLoop| {
            if lp.name() == "badinit-2" {
                panic!("init fails on one loop");
            }
        })),
    )
    .unwrap_err();
    assert!(e.to_string().contains("init function failed"), "{e}");
    assert!(e.to_string().contains("badinit-2 panicked"), "{e}");
    assert!(
        !duo_reactor::loops()
            .iter()
            .any(|h| h.name().starts_with("badinit")),
        "every loop of the group ended"
    );
}

#[test]
fn busy_polling_threads_serve_as_sleeping_ones_do() {
    for sharing in SHARINGS {
        busy_poll_serves(sharing);
    }
}

fn busy_poll_serves(sharing: LoopSharing) {
    let group = LoopGroup::start_sharing("spinning", 2, 4, sharing, None).unwrap();
    assert_eq!(group.busy_poll(), Duration::ZERO);
    group.set_busy_poll(Duration::from_micros(50));
    assert_eq!(group.busy_poll(), Duration::from_micros(50));
    for round in 0..50 {
        for h in group.handles() {
            assert_eq!(on_loop(h, move |_| round), round);
        }
    }
    // A timer, with nothing else to wake a thread when it is due.
    timer_fires(&group.handles()[2], Duration::from_millis(20));
    group.stop().unwrap();
}
