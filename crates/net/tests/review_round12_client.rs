//! Review round 12 of `TcpClient`, plain and TLS (`crates/net/src/client/`, the client
//! side of `crates/net/src/tls*`): the suspects of the last review, each confirmed by a
//! test that failed before its fix.
//!
//! - `connect()` on a client whose loop is gone only logged: neither `on_connect_failed`
//!   nor the caller learnt of it. It is now a failed attempt reported to
//!   `on_connect_failed` (`NotConnected`, not retried) on the calling thread; a callback
//!   that calls `connect()` again there is not called back recursively;
//! - `connection()` returned the connection `stop()` or `disconnect()` was ending until
//!   it was down, and a send on it was accepted (`Ok`) and then dropped: it now returns
//!   `None` as soon as the connection is being ended;
//! - a TLS client whose handshake completed in the loop's batch of events during which
//!   another thread called `stop()` ran the user's "up" callback after `stop()` had
//!   returned (and its "down" callback after it): a connection `stop()` ended before it
//!   was up now never comes up for the application;
//! - TLS 0-RTT on a server whose configuration accepts more early data than its
//!   `max_input`: early data waits in the input until the handshake completes, so a
//!   client sending what the server's ticket allowed had its connection closed as input
//!   too large and its (acknowledged) early data lost. The server now accepts and
//!   announces at most `max_input` of it; and early data filling the input exactly no
//!   longer counts as too much (the full buffer refused the look for more).
//!
//! Every wait is bounded.

mod util;

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use duo_net::{EventLoop, TcpClient};
use duo_reactor::EventLoopThread;
use duo_testkit::{wait_until, RefusedPort, LIMIT};
use util::{barrier, hold_loop, init_log};

/// What `on_connect_failed` saw: the error's kind, the attempt count, `will_retry`.
type Seen = Arc<Mutex<Vec<(std::io::ErrorKind, u32, bool)>>>;

/// `connect` (from the builder and again by hand) on a client whose loop was dropped:
/// each call is a failed attempt reported to `on_connect_failed`, not retried.
#[test]
fn connect_on_a_gone_loop_reports_a_failure() {
    init_log();
    let refused = RefusedPort::new();
    let lp = EventLoop::new().unwrap();
    let handle = lp.handle();
    drop(lp);
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    let client = TcpClient::builder("gone-loop", refused.addr())
        .on_connect_failed(move |f| {
            s2.lock()
                .unwrap()
                .push((f.error.kind(), f.attempts, f.will_retry))
        })
        .connect(&handle);
    assert_eq!(
        *seen.lock().unwrap(),
        [(std::io::ErrorKind::NotConnected, 1, false)],
        "the builder's connect on a gone loop"
    );
    client.connect();
    assert_eq!(seen.lock().unwrap().len(), 2, "connect() on a gone loop");
    assert!(client.connection().is_none());
    drop(client);
}

/// A connect-failed callback that calls `connect()` again on a client whose loop is
/// gone: that call is not reported from inside the report (it would recurse for ever).
#[test]
fn connect_from_the_failure_callback_of_a_gone_loop_does_not_recurse() {
    init_log();
    let refused = RefusedPort::new();
    let lp = EventLoop::new().unwrap();
    let handle = lp.handle();
    drop(lp);
    let me: Arc<OnceLock<TcpClient>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let (m2, c2) = (me.clone(), calls.clone());
    let client = TcpClient::builder("gone-loop-again", refused.addr())
        .on_connect_failed(move |_| {
            c2.fetch_add(1, Ordering::SeqCst);
            if let Some(c) = m2.get() {
                c.connect();
            }
        })
        .connect(&handle);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    me.set(client).ok().unwrap();
    me.get().unwrap().connect();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one report per outer call");
}

