//! Review, round 6 (TLS): combinations the other TLS tests do not make.
//!
//! - A server whose rustls configuration accepts TLS 1.3 early data (0-RTT,
//!   `max_early_data_size`): rustls keeps early data apart from the other plaintext
//!   (`ServerConnection::early_data`), which duo never read, so a resumed client's first
//!   bytes were acknowledged to it as accepted and then silently lost.
//!
//! Every wait has a deadline.
#![cfg(feature = "tls")]

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use duo_net::tls::rustls;
use duo_testkit::LIMIT;

use util::pki::{client_conn, pki, Pki};
use util::{echo_builder, init_log, localhost, TestServer};

/// The test server configuration, accepting up to 16 KiB of early data.
fn early_data_server(pki: &Pki) -> TestServer {
    let mut config = (*pki.server_config()).clone();
    config.max_early_data_size = 16 << 10;
    let config = Arc::new(config);
    TestServer::start(move || {
        echo_builder("early-data", localhost())
            .io_threads(1)
            .tls(config)
    })
}

/// Reads from a rustls client until `want` bytes of plaintext came, the server's
/// `close_notify`, or nothing for [`LIMIT`] (the socket's read timeout).
fn read_exactly(sock: &mut TcpStream, conn: &mut rustls::ClientConnection, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < want {
        match conn.reader().read_to_end(&mut got) {
            Ok(_) => break, // close_notify
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
        if got.len() >= want {
            break;
        }
        match conn.complete_io(&mut *sock) {
            Ok(_) => {}
            // The read timeout (LIMIT): what came is all there is.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    got
}

#[test]
fn early_data_accepted_by_the_configuration_reaches_the_application() {
    init_log();
    let pki = pki();
    let server = early_data_server(&pki);
    let mut client = (*pki.client_config()).clone();
    client.enable_early_data = true;
    let client = Arc::new(client);

    // A first connection gets the session tickets (sent after the handshake).
    {
        let mut sock = TcpStream::connect(server.addr()).unwrap();
        sock.set_read_timeout(Some(LIMIT)).unwrap();
        let mut conn = client_conn(client.clone());
        conn.writer().write_all(b"first").unwrap();
        assert_eq!(read_exactly(&mut sock, &mut conn, 5), b"first");
        conn.send_close_notify();
        let _ = conn.complete_io(&mut sock);
    }

    // The second resumes and sends its first bytes as early data.
    let mut sock = TcpStream::connect(server.addr()).unwrap();
    sock.set_read_timeout(Some(LIMIT)).unwrap();
    let mut conn = client_conn(client);
    let mut early = conn.early_data().expect("a ticket allowing early data");
    early.write_all(b"early ").unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    assert!(
        conn.is_early_data_accepted(),
        "the server took the early data"
    );
    conn.writer().write_all(b"late").unwrap();
    assert_eq!(
        String::from_utf8_lossy(&read_exactly(&mut sock, &mut conn, 10)),
        "early late",
        "the early data was echoed, before what came after the handshake"
    );
    server.stop();
}
