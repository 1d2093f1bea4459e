//! A TLS client's failed handshakes are failed connect attempts: each reaches
//! `on_connect_failed`, and `max_attempts` bounds them as it bounds refused connects,
//! with or without `reconnect`. (They used to count as connections that closed: no
//! callback, and a reconnecting client tried again for ever whatever `max_attempts`
//! said.) A handshake that `stop` cuts short is no failure.
//!
//! Every wait has a deadline; "no further attempt" is watched over a measured window.
#![cfg(feature = "tls")]

mod util;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duo_net::tls;
use duo_net::{CloseReason, TcpClient, TlsFailure};
use duo_reactor::EventLoopThread;
use duo_testkit::wait_until;
use util::shared::{settle, watch};
use util::{init_log, localhost, TestServer};

/// `(kind, attempts, will_retry)` of each `on_connect_failed`, and whether any
/// connection callback ran.
#[derive(Default)]
struct Seen {
    failures: Mutex<Vec<(ErrorKind, u32, bool)>>,
    ups: Mutex<usize>,
}

impl Seen {
    fn failures(&self) -> Vec<(ErrorKind, u32, bool)> {
        self.failures.lock().unwrap().clone()
    }
}

/// A reconnecting (or not) TLS client of `addr` trusting `pki`, giving up after three
/// failed attempts, with short retry delays and handshake timeout.
fn client(
    name: &str,
    addr: SocketAddr,
    pki: &util::pki::Pki,
    reconnect: bool,
    seen: &Arc<Seen>,
    lp: &EventLoopThread,
) -> TcpClient {
    let (s1, s2) = (seen.clone(), seen.clone());
    TcpClient::builder(name, addr)
        .tls(pki.client_config(), tls::server_name("localhost").unwrap())
        .tls_handshake_timeout(Duration::from_millis(100))
        .reconnect(reconnect)
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .max_attempts(3)
        .on_connection(move |_| *s1.ups.lock().unwrap() += 1)
        .on_message(|_, input| input.consume_all())
        .on_connect_failed(move |f| {
            s2.failures
                .lock()
                .unwrap()
                .push((f.error.kind(), f.attempts, f.will_retry))
        })
        .connect(lp.handle())
}

/// The three failures a client that gives up after three attempts reports, then nothing
/// more: no fourth attempt, no connection callback.
fn gives_up_after_three(name: &str, c: &TcpClient, seen: &Seen, kind: ErrorKind) {
    wait_until("three failed attempts", || seen.failures().len() >= 3);
    let window = watch(Duration::from_millis(300));
    assert_eq!(
        seen.failures(),
        [(kind, 1, true), (kind, 2, true), (kind, 3, false)],
        "{name}: failures seen within {window:?} after the third"
    );
    assert_eq!(c.attempts(), 3, "{name}: attempts");
    assert_eq!(
        *seen.ups.lock().unwrap(),
        0,
        "{name}: a connection callback ran"
    );
    assert!(c.connection().is_none());
}

/// Against a plain TCP echo server (it echoes the ClientHello back: not a TLS record the
/// client accepts), and against a TLS server whose certificate the client does not trust,
/// with and without `reconnect`.
#[test]
fn failed_handshakes_count_against_max_attempts() {
    init_log();
    let (ours, theirs) = (util::pki::pki(), util::pki::pki());
    let plain = TestServer::start(|| util::echo_builder("tls-attempts-plain", localhost()));
    let config = theirs.server_config();
    let bad_ca = TestServer::start(move || {
        util::echo_builder("tls-attempts-bad-ca", localhost())
            .io_threads(1)
            .tls(config)
    });
    let lp = EventLoopThread::spawn("tls-attempts", None).unwrap();
    for (name, addr) in [("plain", plain.addr()), ("bad-ca", bad_ca.addr())] {
        for reconnect in [true, false] {
            let name = format!("{name}, reconnect {reconnect}");
            let seen = Arc::new(Seen::default());
            let c = client(&name, addr, &ours, reconnect, &seen, &lp);
            gives_up_after_three(&name, &c, &seen, ErrorKind::InvalidData);
            assert_eq!(
                c.stats().closes.of(CloseReason::Tls(TlsFailure::Handshake)),
                3,
                "{name}"
            );
            drop(c);
            settle(lp.handle());
        }
    }
    lp.stop().unwrap();
    plain.stop();
    bad_ca.stop();
}

/// A server that accepts and never answers: each handshake times out, a failed attempt
/// with `TimedOut`.
#[test]
fn handshake_timeouts_count_against_max_attempts() {
    init_log();
    let pki = util::pki::pki();
    // Connects complete in the kernel's accept queue; nobody reads or answers.
    let silent = TcpListener::bind(localhost()).unwrap();
    let lp = EventLoopThread::spawn("tls-attempts-silent", None).unwrap();
    let seen = Arc::new(Seen::default());
    let c = client(
        "silent",
        silent.local_addr().unwrap(),
        &pki,
        true,
        &seen,
        &lp,
    );
    gives_up_after_three("silent", &c, &seen, ErrorKind::TimedOut);
    assert_eq!(
        c.stats()
            .closes
            .of(CloseReason::Tls(TlsFailure::HandshakeTimeout)),
        3
    );
    drop(c);
    settle(lp.handle());
    lp.stop().unwrap();
}

/// `stop` while a handshake is under way ends it without a failure callback, and the
/// client makes no further attempt.
#[test]
fn stop_during_a_handshake_is_no_failed_attempt() {
    init_log();
    let pki = util::pki::pki();
    let silent = TcpListener::bind(localhost()).unwrap();
    let lp = EventLoopThread::spawn("tls-attempts-stop", None).unwrap();
    let seen = Arc::new(Seen::default());
    let c = client(
        "stopped",
        silent.local_addr().unwrap(),
        &pki,
        true,
        &seen,
        &lp,
    );
    // The ClientHello went out: the handshake is under way.
    wait_until("the client hello", || c.stats().bytes_out > 0);
    c.stop();
    wait_until("the close", || c.stats().closes.total() > 0);
    let window = watch(Duration::from_millis(200));
    assert_eq!(
        seen.failures(),
        [],
        "failures within {window:?} of the stop"
    );
    assert_eq!(c.attempts(), 1);
    drop(c);
    settle(lp.handle());
    lp.stop().unwrap();
}
