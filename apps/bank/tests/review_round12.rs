//! Review round 12 of the bank app's PostgreSQL backend: a URL that lists a standby after
//! a first host that accepts TCP connections but never answers the start-up (a hung
//! server, a stalled proxy). Each host's attempt is bounded by `connect_timeout`, start-up
//! included, and the next host is tried after it: at start and at every reconnect.
//!
//! (One host name with several addresses cannot be staged here without editing
//! `/etc/hosts`: its per-address bound is tested beside the connection,
//! `store::postgres::hosts::tests`.) Every server and cluster this file starts is killed
//! by PID on drop; every reply has a deadline.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::pg::{client, err_code, logged_in, own_cluster, until_available};
use common::{serve_args, BANK};
use duo_testkit::ChildServer;

/// A host that completes TCP handshakes (the kernel's backlog) and never says a word.
fn silent_host() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind a silent listener")
}

/// The bank starts with a silent first host and the real server second, serves, and
/// reconnects the same way after a restart of the database: each time the silent host
/// is given up after its `connect_timeout` and the next one is used.
#[test]
fn a_silent_first_host_is_passed_over_at_start_and_on_reconnect() {
    let Some(cluster) = own_cluster("a_silent_first_host_is_passed_over_at_start_and_on_reconnect")
    else {
        return;
    };
    let silent = silent_host();
    let url = format!(
        "postgres://bank@127.0.0.1:{},127.0.0.1:{}/bank?connect_timeout=1",
        silent.local_addr().unwrap().port(),
        cluster.port()
    );
    let mut cmd = Command::new(BANK);
    serve_args(&mut cmd, &url).args(["--db-timeout", "5"]);
    let server = ChildServer::builder(cmd)
        .startup(Duration::from_secs(30))
        .start();
    let addr = server.addr();
    drop(logged_in(addr, "bob"));
    let mut alice = logged_in(addr, "alice");
    assert_eq!(alice.cmd("DEPOSIT 1000"), "OK 1000");

    cluster.restart_fast().expect("pg_ctl restart -m fast");

    // Every session broke; each new one passes the silent host over again.
    let mut alice = client(addr);
    let r = until_available(&mut alice, &format!("LOGIN alice {}", common::PW));
    assert_eq!(r, "OK welcome alice");
    let r = until_available(&mut alice, "TRANSFER bob 100 after");
    assert_eq!(r, "OK 900", "{:?}", err_code(&r));
    assert_eq!(alice.cmd("BALANCE"), "OK 900");
    assert_eq!(logged_in(addr, "bob").cmd("BALANCE"), "OK 100");
    drop(silent);
}
