//! `EventFd` against the real kernel.

use std::sync::Arc;
use std::thread;

use duo_sys::EventFd;

#[test]
fn notifications_accumulate_and_drain_resets() {
    let efd = EventFd::new().unwrap();
    assert_eq!(efd.drain().unwrap(), 0);
    for _ in 0..5 {
        efd.notify().unwrap();
    }
    assert_eq!(efd.drain().unwrap(), 5);
    assert_eq!(efd.drain().unwrap(), 0);
}

#[test]
fn notify_from_many_threads() {
    let efd = Arc::new(EventFd::new().unwrap());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let efd = efd.clone();
            thread::spawn(move || {
                for _ in 0..1000 {
                    efd.notify().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(efd.drain().unwrap(), 4000);
}
