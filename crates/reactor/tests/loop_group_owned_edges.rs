//! `LoopSharing::Owned` at its edges: state combinations the other group tests do not reach
//! (busy polling longer than the help delay, a panic out of the group's own code while a
//! thread holds a loop, helping switched on and off at run time around a parked loop).
//!
//! The logger is process-wide: this binary installs one that panics on exactly one line
//! (see `PanicsOnce`); every other line passes through untouched.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use duo_reactor::{LoopGroup, LoopHandle, LoopSharing};
use duo_testkit::{thread_cpu_time, wait_until, LIMIT};
use log::{Level, LevelFilter, Log, Metadata, Record};
use util::group::{current_thread_name, on_loop, owned_by, stick};

mod util;

#[test]
fn a_busy_polling_thread_still_helps_a_stuck_owner_within_the_help_delay() {
    // Thread s is stuck in loop 0. The other thread, f, runs a turn of its own loop and
    // then busy-polls its own set for SPIN. Work then arrives for a loop of s: it should
    // be run by f after about the help delay (200 µs, rounded to 1 ms; at most the 10 ms
    // a sleeping thread waits), not when f's spin is over.
    const SPIN: Duration = Duration::from_secs(3);
    let group = LoopGroup::start_sharing("rbusy", 2, 4, LoopSharing::Owned, None).unwrap();
    group.set_busy_poll(SPIN);
    let handles: Vec<LoopHandle> = group.handles().to_vec();
    let mut stuck = stick(&handles[0]);
    let s = stuck.index();
    let stranded = owned_by(s, 2, 4, 0)[0];
    let own = owned_by(1 - s, 2, 4, usize::MAX)[0];
    let free = on_loop(&handles[own], |_| current_thread_name());
    assert_ne!(free, stuck.thread);
    // An event, not a guess: f's CPU time grows only while it spins (its turn and its
    // look at s's set take microseconds), so once it has grown f is past its help.
    let before = thread_cpu_time(&free).unwrap();
    wait_until("the free thread busy-polls", || {
        thread_cpu_time(&free).unwrap() >= before + Duration::from_millis(50)
    });
    let (tx, rx) = mpsc::channel();
    let queued = Instant::now();
    handles[stranded]
        .queue_in_loop(move |_| {
            let _ = tx.send((Instant::now(), current_thread_name()));
        })
        .unwrap();
    let (ran, by) = rx.recv_timeout(LIMIT).expect("the stranded work runs");
    let waited = ran - queued;
    stuck.release();
    group.stop().unwrap();
    assert_ne!(by, stuck.thread);
    assert!(
        waited < Duration::from_millis(500),
        "work on loop {stranded}, whose owner {} is stuck, waited {waited:?} for a thread \
         busy-polling for {SPIN:?} (help delay {:?})",
        stuck.thread,
        LoopGroup::DEFAULT_STEAL_AFTER
    );
}

/// Groups whose first "loop {group}-{i} panicked" error line makes the logger panic.
const LOGGER_FAILS_FOR: [&str; 2] = ["rlogpanic", "rdead"];

/// A logger that panics on the first error line saying a loop of one of the groups of
/// [`LOGGER_FAILS_FOR`] panicked: what a logger that fails (an `unwrap` on a write to a
/// closed pipe, a poisoned lock) does. Every other line is ignored.
struct PanicsOnce([AtomicBool; 2]);

impl Log for PanicsOnce {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= Level::Error
    }

    fn log(&self, r: &Record<'_>) {
        if r.level() != Level::Error {
            return;
        }
        let line = r.args().to_string();
        for (group, fired) in LOGGER_FAILS_FOR.iter().zip(&self.0) {
            if line.starts_with(&format!("loop {group}-"))
                && line.ends_with(" panicked")
                && !fired.swap(true, Ordering::SeqCst)
            {
                panic!("the logger fails on: {line}");
            }
        }
    }

    fn flush(&self) {}
}

static PANICS_ONCE: PanicsOnce = PanicsOnce([AtomicBool::new(false), AtomicBool::new(false)]);

fn install_logger() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        log::set_logger(&PANICS_ONCE).expect("the only logger of this binary");
        log::set_max_level(LevelFilter::Error);
    });
}

#[test]
fn a_thread_that_panics_while_ending_a_loop_does_not_hang_stop() {
    // A queued function panics in loop 1's turn (caught: the loop ends). Ending it logs
    // the failure; the logger panics there, out of the group's own code, on the thread
    // that holds the loop. `thread_died` says the group can still stop and reports it.
    install_logger();
    let group = LoopGroup::start_sharing("rlogpanic", 2, 4, LoopSharing::Owned, None).unwrap();
    let handles: Vec<LoopHandle> = group.handles().to_vec();
    handles[1]
        .queue_in_loop(|_| panic!("a callback panics"))
        .unwrap();
    wait_until("loop 1 ends", || handles[1].is_closed());
    // The other loops, those of the thread that died included, are still served.
    for (i, h) in handles.iter().enumerate() {
        if i != 1 {
            assert_eq!(on_loop(h, move |_| i), i, "loop {i}");
        }
    }
    let (tx, rx) = mpsc::channel();
    // On a thread of its own: if stop hangs, the test fails instead of hanging (that
    // thread and the group's are then left behind until the binary exits).
    let stopper = thread::spawn(move || tx.send(group.stop().map_err(|e| e.to_string())));
    let stopped = rx.recv_timeout(Duration::from_secs(5));
    let open = handles.iter().filter(|h| !h.is_closed()).count();
    let Ok(result) = stopped else {
        panic!(
            "stop hangs after a group thread panicked while ending loop 1 ({open} loops \
             not closed)"
        );
    };
    stopper.join().unwrap().unwrap();
    let e = result.unwrap_err();
    assert!(e.contains("panicked"), "{e}");
    assert!(handles.iter().all(LoopHandle::is_closed));
}

