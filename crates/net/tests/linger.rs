//! The lingering close: a close after the output is written that finds input nobody read
//! half-closes, drops what the peer still sends, and closes at the peer's end of stream or
//! at the `close_linger` bound, so that the kernel never resets the connection over that
//! input and drops the last output.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use duo_net::{CloseReason, ServerBuilder, TcpConnection, TcpServer};
use duo_testkit::{random_bytes, LIMIT};
use util::{localhost, TestServer};

/// The final reply: large enough to stay partly in the server's send queue when it
/// closes.
const REPLY: usize = 4 << 20;

/// What the tests see of a server: its closes (with their reasons) and its connections.
struct Seen {
    closes: mpsc::Receiver<CloseReason>,
    conns: mpsc::Receiver<TcpConnection>,
}

/// A server that stops reading at a connection's first bytes, answers `+` and hands the
/// connection to the test, which then sends the last reply and asks for
/// `close_after_flush` through the handle. Bytes the peer sends after the `+` are never
/// read: they are in the server's receive queue when it closes.
fn serve(linger: Duration) -> (TestServer, Seen) {
    serve_with(linger, |b| b)
}

/// [`serve`], with more settings made by `tweak`.
fn serve_with(
    linger: Duration,
    tweak: impl FnOnce(ServerBuilder) -> ServerBuilder + Send + 'static,
) -> (TestServer, Seen) {
    let (on_close, closes) = util::shared::close_reasons();
    let (conn_tx, conns) = mpsc::channel();
    let conn_tx = Mutex::new(conn_tx);
    let server = TestServer::start(move || {
        tweak(TcpServer::builder("linger", localhost()))
            .io_threads(1)
            .close_linger(linger)
            .on_message(move |ctx, input| {
                input.consume_all();
                ctx.stop_reading();
                ctx.send(b"+");
                let _ = conn_tx.lock().unwrap().send(ctx.connection().clone());
            })
            .on_close(on_close)
    });
    (server, Seen { closes, conns })
}

/// Connects (with a small receive buffer when `small_window`, so that most of a large
/// reply waits on the server's side), sends a request, waits for the `+`, then sends
/// 100 000 bytes the server will never read. Returns the stream and the server's handle
/// of the connection.
fn client_with_unread_input(
    server: &TestServer,
    seen: &Seen,
    small_window: bool,
) -> (TcpStream, TcpConnection) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if small_window {
        sock.set_recv_buffer_size(64 << 10).unwrap();
    }
    sock.connect(&server.addr().into()).unwrap();
    let mut c: TcpStream = sock.into();
    c.set_read_timeout(Some(LIMIT)).unwrap();
    c.write_all(b"request").unwrap();
    let mut plus = [0u8; 1];
    c.read_exact(&mut plus).unwrap();
    assert_eq!(&plus, b"+");
    let conn = seen.conns.recv_timeout(LIMIT).expect("the connection");
    if let Err(e) = c.write_all(&vec![b'r'; 100_000]) {
        // Closed meanwhile (by an idle timeout): the caller sees how.
        assert!(util::is_peer_close(&e), "{e}");
    }
    (c, conn)
}

/// The server sends `reply` and closes after it, from the test's thread.
fn reply_and_close(conn: &TcpConnection, reply: &[u8]) {
    conn.send(reply.to_vec()).unwrap();
    conn.close_after_flush().unwrap();
}

/// Reads until end of stream (or an error), with a deadline.
fn read_all(s: &mut TcpStream) -> (Vec<u8>, Option<ErrorKind>) {
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (got, Some(e.kind())),
        }
    }
}

/// A peer that keeps sending after its request and never closes gets the whole reply
/// and the end of stream; the server closes it at the linger bound, for the reason the
/// application asked (`User`).
#[test]
fn a_peer_that_never_stops_sending_gets_the_whole_reply_and_is_cut_off_at_the_bound() {
    let reply = random_bytes(7, REPLY);
    // The bound counts from the output's hand-over to the kernel and is extended while
    // the peer takes the output; 1 s is far shorter than the 10 s this test allows.
    let (server, seen) = serve(Duration::from_secs(1));
    let (mut c, conn) = client_with_unread_input(&server, &seen, false);
    // Keep sending from another thread, as a pipelining or uploading peer does, until
    // the server is gone.
    let stop = Arc::new(AtomicBool::new(false));
    let mut w = c.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let writer = {
        let stop = stop.clone();
        thread::spawn(move || {
            let chunk = [b'x'; 4096];
            let deadline = Instant::now() + LIMIT;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match w.write(&chunk) {
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => return, // reset once the server closed: expected
                }
            }
        })
    };
    reply_and_close(&conn, &reply);
    let (got, error) = read_all(&mut c);
    assert_eq!(got.len(), REPLY, "the reply cut short (then {error:?})");
    assert!(got == reply, "the reply corrupted");
    assert_eq!(
        error, None,
        "the reply must end with the end of stream, not an error"
    );
    // Still sending and still open: the server closes at the bound.
    let reason = seen
        .closes
        .recv_timeout(LIMIT)
        .expect("closed at the bound");
    assert_eq!(reason, CloseReason::User);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    server.stop();
}

