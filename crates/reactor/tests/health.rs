//! Loop health: the time split and counters, the stall detector (a callback that sleeps
//! 50 ms) and the spin detector (a level-triggered readiness nobody consumes), and their
//! silence under normal traffic.

use std::io::{IoSliceMut, Read, Write};
use std::sync::{Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use duo_reactor::{EventLoop, FnHandler, HealthConfig, Interest};
use duo_testkit::nonblocking_pair;

/// The warnings logged by this test binary, by thread name.
static LINES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let thread = thread::current().name().unwrap_or("").to_owned();
            LINES
                .lock()
                .unwrap()
                .push((thread, record.args().to_string()));
        }
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        log::set_logger(&Capture).unwrap();
        log::set_max_level(log::LevelFilter::Warn);
    });
}

/// The warnings logged so far by the current thread (each test runs on its own thread,
/// named after the test).
fn my_warnings() -> Vec<String> {
    let me = thread::current().name().unwrap_or("").to_owned();
    LINES
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t == me)
        .map(|(_, l)| l.clone())
        .collect()
}

/// This thread's warnings include a channel spin report ("spinning … same readiness").
fn assert_channel_spin_reported() {
    let warnings = my_warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("spinning") && w.contains("same readiness")),
        "{warnings:?}"
    );
}

/// Stops the loop after `ms` so that a broken test fails instead of hanging.
fn guard(lp: &mut EventLoop, ms: u64) {
    lp.run_after(Duration::from_millis(ms), |lp| lp.quit());
}

#[test]
fn a_callback_that_sleeps_50_ms_is_reported_once_with_its_name() {
    capture_logs();
    let mut lp = EventLoop::new().unwrap();
    assert_eq!(
        lp.health_config().stall_threshold,
        Some(Duration::from_millis(25))
    );
    fn slow_function(_: &mut EventLoop) {
        thread::sleep(Duration::from_millis(50));
    }
    lp.queue_in_loop(slow_function);
    lp.queue_in_loop(|lp| lp.quit());
    lp.run().unwrap();
    let m = lp.metrics();
    // At least the sleeper's; the other callback (the quit) adds one only if its thread
    // lost the CPU for the threshold meanwhile, and is not logged (within the second).
    assert!(m.stalls >= 1, "{m:?}");
    assert!(m.longest_callback >= Duration::from_millis(50), "{m:?}");
    assert!(m.task_time >= Duration::from_millis(50), "{m:?}");
    let warnings = my_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("stalled") && warnings[0].contains("slow_function"),
        "the report names what ran: {warnings:?}"
    );
}

#[test]
fn a_slow_io_handler_is_reported_with_its_label() {
    capture_logs();
    struct Slow;
    impl duo_reactor::Handler for Slow {
        fn handle_read(&mut self, lp: &mut EventLoop, ch: &mut duo_reactor::Channel) {
            let mut buf = [0u8; 16];
            let _ = duo_sys::readv(ch.fd(), &mut [IoSliceMut::new(&mut buf)]);
            ch.progressed();
            thread::sleep(Duration::from_millis(40));
            lp.quit();
        }
        fn label(&self) -> Option<String> {
            Some("the slow peer".into())
        }
    }
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5_000);
    let (a, b) = nonblocking_pair();
    lp.add_channel(b, Interest::READABLE, Slow).unwrap();
    (&a).write_all(b"x").unwrap();
    lp.run().unwrap();
    assert_eq!(lp.metrics().stalls, 1);
    let warnings = my_warnings();
    assert!(
        warnings.len() == 1 && warnings[0].contains("the slow peer"),
        "{warnings:?}"
    );
}

#[test]
fn stalls_are_counted_every_time_but_logged_at_most_once_a_second() {
    capture_logs();
    let mut lp = EventLoop::new().unwrap();
    lp.set_health_config(HealthConfig {
        stall_threshold: Some(Duration::from_millis(2)),
        spin_threshold: None,
    });
    for _ in 0..5 {
        lp.queue_in_loop(|_| thread::sleep(Duration::from_millis(3)));
    }
    lp.queue_in_loop(|lp| lp.quit());
    lp.run().unwrap();
    // Every sleeper stalls; the quit can only add one (its thread preempted for 2 ms).
    let stalls = lp.metrics().stalls;
    assert!(stalls >= 5, "{:?}", lp.metrics());
    // However many, one line within the second.
    assert_eq!(my_warnings().len(), 1, "{:?}", my_warnings());
}

