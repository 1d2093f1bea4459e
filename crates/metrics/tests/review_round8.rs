//! Review, round 8 (duo-metrics): the endpoint under hostile clients, the aggregation of
//! worker processes, and the exposition's escapes.
//!
//! Every wait has a deadline; every peer is a socket of the test's own, closed by it.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use common::{canned, target, value, worker};
use duo_metrics::MetricsEndpoint;
use duo_testkit::{http_get, wait_until_within, LIMIT};
use parking_lot::Mutex;

/// The tests that aggregate run one at a time: the first counts the threads aggregations
/// run on.
static AGGREGATING: Mutex<()> = Mutex::new(());

/// This process's threads whose name starts with `prefix` (at most 15 bytes: the kernel
/// keeps no more of a thread's name).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with(prefix))
        .count()
}

/// A scraper that asks and leaves at once (its socket closed before any answer) freed its
/// connection slot, but its aggregation went on, on a thread of its own, until the scrape
/// timeout: the endpoint's bound of 64 connections bounded nothing, and a client looping
/// on connect, request, close started a thread per request (and one per worker under it),
/// each held for the whole timeout by a worker that does not answer: threads without end.
#[test]
fn scrapers_that_leave_at_once_do_not_start_aggregations_without_bound() {
    let _serial = AGGREGATING.lock();
    // A worker that accepts (the kernel completes the handshake) and never answers: each
    // aggregation waits for it the whole scrape timeout.
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_addr = mute.local_addr().unwrap();
    let mut group = MetricsEndpoint::new();
    group
        .aggregate(Vec::new(), move || vec![target("mute", mute_addr)])
        .scrape_timeout(Duration::from_secs(8));
    let group = group.spawn("127.0.0.1:0".parse().unwrap()).unwrap();

    const REQUESTS: usize = 200;
    for _ in 0..REQUESTS {
        let mut s = TcpStream::connect(group.local_addr()).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        // The end of the exchange: an answer (503) or the server's close, either way
        // after the request was taken.
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
    }
    let running = threads_named("metrics-aggrega");
    assert!(
        running <= 64,
        "{running} aggregations running for {REQUESTS} scrapers long gone"
    );
    // Nobody waits for them: they end now, not at the scrape timeout (8 s).
    wait_until_within(Duration::from_secs(4), "the aggregations ended", || {
        threads_named("metrics-aggrega") == 0 && threads_named("metrics-fetch") == 0
    });
    group.stop().unwrap();
}

/// A value Rust reads as a number but a Prometheus server does not: a signed NaN (`-nan`
/// is what C's printf writes for one). The exposition check took it (`str::parse::<f64>`
/// accepts a sign before `nan`; Go's `strconv.ParseFloat`, which Prometheus parses with,
/// does not: `promtool check metrics` says "expected float as value, got "-nan""), so
/// one worker writing it made the merged scrape fail, every other process's samples with
/// it.
#[test]
fn a_target_writing_a_signed_nan_is_left_out() {
    let _serial = AGGREGATING.lock();
    let (minus, minus_thread) = canned("# TYPE odd gauge\nodd -nan\n# EOF\n", 1);
    let (plus, plus_thread) = canned("# TYPE odd gauge\nodd 1 +NaN\n# EOF\n", 1);
    let (fine, fine_thread) = canned("# TYPE odd gauge\nodd NaN\nodd{x=\"1\"} -Inf\n# EOF\n", 1);
    let real = worker(7);
    let real_addr = real.local_addr();
    let mut group = MetricsEndpoint::new();
    group
        .aggregate(Vec::new(), move || {
            vec![
                target("minus", minus),
                target("plus", plus),
                target("fine", fine),
                target("real", real_addr),
            ]
        })
        .scrape_timeout(Duration::from_secs(5));
    let group = group.spawn("127.0.0.1:0".parse().unwrap()).unwrap();
    let (status, text) = http_get(group.local_addr(), "/metrics");
    assert_eq!(status, 200);
    assert!(!text.contains("nan"), "{text}");
    assert!(!text.contains("+NaN"), "{text}");
    assert_eq!(
        value(&text, "duo_aggregate_up{worker=\"minus\"}"),
        Some(0.0)
    );
    assert_eq!(value(&text, "duo_aggregate_up{worker=\"plus\"}"), Some(0.0));
    assert_eq!(
        value(&text, "duo_aggregate_up{worker=\"fine\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(text.contains("odd{worker=\"fine\"} NaN\n"), "{text}");
    assert_eq!(value(&text, "app_jobs_total{worker=\"real\"}"), Some(7.0));
    for thread in [minus_thread, plus_thread, fine_thread] {
        thread.join().unwrap();
    }
    group.stop().unwrap();
    real.stop().unwrap();
}
