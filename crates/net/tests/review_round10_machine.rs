//! Review round 10 of the connection state machine and `TcpClient`
//! (`crates/net/src/conn/`, `crates/net/src/client/`): the suspects of round 9, each
//! shown by a test that failed before its fix.
//!
//! - a write-complete callback that force-closes (or panics) while a `close_after_flush`
//!   drain ends: the drain must not go on finishing on the closed connection (reading
//!   and dropping the peer's unread input, half-closing, arming a linger timer);
//! - a paused application that shuts down after being told of its peer's FIN is not told
//!   a second time when the TCP connection finishes closing (the peer never reset);
//! - `TcpClient`'s `connect_timeout(Duration::ZERO)` is refused (`InvalidInput`, no
//!   retry), as std's `TcpStream::connect_timeout` refuses it, instead of meaning "no
//!   timeout"; an attempt that fails just after `stop()` is not a warning.
//!
//! This binary installs its own logger (to see the client's warnings): it uses no
//! `init_log`.

mod util;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use duo_net::{CloseReason, ServerBuilder, TcpClient, TcpConnection, TcpServer};
use duo_reactor::EventLoopThread;
use duo_testkit::{wait_until, LIMIT};
use log::{Level, LevelFilter, Log, Metadata, Record};
use util::shared::Blackhole;
use util::{barrier, connect, hold_loop, localhost, TestServer};

// ---------------------------------------------------------------------------------------
// A logger of this binary: warnings and errors, kept for the tests to read.
// ---------------------------------------------------------------------------------------

struct Warnings(Mutex<Vec<String>>);

impl Log for Warnings {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= Level::Warn
    }

    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            self.0.lock().unwrap().push(r.args().to_string());
        }
    }

    fn flush(&self) {}
}

static WARNINGS: Warnings = Warnings(Mutex::new(Vec::new()));

fn capture_warnings() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&WARNINGS).expect("the only logger of this test binary");
        log::set_max_level(LevelFilter::Warn);
    });
}

