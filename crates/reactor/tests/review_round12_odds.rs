//! Review round 12 of duo-reactor's odds and ends.
//!
//! - A flood of signals read through [`EventLoop::watch_signals`] was reported as a spin:
//!   the signal handler never called `Channel::progressed`, though reading a signal is
//!   progress (the `HealthConfig` docs give it as the example), so a signalfd readable
//!   again at every turn (a process signalling itself in a tight loop) counted as a
//!   level-triggered readiness nobody consumes.
//! - The signal handler read signals until none was pending: a flood that keeps one
//!   pending held the loop in that one dispatch (thousands of signals, no timer, no other
//!   channel, no queued function served meanwhile). It now reads at most
//!   [`SIGNALS_PER_TURN`] per dispatch and leaves the rest for the next turn.
//!
//! (The third finding of this round, timer ids of a dropped loop kept in its shared
//! `pending_timers` for as long as a handle lives, is tested where that private state is
//! visible: `loop_handle::tests` in the crate.)
//!
//! This test runs without the libtest harness (`harness = false`): the signals it sends
//! to its own process (`kill(getpid(), ..)`) are blocked on the main thread before any
//! other thread exists, so every thread inherits the mask and none of them can take a
//! signal by its default action (which ends the process); the loop's signalfd reads them.
//! Every wait is bounded.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use duo_reactor::{EventLoop, HealthConfig, LoopMetrics};
use duo_sys::{block_signals, signal_process, Signal};
use duo_testkit::{join_within, wait_until_within};

/// The signals the cases send to this process.
const SIGNALS: [Signal; 2] = [Signal::USR1, Signal::USR2];
/// A spin threshold low enough that a flood of a few milliseconds crosses it many times.
const SPIN: u32 = 100;
/// How many signals the loop must have read before the flood stops.
const FLOOD: u64 = 50 * SPIN as u64;
/// The longest a flood may last (it stops earlier once [`FLOOD`] were read).
const FLOOD_LIMIT: Duration = Duration::from_secs(20);
/// The most signals one dispatch of the signal handler reads (the documented bound of
/// `EventLoop::watch_signals`).
const SIGNALS_PER_TURN: u64 = 64;

fn main() -> ExitCode {
    // Before any other thread exists: every thread spawned from here inherits the mask.
    block_signals(&SIGNALS).expect("blocking the test's signals");
    a_flood_of_signals_is_no_spin();
    a_flood_of_signals_does_not_hold_the_loop();
    println!("review_round12_odds: ok");
    ExitCode::SUCCESS
}

/// What a flood left.
struct Flood {
    sent: u64,
    read: u64,
    /// The most signals read in one turn of the loop.
    most_in_a_turn: u64,
    metrics: LoopMetrics,
    took: Duration,
}

/// Runs a loop watching [`SIGNALS`] (spin threshold [`SPIN`]) while `senders` threads send
/// them to this process in a tight loop, until the loop has read [`FLOOD`] of them (or
/// [`FLOOD_LIMIT`] passed). `per_turn`: count the signals read in each turn (which slows
/// the handler down: a lean handler is one the flood cannot outpace).
fn flood(senders: usize, per_turn: bool) -> Flood {
    let read = Arc::new(AtomicU64::new(0));
    let most = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let looper = {
        let (read, most) = (read.clone(), most.clone());
        thread::spawn(move || {
            let mut lp = EventLoop::new().unwrap();
            lp.set_health_config(HealthConfig {
                stall_threshold: None,
                spin_threshold: Some(SPIN),
            });
            // (iteration, signals read in it)
            let mut turn = (u64::MAX, 0u64);
            lp.watch_signals(&SIGNALS, move |lp, _| {
                read.fetch_add(1, Ordering::Relaxed);
                if !per_turn {
                    return;
                }
                let now = lp.metrics().iterations;
                turn = if now == turn.0 {
                    (now, turn.1 + 1)
                } else {
                    (now, 1)
                };
                most.fetch_max(turn.1, Ordering::Relaxed);
            })
            .unwrap();
            tx.send(lp.handle()).unwrap();
            lp.run().unwrap();
            lp.metrics()
        })
    };
    let handle = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the loop starts");
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..senders)
        .map(|i| {
            let stop = stop.clone();
            thread::spawn(move || {
                let me = std::process::id();
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let sig = SIGNALS[(sent as usize + i) % SIGNALS.len()];
                    signal_process(me, sig).expect("kill(getpid())");
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let began = Instant::now();
    wait_until_within(FLOOD_LIMIT + Duration::from_secs(5), "the flood", || {
        read.load(Ordering::Relaxed) >= FLOOD || began.elapsed() > FLOOD_LIMIT
    });
    stop.store(true, Ordering::Relaxed);
    let sent = senders
        .into_iter()
        .map(|s| join_within("a sender", s))
        .sum();
    let took = began.elapsed();
    // Signals still pending when the loop quits stay pending, blocked: harmless.
    handle.quit();
    let metrics = join_within("the loop", looper);
    let flood = Flood {
        sent,
        read: read.load(Ordering::Relaxed),
        most_in_a_turn: most.load(Ordering::Relaxed),
        metrics,
        took,
    };
    println!(
        "signal flood: {} sent, {} read in {:?}, {} iterations, at most {} in a turn, {} spins",
        flood.sent,
        flood.read,
        flood.took,
        flood.metrics.iterations,
        flood.most_in_a_turn,
        flood.metrics.spins
    );
    assert!(flood.read > 0, "no signal read");
    flood
}

/// A loop watching signals while this process sends them to itself in a tight loop: its
/// signalfd is readable again at nearly every turn, and each dispatch reads signals, so no
/// spin may be reported.
fn a_flood_of_signals_is_no_spin() {
    let flood = flood(1, false);
    assert!(flood.metrics.iterations > 1, "the loop turned");
    assert_eq!(
        flood.metrics.spins, 0,
        "a loop reading signals at every turn was reported spinning ({} read)",
        flood.read
    );
}

/// Two threads keep a signal pending all the time: the handler must still give the loop
/// back after a bounded number of signals, not read them as long as they come.
fn a_flood_of_signals_does_not_hold_the_loop() {
    let flood = flood(2, true);
    assert!(
        flood.most_in_a_turn <= SIGNALS_PER_TURN,
        "one dispatch read {} signals (at most {SIGNALS_PER_TURN} expected)",
        flood.most_in_a_turn
    );
    assert_eq!(flood.metrics.spins, 0, "reported spinning");
}
