//! Review round 10 of the event loop core (dispatch and the health detectors' reports,
//! quit and repeated `run`s, queued functions during quit): combinations the earlier
//! rounds did not combine.

mod util;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use duo_reactor::{Channel, EventLoop, Handler, HealthConfig, Interest};
use duo_testkit::{nonblocking_pair, LIMIT};

use util::guard;

/// A logger that takes warnings (so that a stall report is written, and its label asked
/// for) and throws them away.
struct Quiet;

impl log::Log for Quiet {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, _: &log::Record<'_>) {}
    fn flush(&self) {}
}

fn install_logger() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&Quiet).unwrap();
        log::set_max_level(log::LevelFilter::Warn);
    });
}

/// A handler whose `label()` panics; it quits the loop after `quit_after` dispatches,
/// reading what is readable only if `consume`.
struct BadLabel {
    dispatched: Arc<AtomicUsize>,
    quit_after: usize,
    consume: bool,
    busy: Duration,
}

impl Handler for BadLabel {
    fn handle_read(&mut self, lp: &mut EventLoop, channel: &mut Channel) {
        let start = Instant::now();
        while start.elapsed() < self.busy {
            std::hint::spin_loop();
        }
        if self.consume {
            util::drain(channel);
        }
        let n = self.dispatched.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.quit_after {
            lp.quit();
        }
    }
    fn label(&self) -> Option<String> {
        panic!("a label that panics");
    }
}

/// `Handler::label` is user code, called only to write a spin report: a label that
/// panics must not unwind out of `run` (and leave the channel's slot taken) while the
/// handler itself returned normally; the report goes on with a fallback label.
#[test]
fn a_panicking_label_in_a_spin_report_does_not_take_the_loop_down() {
    let mut lp = EventLoop::new().unwrap();
    let (_guard, timed_out) = guard(&mut lp);
    lp.set_health_config(HealthConfig {
        stall_threshold: None,
        spin_threshold: Some(4),
    });
    let (mut a, b) = nonblocking_pair();
    a.write_all(b"x").unwrap();
    let dispatched = Arc::new(AtomicUsize::new(0));
    let token = lp
        .add_channel(
            b,
            Interest::READABLE,
            BadLabel {
                dispatched: dispatched.clone(),
                quit_after: 12,
                consume: false,
                busy: Duration::ZERO,
            },
        )
        .unwrap();
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lp.run()));
    assert!(
        ran.is_ok(),
        "a label that panicked (while a spin was reported) unwound out of run"
    );
    ran.unwrap().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst), "the loop did not quit");
    assert!(lp.metrics().spins >= 1, "the spin was not counted");
    assert_eq!(lp.channel_count(), 1, "the channel is still there");
    assert!(lp.remove_channel(token), "and can be removed");
}

/// The same for a stall report (written only with a logger that takes warnings).
#[test]
fn a_panicking_label_in_a_stall_report_does_not_take_the_loop_down() {
    install_logger();
    let mut lp = EventLoop::new().unwrap();
    let (_guard, timed_out) = guard(&mut lp);
    lp.set_health_config(HealthConfig {
        stall_threshold: Some(Duration::from_micros(100)),
        spin_threshold: None,
    });
    let (mut a, b) = nonblocking_pair();
    a.write_all(b"x").unwrap();
    let dispatched = Arc::new(AtomicUsize::new(0));
    let token = lp
        .add_channel(
            b,
            Interest::READABLE,
            BadLabel {
                dispatched: dispatched.clone(),
                quit_after: 1,
                consume: true,
                busy: Duration::from_millis(2),
            },
        )
        .unwrap();
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lp.run()));
    assert!(
        ran.is_ok(),
        "a label that panicked (while a stall was reported) unwound out of run"
    );
    ran.unwrap().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst), "the loop did not quit");
    assert_eq!(dispatched.load(Ordering::SeqCst), 1);
    assert!(lp.metrics().stalls >= 1, "the stall was not counted");
    assert_eq!(lp.channel_count(), 1, "the channel is still there");
    assert!(lp.remove_channel(token), "and can be removed");
}