/// A peer that closes as soon as it has read the reply ends the linger at once: the
/// close comes with its end of stream, long before a bound of a minute.
#[test]
fn the_peers_end_of_stream_ends_the_linger() {
    let reply = random_bytes(8, REPLY);
    let (server, seen) = serve(Duration::from_secs(60));
    let (mut c, conn) = client_with_unread_input(&server, &seen, false);
    reply_and_close(&conn, &reply);
    let (got, error) = read_all(&mut c);
    assert_eq!((got.len(), error), (REPLY, None));
    assert!(
        conn.is_connected() || !conn.is_closed(),
        "closed before the peer ended"
    );
    drop(c);
    let reason = seen
        .closes
        .recv_timeout(LIMIT)
        .expect("closed with the end of stream");
    assert_eq!(reason, CloseReason::User);
    server.stop();
}

/// With `close_linger(Duration::ZERO)` the close does not wait for the peer: it comes
/// while the peer, which keeps its socket open, has not closed anything.
#[test]
fn a_zero_linger_closes_at_once() {
    let (server, seen) = serve(Duration::ZERO);
    let (c, conn) = client_with_unread_input(&server, &seen, false);
    reply_and_close(&conn, b"bye");
    let reason = seen
        .closes
        .recv_timeout(LIMIT)
        .expect("closed without the peer");
    assert_eq!(reason, CloseReason::User);
    drop(c);
    server.stop();
}

/// A slow reader of a large last reply that keeps sending while it reads: the bound
/// (much shorter than the reading) is extended while the reader takes the reply, so the
/// server does not close (and the input arriving then does not reset the connection)
/// before the reply is through.
#[test]
fn a_slow_reader_is_not_cut_off_while_it_takes_the_reply() {
    let reply = random_bytes(10, REPLY);
    let (server, seen) = serve(Duration::from_secs(1));
    let (mut c, conn) = client_with_unread_input(&server, &seen, true);
    reply_and_close(&conn, &reply);
    let mut got = Vec::with_capacity(REPLY);
    let mut buf = vec![0u8; 16 << 10];
    let end = loop {
        match c.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => break Some(e.kind()),
        }
        // More input for the server to drop (a write error: the server has closed).
        let _ = c.write(&[b'k'; 256]);
        // About 1.3 MB/s: the reply takes about 3 s, three linger periods.
        thread::sleep(Duration::from_millis(12));
    };
    assert_eq!(got.len(), REPLY, "the reply cut short (then {end:?})");
    assert!(got == reply, "the reply corrupted");
    drop(c);
    let reason = seen.closes.recv_timeout(LIMIT).expect("closed");
    assert_eq!(reason, CloseReason::User);
    server.stop();
}

/// An idle timeout shorter than the linger does not end a lingering connection with its
/// own reason: the linger has its own bound, and the close keeps the reason asked for.
#[test]
fn an_idle_timeout_does_not_cut_a_linger_short() {
    util::init_log();
    let (server, seen) = serve_with(Duration::from_millis(1500), |b| {
        b.idle_timeout(Duration::from_millis(300))
    });
    // The server stops reading after the request, so nothing refreshes the idle timeout
    // until the reply: a test thread not run for the idle timeout (a loaded machine) asks
    // for the reply too late, the connection being closed as idle already (nothing
    // received). That run shows nothing about the linger: it is tried again.
    let deadline = Instant::now() + LIMIT;
    loop {
        let (mut c, conn) = client_with_unread_input(&server, &seen, false);
        let asked = conn.send(b"bye".to_vec()).is_ok() && conn.close_after_flush().is_ok();
        let (got, end) = read_all(&mut c);
        // The socket stays open: the linger runs to its bound, past several idle timeouts.
        let reason = seen
            .closes
            .recv_timeout(LIMIT)
            .expect("closed at the bound");
        if got.is_empty() && reason == CloseReason::Idle && Instant::now() < deadline {
            log::info!("closed as idle before the reply (asked: {asked}); again");
            continue;
        }
        assert!(asked, "the reply not taken");
        assert_eq!((got, end), (b"bye".to_vec(), None));
        assert_eq!(reason, CloseReason::User);
        drop(c);
        break;
    }
    server.stop();
}
