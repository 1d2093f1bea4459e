//! `echo serve --tls-cert --tls-key` against real TLS clients: `openssl s_client`, `curl`
//! (each skipped with one line if missing), and rustls, also with `--processes`; and the
//! flags' usage errors. The certificates are made by the test (rcgen) in a temporary
//! directory removed at the end.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{Server, IO_TIMEOUT};
use duo_net::tls::{self, rustls};
use duo_testkit::{run_within, TestCerts};

/// A server with TLS on the test certificates, and `extra` arguments.
fn tls_server(certs: &TestCerts, extra: &[&str]) -> Server {
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    let mut args = vec!["--tls-cert", &cert, "--tls-key", &key, "--io-threads", "1"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Whether `program` can be run here; prints a line saying the test is skipped if not.
fn have(program: &str, test: &str) -> bool {
    let ok = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        println!("{test}: skipped, `{program}` is not installed");
    }
    ok
}

/// One echo through a rustls client that trusts the test CA.
fn rustls_echo(addr: std::net::SocketAddr, ca: &Path, msg: &[u8]) {
    let config = tls::client_config_from_pem(ca).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let conn =
        rustls::ClientConnection::new(config, tls::server_name("localhost").unwrap()).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

#[test]
fn openssl_s_client_gets_its_line_echoed() {
    if !have("openssl", "openssl_s_client_gets_its_line_echoed") {
        return;
    }
    let certs = TestCerts::new("openssl");
    let server = tls_server(&certs, &[]);
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-verify_return_error",
            "-servername",
            "localhost",
        ])
        .args(["-CAfile", &certs.path("ca.pem")])
        .args(["-connect", &server.addr().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start openssl s_client");
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello through openssl\n").unwrap();
    stdin.flush().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(IO_TIMEOUT);
    // Done with it (it waits for more input): killed by its PID, then reaped.
    let _ = duo_testkit::send_signal(pid, "KILL");
    let _ = child.wait();
    let line = line.expect("s_client printed the echo in time");
    assert_eq!(line, "hello through openssl\n");
}

#[test]
fn curl_completes_a_tls_handshake_with_the_echo_server() {
    if !have(
        "curl",
        "curl_completes_a_tls_handshake_with_the_echo_server",
    ) {
        return;
    }
    let certs = TestCerts::new("curl");
    let server = tls_server(&certs, &[]);
    let port = server.addr().port();
    let out = run_within(
        Command::new("curl")
            .args(["-sS", "-v", "--max-time", "5", "--http1.1"])
            .args(["--cacert", &certs.path("ca.pem")])
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .arg(format!("https://localhost:{port}/hello")),
        Duration::from_secs(15),
    )
    .expect("curl ran");
    // The handshake completed and the certificate was verified; the echo server then sends
    // curl's own request back, which curl cannot take as an HTTP response.
    assert!(
        out.stderr.contains("SSL connection using TLSv1."),
        "no TLS session in curl's log:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("SSL certificate verify ok"),
        "{}",
        out.stderr
    );
    assert!(!out.status.success(), "an echo is no HTTP response");
    // Still serving.
    rustls_echo(
        server.addr(),
        Path::new(&certs.path("ca.pem")),
        b"after curl",
    );
}

#[test]
fn rustls_clients_with_worker_processes() {
    let certs = TestCerts::new("processes");
    let server = tls_server(&certs, &["--processes", "2"]);
    for i in 0..6 {
        rustls_echo(
            server.addr(),
            Path::new(&certs.path("ca.pem")),
            format!("message {i}").as_bytes(),
        );
    }
}

#[test]
fn tls_flag_errors_are_usage_errors() {
    let certs = TestCerts::new("usage");
    let echo = env!("CARGO_BIN_EXE_echo");
    let run = |args: &[&str]| {
        run_within(
            Command::new(echo)
                .args(["--listen", "127.0.0.1:0"])
                .args(args),
            Duration::from_secs(10),
        )
        .expect("echo exits")
    };
    let only_cert = run(&["--tls-cert", &certs.path("cert.pem")]);
    assert_eq!(only_cert.status.code(), Some(2), "{}", only_cert.stderr);
    let only_key = run(&["--tls-key", &certs.path("key.pem")]);
    assert_eq!(only_key.status.code(), Some(2), "{}", only_key.stderr);
    let missing = run(&[
        "--tls-cert",
        "/nonexistent/cert.pem",
        "--tls-key",
        &certs.path("key.pem"),
    ]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        missing.stderr.contains("/nonexistent/cert.pem"),
        "{}",
        missing.stderr
    );
    // A key where the certificate should be: no certificate in it.
    let swapped = run(&[
        "--tls-cert",
        &certs.path("key.pem"),
        "--tls-key",
        &certs.path("key.pem"),
    ]);
    assert_eq!(swapped.status.code(), Some(2));
    assert!(
        swapped.stderr.contains("no certificate"),
        "{}",
        swapped.stderr
    );
}
