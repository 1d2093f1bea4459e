//! `EventLoopThread` and `EventLoopThreadPool`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use duo_reactor::{EventLoop, EventLoopThread, EventLoopThreadPool, LoopHandle};
use duo_testkit::LIMIT;

/// The thread a loop runs on, asked through its handle.
fn thread_of(h: &LoopHandle) -> thread::ThreadId {
    let (tx, rx) = mpsc::channel();
    h.queue_in_loop(move |_| tx.send(thread::current().id()).unwrap())
        .unwrap();
    rx.recv_timeout(LIMIT).expect("loop answers")
}

#[test]
fn pool_starts_n_loops_on_n_distinct_threads_and_stops_cleanly() {
    let base = EventLoop::new().unwrap();
    let inits = Arc::new(AtomicUsize::new(0));
    let mut pool = EventLoopThreadPool::new(base.handle(), "io", 4);
    let i = inits.clone();
    pool.set_thread_init(Arc::new(move |lp: &mut EventLoop| {
        assert_eq!(lp.channel_count(), 0);
        i.fetch_add(1, Ordering::SeqCst);
    }));
    pool.start().unwrap();
    assert_eq!(
        inits.load(Ordering::SeqCst),
        4,
        "init ran on every loop before start returned"
    );

    let handles = pool.handles();
    assert_eq!(handles.len(), 4);
    let threads: HashSet<_> = handles.iter().map(thread_of).collect();
    assert_eq!(threads.len(), 4);
    assert!(!threads.contains(&thread::current().id()));

    // Round robin visits every loop once per cycle.
    let cycle: Vec<_> = (0..8).map(|_| pool.next_loop()).collect();
    for k in 0..4 {
        assert!(cycle[k].same_loop(&cycle[k + 4]));
        for j in 0..k {
            assert!(!cycle[k].same_loop(&cycle[j]));
        }
    }
    // Hashing is stable.
    assert!(pool
        .loop_for_hash(12345)
        .same_loop(&pool.loop_for_hash(12345)));
    assert!(pool.loop_for_hash(1).same_loop(&handles[1]));

    pool.stop().unwrap();
    for h in &handles {
        assert!(h.is_closed(), "every loop was dropped by its thread");
    }
}

#[test]
fn zero_threads_means_the_base_loop_serves_all() {
    let base = EventLoop::new().unwrap();
    let mut pool = EventLoopThreadPool::new(base.handle(), "none", 0);
    pool.start().unwrap();
    assert!(pool.next_loop().same_loop(&base.handle()));
    assert!(pool.loop_for_hash(7).same_loop(&base.handle()));
    assert_eq!(pool.handles().len(), 1);
    pool.stop().unwrap();
}

#[test]
fn dropping_a_pool_joins_its_threads() {
    let base = EventLoop::new().unwrap();
    let handles = {
        let mut pool = EventLoopThreadPool::new(base.handle(), "drop", 2);
        pool.start().unwrap();
        pool.handles()
    };
    assert!(handles.iter().all(|h| h.is_closed()));
}

#[test]
fn loop_thread_init_panic_is_an_error_not_a_hang() {
    let init: duo_reactor::ThreadInit = Arc::new(|_| panic!("init failed on purpose"));
    let err = EventLoopThread::spawn("bad-init", Some(init)).unwrap_err();
    assert!(err.to_string().contains("panicked"), "{err}");
}

#[test]
fn loop_thread_runs_work_and_stops() {
    let t = EventLoopThread::spawn("worker", None).unwrap();
    assert_eq!(t.name(), "worker");
    let (tx, rx) = mpsc::channel();
    t.handle()
        .queue_in_loop(move |_| {
            tx.send(thread::current().name().map(str::to_owned))
                .unwrap()
        })
        .unwrap();
    assert_eq!(rx.recv_timeout(LIMIT).unwrap().as_deref(), Some("worker"));
    let h = t.handle().clone();
    t.stop().unwrap();
    assert!(h.is_closed());
}

#[test]
fn a_pool_with_more_loops_than_threads_runs_a_loop_group() {
    let base = EventLoop::new().unwrap();
    let inits = Arc::new(AtomicUsize::new(0));
    let mut pool = EventLoopThreadPool::new(base.handle(), "grouped", 2);
    pool.set_loops(6);
    let i = inits.clone();
    pool.set_thread_init(Arc::new(move |_: &mut EventLoop| {
        i.fetch_add(1, Ordering::SeqCst);
    }));
    pool.start().unwrap();
    assert_eq!(inits.load(Ordering::SeqCst), 6, "init ran once per loop");
    assert_eq!((pool.num_threads(), pool.num_loops()), (2, 6));
    let handles = pool.handles();
    assert_eq!(handles.len(), 6);
    let a = pool.next_loop();
    assert!(
        !a.same_loop(&pool.next_loop()),
        "round robin over the loops"
    );
    // Six loops, at most two threads among them, none of them this one.
    let threads: HashSet<_> = handles.iter().map(thread_of).collect();
    assert!((1..=2).contains(&threads.len()), "{threads:?}");
    assert!(!threads.contains(&thread::current().id()));
    pool.stop().unwrap();
    assert!(handles.iter().all(LoopHandle::is_closed));

    // At most as many loops as threads: one loop per thread, as without `set_loops`.
    let mut pool = EventLoopThreadPool::new(base.handle(), "pinned", 2);
    pool.set_loops(2);
    pool.start().unwrap();
    assert_eq!(pool.num_loops(), 2);
    let threads: HashSet<_> = pool.handles().iter().map(thread_of).collect();
    assert_eq!(threads.len(), 2);
    pool.stop().unwrap();
}
