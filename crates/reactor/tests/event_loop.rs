//! `EventLoop` and `LoopHandle`: one loop per thread, cross-thread functions, quitting.

mod util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use duo_reactor::{EventLoop, LoopClosed, LoopError};
use duo_testkit::{join_within, LIMIT};
use util::spawn_loop;

#[test]
fn second_loop_on_one_thread_is_refused() {
    let lp = EventLoop::new().unwrap();
    match EventLoop::new() {
        Err(LoopError::AlreadyExists) => {}
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    drop(lp);
    // Once the first is gone, the thread may have a loop again.
    EventLoop::new().unwrap();
}

#[test]
fn queue_from_8_threads_all_run_fifo_per_producer_on_the_loop_thread() {
    const PRODUCERS: usize = 8;
    const PER: usize = 10_000;
    let mut lp = EventLoop::new().unwrap();
    let handle = lp.handle();
    let loop_thread = thread::current().id();
    let (tx, rx) = mpsc::channel::<(usize, usize)>();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let handle = handle.clone();
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..PER {
                    let tx = tx.clone();
                    handle
                        .queue_in_loop(move |_| {
                            assert_eq!(thread::current().id(), loop_thread);
                            tx.send((p, i)).unwrap();
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let done = Arc::new(AtomicUsize::new(0));
    // A watcher quits the loop once every function ran.
    let watcher = {
        let handle = handle.clone();
        thread::spawn(move || {
            let mut next = [0usize; PRODUCERS];
            let deadline = Instant::now() + LIMIT;
            for _ in 0..PRODUCERS * PER {
                let (p, i) = rx
                    .recv_timeout(deadline - Instant::now())
                    .expect("all functions run");
                assert_eq!(i, next[p], "producer {p} out of order");
                next[p] += 1;
            }
            handle.quit();
            next
        })
    };
    lp.run().unwrap();
    for p in producers {
        p.join().unwrap();
    }
    let next = join_within("the watcher", watcher);
    assert!(next.iter().all(|&n| n == PER));
    assert_eq!(lp.metrics().tasks_run, (PRODUCERS * PER) as u64);
    done.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn quit_from_another_thread_ends_run_promptly() {
    let (handle, t) = spawn_loop();
    // Let the loop block in epoll_wait with nothing to do.
    thread::sleep(Duration::from_millis(20));
    let start = Instant::now();
    handle.quit();
    join_within("the loop thread", t);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn quit_before_run_and_from_inside_a_callback() {
    let mut lp = EventLoop::new().unwrap();
    lp.handle().quit();
    lp.run().unwrap(); // returns at once
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    lp.handle()
        .queue_in_loop(move |lp| {
            r.fetch_add(1, Ordering::SeqCst);
            lp.quit();
        })
        .unwrap();
    lp.run().unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[test]
fn functions_queued_while_draining_run_next_iteration_without_hanging() {
    let mut lp = EventLoop::new().unwrap();
    let handle = lp.handle();
    let iterations_seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = iterations_seen.clone();
    // A function that re-queues itself 100 times, from the loop thread, while the loop is
    // draining: each must trigger a wake-up or the loop would sleep forever.
    fn requeue(
        h: duo_reactor::LoopHandle,
        n: usize,
        seen: Arc<parking_lot::Mutex<Vec<u64>>>,
    ) -> impl FnOnce(&mut EventLoop) + Send {
        move |lp| {
            seen.lock().push(lp.metrics().iterations);
            if n == 0 {
                lp.quit();
            } else {
                h.clone().queue_in_loop(requeue(h, n - 1, seen)).unwrap();
            }
        }
    }
    handle
        .queue_in_loop(requeue(handle.clone(), 100, seen))
        .unwrap();
    let t0 = Instant::now();
    lp.run().unwrap();
    assert!(t0.elapsed() < LIMIT);
    let seen = iterations_seen.lock();
    assert_eq!(seen.len(), 101);
    // Each re-queued function ran in a later iteration than its parent (no starvation).
    assert!(seen.windows(2).all(|w| w[1] > w[0]), "{seen:?}");
}

#[test]
fn functions_queued_on_the_loop_itself_run_in_order() {
    let mut lp = EventLoop::new().unwrap();
    let log = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    for i in 0..5 {
        let log = log.clone();
        lp.queue_in_loop(move |_| log.lock().push(i));
    }
    lp.queue_in_loop(|lp| lp.quit());
    lp.run().unwrap();
    assert_eq!(*log.lock(), [0, 1, 2, 3, 4]);
}

#[test]
fn handles_report_a_dropped_loop() {
    let lp = EventLoop::new().unwrap();
    let handle = lp.handle();
    assert!(!handle.is_closed());
    assert!(handle.is_in_loop_thread());
    drop(lp);
    assert!(handle.is_closed());
    assert_eq!(handle.queue_in_loop(|_| unreachable!()), Err(LoopClosed));
    assert_eq!(
        handle.run_after(Duration::ZERO, |_| unreachable!()),
        Err(LoopClosed)
    );
    handle.quit(); // harmless
}

#[test]
fn handle_thread_checks() {
    let (handle, t) = spawn_loop();
    assert!(!handle.is_in_loop_thread());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handle.assert_in_loop_thread()
    }));
    assert!(r.is_err());
    let (tx, rx) = mpsc::channel();
    let h2 = handle.clone();
    handle
        .queue_in_loop(move |_| {
            h2.assert_in_loop_thread();
            tx.send(h2.is_in_loop_thread()).unwrap();
        })
        .unwrap();
    assert!(rx.recv_timeout(LIMIT).unwrap());
    handle.quit();
    join_within("the loop thread", t);
}

#[test]
fn metrics_count_iterations_tasks_and_timers() {
    let mut lp = EventLoop::new().unwrap();
    let h = lp.handle();
    for _ in 0..3 {
        h.queue_in_loop(|_| {}).unwrap();
    }
    lp.run_after(Duration::from_millis(1), |_| {});
    lp.run_after(Duration::from_millis(2), |lp| lp.quit());
    lp.run().unwrap();
    let m = h.metrics();
    assert_eq!(m.tasks_run, 3);
    assert_eq!(m.timers_fired, 2);
    assert!(m.iterations >= 1);
    assert_eq!(m.io_events, 0);
}

#[test]
fn loop_local_values() {
    #[derive(Debug, PartialEq)]
    struct Wheel(Vec<u32>);
    let mut lp = EventLoop::new().unwrap();
    assert!(lp.local::<Wheel>().is_none());
    assert!(lp.insert_local(Wheel(vec![1])).is_none());
    let n = lp.with_local::<Wheel, _>(|lp, w| {
        w.0.push(2);
        // Taken out while in use: a nested access sees nothing instead of aliasing.
        assert!(lp.with_local::<Wheel, _>(|_, _| ()).is_none());
        w.0.len()
    });
    assert_eq!(n, Some(2));
    assert_eq!(lp.local::<Wheel>(), Some(&Wheel(vec![1, 2])));
    assert_eq!(lp.insert_local(Wheel(vec![])), Some(Wheel(vec![1, 2])));
    assert_eq!(lp.remove_local::<Wheel>(), Some(Wheel(vec![])));
    assert!(lp.with_local::<Wheel, _>(|_, _| ()).is_none());
}

#[test]
fn poll_time_is_one_moment_per_iteration_and_moves_with_the_iterations() {
    let mut lp = EventLoop::new().unwrap();
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let first = seen.clone();
    lp.queue_in_loop(move |lp| {
        let before = lp.poll_time();
        thread::sleep(Duration::from_millis(2));
        assert_eq!(
            lp.poll_time(),
            before,
            "the same moment within an iteration"
        );
        assert_eq!(
            lp.poll_time(),
            duo_sys::instant_of_nanos(lp.poll_time_nanos())
        );
        first.lock().push(before);
        let second = first.clone();
        // Queued from a queued function: runs in the next iteration, after its poll.
        lp.queue_in_loop(move |lp| {
            second.lock().push(lp.poll_time());
            lp.quit();
        });
    });
    lp.run().unwrap();
    let seen = seen.lock();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[1] >= seen[0] + Duration::from_millis(2),
        "the next iteration polled after the sleep: {seen:?}"
    );
    assert!(seen[1] <= Instant::now());
}

#[test]
fn a_loop_made_on_one_thread_and_run_on_another_is_that_threads_loop() {
    let lp = EventLoop::new().unwrap();
    let h = lp.handle();
    let runner = std::thread::spawn(move || {
        let mut lp = lp;
        lp.run().unwrap();
        lp
    });
    // Once it runs elsewhere, this thread is not its thread: a quit from here wakes it.
    let (tx, rx) = std::sync::mpsc::channel();
    let h2 = h.clone();
    h.queue_in_loop(move |_| tx.send(h2.is_in_loop_thread()).unwrap())
        .unwrap();
    assert!(rx.recv_timeout(duo_testkit::LIMIT).unwrap());
    assert!(!h.is_in_loop_thread());
    h.quit();
    let lp = duo_testkit::join_within("the loop's runner", runner);
    drop(lp);
    assert!(h.is_closed());
}
