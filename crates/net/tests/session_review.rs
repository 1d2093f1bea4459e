//! Findings of the review of this session's library changes.
//!
//! Input a paused connection's callback left in the buffer is delivered again when reading
//! resumes. Over TLS, the resumed read delivered it, then decrypted what rustls still held
//! (nothing) and delivered the same bytes a second time in the same handler run: a callback
//! that had just declined an incomplete frame was called again with the very same bytes,
//! and counted twice. Plain TCP delivers them once (the control case here).
//!
//! Every wait has a deadline; the pause is lifted by a timer, not slept on.
#![cfg(feature = "tls")]

mod util;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duo_net::{ServerBuilder, TcpServer};
use duo_testkit::wait_until;
use util::pki::{pki, records};
use util::shared::pause_reading_for;
use util::{localhost, TestServer};

/// The input each message-callback call saw, in order.
type Calls = Arc<Mutex<Vec<Vec<u8>>>>;

/// A server whose callback records the input of every call, answers `.` to each,
/// consumes whole lines only, and pauses reading for a moment after the first line (resumed by a timer).
fn line_server(tls: Option<Arc<duo_net::tls::rustls::ServerConfig>>, calls: &Calls) -> TestServer {
    let calls = calls.clone();
    TestServer::start(move || {
        let builder: ServerBuilder = TcpServer::builder("review-redeliver", localhost())
            .io_threads(1)
            .on_message(move |ctx, input| {
                // A reply to each call, which the TLS tests read to keep in step.
                ctx.send(b".");
                let first = {
                    let mut calls = calls.lock().unwrap();
                    calls.push(input.peek().to_vec());
                    calls.len() == 1
                };
                if let Some(nl) = input.peek().iter().position(|&b| b == b'\n') {
                    input.consume(nl + 1);
                    if first {
                        pause_reading_for(ctx, Duration::from_millis(30));
                    }
                }
            });
        match tls {
            Some(config) => builder.tls(config),
            None => builder,
        }
    })
}

/// The bytes the server has read, on all its loops.
fn bytes_in(server: &TestServer) -> u64 {
    server.stats().per_loop.iter().map(|l| l.bytes_in).sum()
}

/// The calls once the last line (`B\n`) has been delivered.
fn calls_until_b(calls: &Calls) -> Vec<Vec<u8>> {
    wait_until("the line B delivered", || {
        calls.lock().unwrap().last().is_some_and(|c| c == b"B\n")
    });
    calls.lock().unwrap().clone()
}

/// The input the first call left (`B`, an incomplete line) reaches the callback once on
/// resuming, then again only with the rest of the line.
fn expected() -> Vec<Vec<u8>> {
    vec![b"A\nB".to_vec(), b"B".to_vec(), b"B\n".to_vec()]
}

#[test]
fn tls_redelivers_held_input_once_per_resume() {
    util::init_log();
    let pki = pki();
    let calls = Calls::default();
    let server = line_server(Some(pki.server_config()), &calls);
    let (mut sock, mut conn) = pki.handshaken(server.addr());
    // One record: a whole line and the start of the next.
    conn.writer().write_all(b"A\nB").unwrap();
    sock.write_all(&records(&mut conn)).unwrap();
    // The held `B` is delivered when the timer resumes reading.
    wait_until("the held input delivered on resuming", || {
        calls.lock().unwrap().len() >= 2
    });
    conn.writer().write_all(b"\n").unwrap();
    sock.write_all(&records(&mut conn)).unwrap();
    assert_eq!(calls_until_b(&calls), expected(), "TLS: the calls' input");
    drop(sock);
    server.stop();
}

#[test]
fn tcp_redelivers_held_input_once_per_resume() {
    util::init_log();
    let calls = Calls::default();
    let server = line_server(None, &calls);
    let mut sock = util::connect(server.addr());
    sock.write_all(b"A\nB").unwrap();
    wait_until("the held input delivered on resuming", || {
        calls.lock().unwrap().len() >= 2
    });
    sock.write_all(b"\n").unwrap();
    assert_eq!(calls_until_b(&calls), expected(), "TCP: the calls' input");
    drop(sock);
    server.stop();
}

/// A TLS record that carries no plaintext (a TLS 1.3 key update) after an incomplete
/// line: the callback is not called again with the bytes it left (it was, once per such
/// record: plain TCP never calls it without new bytes).
#[test]
fn tls_record_without_plaintext_calls_nothing() {
    util::init_log();
    let pki = pki();
    let calls = Calls::default();
    let server = line_server(Some(pki.server_config()), &calls);
    let (mut sock, mut conn) = pki.handshaken(server.addr());
    conn.writer().write_all(b"B").unwrap();
    sock.write_all(&records(&mut conn)).unwrap();
    // The reply to the first call: whatever the server sent before (its session
    // tickets) has been read too.
    let mut dot = [0u8; 1];
    while conn.reader().read(&mut dot).is_err() {
        conn.read_tls(&mut sock).unwrap();
        conn.process_new_packets().unwrap();
    }
    assert_eq!(&dot, b".");
    // The key update (no plaintext) read on its own: the server has read all of it
    // before the next record is sent.
    let before = bytes_in(&server);
    conn.refresh_traffic_keys().unwrap();
    let update = records(&mut conn);
    sock.write_all(&update).unwrap();
    wait_until("the key update read", || {
        bytes_in(&server) == before + update.len() as u64
    });
    conn.writer().write_all(b"\n").unwrap();
    sock.write_all(&records(&mut conn)).unwrap();
    assert_eq!(
        calls_until_b(&calls),
        [b"B".to_vec(), b"B\n".to_vec()],
        "the calls' input"
    );
    drop(sock);
    server.stop();
}
