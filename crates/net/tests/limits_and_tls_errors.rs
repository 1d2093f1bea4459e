//! The input limit and TLS errors in states no other test combines, against the real
//! kernel over loopback with real threads. Each test here failed when a review helper
//! wrote it (its doc says how).
#![cfg(feature = "tls")]

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use duo_net::tls::rustls;
use duo_net::{CloseReason, TcpServer, TlsFailure};
use duo_testkit::{wait_until, LIMIT};

use util::pki::{pki, records, Pki};
use util::{localhost, TestServer};

/// What the test server saw.
#[derive(Default)]
struct Seen {
    up: AtomicUsize,
    reasons: Mutex<Vec<CloseReason>>,
}

/// A TLS echo server on one I/O thread that half-closes (`ctx.shutdown()`, which sends
/// `close_notify`) once it has echoed a message ending in `bye`.
fn echo_then_shutdown_on_bye(pki: &Pki) -> (TestServer, Arc<Seen>) {
    let config = pki.server_config();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let server = TestServer::start(move || {
        TcpServer::builder("limits-tls", localhost())
            .io_threads(1)
            .tls(config)
            .on_connection(move |conn| {
                if conn.is_connected() {
                    s.up.fetch_add(1, Ordering::SeqCst);
                } else if let Some(r) = conn.close_reason() {
                    s.reasons.lock().unwrap().push(r);
                }
            })
            .on_message(|ctx, input| {
                let bye = input.peek().ends_with(b"bye");
                ctx.send(input.peek());
                input.consume_all();
                if bye {
                    ctx.shutdown();
                }
            })
    });
    (server, seen)
}

/// Reads through `conn` until the server's `close_notify`; returns the plaintext.
fn read_until_close_notify(sock: &mut TcpStream, conn: &mut rustls::ClientConnection) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        match conn.reader().read_to_end(&mut got) {
            Ok(_) => return got, // close_notify
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("reading the reply: {e}"),
        }
        let n = conn
            .read_tls(sock)
            .expect("the server's records within LIMIT");
        assert!(n > 0, "EOF before close_notify");
        conn.process_new_packets().unwrap();
    }
}

/// `ctx.shutdown()` on a TLS connection sends `close_notify` and keeps reading (the
/// half-close: the peer may still send). A corrupt record from the peer after that is a
/// protocol error like any other: the module documentation promises "a protocol error
/// sends rustls' alert (best effort) and closes with `TlsFailure::Protocol`", and the
/// server goes on serving others.
///
/// It failed: rustls' `CommonState::send_fatal_alert` begins with
/// `debug_assert!(!self.sent_fatal_alert)`, and `send_close_notify` set that flag, so the
/// decryption error panics inside `process_new_packets` (rustls issue #959). The panic is
/// not a user callback's: the reactor re-raises it and the server's I/O thread dies
/// (in every build with debug assertions, which is how `cargo test` builds rustls).
#[test]
fn a_corrupt_record_after_our_close_notify_is_a_protocol_error_not_a_dead_loop() {
    util::init_log();
    let pki = pki();
    let (server, seen) = echo_then_shutdown_on_bye(&pki);
    let (mut sock, mut conn) = pki.handshaken(server.addr());
    conn.writer().write_all(b"hello, bye").unwrap();
    sock.write_all(&records(&mut conn)).unwrap();
    assert_eq!(read_until_close_notify(&mut sock, &mut conn), b"hello, bye");

    // The server half-closed; its read side is open. A record whose tag does not match:
    conn.writer().write_all(b"after your close_notify").unwrap();
    let mut record = records(&mut conn);
    let last = record.len() - 1;
    record[last] ^= 0xff;
    sock.write_all(&record).unwrap();

    wait_until("the server closes the connection", || {
        !seen.reasons.lock().unwrap().is_empty()
    });
    assert_eq!(
        seen.reasons.lock().unwrap().as_slice(),
        [CloseReason::Tls(TlsFailure::Protocol)]
    );
    // And the server's I/O thread still serves.
    let (mut sock2, mut conn2) = pki.handshaken(server.addr());
    conn2.writer().write_all(b"still there? bye").unwrap();
    sock2.write_all(&records(&mut conn2)).unwrap();
    assert_eq!(
        read_until_close_notify(&mut sock2, &mut conn2),
        b"still there? bye"
    );
    server.stop();
}