#[test]
fn the_stall_detector_can_be_switched_off() {
    capture_logs();
    let mut lp = EventLoop::new().unwrap();
    lp.set_health_config(HealthConfig {
        stall_threshold: None,
        spin_threshold: None,
    });
    lp.queue_in_loop(|_| thread::sleep(Duration::from_millis(30)));
    lp.queue_in_loop(|lp| lp.quit());
    lp.run().unwrap();
    let m = lp.metrics();
    assert_eq!(m.stalls, 0);
    assert!(
        m.longest_callback >= Duration::from_millis(30),
        "still measured"
    );
    assert!(my_warnings().is_empty());
}

#[test]
fn a_level_triggered_readiness_nobody_consumes_is_reported_as_a_spin() {
    capture_logs();
    let mut lp = EventLoop::new().unwrap();
    assert_eq!(
        lp.health_config().spin_threshold,
        Some(10_000),
        "the default"
    );
    // The default's 10 000 dispatches in a row (the loop never sleeping meanwhile) are
    // seldom reached uninterrupted on a loaded machine; 1 000 are. (The test loops until
    // one run of them completes.)
    lp.set_health_config(HealthConfig {
        spin_threshold: Some(1_000),
        ..lp.health_config()
    });
    guard(&mut lp, 10_000);
    let (a, b) = nonblocking_pair();
    // The handler never reads: level triggering reports the byte on every wait.
    let handler = FnHandler::new().on_read(|lp, _ch| {
        if lp.metrics().spins > 0 {
            lp.quit();
        }
    });
    lp.add_channel(b, Interest::READABLE, handler).unwrap();
    (&a).write_all(b"x").unwrap();
    let t0 = Instant::now();
    lp.run().unwrap();
    let m = lp.metrics();
    assert!(
        m.spins >= 1,
        "no spin reported in {:?}: {m:?}",
        t0.elapsed()
    );
    assert_channel_spin_reported();
}

#[test]
fn the_spin_detector_can_be_switched_off() {
    capture_logs();
    let mut lp = EventLoop::new().unwrap();
    lp.set_health_config(HealthConfig {
        stall_threshold: None,
        spin_threshold: None,
    });
    let (a, b) = nonblocking_pair();
    let handler = FnHandler::new().on_read(|lp, _ch| {
        if lp.metrics().iterations > 30_000 {
            lp.quit();
        }
    });
    lp.add_channel(b, Interest::READABLE, handler).unwrap();
    guard(&mut lp, 10_000);
    (&a).write_all(b"x").unwrap();
    lp.run().unwrap();
    assert!(lp.metrics().iterations > 30_000);
    assert_eq!(lp.metrics().spins, 0);
    assert!(my_warnings().is_empty(), "{:?}", my_warnings());
}

/// Request/response over one connection, level-triggered, with a handler that does not
/// call `progressed`: the loop sleeps between requests, so neither detector speaks.
#[test]
fn detectors_stay_silent_under_normal_traffic() {
    request_response_without_spins(false);
}

/// The same with the loop and its peer on one CPU: each reply wakes the peer, which
/// preempts the loop's thread, reads it and sends the next request before the handler
/// returns, so the socket's queues look the same before and after every dispatch and the
/// loop never waits. (Taken for a spin before the probes counted context switches.)
#[test]
fn detectors_stay_silent_when_the_loop_and_its_peer_share_one_cpu() {
    request_response_without_spins(true);
}

