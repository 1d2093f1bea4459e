//! `bank serve` and `bank client` as an operator meets their start-up errors: a database
//! URL that does not parse, a `--metrics` address that cannot be bound, an IPv6 address
//! without brackets, TLS material that cannot be used, and a client talking plaintext to
//! a TLS server. Each is one clear message naming the bad value, a non-zero status (2 for
//! usage, 1 for the environment), never a password on stderr, a success that was none, or
//! a `listening on` line from a server that then exits.

mod common;

use std::net::TcpListener;

use common::{Server, TempDir};
use duo_testkit::{Finished, RefusedPort, TestCerts};

use common::run_bank as bank;

/// `bank serve --listen LISTEN --db DB --hash-cost low ARGS..`.
fn serve(listen: &str, db: &str, args: &[&str]) -> Finished {
    let mut all = vec![
        "serve",
        "--listen",
        listen,
        "--db",
        db,
        "--hash-cost",
        "low",
    ];
    all.extend_from_slice(args);
    bank(&all)
}

/// `done` exited with `code`, without a panic, its message holding each of `needles`.
fn assert_failed(done: &Finished, what: &str, code: i32, needles: &[&str]) {
    assert!(
        !done.stderr.contains("panicked"),
        "{what}: panicked:\n{}",
        done.stderr
    );
    assert_eq!(
        done.status.code(),
        Some(code),
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        done.status,
        done.stdout,
        done.stderr
    );
    for needle in needles {
        assert!(
            done.stderr.contains(needle),
            "{what}: the message names {needle:?}:\n{}",
            done.stderr
        );
    }
}

/// A PostgreSQL URL that does not parse (a port out of range) is a usage error whose
/// message keeps the password out, as every other message about the database does (clap
/// used to print the value as given: `invalid value 'postgres://u:s3cret@...'`).
#[test]
fn a_database_url_that_does_not_parse_keeps_its_password_out_of_the_message() {
    for url in [
        "postgres://bank:s3cret@127.0.0.1:99999/bank",
        "postgresql://bank@127.0.0.1:99999/bank?password=s3cret",
    ] {
        let done = serve("127.0.0.1:0", url, &[]);
        assert_failed(&done, url, 2, &["--db", "127.0.0.1:99999", "***"]);
        assert!(
            !done.stderr.contains("s3cret"),
            "{url}: the password is on stderr:\n{}",
            done.stderr
        );
    }
}

/// A `--metrics` address that cannot be bound: the server exits 1 without having said
/// `listening on` first (a script or supervisor waiting for that line took a server that
/// was about to exit for a ready one).
#[test]
fn a_metrics_address_in_use_is_refused_before_listening_is_announced() {
    let dir = TempDir::new("cfg-metrics");
    let db = dir.join("bank.db").to_string_lossy().into_owned();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = taken.local_addr().unwrap().to_string();
    let done = serve("127.0.0.1:0", &db, &["--metrics", &metrics]);
    assert_failed(&done, "--metrics in use", 1, &[&metrics]);
    assert!(
        !done.stdout.contains("listening on"),
        "announced as listening, then exited:\n{}",
        done.stdout
    );
}

/// An IPv6 address needs brackets before its port (`::1:7100` is itself an address).
#[test]
fn an_ipv6_listen_address_without_brackets_is_a_usage_error() {
    let dir = TempDir::new("cfg-ipv6");
    let db = dir.join("bank.db").to_string_lossy().into_owned();
    let done = serve("::1:0", &db, &[]);
    assert_failed(&done, "--listen ::1:0", 2, &["::1:0", "brackets"]);
    assert!(done.stdout.is_empty(), "announced: {}", done.stdout);
}

