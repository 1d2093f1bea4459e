//! Review round 5: `stop_within` racing submitters, with jobs that panic among those
//! accepted. Every job `submit` accepted runs exactly once, the counts are final when
//! `stop_within` says every worker has exited, and nothing is accepted after it began.

#[allow(dead_code)]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use duo_workers::{SubmitError, ThreadPool};

use common::{within, DEADLINE};

#[test]
fn stop_within_racing_submitters_and_panicking_jobs() {
    within("stop_within racing submit", || {
        for round in 0..20 {
            let pool = Arc::new(ThreadPool::new("review5", 2, 64).unwrap());
            let ran = Arc::new(AtomicU64::new(0));
            let start = Arc::new(Barrier::new(4));
            let submitters: Vec<_> = (0..3)
                .map(|t| {
                    let (pool, ran, start) = (pool.clone(), ran.clone(), start.clone());
                    thread::spawn(move || {
                        start.wait();
                        let (mut accepted, mut panicking) = (0u64, 0u64);
                        for i in 0u64.. {
                            let ran = ran.clone();
                            let panics = (i + t) % 97 == 0;
                            match pool.submit(move || {
                                ran.fetch_add(1, Ordering::SeqCst);
                                if panics {
                                    std::panic::panic_any(format!("job {i} panics"));
                                }
                            }) {
                                Ok(()) => {
                                    accepted += 1;
                                    panicking += u64::from(panics);
                                }
                                Err(SubmitError::Full(_)) => thread::yield_now(),
                                Err(SubmitError::Stopped(_)) => break,
                            }
                        }
                        (accepted, panicking)
                    })
                })
                .collect();
            start.wait();
            thread::yield_now();
            assert!(
                pool.stop_within(DEADLINE),
                "round {round}: the workers exit"
            );
            let (completed, panicked) = (pool.completed(), pool.panicked());
            let (mut accepted, mut panicking) = (0, 0);
            for s in submitters {
                let (a, p) = s.join().unwrap();
                accepted += a;
                panicking += p;
            }
            assert_eq!(ran.load(Ordering::SeqCst), accepted, "round {round}: ran");
            assert_eq!(completed, accepted, "round {round}: completed");
            assert_eq!(panicked, panicking, "round {round}: panicked");
            assert!(pool.is_stopped());
        }
    });
}
