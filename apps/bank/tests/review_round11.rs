//! Review round 11 of the bank app: PostgreSQL reached by a host name rather than an
//! address (`localhost`, resolved at start and again at every reconnect), with
//! `--processes` and a database restart; a start-up whose host name does not resolve;
//! the protocol's amounts at the limits of `i64` between good pipelined lines.
//!
//! (A lookup that hangs cannot be staged here without root: its bound is tested beside
//! the connection, `store::postgres::conn::tests`.) Every server and cluster this file
//! starts is killed by PID on drop; every reply has a deadline.

mod common;

use std::process::Command;
use std::time::Duration;

use common::pg::{client, err_code, own_cluster, until_available};
use common::{serve_args, Backend, Client, TestDb, BANK, PW};
use duo_testkit::ChildServer;
use duo_testkit::{run_within, wait_until_within, LIMIT};

/// `url` with its host `127.0.0.1` written as `localhost`.
fn by_name(url: &str) -> String {
    let named = url.replacen("@127.0.0.1:", "@localhost:", 1);
    assert_ne!(named, url, "a TCP URL: {url}");
    named
}

/// `user` registered (if new) and logged in on a new client.
fn logged_in(addr: std::net::SocketAddr, user: &str) -> Client {
    let mut c = client(addr);
    let r = until_available(&mut c, &format!("REGISTER {user} {PW}"));
    assert!(
        r == "OK registered" || err_code(&r) == Some("USER_EXISTS"),
        "{r}"
    );
    assert_eq!(
        until_available(&mut c, &format!("LOGIN {user} {PW}")),
        format!("OK welcome {user}")
    );
    c
}

/// Two worker processes reach the database as `localhost`, keep serving across a
/// restart of it (every reconnect resolves the name again), and lose nothing.
#[test]
fn localhost_with_processes_survives_a_database_restart() {
    let Some(cluster) = own_cluster("localhost_with_processes_survives_a_database_restart") else {
        return;
    };
    let url = by_name(&cluster.url());
    let mut cmd = Command::new(BANK);
    serve_args(&mut cmd, &url).args(["--processes", "2", "--db-timeout", "5"]);
    let server = ChildServer::builder(cmd)
        .startup(Duration::from_secs(30))
        .start();
    let addr = server.addr();
    drop(logged_in(addr, "bob"));
    let mut alice = logged_in(addr, "alice");
    assert_eq!(alice.cmd("DEPOSIT 1000"), "OK 1000");
    assert_eq!(alice.cmd("TRANSFER bob 100 before"), "OK 900");

    cluster.restart_fast().expect("pg_ctl restart -m fast");

    // Each worker's sessions broke; new ones are made through the name again.
    let mut answered = 0;
    wait_until_within(LIMIT, "transfers answered after the restart", || {
        let mut c = logged_in(addr, "alice");
        if until_available(&mut c, "TRANSFER bob 100 after") == "OK 800" {
            answered += 1;
        }
        answered >= 4
    });
    let mut bob = logged_in(addr, "bob");
    assert_eq!(bob.cmd("BALANCE"), "OK 200");
    assert_eq!(logged_in(addr, "alice").cmd("BALANCE"), "OK 800");
}

/// A host name that does not resolve fails the start at once (exit 1, the name in the
/// message), not after a hang or with a panic.
#[test]
fn an_unresolvable_host_name_fails_the_start() {
    let url = "postgres://bank@no-such-host.invalid:5432/bank";
    let mut cmd = Command::new(BANK);
    serve_args(&mut cmd, url).args(["--db-timeout", "2"]);
    let done = run_within(&mut cmd, LIMIT).expect("bank serve ends by itself");
    assert_eq!(done.status.code(), Some(1), "{done:?}");
    assert!(!done.stdout.contains("listening on"), "{done:?}");
    assert!(!done.stderr.contains("panicked"), "{done:?}");
    assert!(done.stderr.contains("no-such-host.invalid"), "{done:?}");
}

/// Amounts at and past the limits of `i64`, sent pipelined between good lines on both
/// backends: each bad one is `INVALID_AMOUNT` alone, in order, and the good ones apply.
#[test]
fn amounts_at_the_limits_of_i64_between_good_pipelined_lines() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(db) = TestDb::new(backend, "i64_limits") else {
            continue;
        };
        let server = db.start(&[]);
        drop(logged_in(server.addr, "bob"));
        let mut alice = logged_in(server.addr, "alice");
        let bad = [
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "+9223372036854775807",
            "1000000000001",
            "0",
            "+",
            "00000000000000000000000000000000001x",
        ];
        let mut sent = String::new();
        let mut expected = Vec::new();
        for (i, amount) in bad.iter().enumerate() {
            sent.push_str("DEPOSIT 1\n");
            expected.push(format!("OK {}", 2 * i + 1));
            for command in ["DEPOSIT", "WITHDRAW", "TRANSFER bob"] {
                sent.push_str(&format!("{command} {amount}\n"));
                expected.push("INVALID_AMOUNT".to_owned());
            }
            sent.push_str("DEPOSIT 00000000000000000000000000000000001\n");
            expected.push(format!("OK {}", 2 * i + 2));
        }
        alice.send(sent.as_bytes());
        for want in &expected {
            let got = alice.line();
            if want == "INVALID_AMOUNT" {
                assert_eq!(err_code(&got), Some("INVALID_AMOUNT"), "{backend:?}: {got}");
            } else {
                assert_eq!(&got, want, "{backend:?}");
            }
        }
        let r = alice.cmd("TRANSFER bob 1000000000000 x");
        assert_eq!(err_code(&r), Some("INSUFFICIENT_FUNDS"), "{backend:?}: {r}");
        assert_eq!(alice.cmd("BALANCE"), format!("OK {}", 2 * bad.len()));
    }
}