/// After `stop()` (or `disconnect()`) returned, `connection()` does not hand out the
/// connection being ended: a send on it would be accepted and then dropped.
#[test]
fn connection_is_none_once_stop_or_disconnect_returned() {
    init_log();
    for drain in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let lp = EventLoopThread::spawn("r12-conn-after-stop", None).unwrap();
        let client = TcpClient::builder("conn-after-stop", listener.local_addr().unwrap())
            .connect(lp.handle());
        let (mut peer, _) = listener.accept().unwrap();
        wait_until("the client up", || client.connection().is_some());
        // Held: the close (or half-close) `stop` (or `disconnect`) queues waits.
        let release = hold_loop(lp.handle());
        if drain {
            client.disconnect();
        } else {
            client.stop();
        }
        let late = client.connection().map(|c| c.send(&b"late"[..]));
        release.send(()).unwrap();
        barrier(lp.handle());
        assert_eq!(
            late, None,
            "drain {drain}: connection() after the client was ended"
        );
        peer.set_read_timeout(Some(LIMIT)).unwrap();
        let mut got = Vec::new();
        let _ = peer.read_to_end(&mut got);
        assert!(got.is_empty(), "drain {drain}: {got:?}");
    }
}

/// The TLS cases (the `tls` feature, on by default).
#[cfg(feature = "tls")]
mod tls_cases {
    use super::*;
    use duo_net::tls::{self, rustls};
    use std::io::Write;
    use std::net::TcpStream;
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;
    use util::pki::pki;

