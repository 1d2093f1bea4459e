//! HTTPS (`HttpServerBuilder::tls`): a rustls client keeps a connection alive over TLS
//! (a GET, then a chunked POST, answered in order); a client that speaks plain HTTP to it
//! is closed without a response and disturbs nobody; curl verifies the server and gets
//! its answer. The certificates are made by the test (`duo_testkit::TestCerts`).

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use duo_net::tls::{self, rustls};
use duo_testkit::{run_within, wait_until, wait_until_within, TestCerts, LIMIT};
use util::{start, test_builder};

/// Splits the responses in `bytes` (each with a `Content-Length`): (status, body) each.
fn responses(mut bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut fields = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut fields);
        let httparse::Status::Complete(head) = resp.parse(bytes).expect("a response") else {
            panic!("a partial response: {:?}", String::from_utf8_lossy(bytes));
        };
        let len: usize = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map_or(0, |h| {
                std::str::from_utf8(h.value).unwrap().parse().unwrap()
            });
        out.push((resp.code.unwrap(), bytes[head..head + len].to_vec()));
        bytes = &bytes[head + len..];
    }
    out
}

#[test]
fn a_rustls_client_is_served_over_tls() {
    let certs = TestCerts::new("http-tls");
    let config = tls::server_config_from_pem(certs.path("cert.pem"), certs.path("key.pem"))
        .expect("the server's TLS configuration");
    let server = start(test_builder().tls(config));

    // Plain HTTP to the TLS port: no response, the connection closed.
    let mut plain = TcpStream::connect(server.local_addr()).unwrap();
    plain.set_read_timeout(Some(LIMIT)).unwrap();
    plain
        .write_all(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    // Over TLS: two requests on one connection, the second chunked and the last.
    let client = tls::client_config_from_pem(certs.path("ca.pem")).unwrap();
    let name = tls::server_name("localhost").unwrap();
    let session = rustls::ClientConnection::new(client, name).unwrap();
    let tcp = TcpStream::connect(server.local_addr()).unwrap();
    tcp.set_read_timeout(Some(LIMIT)).unwrap();
    let mut stream = rustls::StreamOwned::new(session, tcp);
    stream
        .write_all(
            b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n\
              POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
              Connection: close\r\n\r\n6\r\nsecret\r\n0\r\n\r\n",
        )
        .unwrap();
    let mut bytes = Vec::new();
    // The server's close_notify ends the stream cleanly.
    stream
        .read_to_end(&mut bytes)
        .expect("a clean end of the TLS stream");
    assert_eq!(
        responses(&bytes),
        [(200, b"hello".to_vec()), (200, b"secret".to_vec())]
    );
    drop((stream, plain));
    wait_until("both connections counted closed", || {
        server.stats().active == 0
    });
    assert_eq!(server.stats().accepted, 2);
}

/// A client that connects and never begins its handshake is closed at the header timeout
/// (not duo-net's 10 s handshake timeout, which would hold a place of `max_connections`).
#[test]
fn a_client_that_never_handshakes_is_closed_at_the_header_timeout() {
    let certs = TestCerts::new("http-tls-silent");
    let config =
        tls::server_config_from_pem(certs.path("cert.pem"), certs.path("key.pem")).unwrap();
    let server = start(
        test_builder()
            .tls(config)
            .header_timeout(std::time::Duration::from_millis(200)),
    );
    let mut silent = TcpStream::connect(server.local_addr()).unwrap();
    silent.set_read_timeout(Some(LIMIT)).unwrap();
    wait_until("the connection to be accepted", || {
        server.stats().accepted == 1
    });
    wait_until_within(
        std::time::Duration::from_secs(5),
        "the silent connection to be closed well before 10 s",
        || server.stats().active == 0,
    );
    let mut got = Vec::new();
    let _ = silent.read_to_end(&mut got);
    assert!(got.is_empty(), "{got:?}");
}

#[test]
fn curl_gets_over_https() {
    if Command::new("curl").arg("--version").output().is_err() {
        println!("curl is not installed: skipping the curl test");
        return;
    }
    let certs = TestCerts::new("http-tls-curl");
    let config =
        tls::server_config_from_pem(certs.path("cert.pem"), certs.path("key.pem")).unwrap();
    let server = start(test_builder().tls(config));
    let port = server.local_addr().port();
    let out = run_within(
        Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert", &certs.path("ca.pem")])
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .arg(format!("https://localhost:{port}/hello")),
        LIMIT,
    )
    .expect("curl");
    assert!(out.status.success(), "curl failed: {}", out.stderr);
    assert_eq!(out.stdout, "hello");
}