/// A key that is not the certificate's: usage error naming both files.
#[test]
fn a_tls_key_that_does_not_match_the_certificate_names_both_files() {
    let dir = TempDir::new("cfg-tls");
    let db = dir.join("bank.db").to_string_lossy().into_owned();
    let (mine, other) = (
        TestCerts::new("bank-cfg-mine"),
        TestCerts::new("bank-cfg-other"),
    );
    let (cert, key) = (mine.path("cert.pem"), other.path("key.pem"));
    let done = serve(
        "127.0.0.1:0",
        &db,
        &["--tls-cert", &cert, "--tls-key", &key],
    );
    assert_failed(&done, "mismatched key", 2, &[&cert, &key, "does not match"]);
}

/// `bank client` without `--tls` against a TLS server: the server's TLS alert came back as
/// a "reply" (`\x15\x03\x03\x00\x02\x022`, cut short by the close), was printed, and the
/// client exited 0. It is an error now, one that says to use `--tls`.
#[test]
fn a_plaintext_client_of_a_tls_server_fails_and_says_to_use_tls() {
    let dir = TempDir::new("cfg-plain");
    let certs = TestCerts::new("bank-cfg-plain");
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    let server = Server::start(
        &dir.join("bank.db"),
        &["--tls-cert", &cert, "--tls-key", &key],
    );
    let connect = server.addr.to_string();
    let done = bank(&["client", "--connect", &connect, "PING"]);
    assert_failed(&done, "plaintext client", 1, &["--tls"]);
    assert!(done.stdout.is_empty(), "printed a reply: {:?}", done.stdout);
}

/// `--ca` is checked before connecting: a CA file with no certificate is reported as such
/// even when the server is down (it was hidden behind `Connection refused`). A file given
/// on the command line that cannot be used is a usage error (exit 2), as a bad
/// `serve --tls-cert` is.
#[test]
fn a_ca_file_without_certificates_is_reported_before_connecting() {
    let dir = TempDir::new("cfg-ca");
    let empty = dir.path().join("empty.pem").to_string_lossy().into_owned();
    std::fs::write(&empty, "").unwrap();
    let down = RefusedPort::new();
    let connect = down.addr().to_string();
    let done = bank(&[
        "client",
        "--connect",
        &connect,
        "--tls",
        "--ca",
        &empty,
        "PING",
    ]);
    assert_failed(&done, "--ca empty", 2, &[&empty, "no certificate"]);
}

/// A CA bundle with a certificate that does not parse: the message names the file and
/// which certificate (it was `TLS configuration: invalid peer certificate: BadEncoding`,
/// naming neither, and not about a peer at all).
#[test]
fn a_ca_bundle_with_a_broken_certificate_names_the_file() {
    let dir = TempDir::new("cfg-ca-broken");
    let certs = TestCerts::new("bank-cfg-ca-broken");
    let bundle = dir.path().join("bundle.pem").to_string_lossy().into_owned();
    let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let ca = std::fs::read_to_string(certs.path("ca.pem")).unwrap();
    std::fs::write(&bundle, ca + broken).unwrap();
    let down = RefusedPort::new();
    let connect = down.addr().to_string();
    let done = bank(&[
        "client",
        "--connect",
        &connect,
        "--tls",
        "--ca",
        &bundle,
        "PING",
    ]);
    assert_failed(&done, "--ca broken", 2, &[&bundle, "certificate 2 of 2"]);
}

/// Options only PostgreSQL uses, given with an SQLite database, did nothing, silently:
/// they are usage errors, as `--db-writers 2` is. (`--db-timeout 30`, the default, goes.)
#[test]
fn postgresql_only_options_on_sqlite_are_usage_errors() {
    let dir = TempDir::new("cfg-pg-only");
    let db = dir.join("bank.db").to_string_lossy().into_owned();
    for (args, needle) in [
        (
            &["--no-early-release"][..],
            "--no-early-release needs PostgreSQL",
        ),
        (&["--db-timeout", "5"], "--db-timeout needs PostgreSQL"),
        (&["--db-timeout", "0"], "--db-timeout needs PostgreSQL"),
    ] {
        let done = serve("127.0.0.1:0", &db, args);
        assert_failed(&done, &format!("{args:?}"), 2, &[needle, &db]);
        assert!(!done.stdout.contains("listening on"), "{args:?} started");
    }
}
