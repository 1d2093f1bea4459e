//! Timers, channels and panics in combination: what one callback's panic leaves for the
//! rest of the poll batch it came in.

mod util;

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_reactor::{EventLoop, FnHandler, Interest};
use duo_testkit::nonblocking_pair;
use util::drain;

/// How long a test waits for what must come at once.
const WAIT: Duration = Duration::from_secs(3);

/// Runs `lp` until `done` holds or [`WAIT`] has passed (a repeating timer checks); returns
/// whether `done` held.
fn run_until(lp: &mut EventLoop, done: impl Fn() -> bool + Send + 'static) -> bool {
    let deadline = Instant::now() + WAIT;
    let stop = lp.run_every(Duration::from_millis(2), move |lp| {
        if done() || Instant::now() >= deadline {
            lp.quit();
        }
    });
    lp.run().expect("run");
    lp.cancel(stop);
    Instant::now() < deadline
}

/// An edge-triggered channel whose handler counts its read events and drains the socket;
/// returns the writing end and the count.
fn counted_edge_channel(lp: &mut EventLoop) -> (std::os::unix::net::UnixStream, Arc<AtomicUsize>) {
    let (ours, theirs) = nonblocking_pair();
    let reads = Arc::new(AtomicUsize::new(0));
    let r = reads.clone();
    let handler = FnHandler::new().on_read(move |_, ch| {
        r.fetch_add(1, Ordering::SeqCst);
        drain(ch);
    });
    lp.add_channel(theirs, Interest::READABLE | Interest::EDGE, handler)
        .expect("add the edge-triggered channel");
    (ours, reads)
}

/// A handler that panics takes the rest of its poll batch out of `run` with it. The
/// level-triggered channels of that batch are reported again by the next poll, but an
/// edge-triggered one is not: its edge was consumed by the `epoll_wait` that returned the
/// batch. Its data must still reach its handler when the loop runs again, not wait for
/// more data that may never come.
#[test]
fn an_edge_triggered_event_in_the_batch_of_a_panicking_handler_is_not_lost() {
    let mut lp = EventLoop::new().unwrap();
    // The panicking channel becomes ready first: it comes first in the batch.
    let (mut bad_peer, bad) = nonblocking_pair();
    let bad_handler = FnHandler::new().on_read(|_, _| panic!("a handler's bug"));
    lp.add_channel(bad, Interest::READABLE, bad_handler)
        .unwrap();
    let (mut edge_peer, reads) = counted_edge_channel(&mut lp);
    bad_peer.write_all(b"x").unwrap();
    edge_peer.write_all(b"request").unwrap();

    let first = catch_unwind(AssertUnwindSafe(|| lp.run()));
    assert!(first.is_err(), "the handler's panic comes out of run");
    assert_eq!(
        reads.load(Ordering::SeqCst),
        0,
        "(the precondition: the edge-triggered event came after the panic in the batch)"
    );

    let r = reads.clone();
    let served = run_until(&mut lp, move || r.load(Ordering::SeqCst) > 0);
    assert!(
        served,
        "the edge-triggered channel's data, ready in the panicking batch, never reached \
         its handler"
    );
}

/// The same for a timer callback that panics: the edge-triggered channel that became
/// ready after the timer expired, in the same batch, still gets its event.
#[test]
fn an_edge_triggered_event_in_the_batch_of_a_panicking_timer_is_not_lost() {
    // The timer must expire before the channel becomes ready, which a 1 ns timer does
    // before the write that follows it almost always; an attempt where it did not (the
    // channel then ran before the panic) proves nothing and is made again.
    for _attempt in 0..20 {
        let mut lp = EventLoop::new().unwrap();
        lp.run_at(Instant::now(), |_| panic!("a timer's bug"));
        let (mut edge_peer, reads) = counted_edge_channel(&mut lp);
        edge_peer.write_all(b"request").unwrap();

        let first = catch_unwind(AssertUnwindSafe(|| lp.run()));
        assert!(first.is_err(), "the timer's panic comes out of run");
        if reads.load(Ordering::SeqCst) > 0 {
            continue; // the channel came first in the batch
        }
        let r = reads.clone();
        let served = run_until(&mut lp, move || r.load(Ordering::SeqCst) > 0);
        assert!(
            served,
            "the edge-triggered channel's data, ready in the panicking timer's batch, never \
             reached its handler"
        );
        return;
    }
    panic!("the timer never came first in the batch in 20 attempts");
}

/// A pool stopped while its loops' functions keep queuing successors, to their own loop
/// and to the pool's other loops (a ping-pong that never ends by itself), with timers
/// added as they go: every loop still ends, with one loop per thread and with more loops
/// than threads.
#[test]
fn a_pool_stops_while_its_loops_queue_work_to_each_other() {
    fn bounce(handles: Arc<Vec<duo_reactor::LoopHandle>>, at: usize, runs: Arc<AtomicUsize>) {
        let h = handles[at % handles.len()].clone();
        let _ = h.queue_in_loop(move |lp| {
            let n = runs.fetch_add(1, Ordering::SeqCst);
            lp.run_after(Duration::ZERO, |_| {});
            lp.queue_in_loop(|_| {});
            bounce(handles.clone(), at + 1, runs.clone());
            if n % 3 == 0 {
                bounce(handles, at, runs);
            }
        });
    }
    for loops in [0, 5] {
        let base = EventLoop::new().unwrap();
        let mut pool = duo_reactor::EventLoopThreadPool::new(base.handle(), "tcc-pool", 2);
        pool.set_loops(loops);
        pool.start().unwrap();
        let handles = Arc::new(pool.handles());
        let runs = Arc::new(AtomicUsize::new(0));
        for at in 0..handles.len() {
            bounce(handles.clone(), at, runs.clone());
        }
        duo_testkit::wait_until("the ping-pong runs", || runs.load(Ordering::SeqCst) > 2_000);
        let stopper = std::thread::spawn(move || pool.stop());
        duo_testkit::join_within("the pool's stop", stopper).unwrap();
        assert!(handles.iter().all(|h| h.is_closed()), "every loop ended");
        drop(base);
    }
}