    /// Reads the client's hello into `server` and returns the server's first flight.
    fn server_flight(sock: &mut TcpStream, server: &mut rustls::ServerConnection) -> Vec<u8> {
        sock.set_read_timeout(Some(LIMIT)).unwrap();
        let mut buf = [0u8; 16 * 1024];
        while !server.wants_write() {
            let n = sock.read(&mut buf).unwrap();
            assert!(n > 0, "the client closed during its hello");
            server.read_tls(&mut &buf[..n]).unwrap();
            server.process_new_packets().unwrap();
        }
        let mut flight = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut flight).unwrap();
        }
        flight
    }

    /// A certificate verifier that accepts any certificate, but only once the test thread
    /// lets it: it runs on the client's loop, in the middle of the handshake, after the
    /// connection checked that reading was not paused.
    #[derive(Debug)]
    struct HeldVerifier {
        provider: Arc<rustls::crypto::CryptoProvider>,
        entered: Mutex<mpsc::Sender<()>>,
        go: Mutex<mpsc::Receiver<()>>,
    }

    impl rustls::client::danger::ServerCertVerifier for HeldVerifier {
        fn verify_server_cert(
            &self,
            _end_entity: &rustls::pki_types::CertificateDer<'_>,
            _intermediates: &[rustls::pki_types::CertificateDer<'_>],
            _server_name: &rustls::pki_types::ServerName<'_>,
            _ocsp_response: &[u8],
            _now: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            let _ = self.entered.lock().unwrap().send(());
            let _ = self.go.lock().unwrap().recv_timeout(LIMIT);
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// Another thread calls `stop()` while a TLS client's handshake is being completed on
    /// its loop (here: while its certificate verifier runs): the client's "up" callback must
    /// not begin after `stop()` returned, nor its "down" and close callbacks (for the
    /// application it never was up).
    #[test]
    fn no_up_callback_after_a_cross_thread_stop_during_the_handshake() {
        init_log();
        let pki = pki();
        let lp = EventLoopThread::spawn("r12-up-after-stop", None).unwrap();
        let (entered_tx, entered) = mpsc::channel::<()>();
        let (go, go_rx) = mpsc::channel::<()>();
        let provider = tls::provider();
        let verifier = HeldVerifier {
            provider: provider.clone(),
            entered: Mutex::new(entered_tx),
            go: Mutex::new(go_rx),
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stopped = Arc::new(AtomicBool::new(false));
        let ups = Arc::new(AtomicUsize::new(0));
        let late_calls = Arc::new(AtomicUsize::new(0));
        let (s2, u2, l2, l3) = (
            stopped.clone(),
            ups.clone(),
            late_calls.clone(),
            late_calls.clone(),
        );
        let s3 = stopped.clone();
        let client = TcpClient::builder("tls-up-after-stop", listener.local_addr().unwrap())
            .tls(Arc::new(config), tls::server_name("localhost").unwrap())
            .on_connection(move |c| {
                if c.is_connected() {
                    u2.fetch_add(1, Ordering::SeqCst);
                }
                if s2.load(Ordering::SeqCst) {
                    l2.fetch_add(1, Ordering::SeqCst);
                }
            })
            .on_close(move |_| {
                if s3.load(Ordering::SeqCst) {
                    l3.fetch_add(1, Ordering::SeqCst);
                }
            })
            .connect(lp.handle());
        let (mut sock, _) = listener.accept().unwrap();
        let mut server = rustls::ServerConnection::new(pki.server_config()).unwrap();
        let flight = server_flight(&mut sock, &mut server);
        sock.write_all(&flight).unwrap();
        entered
            .recv_timeout(LIMIT)
            .expect("the client's verifier to run");
        client.stop();
        stopped.store(true, Ordering::SeqCst);
        go.send(()).unwrap();
        for _ in 0..3 {
            barrier(lp.handle());
        }
        wait_until("the TLS client closed", || {
            client.stats().closes.total() > 0
        });
        assert_eq!(
            late_calls.load(Ordering::SeqCst),
            0,
            "a callback began after stop() returned (ups: {})",
            ups.load(Ordering::SeqCst)
        );
        assert!(client.connection().is_none());
    }

    /// Reads from a rustls client until `want` bytes of plaintext came, or the server closed
    /// or said nothing for [`LIMIT`] (the socket's read timeout).
    fn read_plaintext(
        sock: &mut TcpStream,
        conn: &mut rustls::ClientConnection,
        want: usize,
    ) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < want {
            match conn.reader().read_to_end(&mut got) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
            if got.len() >= want {
                break;
            }
            match conn.complete_io(&mut *sock) {
                Ok((0, 0)) => break,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        got
    }

    /// A server whose rustls configuration accepts more early data (0-RTT) than its
    /// `max_input`: early data waits in the input until the handshake completes (no message
    /// callback can take it before), so a client that sent what the server's ticket allowed
    /// had its connection closed as input too large, its early data (reported accepted)
    /// lost. The limit announced to clients is now at most `max_input`, and all the data is
    /// echoed.
    #[test]
    fn early_data_announced_within_max_input() {
        init_log();
        let pki = pki();
        let mut config = (*pki.server_config()).clone();
        config.max_early_data_size = 16 << 10;
        let config = Arc::new(config);
        const MAX_INPUT: usize = 1024;
        let server = util::TestServer::start(move || {
            util::echo_builder("early-over-max-input", util::localhost())
                .io_threads(1)
                .max_input(MAX_INPUT)
                .tls(config)
        });
        let mut client = (*pki.client_config()).clone();
        client.enable_early_data = true;
        let client = Arc::new(client);

        // A first connection gets the session tickets (sent after the handshake).
        {
            let mut sock = TcpStream::connect(server.addr()).unwrap();
            sock.set_read_timeout(Some(LIMIT)).unwrap();
            let mut conn = util::pki::client_conn(client.clone());
            conn.writer().write_all(b"first").unwrap();
            assert_eq!(read_plaintext(&mut sock, &mut conn, 5), b"first");
            conn.send_close_notify();
            let _ = conn.complete_io(&mut sock);
        }

        // The second resumes and sends as much early data as its ticket allows.
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let mut sock = TcpStream::connect(server.addr()).unwrap();
        sock.set_read_timeout(Some(LIMIT)).unwrap();
        let mut conn = util::pki::client_conn(client);
        let mut early = conn.early_data().expect("a ticket allowing early data");
        let sent_early = early.write(&data).unwrap();
        assert!(sent_early > 0, "some early data allowed");
        while conn.is_handshaking() {
            if conn.complete_io(&mut sock).is_err() {
                break;
            }
        }
        let rest = if conn.is_early_data_accepted() {
            &data[sent_early..]
        } else {
            &data[..]
        };
        conn.writer().write_all(rest).unwrap();
        let got = read_plaintext(&mut sock, &mut conn, data.len());
        assert!(
            sent_early <= MAX_INPUT,
            "early data allowed: {sent_early} bytes, max_input {MAX_INPUT} (echoed {} of {})",
            got.len(),
            data.len()
        );
        assert_eq!(got.len(), data.len(), "all echoed");
        assert!(got == data);
        server.stop();
    }
}
