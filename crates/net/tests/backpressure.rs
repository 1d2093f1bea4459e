//! Backpressure: an echo server facing a peer that does not read its replies must stop
//! reading from that peer instead of buffering without bound.
//!
//! This file holds a single test so that its process's global `BufPool`, whose in-use
//! bytes the test samples, serves only this test's server.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use duo_buffer::BufPool;

use duo_testkit::{join_within, random_bytes};
use util::{connect, echo_builder, init_log, localhost, TestServer};

/// High-water mark of the output buffer: reading stops above it.
const HIGH: usize = 1 << 20;
/// Low-water mark: reading resumes at or below it.
const LOW: usize = 512 << 10;
/// What the client offers in total.
const OFFERED: usize = 100 << 20;
/// The stream is this pattern repeated; a prime length never lines up with the chunk or
/// buffer sizes, so a lost, repeated or reordered chunk shows.
const PATTERN_LEN: usize = 1_048_573;
/// The client counts the server as blocked once its writes made no progress for this long.
const BLOCKED_FOR: Duration = Duration::from_millis(500);
/// Time for the whole test.
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Checks `got`, the stream bytes from offset `at`, against the pattern.
fn check(pattern: &[u8], at: usize, got: &[u8]) {
    let mut pos = at;
    let mut rest = got;
    while !rest.is_empty() {
        let off = pos % PATTERN_LEN;
        let n = rest.len().min(PATTERN_LEN - off);
        if rest[..n] != pattern[off..off + n] {
            let k = (0..n).find(|&k| rest[k] != pattern[off + k]).unwrap_or(0);
            panic!("echoed byte {} differs", pos + k);
        }
        pos += n;
        rest = &rest[n..];
    }
}

/// Writes the next stream bytes from offset `at` (non-blocking); how many were taken.
fn write_some(s: &mut impl Write, pattern: &[u8], at: usize, limit: usize) -> usize {
    let off = at % PATTERN_LEN;
    let n = (PATTERN_LEN - off).min(256 << 10).min(limit - at);
    if n == 0 {
        return 0;
    }
    match s.write(&pattern[off..off + n]) {
        Ok(n) => n,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => 0,
        Err(e) => panic!("write at {at}: {e}"),
    }
}

/// An echo server with `water_marks(1 MiB, 512 KiB)`; the peer first writes without ever
/// reading until the server stops reading (its writes block for 500 ms), then reads
/// everything back while offering the rest of 100 MiB, reading only in small bites so the
/// server keeps hitting the high-water mark and resuming below the low one.
///
/// Checks: the peer could not push all 100 MiB while not reading (the server pushed
/// back); the high-water callback ran; the server's output buffer for the connection
/// (recorded in the message callback) and the buffer pool's in-use bytes (sampled every
/// millisecond) stayed under 2 × the high-water mark throughout; every byte came back
/// intact and in order.
#[test]
fn peer_that_does_not_read_is_held_back_by_the_high_water_mark() {
    init_log();
    let pool = BufPool::global();
    let baseline = pool.stats().in_use_bytes();
    let max_output = Arc::new(AtomicUsize::new(0));
    let high_calls = Arc::new(AtomicUsize::new(0));
    let (mo, hc) = (max_output.clone(), high_calls.clone());
    let server = TestServer::start(move || {
        echo_builder("backpressure", localhost())
            .io_threads(1)
            .water_marks(HIGH, LOW)
            .on_message(move |ctx, input| {
                ctx.send(input.peek());
                input.consume_all();
                mo.fetch_max(ctx.output_len(), Ordering::Relaxed);
            })
            .on_high_water_mark(move |_, _| {
                hc.fetch_add(1, Ordering::Relaxed);
            })
    });

    // Samples the pool's in-use bytes until told to stop; yields the peak.
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let sampler = thread::spawn(move || {
        let mut peak = 0usize;
        while !st.load(Ordering::Relaxed) {
            peak = peak.max(BufPool::global().stats().in_use_bytes());
            thread::sleep(Duration::from_millis(1));
        }
        peak
    });

    let pattern = random_bytes(4, PATTERN_LEN);
    let deadline = Instant::now() + TEST_LIMIT;
    let mut s = connect(server.addr());
    s.set_nonblocking(true).unwrap();

    // Phase 1: write, never read, until the writes stay blocked.
    let started = Instant::now();
    let mut written = 0usize;
    let mut last_progress = Instant::now();
    while written < OFFERED && last_progress.elapsed() < BLOCKED_FOR {
        assert!(Instant::now() < deadline, "phase 1 did not end");
        let n = write_some(&mut s, &pattern, written, OFFERED);
        if n > 0 {
            written += n;
            last_progress = Instant::now();
        } else {
            thread::sleep(Duration::from_millis(1));
        }
    }
    let blocked_at = written;
    let phase1 = started.elapsed();
    assert!(
        blocked_at < OFFERED,
        "the server read all {OFFERED} bytes from a peer that reads nothing: no backpressure"
    );
    assert!(
        high_calls.load(Ordering::Relaxed) >= 1,
        "the high-water-mark callback never ran"
    );
    let in_use_blocked = pool.stats().in_use_bytes().saturating_sub(baseline);
    assert!(
        in_use_blocked < 2 * HIGH,
        "{in_use_blocked} pool bytes in use while the peer is blocked"
    );

    // Phase 2: read everything back, in bites of at most 16 KiB per round so the server's
    // output keeps crossing the marks, while offering the rest.
    let mut read = 0usize;
    let mut buf = vec![0u8; 16 << 10];
    while read < OFFERED {
        assert!(
            Instant::now() < deadline,
            "phase 2: {read} of {OFFERED} bytes echoed ({written} written) by the deadline"
        );
        let mut progress = false;
        if written < OFFERED {
            let n = write_some(&mut s, &pattern, written, OFFERED);
            written += n;
            progress |= n > 0;
        }
        match s.read(&mut buf) {
            Ok(0) => panic!("EOF after {read} echoed bytes"),
            Ok(n) => {
                assert!(read + n <= written, "more echoed than written");
                check(&pattern, read, &buf[..n]);
                read += n;
                progress = true;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => panic!("read after {read} bytes: {e}"),
        }
        if !progress {
            thread::sleep(Duration::from_micros(100));
        }
    }
    let total = started.elapsed();

    // Done: nothing extra comes, the server closes after our FIN.
    s.set_nonblocking(false).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (rest, _) = util::read_until_closed(&mut s);
    assert!(rest.is_empty(), "{} extra bytes echoed", rest.len());

    stop.store(true, Ordering::Relaxed);
    let peak = join_within("sampler", sampler).saturating_sub(baseline);
    let max_output = max_output.load(Ordering::Relaxed);
    println!(
        "blocked after {blocked_at} bytes ({phase1:?}); {OFFERED} bytes echoed in {total:?}; \
         peak pool in-use {peak} bytes, peak output buffer {max_output} bytes, \
         high-water callbacks {}",
        high_calls.load(Ordering::Relaxed)
    );
    assert!(
        max_output < 2 * HIGH,
        "output buffer reached {max_output} bytes"
    );
    assert!(peak < 2 * HIGH, "pool in-use bytes peaked at {peak}");
    let st = server.stats();
    assert_eq!(st.bytes_in(), OFFERED as u64);
    assert_eq!(st.bytes_out(), OFFERED as u64);
    server.stop();
}
