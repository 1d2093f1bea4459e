//! `bank serve --tls-cert --tls-key` and `bank client --tls --ca`: the client binary over
//! TLS (verifying the server as `localhost`), a client that does not trust the server,
//! and the serve flags' usage errors. Certificates are made by the test (rcgen).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Server, TempDir, BANK, PW};
use duo_testkit::run_within;

/// Writes a CA and a certificate for `localhost` it signed (with its key) into `dir`.
fn write_certs(dir: &std::path::Path, tag: &str) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("bank test CA {tag}"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join(format!("{tag}-ca.pem")), ca.pem()).unwrap();
    std::fs::write(dir.join(format!("{tag}-cert.pem")), leaf.pem()).unwrap();
    std::fs::write(dir.join(format!("{tag}-key.pem")), key.serialize_pem()).unwrap();
}

fn path(dir: &TempDir, name: &str) -> String {
    dir.path().join(name).to_string_lossy().into_owned()
}

#[test]
fn the_client_speaks_tls_to_a_tls_server() {
    let dir = TempDir::new("tls");
    write_certs(dir.path(), "good");
    write_certs(dir.path(), "other");
    let (cert, key) = (path(&dir, "good-cert.pem"), path(&dir, "good-key.pem"));
    let server = Server::start(&dir.db(), &["--tls-cert", &cert, "--tls-key", &key]);
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
    let good_ca = path(&dir, "good-ca.pem");
    let out = client(
        &good_ca,
        &[
            "REGISTER", "tess", PW, ";", "LOGIN", "tess", PW, ";", "BALANCE",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "OK registered\nOK welcome tess\nOK 0\n");
    let refused = client(&path(&dir, "other-ca.pem"), &["PING"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(refused.stderr.contains("certificate"), "{}", refused.stderr);
    // Still serving.
    let out = client(&good_ca, &["PING"]);
    assert_eq!(out.stdout, "PONG\n");
}

#[test]
fn tls_serve_flags_need_each_other_and_usable_files() {
    let dir = TempDir::new("tls-usage");
    write_certs(dir.path(), "good");
    let db = dir.db().to_string_lossy().into_owned();
    let serve = |args: &[&str]| {
        run_within(
            Command::new(BANK)
                .args(["serve", "--listen", "127.0.0.1:0", "--db", &db])
                .args(args),
            Duration::from_secs(20),
        )
        .expect("bank serve exits")
    };
    let out = serve(&["--tls-cert", &path(&dir, "good-cert.pem")]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    let out = serve(&[
        "--tls-cert",
        "/nonexistent.pem",
        "--tls-key",
        &path(&dir, "good-key.pem"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("/nonexistent.pem"), "{}", out.stderr);
}
