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

use duo_net::{CloseReason, TcpServer};
use duo_testkit::{random_bytes, LIMIT};
use util::{localhost, TestServer};

/// The final reply: large enough to stay partly in the server's send queue when it
/// closes.
const REPLY: usize = 4 << 20;

/// A server that answers the first bytes of each connection with `reply` and
/// `close_after_flush`, never reading more; reports each close reason.
fn serve(
    linger: Duration,
    reply: Arc<Vec<u8>>,
) -> (TestServer, mpsc::Receiver<(CloseReason, Instant)>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let server = TestServer::start(move || {
        TcpServer::builder("linger", localhost())
            .io_threads(1)
            .close_linger(linger)
            .on_message(move |ctx, input| {
                input.consume_all();
                ctx.send(&reply[..]);
                ctx.close_after_flush();
            })
            .on_close(move |conn| {
                let reason = conn.close_reason().expect("closed");
                let _ = tx.lock().unwrap().send((reason, Instant::now()));
            })
    });
    (server, rx)
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
/// application asked (`User`), not later.
#[test]
fn a_peer_that_never_stops_sending_gets_the_whole_reply_and_is_cut_off_at_the_bound() {
    let reply = Arc::new(random_bytes(7, REPLY));
    // The bound counts from the output's hand-over to the kernel: long enough for this
    // peer to read the rest of the reply on a loaded machine (else the close at the bound
    // resets it, as documented).
    let linger = Duration::from_secs(3);
    let (server, closes) = serve(linger, reply.clone());
    let mut c = TcpStream::connect(server.addr()).unwrap();
    c.write_all(b"request").unwrap();
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
    let (got, error) = read_all(&mut c);
    assert_eq!(
        error, None,
        "the reply must end with the end of stream, not an error"
    );
    assert_eq!(got.len(), REPLY, "the reply cut short");
    assert!(got == *reply, "the reply corrupted");
    // Still sending and still open: the server closes at the bound.
    let (reason, _) = closes
        .recv_timeout(linger + LIMIT)
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
    let reply = Arc::new(random_bytes(8, REPLY));
    let (server, closes) = serve(Duration::from_secs(60), reply.clone());
    let mut c = TcpStream::connect(server.addr()).unwrap();
    // More than the request: the rest stays unread on the server.
    c.write_all(&vec![b'r'; 100_000]).unwrap();
    let (got, error) = read_all(&mut c);
    assert_eq!((got.len(), error), (REPLY, None));
    drop(c);
    let (reason, _) = closes
        .recv_timeout(LIMIT)
        .expect("closed with the end of stream");
    assert_eq!(reason, CloseReason::User);
    assert_eq!(server.stats().active, 0);
    server.stop();
}

/// With `close_linger(Duration::ZERO)` the close does not wait for the peer: it comes
/// while the peer, which keeps its socket open, has not closed anything.
#[test]
fn a_zero_linger_closes_at_once() {
    let reply = Arc::new(random_bytes(9, 1024));
    let (server, closes) = serve(Duration::ZERO, reply);
    let mut c = TcpStream::connect(server.addr()).unwrap();
    c.write_all(&vec![b'r'; 100_000]).unwrap();
    let (reason, _) = closes.recv_timeout(LIMIT).expect("closed without the peer");
    assert_eq!(reason, CloseReason::User);
    drop(c);
    server.stop();
}
