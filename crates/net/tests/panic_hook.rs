//! `process::install_panic_hook`: panics that duo catches in callbacks are reported
//! through the log, rate-limited, instead of one stderr dump each.
//!
//! This test binary owns the process-wide logger and panic hook (so it holds one test
//! only). A real server on loopback gets 2 000 connections whose first byte makes the
//! message callback panic; the panic reports logged stay within the limiter's bounds, the
//! first of them are complete, and a well-behaved client is still served.

mod util;

use std::time::Duration;

use duo_net::{CloseReason, TcpServer};
use util::storm;
use util::{connect, echo_once, localhost, TestServer};

/// Panicking connections driven through the server.
const EVENTS: u64 = 2_000;
/// Client threads driving them.
const CLIENTS: u64 = 4;
/// The first byte that makes the message callback panic.
const PANIC: u8 = b'P';
/// The panic message.
const HOSTILE: &str = "hostile input";
/// How long the storm may take before the test fails (a debug build on a loaded machine).
const STORM_LIMIT: Duration = Duration::from_secs(60);

#[test]
fn caught_panics_are_logged_rate_limited_and_the_server_goes_on() {
    storm::capture_logs();
    duo_net::process::install_panic_hook();

    let server = TestServer::start(|| {
        TcpServer::builder("panics", localhost())
            .io_threads(2)
            .on_message(|ctx, input| {
                if input.peek().first() == Some(&PANIC) {
                    std::panic::panic_any(HOSTILE);
                }
                ctx.send(input.peek());
                input.consume_all();
            })
    });
    let addr = server.addr();
    let mut good = connect(addr);
    echo_once(&mut good, b"before the storm");

    let storm = storm::run_clients(CLIENTS, EVENTS, STORM_LIMIT, "panicking", move |_| {
        storm::hostile(addr, &[PANIC], "panicking");
    });

    // Still serving, on the old connection and a new one.
    echo_once(&mut good, b"after the storm");
    echo_once(&mut connect(addr), b"a new client");
    assert_eq!(
        server.stats().closes().of(CloseReason::Panic),
        EVENTS,
        "every panic closed its connection"
    );
    drop(good);
    server.stop();
    // What no later report counted: one summary line per limiter.
    duo_net::report_suppressed();

    let lines = storm::captured();
    // The hook's lines: its reports ("thread '…' panicked at …") and its limiter's
    // summaries ("panics: N similar messages suppressed …").
    let hook: Vec<&str> = lines
        .iter()
        .filter(|l| l.target == "duo_net::process")
        .map(|l| l.text.as_str())
        .filter(|line| line.contains(" panicked at ") || line.starts_with("panics:"))
        .collect();
    let reports: Vec<&str> = hook
        .iter()
        .copied()
        .filter(|l| l.contains(" panicked at "))
        .collect();
    let accounted: u64 = hook
        .iter()
        .map(|l| u64::from(l.contains(" panicked at ")) + storm::suppressed_in(l))
        .sum();
    // A burst per window started, plus the summaries (one per report_suppressed: the
    // server's timer every interval, its stop, and ours).
    let bound = storm::storm_bound(storm);
    eprintln!(
        "{EVENTS} caught panics in {storm:.1?}: {} panic-hook lines ({} reports), {} lines \
         logged in all (bound on the hook's lines: {bound})",
        hook.len(),
        reports.len(),
        lines.len()
    );
    assert!(
        hook.len() as u64 <= bound,
        "{} panic-hook lines for {EVENTS} panics (bound {bound})",
        hook.len()
    );
    assert_eq!(
        accounted, EVENTS,
        "every panic is reported or counted in a suppressed count"
    );
    let first = reports.first().expect("the first panics are reported");
    assert!(
        first.contains("panicked at ")
            && first.contains("panic_hook.rs")
            && first.contains(HOSTILE),
        "a report names the location and the message: {first}"
    );
    assert!(
        first.starts_with("thread 'panics-"),
        "a report names the I/O thread: {first}"
    );
}