fn request_response_without_spins(one_cpu: bool) {
    if one_cpu {
        duo_sys::pin_thread(&[0]).unwrap();
    }
    capture_logs();
    let mut lp = EventLoop::new().unwrap();
    // Stalls are wall-clock time, and a callback whose thread loses the CPU (to the peer,
    // or to anything else on a loaded machine) for 25 ms would count one: a threshold of
    // 2 s still catches a real stall without taking a preemption for one.
    lp.set_health_config(HealthConfig {
        stall_threshold: Some(Duration::from_secs(2)),
        spin_threshold: Some(1_000),
    });
    const ROUNDS: usize = 20_000;
    let (client, server) = nonblocking_pair();
    client.set_nonblocking(false).unwrap();
    let peer = thread::spawn(move || {
        if one_cpu {
            duo_sys::pin_thread(&[0]).unwrap();
        }
        let mut client = client;
        let mut buf = [0u8; 64];
        for i in 0..ROUNDS {
            client.write_all(&[i as u8; 64]).unwrap();
            client.read_exact(&mut buf).unwrap();
            assert_eq!(buf, [i as u8; 64]);
        }
    });
    let echo = FnHandler::new().on_read(move |lp, ch| {
        let mut buf = [0u8; 64];
        let n = duo_sys::readv(ch.fd(), &mut [IoSliceMut::new(&mut buf)]).unwrap_or(0);
        if n == 0 {
            lp.quit();
            return;
        }
        duo_sys::writev(ch.fd(), &[std::io::IoSlice::new(&buf[..n])]).unwrap();
    });
    lp.add_channel(server, Interest::READABLE, echo).unwrap();
    guard(&mut lp, 60_000);
    lp.run().unwrap();
    peer.join().unwrap();
    let m = lp.metrics();
    assert_eq!((m.spins, m.stalls), (0, 0), "{m:?}");
    assert!(m.io_events >= ROUNDS as u64, "{m:?}");
    assert!(my_warnings().is_empty(), "{:?}", my_warnings());
}

#[test]
fn the_counters_add_up() {
    capture_logs();
    let mut lp = EventLoop::new().unwrap();
    let handle = lp.handle();
    assert!(duo_reactor::loops().iter().any(|h| h.same_loop(&handle)));
    assert_eq!(handle.name(), lp.name());
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_millis(20);
    lp.run_at(deadline, |_| {});
    // Fails the test (as a third timer fired) instead of hanging it.
    lp.run_after(duo_testkit::LIMIT, |lp| lp.quit());
    let waker = thread::spawn(move || {
        for _ in 0..10 {
            handle.queue_in_loop(|_| {}).unwrap();
            thread::sleep(Duration::from_millis(1));
        }
        // Queued after the 10 functions, so it runs after them; due at least 10 ms (the
        // sleeps) + 50 ms after t0, so after the first timer too, however late this
        // thread ran: the loop waits ~50 ms for it.
        handle
            .run_after(Duration::from_millis(50), |lp| lp.quit())
            .unwrap();
    });
    lp.run().unwrap();
    waker.join().unwrap();
    let m = lp.metrics();
    assert_eq!(m.timers_fired, 2, "{m:?}");
    assert_eq!(m.timer_lateness.count(), 2);
    assert!(m.tasks_run >= 10 && m.largest_task_batch >= 1, "{m:?}");
    assert_eq!(
        m.events_per_iteration.iter().sum::<u64>(),
        m.iterations,
        "every iteration lands in one bucket: {m:?}"
    );
    let busy = m.poll_time + m.io_time + m.timer_time + m.task_time;
    assert!(
        busy <= t0.elapsed() + Duration::from_millis(1),
        "the split cannot exceed the wall time: {m:?}"
    );
    // The loop ran for at least 60 ms and waited most of it; 20 ms leaves room for its
    // thread to be preempted outside `epoll_wait` (charged to the callbacks) meanwhile.
    assert!(
        m.poll_time >= Duration::from_millis(20),
        "the loop mostly waited: {m:?}"
    );
    drop(lp);
    assert!(!duo_reactor::loops()
        .iter()
        .any(|h| h.name() == thread::current().name().unwrap()));
}

#[test]
fn a_loop_stuck_in_a_callback_shows_how_long_it_has_been_busy() {
    capture_logs();
    let mut lp = EventLoop::new().unwrap();
    lp.set_health_config(HealthConfig {
        stall_threshold: None,
        spin_threshold: None,
    });
    let handle = lp.handle();
    let watcher = thread::spawn(move || {
        // Idle first: waiting in epoll_wait is not being busy.
        let deadline = Instant::now() + Duration::from_secs(10);
        while handle.metrics().iterations == 0 || handle.metrics().busy_for.is_some() {
            assert!(Instant::now() < deadline, "{:?}", handle.metrics());
            thread::sleep(Duration::from_millis(1));
        }
        handle
            .queue_in_loop(|_| thread::sleep(Duration::from_millis(300)))
            .unwrap();
        let mut longest = Duration::ZERO;
        while longest < Duration::from_millis(100) {
            assert!(Instant::now() < deadline, "never seen busy: {longest:?}");
            longest = longest.max(handle.metrics().busy_for.unwrap_or_default());
            thread::sleep(Duration::from_millis(5));
        }
        handle.quit();
        longest
    });
    // Something to wake for before the watcher's function arrives.
    lp.run_after(Duration::from_millis(5), |_| {});
    lp.run().unwrap();
    let longest = watcher.join().unwrap();
    assert!(longest >= Duration::from_millis(100), "{longest:?}");
    assert!(lp.metrics().busy_for.is_none() || lp.metrics().busy_for < Some(longest));
}

