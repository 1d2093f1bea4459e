//! `bank serve --tls-cert --tls-key` and `bank client --tls --ca`: the client binary over
//! TLS (verifying the server as `localhost`), a client that does not trust the server,
//! and the serve flags' usage errors. Certificates are made by the test (`duo_testkit::TestCerts`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Server, TempDir, BANK, PW};
use duo_testkit::{run_within, TestCerts};

#[test]
fn the_client_speaks_tls_to_a_tls_server() {
    let dir = TempDir::new("tls");
    let (good, other) = (TestCerts::new("bank-good"), TestCerts::new("bank-other"));
    let (cert, key) = (good.path("cert.pem"), good.path("key.pem"));
    let server = Server::start(
        &dir.join("bank.db"),
        &["--tls-cert", &cert, "--tls-key", &key],
    );
    let connect = format!("localhost:{}", server.addr.port());
    let client = |ca: &str, args: &[&str]| {
        run_within(
            Command::new(BANK)
                .args(["client", "--tls", "--ca", ca, "--connect", &connect])
                .args(args),
            Duration::from_secs(20),
        )
        .expect("bank client exits")
    };
    let good_ca = good.path("ca.pem");
    let out = client(
        &good_ca,
        &[
            "REGISTER", "tess", PW, ";", "LOGIN", "tess", PW, ";", "BALANCE",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "OK registered\nOK welcome tess\nOK 0\n");
    let refused = client(&other.path("ca.pem"), &["PING"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(refused.stderr.contains("certificate"), "{}", refused.stderr);
    // Still serving.
    let out = client(&good_ca, &["PING"]);
    assert_eq!(out.stdout, "PONG\n");
}

#[test]
fn tls_serve_flags_need_each_other_and_usable_files() {
    let dir = TempDir::new("tls-usage");
    let good = TestCerts::new("bank-usage");
    let db = dir.join("bank.db").to_string_lossy().into_owned();
    let serve = |args: &[&str]| {
        run_within(
            Command::new(BANK)
                .args(["serve", "--listen", "127.0.0.1:0", "--db", &db])
                .args(args),
            Duration::from_secs(20),
        )
        .expect("bank serve exits")
    };
    let out = serve(&["--tls-cert", &good.path("cert.pem")]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    let out = serve(&[
        "--tls-cert",
        "/nonexistent.pem",
        "--tls-key",
        &good.path("key.pem"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("/nonexistent.pem"), "{}", out.stderr);
}
