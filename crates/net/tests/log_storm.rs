//! No log storms: 100 000 hostile events produce a bounded number of log lines, and every
//! event is still accounted for (logged, or counted in a "suppressed" report).
//!
//! This test binary installs its own counting `log::Log` (so it holds one test only: the
//! logger and the rate limiters are process-wide). A real server on loopback gets 100 000
//! hostile connections from a few client threads: half send a byte that makes the
//! message callback panic, half send more input than the callback consumes and the
//! server allows. Each is one logged event of its kind ("panics in callbacks", "input too
//! large"), and the server closes the connection. Meanwhile and afterwards a well-behaved
//! client is served.

mod util;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use duo_net::{CloseReason, ServerStats, TcpServer};
use util::storm::{self, suppressed_in, LogLine};
use util::{connect, echo_once, localhost, TestServer};

/// Hostile events driven through the server.
const EVENTS: u64 = 100_000;
/// Client threads driving them.
const CLIENTS: u64 = 4;
/// The server's input limit; the "too large" clients send more.
const MAX_INPUT: usize = 256;
/// The first byte that makes the message callback panic.
const PANIC: u8 = b'P';
/// The first byte of input the message callback keeps without consuming.
const HOLD: u8 = b'H';
/// The panic message, told apart from real failures by the panic hook.
const HOSTILE: &str = "hostile input";
/// How long the storm may take before the test fails (a debug build on a loaded machine).
const STORM_LIMIT: Duration = Duration::from_secs(120);

/// Lines of one kind: those containing `marker` (the line itself, with any suppressed
/// count appended) or starting with `summary` (a `report_suppressed` line).
#[derive(Debug, Default)]
struct Kind {
    lines: u64,
    accounted: u64,
}

fn kind(lines: &[LogLine], marker: &str, summary: &str) -> Kind {
    let mut k = Kind::default();
    for line in lines.iter().map(|l| l.text.as_str()) {
        if line.starts_with(summary) {
            k.lines += 1;
            k.accounted += suppressed_in(line);
        } else if line.contains(marker) {
            k.lines += 1;
            k.accounted += 1 + suppressed_in(line);
        }
    }
    k
}

/// One hostile connection: a byte that makes the callback panic, or more input than
/// the server allows.
fn hostile(addr: SocketAddr, panic: bool) {
    if panic {
        storm::hostile(addr, &[PANIC], "panicking");
    } else {
        storm::hostile(addr, &[HOLD; MAX_INPUT * 2], "oversized");
    }
}

fn closes(stats: &ServerStats, reason: CloseReason) -> u64 {
    stats.closes().of(reason)
}

#[test]
fn a_hundred_thousand_hostile_events_log_a_bounded_number_of_lines() {
    storm::capture_logs();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // The callback's panics are the test's input, not failures: keep stderr quiet.
        if info.payload().downcast_ref::<&str>() != Some(&HOSTILE) {
            default_hook(info);
        }
    }));

    let server = TestServer::start(|| {
        TcpServer::builder("storm", localhost())
            .io_threads(2)
            .max_input(MAX_INPUT)
            .on_message(|ctx, input| match input.peek().first() {
                Some(&PANIC) => std::panic::panic_any(HOSTILE),
                Some(&HOLD) => {}
                _ => {
                    ctx.send(input.peek());
                    input.consume_all();
                }
            })
    });
    let addr = server.addr();
    let mut good = connect(addr);
    echo_once(&mut good, b"before the storm");

    let sent = std::sync::Arc::new(AtomicU64::new(0));
    let counted = sent.clone();
    let storm = storm::run_clients(CLIENTS, EVENTS, STORM_LIMIT, "hostile", move |i| {
        hostile(addr, i % 2 == 0);
        counted.fetch_add(1, Ordering::Relaxed);
    });
    // Every hostile connection has been closed by the server (each client waited for
    // it); the close counters are bumped before the socket is closed.
    assert_eq!(sent.load(Ordering::Relaxed), EVENTS);

    // Still serving, on the old connection and a new one.
    echo_once(&mut good, b"after the storm");
    echo_once(&mut connect(addr), b"a new client");
    let stats = server.stats();
    let panics = closes(&stats, CloseReason::Panic);
    let too_large = closes(&stats, CloseReason::InputTooLarge);
    assert_eq!(panics, EVENTS / 2, "every panic closed its connection");
    assert_eq!(
        too_large,
        EVENTS / 2,
        "every oversized input closed its connection"
    );
    drop(good);
    server.stop();
    // What no later line reported: one summary line per kind.
    duo_net::report_suppressed();

    let lines = storm::captured();
    let panic_lines = kind(&lines, "message callback panicked", "panics in callbacks:");
    let large_lines = kind(&lines, "bytes of input not consumed", "input too large:");
    // Per kind: a burst per window started, plus the summaries (one per report: the
    // server's timer every interval, its stop, and ours).
    let bound = storm::storm_bound(storm);
    eprintln!(
        "{EVENTS} hostile events in {storm:.1?}: {} lines logged in all; panics {} lines \
         for {panics} events, input too large {} lines for {too_large} events (bound {bound} \
         per kind)",
        lines.len(),
        panic_lines.lines,
        large_lines.lines
    );
    assert!(
        panic_lines.lines >= 1 && panic_lines.lines <= bound,
        "{panic_lines:?}"
    );
    assert!(
        large_lines.lines >= 1 && large_lines.lines <= bound,
        "{large_lines:?}"
    );
    assert_eq!(
        panic_lines.accounted, panics,
        "every panic is logged or counted as suppressed"
    );
    assert_eq!(
        large_lines.accounted, too_large,
        "every oversized input is logged or counted as suppressed"
    );
    // Everything else the server logged (start, stop): a handful of lines.
    let others = lines.len() as u64 - panic_lines.lines - large_lines.lines;
    assert!(
        others <= 20,
        "unexpected lines: {:#?}",
        &lines[..lines.len().min(50)]
    );
}
