//! Review round 11 of the round's later fixes (second pass), for duo-net: the input a
//! connection drops at the peer's end of stream (since round 11, what the last message
//! callback left is given back at once) must never be input the application has not
//! been given yet. Here the peer sends everything, then its end of stream (over TLS, its
//! `close_notify` too) in one go, while the message callback takes a little at a time
//! and pauses reading after each call, resumed from another thread before the callback
//! returns: held input, input past `max_input` (over TLS, plaintext rustls still holds)
//! and the end of stream all meet. Every byte must reach the callback, in order, before
//! the connection closes.
//!
//! Failed before this round's fix: a callback that paused and left input, resumed by
//! another thread before it returned, never had that input again (the resumption found
//! nothing held, and the loop read on as if the callback had not paused): the end of
//! stream dropped it (the callback got 63 000 of 65 536 bytes, or 19 500 of 20 000),
//! and without one it waited for bytes the peer would never send.

mod util;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use duo_net::{CloseReason, ServerBuilder, TcpConnection, TcpServer};
use duo_testkit::{wait_until, LIMIT};
use util::{init_log, localhost, read_until_closed, TestServer};

/// What the server saw of its connection.
#[derive(Default)]
struct Seen {
    /// Every byte the message callback took, in order.
    got: Mutex<Vec<u8>>,
    /// The close reason, once closed.
    reason: Mutex<Option<CloseReason>>,
}

/// How the server reads.
#[derive(Clone, Copy)]
struct Reading {
    edge: bool,
    max_input: usize,
    /// Bytes taken per message callback.
    chunk: usize,
}

/// A server whose message callback takes `chunk` bytes, then pauses reading; a thread
/// resumes every paused connection. `tls`: its configuration.
fn server(
    name: &'static str,
    reading: Reading,
    #[cfg(feature = "tls")] tls: Option<Arc<duo_net::tls::rustls::ServerConfig>>,
    seen: &Arc<Seen>,
) -> TestServer {
    let (pause_tx, pause_rx) = mpsc::channel::<TcpConnection>();
    let (resumed_tx, resumed_rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        // Ends when the server (every sender) is gone.
        while let Ok(conn) = pause_rx.recv() {
            let _ = conn.start_reading();
            let _ = resumed_tx.send(());
        }
    });
    let pause = Mutex::new((pause_tx, resumed_rx));
    let (s1, s2) = (seen.clone(), seen.clone());
    TestServer::start(move || -> ServerBuilder {
        let b = TcpServer::builder(name, localhost())
            .io_threads(1)
            .edge_triggered(reading.edge)
            .max_input(reading.max_input)
            .on_message(move |ctx, input| {
                if input.is_empty() {
                    return;
                }
                let n = reading.chunk.min(input.len());
                s1.got.lock().unwrap().extend_from_slice(&input.peek()[..n]);
                input.consume(n);
                ctx.stop_reading();
                // Resumed from another thread before this callback returns (waited for,
                // so that every call meets it).
                let (pause_tx, resumed_rx) = &*pause.lock().unwrap();
                let _ = pause_tx.send(ctx.connection().clone());
                let _ = resumed_rx.recv_timeout(LIMIT);
            })
            .on_close(move |conn| {
                *s2.reason.lock().unwrap() = conn.close_reason();
            });
        #[cfg(feature = "tls")]
        let b = match tls {
            Some(config) => b.tls(config),
            None => b,
        };
        b
    })
}

/// `len` bytes of a pattern that shows a byte lost or moved.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Waits for the connection to close, then checks that the callback got all of `sent`.
fn expect_all_delivered(seen: &Seen, sent: &[u8]) {
    wait_until("the connection closes", || {
        seen.reason.lock().unwrap().is_some()
    });
    let got = seen.got.lock().unwrap();
    assert_eq!(
        got.len(),
        sent.len(),
        "bytes lost at the end of stream (closed with {:?})",
        seen.reason.lock().unwrap()
    );
    assert!(*got == sent, "bytes delivered out of order or changed");
    assert_eq!(*seen.reason.lock().unwrap(), Some(CloseReason::Peer));
}

fn plain(name: &'static str, reading: Reading, len: usize) {
    init_log();
    let seen = Arc::new(Seen::default());
    #[cfg(feature = "tls")]
    let server = server(name, reading, None, &seen);
    #[cfg(not(feature = "tls"))]
    let server = server(name, reading, &seen);
    let sent = payload(len);
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    s.write_all(&sent).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let _ = read_until_closed(&mut s);
    expect_all_delivered(&seen, &sent);
    server.stop();
}