/// The warnings logged so far that mention `needle` (a client's name).
fn warnings_about(needle: &str) -> Vec<String> {
    WARNINGS
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. A close from the write-complete callback during a close_after_flush drain.
// ---------------------------------------------------------------------------------------

/// How the write-complete callback ends the connection.
#[derive(Clone, Copy)]
enum Ending {
    ForceClose,
    Panic,
}

/// The server answers with a reply too large for the socket and asks for
/// `close_after_flush`; the client then sends more (which nobody reads: reading stopped)
/// and reads the reply. When the drain ends, the write-complete callback closes the
/// connection (`force_close`, or a panic). That close is the end: the drain must not go
/// on to the graceful close it was heading for, reading and dropping the client's bytes
/// (counted in `bytes_in`), half-closing and arming a linger timer on a closed
/// connection.
///
/// Failed before the fix: `flush` went on with `drained` after the callback, so the
/// server read (and counted) the client's extra bytes after the connection had closed.
fn write_complete_close_ends_the_drain(ending: Ending, name: &'static str) {
    const REPLY: usize = 8 << 20;
    const EXTRA: usize = 1000;
    capture_warnings();
    let (up_tx, up_rx) = mpsc::channel::<()>();
    let up_tx = Mutex::new(up_tx);
    let closes = Arc::new(AtomicUsize::new(0));
    let c = closes.clone();
    let server = TestServer::start(move || -> ServerBuilder {
        TcpServer::builder(name, localhost())
            .io_threads(1)
            .on_message(move |ctx, input| {
                input.consume_all();
                ctx.send(&vec![7u8; REPLY]);
                ctx.close_after_flush();
                let _ = up_tx.lock().unwrap().send(());
            })
            .on_write_complete(move |ctx| match ending {
                Ending::ForceClose => ctx.force_close(),
                Ending::Panic => panic!("write-complete callback panics (on purpose)"),
            })
            .on_close(move |_| {
                c.fetch_add(1, Ordering::SeqCst);
            })
    });
    let mut client = connect(server.addr());
    client.write_all(b"go").unwrap();
    up_rx.recv_timeout(LIMIT).expect("the request handled");
    assert!(
        server.stats().output_queued() > 0,
        "the reply must be queued, not written at once"
    );
    // Not read by the server: reading stopped with close_after_flush.
    client.write_all(&[1u8; EXTRA]).unwrap();
    client.set_read_timeout(Some(LIMIT)).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0;
    // Until the end of stream or the reset of the close (a force_close with unread
    // input resets, as documented: it never lingers).
    while let Ok(n) = client.read(&mut buf) {
        if n == 0 {
            break;
        }
        got += n;
    }
    assert!(got <= REPLY);
    wait_until("the connection closed", || server.stats().closed == 1);
    let stats = server.stats();
    let expected = match ending {
        Ending::ForceClose => CloseReason::User,
        Ending::Panic => CloseReason::Panic,
    };
    assert_eq!(stats.closes().of(expected), 1, "closed by the callback");
    assert_eq!(closes.load(Ordering::SeqCst), 1, "one close callback");
    assert_eq!(
        stats.bytes_in(),
        2,
        "the closed connection went on reading (and dropping) the client's bytes"
    );
    server.stop();
}

#[test]
fn force_close_from_write_complete_ends_a_close_after_flush_drain() {
    write_complete_close_ends_the_drain(Ending::ForceClose, "r10-wc-force");
}

#[test]
fn a_panic_in_write_complete_ends_a_close_after_flush_drain() {
    write_complete_close_ends_the_drain(Ending::Panic, "r10-wc-panic");
}

// ---------------------------------------------------------------------------------------
// 2. A paused application that shuts down after the peer's FIN.
// ---------------------------------------------------------------------------------------

/// Reading paused from the start; the client half-closes; the application, told of it
/// (`on_peer_half_close_while_paused`), shuts down its side. The TCP connection has then
/// finished in both directions (the kernel reports a hang-up), but the peer did not
/// reset: the application must not be told a second time (that telling is for a peer
/// that is gone). Resuming reading then closes with `Peer`.
///
/// Failed before the fix: the hang-up that follows our own `SHUT_WR` made the write side
/// `Gone` and the callback ran again, with `is_connected()` false.
fn shutdown_after_paused_half_close(edge: bool, name: &'static str) {
    capture_warnings();
    let told = Arc::new(AtomicUsize::new(0));
    let (conn_tx, conn_rx) = mpsc::channel::<TcpConnection>();
    let (close_tx, closed) = mpsc::channel::<CloseReason>();
    let (conn_tx, close_tx) = (Mutex::new(conn_tx), Mutex::new(close_tx));
    let t = told.clone();
    let server = TestServer::start(move || -> ServerBuilder {
        TcpServer::builder(name, localhost())
            .io_threads(1)
            .edge_triggered(edge)
            .on_connection(move |conn| {
                if conn.is_connected() {
                    let _ = conn.stop_reading();
                    let _ = conn_tx.lock().unwrap().send(conn.clone());
                }
            })
            .on_message(|_, input| input.consume_all())
            .on_peer_half_close_while_paused(move |ctx| {
                t.fetch_add(1, Ordering::SeqCst);
                ctx.shutdown();
            })
            .on_close(move |conn| {
                let _ = close_tx.lock().unwrap().send(conn.close_reason().unwrap());
            })
    });
    let mut client = connect(server.addr());
    let conn = conn_rx.recv_timeout(LIMIT).expect("the connection up");
    client.write_all(b"unread").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    // Our FIN comes back once the application was told and shut down.
    client.set_read_timeout(Some(LIMIT)).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(client.read(&mut buf).unwrap(), 0, "the server's FIN");
    assert_eq!(told.load(Ordering::SeqCst), 1);
    // Two iterations of the loop later, the hang-up that follows has been handled.
    barrier(conn.loop_handle());
    barrier(conn.loop_handle());
    assert_eq!(
        told.load(Ordering::SeqCst),
        1,
        "told twice, though the peer only half-closed"
    );
    assert!(closed.try_recv().is_err(), "closed while reading is paused");
    conn.start_reading().unwrap();
    assert_eq!(closed.recv_timeout(LIMIT).unwrap(), CloseReason::Peer);
    assert_eq!(told.load(Ordering::SeqCst), 1);
    drop(client);
    server.stop();
}

#[test]
fn shutdown_after_a_paused_half_close_is_not_told_twice_edge() {
    shutdown_after_paused_half_close(true, "r10-paused-shut-et");
}

#[test]
fn shutdown_after_a_paused_half_close_is_not_told_twice_level() {
    shutdown_after_paused_half_close(false, "r10-paused-shut-lt");
}

// ---------------------------------------------------------------------------------------
// 3. TcpClient: a zero connect timeout; a failure after stop().
// ---------------------------------------------------------------------------------------

/// `connect_timeout(Duration::ZERO)` is refused, as std's `TcpStream::connect_timeout`
/// refuses it: the attempt fails with `InvalidInput` and is not retried.
///
/// Failed before the fix: zero silently meant "no timeout", so the attempt on an address
/// that never answers stayed in flight (for the kernel's two minutes) and nothing was
/// reported.
#[test]
fn a_zero_connect_timeout_is_refused() {
    capture_warnings();
    let hole = Blackhole::new();
    let lp = EventLoopThread::spawn("r10-zero-timeout", None).unwrap();
    let (tx, failures) = mpsc::channel::<(std::io::ErrorKind, u32, bool)>();
    let tx = Mutex::new(tx);
    let client = TcpClient::builder("r10-zero-timeout", hole.addr())
        .connect_timeout(Duration::ZERO)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(10))
        .on_connect_failed(move |f| {
            let _ = tx
                .lock()
                .unwrap()
                .send((f.error.kind(), f.attempts, f.will_retry));
        })
        .connect(lp.handle());
    let (kind, attempts, will_retry) = failures
        .recv_timeout(LIMIT)
        .expect("the zero timeout refused");
    assert_eq!(kind, std::io::ErrorKind::InvalidInput);
    assert_eq!((attempts, will_retry), (1, false));
    barrier(lp.handle());
    assert_eq!(client.attempts(), 1, "retried");
    drop(client);
    lp.stop().unwrap();
}

