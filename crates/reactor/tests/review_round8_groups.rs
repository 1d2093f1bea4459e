//! Review round 8: `LoopGroup` (`LoopSharing::Owned` and `Any`) edge cases.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::Duration;

use duo_reactor::{EventLoop, LoopGroup, LoopHandle, LoopSharing};
use duo_testkit::{wait_until, LIMIT};
use log::{Level, LevelFilter, Log, Metadata, Record};

const SHARINGS: [LoopSharing; 2] = [LoopSharing::Owned, LoopSharing::Any];

/// A loop's callback queues a function for its own loop (`EventLoop::queue_in_loop`) and
/// then quits it: as on a loop run by `EventLoop::run`, the function queued before the
/// quit runs before the loop ends (it was dropped with the loop).
#[test]
fn a_function_a_loop_queues_for_itself_before_quitting_runs() {
    for sharing in SHARINGS {
        let group = LoopGroup::start_sharing("selfq", 1, 2, sharing, None).unwrap();
        let h = group.handles()[0].clone();
        let (tx, rx) = mpsc::channel();
        h.queue_in_loop(move |lp: &mut EventLoop| {
            lp.queue_in_loop(move |_| {
                let _ = tx.send(());
            });
            lp.quit();
        })
        .unwrap();
        assert!(
            rx.recv_timeout(LIMIT).is_ok(),
            "{sharing:?}: the function queued before the quit was dropped"
        );
        wait_until("the loop that quit to end", || h.is_closed());
        group.stop().unwrap();
    }
}

/// The same from a timer's callback.
#[test]
fn a_function_a_timer_queues_before_quitting_runs() {
    for sharing in SHARINGS {
        let group = LoopGroup::start_sharing("selft", 2, 4, sharing, None).unwrap();
        let h = group.handles()[1].clone();
        let (tx, rx) = mpsc::channel();
        let mut tx = Some(tx);
        h.run_after(Duration::from_millis(1), move |lp: &mut EventLoop| {
            if let Some(tx) = tx.take() {
                lp.queue_in_loop(move |_| {
                    let _ = tx.send(());
                });
            }
            lp.quit();
        })
        .unwrap();
        assert!(
            rx.recv_timeout(LIMIT).is_ok(),
            "{sharing:?}: the function queued before the quit was dropped"
        );
        group.stop().unwrap();
    }
}

/// A logger that panics on the first error line saying a loop of group `rhuge` panicked
/// (what a failing logger does): the group thread that ends the loop dies of it, outside
/// a turn. Every other line is ignored.
struct PanicsOnce(AtomicBool);

impl Log for PanicsOnce {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= Level::Error
    }

    fn log(&self, r: &Record<'_>) {
        let line = r.args().to_string();
        if r.level() == Level::Error
            && line.starts_with("loop rhuge-")
            && line.ends_with(" panicked")
            && !self.0.swap(true, Ordering::SeqCst)
        {
            panic!("the logger fails on: {line}");
        }
    }

    fn flush(&self) {}
}

static PANICS_ONCE: PanicsOnce = PanicsOnce(AtomicBool::new(false));

/// A long help delay (helping mostly off) must not strand the loops of a thread that
/// died: `thread_died` promises the other threads run them from now on, as they do with
/// helping off (`Duration::ZERO`) or the default delay. With a long delay they were run
/// once per delay at most (and not at all before the delay since boot), and `stop`
/// waited for them.
#[test]
fn the_loops_of_a_thread_that_died_are_served_with_a_long_help_delay() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        log::set_logger(&PANICS_ONCE).expect("the only logger of this binary");
        log::set_max_level(LevelFilter::Error);
    });
    let group = LoopGroup::start_sharing("rhuge", 2, 4, LoopSharing::Owned, None).unwrap();
    group.set_steal_after(Duration::from_secs(u64::from(u32::MAX)));
    let handles: Vec<LoopHandle> = group.handles().to_vec();
    handles[1]
        .queue_in_loop(|_| panic!("a callback panics"))
        .unwrap();
    wait_until("loop 1 ends", || handles[1].is_closed());
    // Twice: each thread is looked at once per help delay, and the first look at the
    // dead one may come at once (its stamp is 0).
    for round in 0..2 {
        let (tx, rx) = mpsc::channel();
        handles[3]
            .queue_in_loop(move |_| {
                let _ = tx.send(thread::current().name().unwrap_or("").to_owned());
            })
            .unwrap();
        let served = rx.recv_timeout(Duration::from_secs(3));
        if served.is_err() {
            // Its `stop` would wait for loop 3 for the help delay.
            std::mem::forget(group);
            panic!(
                "round {round}: loop 3, whose owner thread died, is not run with a long help delay"
            );
        }
        assert_eq!(served.unwrap(), "rhuge-t0");
    }
    let (tx, rx) = mpsc::channel();
    let stopper = thread::spawn(move || tx.send(group.stop().map_err(|e| e.to_string())));
    let result = rx.recv_timeout(LIMIT).expect("stop returns");
    stopper.join().unwrap().unwrap();
    assert!(result.unwrap_err().contains("panicked"));
}