#[test]
fn plain_paused_after_every_chunk_then_end_of_stream_loses_nothing_edge() {
    let reading = Reading {
        edge: true,
        max_input: 4 << 10,
        chunk: 1000,
    };
    plain("r11f2-plain-et", reading, 64 << 10);
}

#[test]
fn plain_paused_after_every_chunk_then_end_of_stream_loses_nothing_level() {
    let reading = Reading {
        edge: false,
        max_input: 4 << 10,
        chunk: 1000,
    };
    plain("r11f2-plain-lt", reading, 64 << 10);
}

/// Without the peer's end of stream: what the callback left when it paused must come
/// again on resuming, with no new byte to announce it. (Failed: the callback never got
/// the rest; timed out after 10 s.)
#[test]
fn plain_paused_and_resumed_during_the_callback_gets_its_input_again_without_new_bytes() {
    init_log();
    let seen = Arc::new(Seen::default());
    let reading = Reading {
        edge: true,
        max_input: 4 << 10,
        chunk: 1000,
    };
    #[cfg(feature = "tls")]
    let server = server("r11f2-plain-open", reading, None, &seen);
    #[cfg(not(feature = "tls"))]
    let server = server("r11f2-plain-open", reading, &seen);
    let sent = payload(4 << 10);
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    s.write_all(&sent).unwrap();
    wait_until("every byte delivered, the connection open", || {
        seen.got.lock().unwrap().len() == sent.len()
    });
    assert!(*seen.got.lock().unwrap() == sent);
    s.shutdown(Shutdown::Write).unwrap();
    let _ = read_until_closed(&mut s);
    expect_all_delivered(&seen, &sent);
    server.stop();
}

#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use util::pki::pki;

    /// The client sends `len` bytes, its `close_notify` and its end of stream in one
    /// write (one read can bring all of it: plaintext rustls holds past `max_input`,
    /// the `close_notify` and the end of stream at once).
    fn over_tls(name: &'static str, reading: Reading, len: usize) {
        init_log();
        let pki = pki();
        let seen = Arc::new(Seen::default());
        let server = server(name, reading, Some(pki.server_config()), &seen);
        let sent = payload(len);
        let (mut sock, mut conn) = pki.handshaken(server.addr());
        conn.writer().write_all(&sent).unwrap();
        conn.send_close_notify();
        let wire = util::pki::records(&mut conn);
        sock.set_write_timeout(Some(LIMIT)).unwrap();
        sock.write_all(&wire).unwrap();
        sock.shutdown(Shutdown::Write).unwrap();
        let _ = read_until_closed(&mut sock);
        expect_all_delivered(&seen, &sent);
        server.stop();
    }

    #[test]
    fn tls_paused_after_every_chunk_then_close_notify_loses_nothing_edge() {
        let reading = Reading {
            edge: true,
            max_input: 4 << 10,
            chunk: 1000,
        };
        over_tls("r11f2-tls-et", reading, 64 << 10);
    }

    #[test]
    fn tls_paused_after_every_chunk_then_close_notify_loses_nothing_level() {
        let reading = Reading {
            edge: false,
            max_input: 4 << 10,
            chunk: 1000,
        };
        over_tls("r11f2-tls-lt", reading, 64 << 10);
    }

    #[test]
    fn tls_paused_with_small_records_loses_nothing() {
        // Many small records (one per write), each bigger than what one callback takes.
        init_log();
        let pki = pki();
        let seen = Arc::new(Seen::default());
        let reading = Reading {
            edge: true,
            max_input: 1 << 10,
            chunk: 300,
        };
        let server = server("r11f2-tls-small", reading, Some(pki.server_config()), &seen);
        let sent = payload(20_000);
        let (mut sock, mut conn) = pki.handshaken(server.addr());
        for part in sent.chunks(700) {
            conn.writer().write_all(part).unwrap();
        }
        conn.send_close_notify();
        let wire = util::pki::records(&mut conn);
        sock.set_write_timeout(Some(LIMIT)).unwrap();
        sock.write_all(&wire).unwrap();
        sock.shutdown(Shutdown::Write).unwrap();
        let _ = read_until_closed(&mut sock);
        expect_all_delivered(&seen, &sent);
        server.stop();
    }
}
