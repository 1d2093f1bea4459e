//! Review, round 6: the client's connect attempts against a TLS handshake failure that is
//! still queued when `connect` is called, and the connection state machine in
//! combinations no other test puts together.
//!
//! Every wait has a deadline; the loop is held (never slept on) to put two timers in one
//! iteration.
#![cfg(feature = "tls")]

mod util;

use std::io::{ErrorKind, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use duo_net::tls::{self, rustls};
use duo_net::{Endpoint, TcpClient};
use duo_reactor::EventLoopThread;
use duo_testkit::wait_until;
use util::shared::settle;
use util::{barrier, init_log};

/// An abstract Unix-domain name unique to this test process and call.
fn abstract_name(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("duo-review6-{}-{n}-{what}", std::process::id())
}

/// `connect` called after a TLS handshake failed, while the failure's notice (queued by
/// the closing connection) has not run yet: the notice belongs to the attempt before the
/// `connect`, and must not count against the new one nor end it. It used to run as a
/// failure of the client's current run: with `max_attempts(1)` it gave up (clearing
/// "wanted"), and the `connect` queued behind it found nothing wanted: lost, the client
/// idle for ever.
///
/// The server accepts nothing and says nothing (a Unix-domain listener: the connect
/// completes at once, the handshake then waits), so the handshake times out; the loop is
/// held past that timeout and past a timer that calls `connect`, so that both fire in
/// one iteration, the handshake's first.
#[test]
fn a_connect_behind_a_queued_handshake_failure_is_not_lost() {
    init_log();
    const HANDSHAKE: Duration = Duration::from_millis(50);
    let name = abstract_name("stall");
    let listener = UnixListener::bind_addr(&UnixAddr::from_abstract_name(&name).unwrap()).unwrap();
    let pki = util::pki::pki();
    let lp = EventLoopThread::spawn("review6-connect", None).unwrap();
    let failures: Arc<Mutex<Vec<(ErrorKind, u32, bool)>>> = Arc::default();
    let seen = failures.clone();
    let client = Arc::new(
        TcpClient::builder("review6", Endpoint::abstract_name(&name).unwrap())
            .tls(pki.client_config(), tls::server_name("localhost").unwrap())
            .tls_handshake_timeout(HANDSHAKE)
            .max_attempts(1)
            .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
            .on_connect_failed(move |f| {
                seen.lock()
                    .unwrap()
                    .push((f.error.kind(), f.attempts, f.will_retry))
            })
            .connect(lp.handle()),
    );
    // The first attempt has connected and started its handshake (and its timer).
    barrier(lp.handle());
    assert_eq!(client.attempts(), 1);
    let again = client.clone();
    lp.handle()
        .queue_in_loop(move |lp| {
            let due = Instant::now() + HANDSHAKE;
            lp.run_at(due, move |_| again.connect());
            // Both deadlines pass while the loop is held here: the next iteration runs
            // the handshake's timer, then this one.
            let until = due + Duration::from_millis(10);
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                thread::sleep(left);
            }
        })
        .unwrap();
    // The give-up of the last attempt (the second, or with the bug the first).
    wait_until("an attempt that gives up", || {
        failures.lock().unwrap().iter().any(|&(_, _, retry)| !retry)
    });
    settle(lp.handle());
    assert_eq!(
        client.attempts(),
        2,
        "the connect made after the failure started an attempt; failures {:?}",
        failures.lock().unwrap()
    );
    assert_eq!(
        *failures.lock().unwrap(),
        [(ErrorKind::TimedOut, 1, false)],
        "one failure reported, the new attempt's, counted from the connect"
    );
    client.stop();
    settle(lp.handle());
    drop(client);
    lp.stop().unwrap();
    drop(listener);
}

