//! Review round 11 of TLS connections: states the other TLS tests do not combine, against
//! real peers (rustls, and records it would not send, encrypted by hand with its keys)
//! over loopback with real threads. Each test here failed when the review helper wrote
//! it (its doc says how).
#![cfg(feature = "tls")]

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use duo_net::tls::rustls;
use duo_net::{CloseReason, TcpServer};
use duo_testkit::{wait_until, LIMIT};
use rustls::crypto::cipher::{MessageEncrypter, OutboundPlainMessage};
use rustls::{ConnectionTrafficSecrets, ContentType, ProtocolVersion, SupportedCipherSuite};

use util::pki::{client_conn, pki, records};
use util::{localhost, TestServer};

/// What a server saw of its one connection.
#[derive(Default)]
struct One {
    messages: Mutex<Vec<u8>>,
    reason: Mutex<Option<CloseReason>>,
}

/// A TLS 1.2 client driven by hand past rustls: after the handshake (done by rustls), it
/// encrypts records rustls would not send itself (a renegotiation's `ClientHello`).
struct RawTls12 {
    sock: TcpStream,
    enc: Box<dyn MessageEncrypter>,
    seq: u64,
    /// Bytes written to the socket.
    written: u64,
}

impl RawTls12 {
    fn connect(pki: &util::pki::Pki, addr: std::net::SocketAddr, first: &[u8]) -> RawTls12 {
        let mut config = (*pki.tls12_client()).clone();
        config.enable_secret_extraction = true;
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(LIMIT)).unwrap();
        let mut conn = client_conn(std::sync::Arc::new(config));
        let mut written = 0;
        while conn.is_handshaking() {
            written += conn.complete_io(&mut sock).unwrap().1 as u64;
        }
        conn.writer().write_all(first).unwrap();
        let wire = records(&mut conn);
        sock.write_all(&wire).unwrap();
        written += wire.len() as u64;
        let Some(SupportedCipherSuite::Tls12(suite)) = conn.negotiated_cipher_suite() else {
            panic!("not TLS 1.2");
        };
        let (seq, secrets) = conn.dangerous_extract_secrets().unwrap().tx;
        let enc = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            | ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                suite
                    .aead_alg
                    .encrypter(key, &iv.as_ref()[..4], &iv.as_ref()[4..])
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                suite.aead_alg.encrypter(key, iv.as_ref(), &[])
            }
            _ => panic!("an unexpected cipher"),
        };
        RawTls12 {
            sock,
            enc,
            seq,
            written,
        }
    }

    /// Sends one record of `typ` with `payload`, encrypted.
    fn send(&mut self, typ: ContentType, payload: &[u8]) {
        let msg = OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_2,
            payload: payload.into(),
        };
        let record = self.enc.encrypt(msg, self.seq).unwrap().encode();
        self.seq += 1;
        self.sock.write_all(&record).unwrap();
        self.written += record.len() as u64;
    }
}

/// A `ClientHello` handshake message (without its record header), as a TLS 1.2 rustls
/// client first sends it.
fn client_hello(pki: &util::pki::Pki) -> Vec<u8> {
    let wire = records(&mut client_conn(pki.tls12_client()));
    let len = usize::from(u16::from_be_bytes([wire[3], wire[4]]));
    wire[5..5 + len].to_vec()
}

/// After our `shutdown()` (`close_notify` sent, write side shut), a TLS 1.2 peer asks to
/// renegotiate: rustls answers with a `no_renegotiation` warning alert, a record after our
/// `close_notify`, which went to the socket whose write side was shut: `EPIPE`, and the
/// connection, which the peer then ended cleanly (its own `close_notify`), closed with
/// `Error(BrokenPipe)` instead of `Peer`. Failed: closed with `Error(BrokenPipe)`.
#[test]
fn a_renegotiation_asked_after_our_close_notify_is_no_broken_pipe() {
    let pki = pki();
    let config = pki.server_config();
    let one = Arc::new(One::default());
    let (o1, o2) = (one.clone(), one.clone());
    let server = TestServer::start(move || {
        TcpServer::builder("reneg-after-shut", localhost())
            .io_threads(1)
            .tls(config)
            .on_message(move |ctx, input| {
                o1.messages.lock().unwrap().extend_from_slice(input.peek());
                input.consume_all();
                ctx.shutdown();
            })
            .on_close(move |conn| {
                *o2.reason.lock().unwrap() = conn.close_reason();
            })
    });
    let mut peer = RawTls12::connect(&pki, server.addr(), b"bye");
    // The server's close_notify, then its end of stream: its write side is shut.
    let mut rest = Vec::new();
    peer.sock.read_to_end(&mut rest).unwrap();
    assert!(!rest.is_empty(), "no close_notify");
    peer.send(ContentType::Handshake, &client_hello(&pki));
    peer.send(ContentType::Alert, &[1, 0]); // close_notify
    wait_until("the connection closed", || {
        one.reason.lock().unwrap().is_some()
    });
    let reason = one.reason.lock().unwrap().unwrap();
    assert_eq!(reason, CloseReason::Peer);
    server.stop();
}

/// The sizes of the records in `wire` (with their headers).
fn record_sizes(mut wire: &[u8]) -> Vec<usize> {
    let mut sizes = Vec::new();
    while wire.len() >= 5 {
        let len = 5 + usize::from(u16::from_be_bytes([wire[3], wire[4]]));
        sizes.push(len);
        wire = &wire[len.min(wire.len())..];
    }
    sizes
}

/// As above, with our `close_notify` still queued behind a large reply (write side
/// draining): the `no_renegotiation` alert was queued after `close_notify`, and the peer
/// got a record after it. Failed: two alert-sized records after the reply, not one.
#[test]
fn no_record_follows_our_close_notify_while_the_output_drains() {
    const REPLY: usize = 4 << 20;
    let pki = pki();
    let config = pki.server_config();
    let one = Arc::new(One::default());
    let (o1, o2) = (one.clone(), one.clone());
    let server = TestServer::start(move || {
        TcpServer::builder("reneg-while-draining", localhost())
            .io_threads(1)
            .tls(config)
            .on_message(move |ctx, input| {
                o1.messages.lock().unwrap().extend_from_slice(input.peek());
                input.consume_all();
                assert!(ctx.send(&vec![b'r'; REPLY]));
                ctx.shutdown();
            })
            .on_close(move |conn| {
                *o2.reason.lock().unwrap() = conn.close_reason();
            })
    });
    let mut peer = RawTls12::connect(&pki, server.addr(), b"bye");
    wait_until("the server got the request", || {
        one.messages.lock().unwrap().as_slice() == b"bye"
    });
    peer.send(ContentType::Handshake, &client_hello(&pki));
    peer.send(ContentType::Alert, &[1, 0]); // close_notify
    let written = peer.written;
    server.wait_for_stats("the server read all the peer sent", |s| {
        s.per_loop.iter().map(|l| l.bytes_in).sum::<u64>() >= written
    });
    let mut wire = Vec::new();
    peer.sock.read_to_end(&mut wire).unwrap();
    let sizes = record_sizes(&wire);
    // The reply's records are all far larger than an alert's (31 bytes with AES-GCM).
    let small_at_end = sizes.iter().rev().take_while(|&&n| n < 100).count();
    assert_eq!(
        small_at_end,
        1,
        "records at the end: {:?}",
        &sizes[sizes.len().saturating_sub(4)..]
    );
    wait_until("the connection closed", || {
        one.reason.lock().unwrap().is_some()
    });
    assert_eq!(one.reason.lock().unwrap().unwrap(), CloseReason::Peer);
    server.stop();
}
