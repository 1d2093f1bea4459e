//! Review round 12 of the reactor, second look at the round's own fixes (duo-reactor:
//! the spin detector in a `LoopGroup`): a loop only a helper runs (its owner stuck),
//! found ready at two of the helper's looks in a row, was taken as ready all along (a
//! wait that returned at once), although the turn at the first look had consumed its
//! readiness and new traffic made it ready again in between: a channel served with real
//! traffic by a handler that does not report progress, on a descriptor without queues
//! (an eventfd), was reported as a spin. Shown by a test that failed before its fix.

mod util;

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duo_reactor::{EventLoop, FnHandler, HealthConfig, Interest, LoopGroup, LoopSharing};
use duo_sys::EventFd;
use duo_testkit::{wait_until_within, LIMIT};

use util::group::{on_loop, owned_by, stick};

/// Spin reports only (no stall reports from the stuck callback).
fn spin_only(lp: &mut EventLoop, threshold: u32) {
    lp.set_health_config(HealthConfig {
        stall_threshold: None,
        spin_threshold: Some(threshold),
    });
}

/// The helped loop's eventfd is signalled every 500 µs, far more often than the helper
/// looks (every 5 ms): every look finds the loop ready, and its turn drains the eventfd
/// (the handler does not call `progressed`; an eventfd has no queues to watch). Between
/// two looks the loop was not ready until the next signal: its channel was served, not
/// spinning, and must not be reported after 3 × the threshold of such turns.
#[test]
fn a_helped_loop_served_between_two_looks_is_no_spin() {
    const THRESHOLD: u32 = 20;
    let group = LoopGroup::start_sharing("r12f-hlooks", 2, 4, LoopSharing::Owned, None).unwrap();
    group.set_steal_after(Duration::from_millis(5));
    let handles = group.handles().to_vec();
    let mut stuck = stick(&handles[0]);
    let helped = handles[owned_by(stuck.index(), 2, 4, 0)[0]].clone();
    let efd = Arc::new(EventFd::new().unwrap());
    let served = Arc::new(AtomicU64::new(0));
    let (in_loop, count) = (Arc::clone(&efd), Arc::clone(&served));
    on_loop(&helped, move |lp| {
        spin_only(lp, THRESHOLD);
        let fd = in_loop.as_fd().try_clone_to_owned().unwrap();
        lp.add_channel(
            fd,
            Interest::READABLE,
            FnHandler::new().on_read(move |_, _| {
                // Consumed: the readiness is gone until the next signal.
                let _ = in_loop.drain();
                count.fetch_add(1, Ordering::Relaxed);
            }),
        )
        .unwrap();
    });
    let stop = Arc::new(AtomicBool::new(false));
    let signaller = {
        let (efd, stop) = (Arc::clone(&efd), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                efd.notify().unwrap();
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    // Within half of `LIMIT`: the time the stuck callback holds its thread at most.
    wait_until_within(LIMIT / 2, "the helper served the loop many times", || {
        served.load(Ordering::Relaxed) >= u64::from(3 * THRESHOLD)
    });
    let spins = helped.metrics().spins;
    stop.store(true, Ordering::Relaxed);
    signaller.join().unwrap();
    stuck.release();
    group.stop().unwrap();
    assert_eq!(
        spins, 0,
        "a channel served at every helped turn was reported as a spin"
    );
}