/// Several groups at once, both sharings: every loop gets more functions than a turn runs
/// (`TASK_BATCH`), each recording whether another thread was inside its loop, and the
/// groups are stopped at once. Every function queued before `stop` runs, no loop ever
/// runs on two threads at once, and afterwards every handle says `LoopClosed`.
#[test]
fn stop_runs_the_queued_work_of_many_groups_without_overlap_and_closes_the_handles() {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    const PER_LOOP: usize = EventLoop::TASK_BATCH * 2 + 7;
    let groups: Vec<LoopGroup> = (0..4)
        .map(|g| {
            let sharing = SHARINGS[g % 2];
            let group = LoopGroup::start_sharing(&format!("many{g}"), 2, 5, sharing, None).unwrap();
            group.set_steal_after(Duration::from_nanos(1));
            group
        })
        .collect();
    let ran = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for group in &groups {
        for h in group.handles() {
            let inside = Arc::new(AtomicBool::new(false));
            for _ in 0..PER_LOOP {
                let (ran, overlaps, inside) = (ran.clone(), overlaps.clone(), inside.clone());
                let me = h.clone();
                h.queue_in_loop(move |_| {
                    if inside.swap(true, Ordering::SeqCst) || !me.is_in_loop_thread() {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    std::hint::spin_loop();
                    inside.store(false, Ordering::SeqCst);
                    ran.fetch_add(1, Ordering::SeqCst);
                })
                .unwrap();
            }
            h.run_after(Duration::from_secs(3600), |_| {}).unwrap();
            handles.push(h.clone());
        }
    }
    let stoppers: Vec<_> = groups
        .into_iter()
        .map(|g| thread::spawn(move || g.stop().map_err(|e| e.to_string())))
        .collect();
    for s in stoppers {
        duo_testkit::join_within("stop", s).unwrap();
    }
    assert_eq!(ran.load(Ordering::SeqCst), handles.len() * PER_LOOP);
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
    for h in &handles {
        assert!(h.is_closed());
        assert!(h.queue_in_loop(|_| {}).is_err());
        assert!(h.run_after(Duration::ZERO, |_| {}).is_err());
        assert!(!h.is_in_loop_thread());
    }
}

/// Panics when its descriptor is readable.
struct PanicsOnRead;

impl duo_reactor::Handler for PanicsOnRead {
    fn handle_read(&mut self, _: &mut EventLoop, _: &mut duo_reactor::Channel) {
        panic!("a handler panics");
    }
}

/// Does nothing.
struct Quiet;

impl duo_reactor::Handler for Quiet {}

/// A handler's panic ends its loop: the peers of its channels (the panicking one and
/// another) see end of file, its handle says `LoopClosed`, and the group's other loops
/// are served on.
#[test]
fn a_panicking_handler_closes_every_channel_of_its_loop_and_the_group_goes_on() {
    use std::io::{Read, Write};
    use std::os::fd::OwnedFd;
    for sharing in SHARINGS {
        let group = LoopGroup::start_sharing("hpanic", 2, 3, sharing, None).unwrap();
        let h = group.handles()[1].clone();
        let (mut bad_peer, bad) = duo_testkit::nonblocking_pair();
        let (quiet_peer, quiet) = duo_testkit::nonblocking_pair();
        let (tx, rx) = mpsc::channel();
        h.queue_in_loop(move |lp| {
            let a = lp.add_channel(
                OwnedFd::from(bad),
                duo_reactor::Interest::READABLE,
                PanicsOnRead,
            );
            let b = lp.add_channel(OwnedFd::from(quiet), duo_reactor::Interest::READABLE, Quiet);
            let _ = tx.send(a.is_ok() && b.is_ok());
        })
        .unwrap();
        assert!(rx.recv_timeout(LIMIT).unwrap());
        bad_peer.write_all(b"x").unwrap();
        wait_until("the loop whose handler panicked ends", || h.is_closed());
        for mut peer in [bad_peer, quiet_peer] {
            peer.set_nonblocking(false).unwrap();
            peer.set_read_timeout(Some(LIMIT)).unwrap();
            // End of file, or a reset: the panicking channel closed with "x" unread.
            match peer.read(&mut [0u8; 1]) {
                Ok(0) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                other => panic!("{sharing:?}: the channel is still open: {other:?}"),
            }
        }
        let (tx, rx) = mpsc::channel();
        group.handles()[2]
            .queue_in_loop(move |_| tx.send(()).unwrap())
            .unwrap();
        rx.recv_timeout(LIMIT).unwrap();
        let e = group.stop().unwrap_err();
        assert!(e.to_string().contains("hpanic-1 panicked"), "{e}");
    }
}

/// Queues itself again through its loop's handle, for ever.
fn requeue(h: duo_reactor::LoopHandle) {
    let next = h.clone();
    let _ = h.queue_in_loop(move |_| requeue(next));
}

/// `stop` ends loops that never go idle: one that keeps queuing work for itself (through
/// its handle and on the loop), one with a timer due in every iteration.
#[test]
fn stop_ends_loops_that_never_go_idle() {
    fn local(lp: &mut EventLoop) {
        lp.queue_in_loop(local);
    }
    for sharing in SHARINGS {
        let group = LoopGroup::start_sharing("busy", 2, 3, sharing, None).unwrap();
        let hs = group.handles().to_vec();
        requeue(hs[0].clone());
        hs[1].queue_in_loop(local).unwrap();
        hs[2].run_every(Duration::ZERO, |_| {}).unwrap();
        // Each has run a while.
        for h in &hs {
            wait_until("the loop runs its work", || h.metrics().iterations > 50);
        }
        let stopper = thread::spawn(move || group.stop().map_err(|e| e.to_string()));
        duo_testkit::join_within("stop", stopper).unwrap();
        assert!(hs.iter().all(LoopHandle::is_closed));
    }
}
