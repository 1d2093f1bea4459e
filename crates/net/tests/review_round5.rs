//! Review round 5: combinations around the recent changes that no other test combines:
//! input held while a connection is paused (the callback takes one line and pauses), the
//! peer resetting the connection meanwhile, and reading resumed after the peer is gone,
//! over TCP and over TLS (where the lines, and the peer's `close_notify`, were already
//! read out of the kernel and decrypted before the reset).
//!
//! Every wait has a deadline; resumes are done by the test once the state it waits for
//! is seen, not after a guessed sleep.
#![cfg(feature = "tls")]

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duo_net::{CloseReason, ConnState, TcpConnection, TcpServer};
use duo_testkit::wait_until;
use util::pki::{pki, records};
use util::{localhost, TestServer};

/// What a one-line-per-call server saw.
#[derive(Default)]
struct Lines {
    conn: Option<TcpConnection>,
    lines: Vec<Vec<u8>>,
    reason: Option<CloseReason>,
}

/// A server whose message callback takes one line per call and pauses reading after it
/// (the test resumes it); the connection and its close reason are recorded.
fn one_line_server(
    tls: Option<Arc<duo_net::tls::rustls::ServerConfig>>,
    seen: &Arc<Mutex<Lines>>,
) -> TestServer {
    let (s1, s2) = (seen.clone(), seen.clone());
    TestServer::start(move || {
        let b = TcpServer::builder("review5-lines", localhost())
            .io_threads(1)
            .on_connection(move |conn| {
                let mut s = s1.lock().unwrap();
                if conn.is_connected() {
                    s.conn = Some(conn.clone());
                } else {
                    s.reason = conn.close_reason();
                }
            })
            .on_message(move |ctx, input| {
                if let Some(nl) = input.peek().iter().position(|&b| b == b'\n') {
                    s2.lock().unwrap().lines.push(input.peek()[..nl].to_vec());
                    input.consume(nl + 1);
                    ctx.stop_reading();
                }
            });
        match tls {
            Some(config) => b.tls(config),
            None => b,
        }
    })
}

/// Resets `sock` (`SO_LINGER` 0, then close).
fn reset(sock: TcpStream) {
    socket2::SockRef::from(&sock)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(sock);
}

/// Three lines reach the server in one write; it takes the first and pauses. The peer
/// then resets the connection. Resuming after the peer is gone delivers the two lines
/// the server had already received (nothing it read is lost), one per resume, then the
/// connection closes with the reset.
fn lines_then_reset_while_paused(tls: bool) {
    util::init_log();
    let pki = pki();
    let seen = Arc::new(Mutex::new(Lines::default()));
    let server = one_line_server(tls.then(|| pki.server_config()), &seen);
    let sock = if tls {
        let (mut sock, mut conn) = pki.handshaken(server.addr());
        conn.writer().write_all(b"A\nB\nC\n").unwrap();
        conn.send_close_notify();
        sock.write_all(&records(&mut conn)).unwrap();
        sock
    } else {
        let mut sock = util::connect(server.addr());
        sock.write_all(b"A\nB\nC\n").unwrap();
        sock
    };
    wait_until("the first line", || seen.lock().unwrap().lines.len() == 1);
    let conn = seen.lock().unwrap().conn.clone().unwrap();
    reset(sock);
    wait_until("the server sees the peer gone", || {
        conn.state() != ConnState::Connected
    });
    for n in 2..=3 {
        conn.start_reading().unwrap();
        wait_until("the next line after resuming", || {
            seen.lock().unwrap().lines.len() >= n || conn.is_closed()
        });
    }
    conn.start_reading().ok();
    wait_until("the close", || seen.lock().unwrap().reason.is_some());
    let s = seen.lock().unwrap();
    assert_eq!(
        s.lines,
        [b"A".to_vec(), b"B".to_vec(), b"C".to_vec()],
        "TLS {tls}: the lines delivered"
    );
    assert!(
        matches!(
            s.reason,
            Some(CloseReason::Error(std::io::ErrorKind::ConnectionReset))
        ),
        "TLS {tls}: {:?}",
        s.reason
    );
    drop(s);
    server.stop();
}

#[test]
fn tcp_lines_then_reset_while_paused() {
    lines_then_reset_while_paused(false);
}

#[test]
fn tls_lines_then_reset_while_paused() {
    lines_then_reset_while_paused(true);
}
