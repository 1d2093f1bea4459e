//! A function queued before `quit` runs before `run` returns, whatever the loop was doing
//! when it was queued: in the middle of a pass that had already taken its queue, as much
//! as asleep.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use duo_reactor::EventLoopThread;

const LIMIT: Duration = Duration::from_secs(10);

/// Holds `handle`'s loop inside a queued function (its pass has taken the queue), queues
/// a function behind it, asks the loop to quit, then lets it go; returns whether that
/// function has run (read it once the loop has ended).
fn queue_then_quit_mid_pass(handle: &duo_reactor::LoopHandle) -> Arc<AtomicBool> {
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    handle
        .queue_in_loop(move |_lp| {
            started_tx.send(()).expect("test waits");
            // Held until the function below is queued and the loop asked to quit.
            let _ = release_rx.recv_timeout(LIMIT);
        })
        .expect("queue the holding function");
    started_rx
        .recv_timeout(LIMIT)
        .expect("the holding function started");
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    handle
        .queue_in_loop(move |_lp| flag.store(true, Ordering::SeqCst))
        .expect("queue f");
    handle.quit();
    release_tx.send(()).expect("release the holding function");
    ran
}

/// The loop is held inside a queued function (its pass has taken the queue) while another
/// function is queued and the loop is asked to quit: that function still runs.
#[test]
fn a_function_queued_before_quit_runs_though_the_loop_was_mid_pass() {
    for round in 0..20 {
        let thread = EventLoopThread::spawn("quit-order", None).expect("loop thread");
        let ran = queue_then_quit_mid_pass(thread.handle());
        thread.stop().expect("the loop ends cleanly");
        assert!(
            ran.load(Ordering::SeqCst),
            "round {round}: a function queued before quit() was dropped unrun"
        );
    }
}

/// The take after the quit is the last one: a function that keeps queuing its successor
/// does not keep the loop from returning.
#[test]
fn a_loop_that_keeps_queuing_still_quits() {
    let thread = EventLoopThread::spawn("quit-order-chain", None).expect("loop thread");
    let handle = thread.handle().clone();
    fn again(lp: &mut duo_reactor::EventLoop) {
        lp.queue_in_loop(again);
    }
    handle.queue_in_loop(again).expect("queue the chain");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(thread.stop());
    });
    rx.recv_timeout(LIMIT)
        .expect("stop returned within the limit")
        .expect("the loop ends cleanly");
}

/// The same for a loop of a `LoopGroup`, which ends alone when asked to quit: the function
/// queued before the quit runs in a later turn before the loop ends.
#[test]
fn a_group_loop_runs_what_was_queued_before_its_quit() {
    for round in 0..20 {
        let group = duo_reactor::LoopGroup::start("quit-group", 2, 2, None).expect("group");
        let handle = group.handles()[1].clone();
        let ran = queue_then_quit_mid_pass(&handle);
        let deadline = std::time::Instant::now() + LIMIT;
        while !handle.is_closed() {
            assert!(std::time::Instant::now() < deadline, "the loop did not end");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            ran.load(Ordering::SeqCst),
            "round {round}: a function queued before quit() was dropped unrun"
        );
        group.stop().expect("the group ends cleanly");
    }
}