/// The size of the one message the `max_input` tests send: between the 8 MiB of the
/// largest pool block and the 16 MiB `max_input` they configure.
const BIG: usize = 12 << 20;
/// The `max_input` they configure.
const MAX_INPUT: usize = 16 << 20;

/// What a `max_input` test server saw.
#[derive(Default)]
struct Big {
    reasons: Mutex<Vec<CloseReason>>,
    /// The largest input a message callback was given.
    largest: AtomicUsize,
    /// Message callbacks given the same input as the one before, without a byte more.
    repeats: AtomicUsize,
}

/// A server with `max_input(16 MiB)` whose message callback waits for a whole 12 MiB
/// message (consuming nothing before), then answers `got it`. A callback handed the same
/// input again and again with nothing new (more than 1 000 times) gives up and consumes
/// it, so that a spinning loop is reported instead of hanging the test.
fn waits_for_a_big_message(tls: Option<&Pki>) -> (TestServer, Arc<Big>) {
    let config = tls.map(|p| p.server_config());
    let big = Arc::new(Big::default());
    let b = big.clone();
    let server = TestServer::start(move || {
        let (b1, b2) = (b.clone(), b);
        let last = Arc::new(AtomicUsize::new(0));
        let mut builder = TcpServer::builder("limits-big", localhost())
            .io_threads(1)
            .max_input(MAX_INPUT);
        if let Some(config) = config {
            builder = builder.tls(config);
        }
        builder
            .on_connection(move |conn| {
                if let Some(r) = conn.close_reason() {
                    b1.reasons.lock().unwrap().push(r);
                }
            })
            .on_message(move |ctx, input| {
                let len = input.len();
                b2.largest.fetch_max(len, Ordering::SeqCst);
                if last.swap(len, Ordering::SeqCst) == len
                    && b2.repeats.fetch_add(1, Ordering::SeqCst) >= 1_000
                {
                    input.consume_all();
                    ctx.force_close();
                    return;
                }
                if len >= BIG {
                    input.consume_all();
                    ctx.send(b"got it");
                }
            })
    });
    (server, big)
}

/// `max_input` above the most a connection's input holds (one pool block, 8 MiB) is taken
/// as that, as its documentation says: a callback waiting for one 12 MiB message under a
/// `max_input` of 16 MiB sees at most 8 MiB, then the connection closes with
/// `InputTooLarge`, over plain TCP and over TLS alike.
///
/// Over TLS it failed: `tls_pump` compared the input with the configured `max_input`
/// while the buffer stopped growing at its 8 MiB, so nothing closed and nothing moved:
/// the loop handed the same 8 MiB to the message callback again and again, for ever
/// (here the callback gives up after 1 000 identical deliveries). Found by a review
/// helper.
#[test]
fn max_input_above_the_ceiling_is_the_ceiling_and_never_spins() {
    util::init_log();
    let pki = pki();
    for tls in [false, true] {
        let (server, big) = waits_for_a_big_message(tls.then_some(&pki));
        let msg = vec![b'm'; BIG];
        if tls {
            let (mut sock, mut conn) = pki.handshaken(server.addr());
            sock.set_write_timeout(Some(LIMIT)).unwrap();
            let mut sent = 0;
            while sent < msg.len() {
                sent += conn.writer().write(&msg[sent..]).unwrap();
                if sock.write_all(&records(&mut conn)).is_err() {
                    break; // closed at the ceiling
                }
            }
        } else {
            let mut sock = TcpStream::connect(server.addr()).unwrap();
            sock.set_write_timeout(Some(LIMIT)).unwrap();
            let _ = sock.write_all(&msg);
        }
        wait_until("the server closes the connection", || {
            !big.reasons.lock().unwrap().is_empty()
        });
        let what = if tls { "TLS" } else { "plain TCP" };
        let repeats = big.repeats.load(Ordering::SeqCst);
        assert!(
            repeats < 1_000,
            "{what}: the message callback was handed the same {} bytes {repeats} times",
            big.largest.load(Ordering::SeqCst)
        );
        assert_eq!(
            big.reasons.lock().unwrap().as_slice(),
            [CloseReason::InputTooLarge],
            "{what}"
        );
        assert_eq!(big.largest.load(Ordering::SeqCst), 8 << 20, "{what}");
        server.stop();
    }
}