#[test]
fn the_loops_of_a_thread_that_died_are_served_with_helping_off() {
    // As above, with helping off: loop 1 runs on its owner t1, which dies ending it. Its
    // other loop, 3, must still be served ("the other threads run its loops from now on").
    install_logger();
    let group = LoopGroup::start_sharing("rdead", 2, 4, LoopSharing::Owned, None).unwrap();
    group.set_steal_after(Duration::ZERO);
    let handles: Vec<LoopHandle> = group.handles().to_vec();
    handles[1]
        .queue_in_loop(|_| panic!("a callback panics"))
        .unwrap();
    wait_until("loop 1 ends", || handles[1].is_closed());
    let (tx, rx) = mpsc::channel();
    handles[3]
        .queue_in_loop(move |_| tx.send(current_thread_name()).unwrap())
        .unwrap();
    let served = rx.recv_timeout(Duration::from_secs(3));
    if served.is_err() {
        // Its `stop` would wait for ever for loop 3 (and for loop 1's count).
        std::mem::forget(group);
        panic!("loop 3, whose owner thread died, is never run with helping off");
    }
    assert_eq!(served.unwrap(), "rdead-t0");
    let (tx, rx) = mpsc::channel();
    let stopper = thread::spawn(move || tx.send(group.stop().map_err(|e| e.to_string())));
    let result = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("stop returns");
    stopper.join().unwrap().unwrap();
    assert!(result.unwrap_err().contains("panicked"));
}

#[test]
fn helping_turned_on_at_run_time_reaches_an_owner_already_stuck() {
    // Helping off, then an owner gets stuck, then helping on: its other loops are run by
    // the other thread (which sleeps with helping off: the change must reach it).
    let group = LoopGroup::start_sharing("ron", 2, 4, LoopSharing::Owned, None).unwrap();
    group.set_steal_after(Duration::ZERO);
    let handles: Vec<LoopHandle> = group.handles().to_vec();
    let mut stuck = stick(&handles[0]);
    let stranded = owned_by(stuck.index(), 2, 4, 0)[0];
    let (tx, rx) = mpsc::channel();
    handles[stranded]
        .queue_in_loop(move |_| tx.send(current_thread_name()).unwrap())
        .unwrap();
    group.set_steal_after(LoopGroup::DEFAULT_STEAL_AFTER);
    let by = rx.recv_timeout(LIMIT).expect("the stranded work runs");
    assert_ne!(by, stuck.thread);
    assert!(group.helped_turns() >= 1);
    stuck.release();
    assert_eq!(on_loop(&handles[0], |_| 0), 0);
    group.stop().unwrap();
}

/// Thread s stuck in loop 0 while the other thread helps s's loop b and is stuck in it;
/// then s is released and work is queued on b (ready in s's set, held by the helper:
/// s parks it). Returns the group, its handles, b, s's name, the helper's stuck turn,
/// and the queued work's report.
fn park_b(
    name: &str,
) -> (
    LoopGroup,
    Vec<LoopHandle>,
    usize,
    String,
    util::group::Stuck,
    mpsc::Receiver<String>,
) {
    let group = LoopGroup::start_sharing(name, 2, 4, LoopSharing::Owned, None).unwrap();
    let handles: Vec<LoopHandle> = group.handles().to_vec();
    let mut first = stick(&handles[0]);
    let owner = first.thread.clone();
    let b = owned_by(first.index(), 2, 4, 0)[0];
    let second = stick(&handles[b]);
    assert_ne!(second.thread, owner);
    first.release();
    assert_eq!(on_loop(&handles[0], |_| 0), 0, "the owner is free again");
    let (tx, rx) = mpsc::channel();
    handles[b]
        .queue_in_loop(move |_| tx.send(current_thread_name()).unwrap())
        .unwrap();
    (group, handles, b, owner, second, rx)
}

#[test]
fn helping_turned_off_while_a_helper_holds_a_parked_loop_loses_nothing() {
    // Helping goes off while the helper holds b: putting b back must enable it again in
    // its owner's set, and the owner (the only one that may run it now) runs the work.
    let (group, handles, b, owner, mut second, rx) = park_b("roff");
    group.set_steal_after(Duration::ZERO);
    second.release();
    let by = rx.recv_timeout(LIMIT).expect("the work on b runs");
    assert_eq!(by, owner, "helping is off: the owner runs b");
    for round in 0..3 {
        assert_eq!(on_loop(&handles[b], move |_| round), round);
    }
    group.stop().unwrap();
}

#[test]
fn a_parked_loop_that_quits_in_its_helpers_turn_ends_alone() {
    // b, parked by its owner while the helper holds it, quits: the helper ends it (out of
    // its owner's set); everything else is served and stop reports nothing.
    let (group, handles, b, _owner, mut second, _rx) = park_b("rpq");
    handles[b].quit();
    second.release();
    wait_until("b ends", || handles[b].is_closed());
    for (i, h) in handles.iter().enumerate() {
        if i != b {
            assert_eq!(on_loop(h, move |_| i), i, "loop {i}");
        }
    }
    group.stop().unwrap();
    assert!(handles.iter().all(LoopHandle::is_closed));
}
