//! `duo_testkit::cpu_time` and `thread_cpu_time` against this very process.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use duo_testkit::{clock_ticks_per_second, cpu_time, thread_cpu_time};

#[test]
fn cpu_time_grows_with_work_and_fails_for_no_process() {
    let pid = std::process::id();
    let before = cpu_time(pid).unwrap();
    // Spin until the kernel has charged at least two clock ticks more (bounded by a
    // deadline; a tick is usually 10 ms).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut x = 0u64;
    let after = loop {
        for i in 0..1_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let now = cpu_time(pid).unwrap();
        if now >= before + Duration::from_millis(20) || Instant::now() > deadline {
            break now;
        }
    };
    assert!(after > before, "{before:?} -> {after:?}");
    // PIDs above pid_max (at most 2^22) never exist.
    let err = cpu_time(u32::MAX).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn the_clock_tick_rate_is_plausible() {
    let hz = clock_ticks_per_second().unwrap();
    assert!((10..=10_000).contains(&hz), "{hz} ticks per second");
}

#[test]
fn a_named_threads_cpu_time_grows_with_its_work_and_an_unknown_name_is_not_found() {
    let spinner = std::thread::Builder::new()
        .name("cpu-spinner".into())
        .spawn(|| {
            // Spin until the kernel has charged this thread two clock ticks (bounded).
            let deadline = Instant::now() + Duration::from_secs(10);
            let before = thread_cpu_time("cpu-spinner").unwrap();
            let mut x = 0u64;
            loop {
                for i in 0..1_000_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
                let now = thread_cpu_time("cpu-spinner").unwrap();
                if now >= before + Duration::from_millis(20) || Instant::now() > deadline {
                    return (before, now);
                }
            }
        })
        .unwrap();
    let (before, after) = spinner.join().unwrap();
    assert!(after > before, "{before:?} -> {after:?}");
    let err = thread_cpu_time("no-such-thread").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}
