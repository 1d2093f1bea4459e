//! Busy polling (`EventLoop::set_busy_poll`): a loop that just found work stays awake
//! through a short gap (the next event is served without the loop thread blocking), and an
//! idle loop still goes to sleep after the busy-polling time.

use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use duo_reactor::{EventLoop, EventLoopThread, ThreadInit};
use duo_testkit::LIMIT;

/// How many times the calling thread has blocked so far (`voluntary_ctxt_switches`:
/// `epoll_wait`, a lock), leaving out preemptions, which a loaded machine adds at random.
fn thread_sleeps() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .expect("voluntary_ctxt_switches in status")
        .trim()
        .parse()
        .unwrap()
}

/// The loop thread's [`thread_sleeps`] when it runs a first queued function and when it
/// runs a second one queued `gap` later (a gap a busy-polling loop stays awake through;
/// without busy polling the loop blocks in `epoll_wait` there).
fn sleeps_across_a_gap(t: &EventLoopThread, gap: Duration) -> (u64, u64) {
    let (tx, rx) = mpsc::channel();
    for gap in [Duration::ZERO, gap] {
        thread::sleep(gap);
        let tx = tx.clone();
        t.handle()
            .queue_in_loop(move |_| tx.send(thread_sleeps()).unwrap())
            .unwrap();
    }
    (
        rx.recv_timeout(LIMIT).unwrap(),
        rx.recv_timeout(LIMIT).unwrap(),
    )
}

fn spawn_with_busy_poll(name: &str, spin: Duration) -> EventLoopThread {
    let init: ThreadInit = Arc::new(move |lp: &mut EventLoop| lp.set_busy_poll(spin));
    EventLoopThread::spawn(name, Some(init)).unwrap()
}

#[test]
fn a_busy_polling_loop_serves_the_next_event_without_sleeping() {
    let t = spawn_with_busy_poll("busy", Duration::from_millis(300));
    // Preemptions are not counted; a few attempts all the same, in case the loop thread
    // blocks for another reason (a contended lock when the function is queued).
    for _ in 0..10 {
        let (first, second) = sleeps_across_a_gap(&t, Duration::from_millis(5));
        if second == first {
            t.stop().unwrap();
            return;
        }
    }
    panic!("the loop thread blocked in every gap: it slept instead of polling");
}

#[test]
fn without_busy_polling_the_loop_sleeps_in_the_gap() {
    let t = EventLoopThread::spawn("sleepy", None).unwrap();
    // A loop thread that gets the CPU only after both functions were queued runs them in
    // one batch without blocking between them: a few attempts, with longer gaps, and one
    // that shows the loop blocked in between is enough.
    let mut seen = Vec::new();
    for attempt in 0..10 {
        let gap = Duration::from_millis([5, 20, 100][attempt.min(2)]);
        let (first, second) = sleeps_across_a_gap(&t, gap);
        if second > first {
            t.stop().unwrap();
            return;
        }
        seen.push((gap, first, second));
    }
    panic!("the loop never blocked in epoll_wait between the two: {seen:?}");
}

#[test]
fn an_idle_busy_polling_loop_still_sleeps() {
    let t = spawn_with_busy_poll("idle", Duration::from_millis(50));
    let loop_cpu = || duo_testkit::thread_cpu_time("idle").expect("the loop thread's CPU time");
    let (tx, rx) = mpsc::channel();
    t.handle()
        .queue_in_loop(move |lp| {
            let before = loop_cpu();
            // Nothing else happens for a second: the loop busy-polls 50 ms after this
            // function, then must block until the timer fires.
            lp.run_after(Duration::from_secs(1), move |_| {
                tx.send(loop_cpu() - before).unwrap()
            });
        })
        .unwrap();
    let used = rx.recv_timeout(LIMIT).unwrap();
    // A loop that kept polling would have used about a second; 50 ms of busy polling
    // (twice: after the function, after its own timer set-up) and scheduling noise stay
    // far below 400 ms.
    assert!(
        used < Duration::from_millis(400),
        "an idle loop used {used:?} of CPU in one second"
    );
    t.stop().unwrap();
}