/// A quit from another thread that races the end of a `run` (the loop quit itself, and
/// `run` is returning) must not be lost: either it counts for the ending run (the
/// functions queued before it ran before that run returned), or it is kept for the next
/// `run`, which then returns on its own. Before, a quit that came after the run's last
/// look at the flag was cleared with the quit that ended it, and the functions queued
/// just before it were left for a next `run` that did not quit.
///
/// The race window is narrow: the test sweeps the delay between the two quits over many
/// rounds (for at most a few seconds), so it catches a loss often, not always. On
/// a correct loop every round passes whatever the timing.
#[test]
fn a_quit_racing_the_end_of_run_is_never_lost() {
    const ROUNDS: usize = 50_000;
    // Rounds stop early on a slow machine: fewer chances to catch a loss, no false failure.
    const BUDGET: Duration = Duration::from_secs(8);
    let start = Instant::now();
    let mut lp = EventLoop::new().unwrap();
    let handle = lp.handle();
    // The round under way (1-based), published by the loop thread before its first run
    // of the round; the quitter's go for that round; which rounds' functions ran.
    let ready = Arc::new(AtomicU64::new(0));
    let go = Arc::new(AtomicU64::new(0));
    let quitting = Arc::new(AtomicU64::new(0));
    let ran: Arc<Vec<AtomicBool>> = Arc::new((0..ROUNDS).map(|_| AtomicBool::new(false)).collect());
    let finished = Arc::new(AtomicBool::new(false));
    let quitter = {
        let (ready, go, quitting, ran) = (ready.clone(), go.clone(), quitting.clone(), ran.clone());
        let finished = finished.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + LIMIT * 3;
            for round in 0..ROUNDS {
                let r = round as u64 + 1;
                while ready.load(Ordering::SeqCst) < r {
                    assert!(
                        Instant::now() < deadline,
                        "the loop thread stopped at {round}"
                    );
                    if finished.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::yield_now();
                }
                go.store(r, Ordering::SeqCst);
                // As the loop quits itself: its run is about to return.
                let mut spins = 0u32;
                while quitting.load(Ordering::SeqCst) < r {
                    assert!(
                        Instant::now() < deadline,
                        "the loop thread stopped at {round}"
                    );
                    spins += 1;
                    if spins > 1_000 {
                        std::thread::yield_now();
                    }
                    std::hint::spin_loop();
                }
                // (Finer steps of the sweep.)
                for i in 0..(round / 32) % 64 {
                    std::hint::black_box(i);
                }
                let ran = ran.clone();
                handle
                    .queue_in_loop(move |_| ran[round].store(true, Ordering::SeqCst))
                    .unwrap();
                handle.quit();
            }
        })
    };
    let mut lost = None;
    for round in 0..ROUNDS {
        if start.elapsed() > BUDGET {
            break;
        }
        let r = round as u64 + 1;
        let (go, quitting) = (go.clone(), quitting.clone());
        // Run 1 quits itself as the quitter starts its round.
        lp.queue_in_loop(move |lp| {
            let deadline = Instant::now() + LIMIT;
            while go.load(Ordering::SeqCst) < r && Instant::now() < deadline {
                std::thread::yield_now();
            }
            // The quitter quits as this run ends: the delay between its signal and the
            // loop's own quit is swept (pauses of tens of nanoseconds), so that its quit
            // lands before, in, and after the end of the run.
            quitting.store(r, Ordering::SeqCst);
            for _ in 0..round % 32 {
                std::hint::spin_loop();
            }
            lp.quit();
        });
        ready.store(r, Ordering::SeqCst);
        lp.run().unwrap();
        if ran[round].load(Ordering::SeqCst) {
            continue; // the quitter's quit counted for run 1 (or run 1 saw it first)
        }
        // Its function did not run before run 1 returned: its quit came after run 1's
        // last look, or is still to come. Either way run 2 must return on its own.
        let limit = lp.run_after(Duration::from_secs(2), |lp| lp.quit());
        lp.run().unwrap();
        if !lp.cancel(limit) || !ran[round].load(Ordering::SeqCst) {
            lost = Some(round);
            break;
        }
    }
    finished.store(true, Ordering::SeqCst);
    quitter.join().unwrap();
    assert_eq!(
        lost, None,
        "a quit that raced the end of run was lost (the next run did not quit)"
    );
}