/// Reads and decrypts from `sock` until the plaintext received ends with `expected`.
fn read_plaintext(
    sock: &mut std::net::TcpStream,
    conn: &mut rustls::ClientConnection,
    expected: &[u8],
) -> Vec<u8> {
    let mut got = Vec::new();
    while !got.ends_with(expected) {
        assert!(got.len() < expected.len() + (64 << 10), "too much: {got:?}");
        let n = conn.read_tls(sock).expect("the server's records");
        assert!(n > 0, "the stream ended after {got:?}");
        conn.process_new_packets().unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match conn.reader().read(&mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
    }
    got
}

/// TLS, a small `max_input`, and a graceful close asked from the message callback: the
/// client pipelines lines behind a `QUIT` that ends exactly where the input buffer is
/// full, so the callback consumes all it was given while rustls still holds the lines
/// behind it (decrypted from the same read: the socket is empty). That input is unread
/// as much as input left in the buffer, and the close must linger for it. It used to
/// close at once (the callback "left nothing unread"), and the client's next bytes met
/// a closed socket: a reset, its write failing with `EPIPE` or `ECONNRESET`, as plain
/// TCP did before `linger_in_callback.rs`.
#[test]
fn a_tls_quit_at_the_input_bound_lingers_for_the_plaintext_rustls_holds() {
    init_log();
    const MAX_INPUT: usize = 1024;
    let pki = util::pki::pki();
    let config = pki.server_config();
    let (on_close, closes) = util::shared::close_reasons();
    let server = util::TestServer::start(move || {
        duo_net::TcpServer::builder("review6-tls-quit", util::localhost())
            .io_threads(1)
            .tls(config)
            .max_input(MAX_INPUT)
            .close_linger(duo_testkit::LIMIT)
            .on_message(util::shared::echo_lines_until_quit)
            .on_close(on_close)
    });
    let (mut sock, mut conn) = pki.handshaken(server.addr());
    // A filler line, then QUIT ending at byte MAX_INPUT, then lines behind it: one
    // write, so the server's one read takes it all.
    let mut filler = vec![b'f'; MAX_INPUT - b"QUIT\n".len() - 1];
    filler.push(b'\n');
    let mut plain = filler.clone();
    plain.extend_from_slice(b"QUIT\n");
    for i in 0..200 {
        plain.extend_from_slice(format!("after-{i}\n").as_bytes());
    }
    conn.writer().write_all(&plain).unwrap();
    sock.write_all(&util::pki::records(&mut conn)).unwrap();
    let mut want = filler;
    want.extend_from_slice(b"BYE\n");
    assert_eq!(read_plaintext(&mut sock, &mut conn, b"BYE\n"), want);
    // The client goes on (it has not seen the end of the stream yet): more than the
    // socket buffers hold, so its writes block until the server has taken them.
    let chunk = vec![b'x'; 64 << 10];
    for _ in 0..128 {
        conn.writer().write_all(&chunk).unwrap();
        if let Err(e) = sock.write_all(&util::pki::records(&mut conn)) {
            panic!("the server's close reset the stream under the client's writes: {e}");
        }
    }
    sock.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    if let Err(e) = sock.read_to_end(&mut rest) {
        panic!("the stream ended with {e}, not a clean end");
    }
    assert_eq!(
        closes.recv_timeout(duo_testkit::LIMIT).unwrap(),
        duo_net::CloseReason::User,
        "the close keeps its reason"
    );
    server.stop();
}

/// The write-complete notice of a reply sent whole from the message callback that then
/// closed gracefully, leaving input behind (so the close lingers): it runs (the output
/// did drain, as it runs when a queued output drains before a close), sees the
/// connection `Disconnecting`, and a send from it is refused visibly (`false`); the
/// linger goes on undisturbed and ends cleanly with the close's reason. (Checked: no
/// change needed.)
#[test]
fn write_complete_during_a_linger_is_told_the_connection_is_closing() {
    init_log();
    let (on_close, closes) = util::shared::close_reasons();
    let notices: Arc<Mutex<Vec<(duo_net::ConnState, bool)>>> = Arc::default();
    let seen = notices.clone();
    let server = util::TestServer::start(move || {
        duo_net::TcpServer::builder("review6-wc-linger", util::localhost())
            .io_threads(1)
            .close_linger(duo_testkit::LIMIT)
            .on_message(util::shared::echo_lines_until_quit)
            .on_write_complete(move |ctx| {
                let state = ctx.connection().state();
                let sent = ctx.send(b"late\n");
                ctx.stop_reading();
                seen.lock().unwrap().push((state, sent));
            })
            .on_close(on_close)
    });
    let mut c = std::net::TcpStream::connect(server.addr()).unwrap();
    c.set_read_timeout(Some(duo_testkit::LIMIT)).unwrap();
    c.write_all(b"first\nQUIT\nafter\n").unwrap();
    let mut got = [0u8; 10];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"first\nBYE\n");
    // Still lingering (reading and dropping, the pause notwithstanding): more input is
    // taken, then the end of stream ends it.
    c.write_all(&vec![b'x'; 1 << 20]).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "nothing after BYE: {rest:?}");
    assert_eq!(
        closes.recv_timeout(duo_testkit::LIMIT).unwrap(),
        duo_net::CloseReason::User
    );
    assert_eq!(
        *notices.lock().unwrap(),
        [(duo_net::ConnState::Disconnecting, false)]
    );
    server.stop();
}