#[test]
fn time_before_run_is_nobody_s_and_a_stopped_loop_is_not_busy() {
    capture_logs();
    let mut lp = EventLoop::new().unwrap();
    // A threshold no preempted trivial callback reaches, and a wait before `run` longer
    // than it: charged to the first callback, that wait would be a stall.
    let threshold = Duration::from_secs(1);
    lp.set_health_config(HealthConfig {
        stall_threshold: Some(threshold),
        ..lp.health_config()
    });
    thread::sleep(threshold + Duration::from_millis(200));
    lp.queue_in_loop(|_| {});
    lp.queue_in_loop(|lp| lp.quit());
    lp.run().unwrap();
    let m = lp.metrics();
    assert_eq!(m.stalls, 0, "the wait before run is no callback's: {m:?}");
    assert!(m.longest_callback < threshold, "{m:?}");
    assert_eq!(m.busy_for, None, "{m:?}");
    assert!(my_warnings().is_empty(), "{:?}", my_warnings());
}

/// A channel whose level-triggered readiness nobody consumes is found even while another
/// channel of the same loop has traffic (and reports progress).
#[test]
fn a_stuck_channel_is_found_among_busy_ones() {
    capture_logs();
    let mut lp = EventLoop::new().unwrap();
    lp.set_health_config(HealthConfig {
        stall_threshold: None,
        spin_threshold: Some(2_000),
    });
    guard(&mut lp, 20_000);
    let (stuck_peer, stuck) = nonblocking_pair();
    lp.add_channel(
        stuck,
        Interest::READABLE,
        FnHandler::new().on_read(|_, _| {}),
    )
    .unwrap();
    (&stuck_peer).write_all(b"never read").unwrap();
    let (pinger, busy) = nonblocking_pair();
    let busy_handler = FnHandler::new().on_read(|lp, ch| {
        let mut buf = [0u8; 64];
        if duo_sys::readv(ch.fd(), &mut [IoSliceMut::new(&mut buf)]).unwrap_or(0) > 0 {
            ch.progressed();
        }
        if lp.metrics().spins > 0 {
            lp.quit();
        }
    });
    lp.add_channel(busy, Interest::READABLE, busy_handler)
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let ping = thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = (&pinger).write(b"p");
            thread::sleep(Duration::from_micros(200));
        }
    });
    lp.run().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    ping.join().unwrap();
    assert!(lp.metrics().spins >= 1, "{:?}", lp.metrics());
    assert_channel_spin_reported();
}

/// A handler that never calls `progressed` but does consume a busy stream (64 bytes per
/// event from a writer that never stops) is not taken for a spin: the socket's queue moves.
#[test]
fn a_busy_stream_served_without_progress_reports_is_no_spin() {
    capture_logs();
    let mut lp = EventLoop::new().unwrap();
    lp.set_health_config(HealthConfig {
        stall_threshold: None,
        spin_threshold: Some(1_000),
    });
    guard(&mut lp, 20_000);
    let (writer, reader) = nonblocking_pair();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let feed = thread::spawn(move || {
        let chunk = [7u8; 4096];
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if (&writer).write(&chunk).is_err() {
                thread::yield_now();
            }
        }
    });
    let mut events = 0u64;
    let handler = FnHandler::new().on_read(move |lp, ch| {
        let mut buf = [0u8; 64];
        let _ = duo_sys::readv(ch.fd(), &mut [IoSliceMut::new(&mut buf)]);
        events += 1;
        if events == 50_000 {
            lp.quit();
        }
    });
    lp.add_channel(reader, Interest::READABLE, handler).unwrap();
    lp.run().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    feed.join().unwrap();
    let m = lp.metrics();
    assert!(m.io_events >= 50_000, "{m:?}");
    assert_eq!(m.spins, 0, "{m:?}");
    assert!(my_warnings().is_empty(), "{:?}", my_warnings());
}
