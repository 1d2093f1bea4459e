//! `EventLoop::run` called from inside one of the loop's own callbacks (the callbacks get
//! `&mut EventLoop`, so nothing in the types stops it). It used to run a second loop on
//! top of the first: its poll overwrote the batch the outer iteration was dispatching,
//! so the outer one then dispatched the inner poll's readiness (or stale slots) as its
//! own, and it blocked the callback until a quit, which the outer `run` then missed
//! (the inner one clears it). It is refused with an error; the outer loop goes on.

use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use duo_reactor::{EventLoop, FnHandler, LoopGroup, LoopSharing};
use duo_sys::Interest;
use parking_lot::Mutex;

/// Quits the loop every `period`: ends a nested `run` (as it was before the fix) and the
/// outer one, so that a failing test fails instead of hanging.
fn watchdog(lp: &mut EventLoop) {
    lp.run_every(Duration::from_millis(300), |lp| lp.quit());
}

#[test]
fn run_from_a_queued_function_is_refused() {
    let mut lp = EventLoop::new().unwrap();
    watchdog(&mut lp);
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    lp.queue_in_loop(move |lp| {
        let nested = lp.run();
        s.lock().push(format!("{nested:?}"));
        lp.queue_in_loop(|lp| lp.quit());
    });
    lp.run().unwrap();
    let seen = seen.lock();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].starts_with("Err("), "nested run: {}", seen[0]);
    assert!(seen[0].contains("already running"), "{}", seen[0]);
}

#[test]
fn run_from_a_handler_is_refused_and_the_batch_goes_on() {
    let mut lp = EventLoop::new().unwrap();
    watchdog(&mut lp);
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut peers = Vec::new();
    for name in ["a", "b"] {
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        ours.write_all(b"x").unwrap();
        let log = log.clone();
        let handler = FnHandler::new().on_read(move |lp, ch| {
            let mut buf = [0u8; 8];
            let n = duo_sys::readv(ch.fd(), &mut [std::io::IoSliceMut::new(&mut buf)]);
            let nested = lp.run();
            log.lock()
                .push(format!("{name} read {n:?} nested ok: {}", nested.is_ok()));
            ch.remove();
            if log.lock().len() == 2 {
                lp.quit();
            }
        });
        lp.add_channel(theirs, Interest::READABLE, handler).unwrap();
        peers.push(ours);
    }
    lp.run().unwrap();
    let mut log = log.lock().clone();
    log.sort();
    assert_eq!(
        log,
        [
            "a read Ok(1) nested ok: false",
            "b read Ok(1) nested ok: false"
        ]
    );
    // The loop is still usable: a later `run` from outside runs.
    lp.queue_in_loop(|lp| lp.quit());
    lp.run().unwrap();
}

/// A loop of a group runs in turns on the group's threads; `run` from inside a turn is
/// refused the same way, and the loop goes on taking turns.
#[test]
fn run_inside_a_group_turn_is_refused() {
    for sharing in [LoopSharing::Owned, LoopSharing::Any] {
        let group = LoopGroup::start_sharing("nest", 2, 4, sharing, None).unwrap();
        let (tx, rx) = mpsc::channel();
        for h in group.handles() {
            let tx = tx.clone();
            h.queue_in_loop(move |lp| {
                let nested = lp.run();
                let _ = tx.send(nested.map_err(|e| e.kind()));
            })
            .unwrap();
        }
        for _ in group.handles() {
            let got = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a turn ran");
            assert_eq!(got, Err(ErrorKind::ResourceBusy), "{sharing:?}");
        }
        // The loops still take turns.
        let (tx, rx) = mpsc::channel();
        group.handles()[0]
            .queue_in_loop(move |_| tx.send(()).unwrap())
            .unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a later turn");
        group.stop().unwrap();
    }
}
