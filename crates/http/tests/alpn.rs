//! ALPN on HTTPS: duo-http speaks HTTP/1.x only, so a server configuration that lists
//! `h2` (one shared with an HTTP/2 server, say) must not let a client negotiate HTTP/2:
//! the client would then send the HTTP/2 preface, which this server refuses. The server
//! offers `http/1.1` (when the configuration lists it), and a client that offers both
//! gets it and is served.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use duo_net::tls::{self, rustls};
use duo_testkit::{TestCerts, LIMIT};
use util::{start, test_builder};

/// A handshake offering `offer`, then `GET /hello`: the protocol negotiated and the
/// response's first line.
fn negotiate(
    certs: &TestCerts,
    server: std::net::SocketAddr,
    offer: &[&[u8]],
) -> (Option<Vec<u8>>, String) {
    let mut client = (*tls::client_config_from_pem(certs.path("ca.pem")).unwrap()).clone();
    client.alpn_protocols = offer.iter().map(|p| p.to_vec()).collect();
    let name = tls::server_name("localhost").unwrap();
    let session = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
    let tcp = TcpStream::connect(server).unwrap();
    tcp.set_read_timeout(Some(LIMIT)).unwrap();
    let mut stream = rustls::StreamOwned::new(session, tcp);
    // A refused handshake fails the write (or the read): no response.
    let request = b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let mut bytes = Vec::new();
    if stream.write_all(request).is_ok() {
        let _ = stream.read_to_end(&mut bytes);
    }
    let alpn = stream.conn.alpn_protocol().map(<[u8]>::to_vec);
    let text = String::from_utf8_lossy(&bytes);
    (alpn, text.lines().next().unwrap_or("").to_string())
}

#[test]
fn a_configuration_listing_h2_negotiates_http_1_1() {
    let certs = TestCerts::new("http-alpn");
    let config =
        tls::server_config_from_pem(certs.path("cert.pem"), certs.path("key.pem")).unwrap();
    let mut shared = (*config).clone();
    shared.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let server = start(test_builder().tls(Arc::new(shared)));
    let addr = server.local_addr();
    let (alpn, first) = negotiate(&certs, addr, &[b"h2", b"http/1.1"]);
    assert_eq!(
        alpn.as_deref(),
        Some(&b"http/1.1"[..]),
        "negotiated {alpn:?}"
    );
    assert_eq!(first, "HTTP/1.1 200 OK");
    // A client that offers HTTP/2 alone finds no protocol in common; rustls then ends the
    // handshake (`no_application_protocol`), which is right: it would not speak HTTP/1.1.
    let (alpn, first) = negotiate(&certs, addr, &[b"h2"]);
    assert_eq!(alpn, None);
    assert!(first.is_empty(), "{first}");
    // Without ALPN the client is served as before.
    let (alpn, first) = negotiate(&certs, addr, &[]);
    assert_eq!(alpn, None);
    assert_eq!(first, "HTTP/1.1 200 OK");
}

/// A configuration listing only `h2`: nothing is offered, and a client without ALPN, or
/// one offering `http/1.1`, is served over HTTP/1.1.
#[test]
fn a_configuration_listing_only_h2_offers_nothing() {
    let certs = TestCerts::new("http-alpn-h2");
    let config =
        tls::server_config_from_pem(certs.path("cert.pem"), certs.path("key.pem")).unwrap();
    let mut h2 = (*config).clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    let server = start(test_builder().tls(Arc::new(h2)));
    let (alpn, first) = negotiate(&certs, server.local_addr(), &[]);
    assert_eq!((alpn, first.as_str()), (None, "HTTP/1.1 200 OK"));
    let (alpn, first) = negotiate(&certs, server.local_addr(), &[b"h2", b"http/1.1"]);
    assert_eq!(alpn, None, "h2 must not be negotiated");
    assert_eq!(first, "HTTP/1.1 200 OK");
}
