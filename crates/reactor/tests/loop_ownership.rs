//! One loop per thread, for as long as the loop lives: an `EventLoop` is `Send`, so the
//! loop a thread made may be run and dropped by another (`thread::spawn(move ||
//! lp.run())`). Once it is dropped, wherever that happens, the thread that made it may
//! make another; it used to be refused (`AlreadyExists`) for the rest of that thread's
//! life, because only a drop on the making thread cleared its mark.

use std::thread;

use duo_reactor::{EventLoop, LoopError};
use duo_testkit::join_within;

#[test]
fn a_loop_dropped_on_another_thread_frees_the_thread_that_made_it() {
    let lp = EventLoop::new().unwrap();
    // While it lives, wherever it is, this thread has its loop.
    let lp = join_within("a thread that holds the loop", thread::spawn(move || lp));
    assert!(matches!(EventLoop::new(), Err(LoopError::AlreadyExists)));
    join_within(
        "a thread that drops the loop",
        thread::spawn(move || drop(lp)),
    );
    let again = EventLoop::new().expect("a loop for this thread, its first one gone");
    drop(again);
    EventLoop::new().expect("and another, after a drop on this thread");
}

#[test]
fn a_loop_run_and_dropped_by_another_thread_frees_the_thread_that_made_it() {
    let mut lp = EventLoop::new().unwrap();
    lp.handle().queue_in_loop(|lp| lp.quit()).unwrap();
    let runner = thread::spawn(move || lp.run().map_err(|e| e.to_string()));
    join_within("the loop's run", runner).unwrap();
    EventLoop::new().expect("a loop for this thread, its first one gone");
}