/// An attempt that fails after `stop()` was called (its failure handled on the loop
/// before the stop's own cancelling) is the user's stop, not a connect that gave up: no
/// warning.
///
/// Failed before the fix: "connect to ... failed ... giving up" was logged at warn.
#[test]
fn an_attempt_failing_just_after_stop_is_no_warning() {
    const NAME: &str = "r10-stop-then-fail";
    const TIMEOUT: Duration = Duration::from_millis(50);
    capture_warnings();
    let hole = Blackhole::new();
    let lp = EventLoopThread::spawn(NAME, None).unwrap();
    let (tx, failures) = mpsc::channel::<bool>();
    let tx = Mutex::new(tx);
    let client = TcpClient::builder(NAME, hole.addr())
        .connect_timeout(TIMEOUT)
        .on_connect_failed(move |f| {
            let _ = tx.lock().unwrap().send(f.will_retry);
        })
        .connect(lp.handle());
    // The attempt is in flight once `start` ran on the loop.
    barrier(lp.handle());
    assert_eq!(client.attempts(), 1);
    let began = Instant::now();
    // Held past the attempt's deadline: its timer is due at the next poll, before the
    // cancelling that `stop` queues.
    let release = hold_loop(lp.handle());
    wait_until("the connect timeout to pass", || {
        began.elapsed() > TIMEOUT * 2
    });
    client.stop();
    drop(release);
    let will_retry = failures.recv_timeout(LIMIT).expect("the failure reported");
    assert!(!will_retry, "retried after stop");
    barrier(lp.handle());
    // (The loop's own stall warning, for the hold, is not the client's.)
    let warned = warnings_about(&format!("client {NAME}"));
    assert!(warned.is_empty(), "warned after stop: {warned:?}");
    drop(client);
    lp.stop().unwrap();
}
