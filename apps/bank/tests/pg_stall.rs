//! A stalled path to PostgreSQL: a TCP proxy of the test's own between the bank and the
//! server stops forwarding in both directions and keeps every socket open, as a dead
//! middlebox, a NAT that lost its state, or a hung server host would (the bank's kernel
//! sees its data acknowledged, so TCP timeouts and keepalives never fire). The links that
//! stalled stay dead; links made once the path is back work (`common::pg_proxy`, with
//! `Fault::Stall`).
//!
//! The bank must answer the calls in flight (`ERR UNAVAILABLE`, within its
//! `--db-timeout`), recover by itself once the path is back, and resolve a commit whose
//! answer was lost by the request id: no acknowledged transfer lost or applied twice.
//!
//! Also: SQLSTATE 57014 (`query_canceled`: `pg_cancel_backend`, `statement_timeout`) on a
//! write, a read and a flush barrier.
//!
//! Every test runs on a cluster of its own, stopped when the test ends, also when it
//! fails; every read of a reply has a deadline.

mod common;

use std::time::{Duration, Instant};

use common::pg::{
    alive, client, err_code, lock_waiter, lock_waiters, logged_in, own_cluster, until_available,
    Holder, REPLY_DEADLINE,
};
use common::pg_proxy::{Fault, Proxy};
use common::{psql, Client, Server, PW};

// ---------------------------------------------------------------------------------------
// The path stalls while a commit is in flight.

/// Alice (1000) and bob on `server`: alice's connection.
fn two_accounts(server: &Server) -> Client {
    common::pg::two_accounts(server, logged_in)
}

/// The path stalls right after alice's transfer went through to the server, which commits
/// it: its answer never comes back. The transfer, and a read on another connection, are
/// answered `UNAVAILABLE` within the bound; once the path is back the bank recovers by
/// itself, and the retry of the transfer answers the first outcome, once.
fn stall_around_a_commit(test: &str, extra: &[&str]) {
    let Some(cluster) = own_cluster(test) else {
        return;
    };
    let proxy = Proxy::start(cluster.port());
    let mut args = vec!["--db-timeout", "1"];
    args.extend_from_slice(extra);
    let server = Server::start_url(&proxy.url_with_connect_timeout("bank", 1), &args);
    let mut alice = two_accounts(&server);
    let mut reader = logged_in(server.addr, "alice");
    assert_eq!(reader.balance(), 1000);

    proxy.plan("st1", Fault::Stall);
    let started = Instant::now();
    alice.send(b"TRANSFER bob 10 st1\n");
    let answer = alice.try_line();
    assert!(proxy.stalled(), "the path did not stall");
    let answer = answer.unwrap_or_else(|| {
        panic!(
            "no answer to a transfer within {REPLY_DEADLINE:?} of the path stalling \
             ({extra:?})"
        )
    });
    assert_eq!(
        err_code(&answer),
        Some("UNAVAILABLE"),
        "{extra:?}: {answer}"
    );
    // A read in flight while the path is down: its pooled connection is dead too.
    reader.send(b"BALANCE\n");
    let read = reader
        .try_line()
        .unwrap_or_else(|| panic!("no answer to a read within {REPLY_DEADLINE:?}"));
    assert_eq!(err_code(&read), Some("UNAVAILABLE"), "{extra:?}: {read}");
    eprintln!("{test}: answered within {:?}", started.elapsed());

    proxy.recover();
    // The server committed the transfer: its retry answers the first outcome, once.
    assert_eq!(
        until_available(&mut alice, "TRANSFER bob 10 st1"),
        "OK 990",
        "{extra:?}"
    );
    assert_eq!(alice.cmd("TRANSFER bob 10 st1"), "OK 990", "{extra:?}");
    assert_eq!(until_available(&mut reader, "BALANCE"), "OK 990");
    assert_eq!(alice.cmd("DEPOSIT 5"), "OK 995", "{extra:?}");
    let mut bob = client(server.addr);
    assert_eq!(bob.cmd(&format!("LOGIN bob {PW}")), "OK welcome bob");
    assert_eq!(until_available(&mut bob, "BALANCE"), "OK 10");
    assert_eq!(psql(&cluster, "SELECT sum(balance) FROM users"), "1005");
    assert_eq!(
        psql(
            &cluster,
            "SELECT count(*) FROM ledger WHERE kind = 'transfer_out'"
        ),
        "1"
    );
}

#[test]
fn a_stalled_path_answers_unavailable_and_the_bank_recovers() {
    stall_around_a_commit("early_release", &[]);
}

#[test]
fn a_stalled_path_answers_unavailable_and_the_bank_recovers_without_early_release() {
    stall_around_a_commit("no_early_release", &["--no-early-release"]);
}

// ---------------------------------------------------------------------------------------
// SQLSTATE 57014 (query_canceled).

/// A DBA cancels (`pg_cancel_backend`) a batch that waits for a row: its commands are
/// answered `UNAVAILABLE` at once (nothing was committed), the statement the DBA
/// stopped is not sent again, and the session, still good, is kept.
#[test]
fn a_write_canceled_by_the_dba_is_answered_and_not_run_again() {
    let Some(cluster) = own_cluster("cancel_write") else {
        return;
    };
    let server = Server::start_url(&cluster.url(), &[]);
    let mut alice = two_accounts(&server);
    let holder = Holder::row(&cluster, "alice");
    alice.send(b"TRANSFER bob 10 c1\nDEPOSIT 5\n");
    let pid = lock_waiter(&cluster);
    psql(&cluster, &format!("SELECT pg_cancel_backend({pid})"));
    for _ in 0..2 {
        let answer = alice
            .try_line()
            .unwrap_or_else(|| panic!("no answer within {REPLY_DEADLINE:?} of the cancel"));
        assert_eq!(err_code(&answer), Some("UNAVAILABLE"), "{answer}");
    }
    assert_eq!(
        lock_waiters(&cluster),
        0,
        "the canceled batch was sent again"
    );
    holder.release(&cluster);
    assert_eq!(alice.balance(), 1000, "the canceled batch was applied");
    assert_eq!(alice.cmd("TRANSFER bob 10 c1"), "OK 990");
    assert_eq!(alice.cmd("TRANSFER bob 10 c1"), "OK 990");
    assert!(
        alive(&cluster, &pid),
        "the canceled writer's session was dropped"
    );
    assert_eq!(psql(&cluster, "SELECT sum(balance) FROM users"), "1000");
}

/// A read canceled (`statement_timeout` on the database) while it waits for a table a DBA
/// locked: `UNAVAILABLE` once the timeout hits, not a second wait on a new connection; the
/// pooled session is kept and serves the next read.
#[test]
fn a_read_canceled_by_statement_timeout_is_answered_and_its_session_kept() {
    let Some(cluster) = own_cluster("cancel_read") else {
        return;
    };
    psql(&cluster, "ALTER DATABASE bank SET statement_timeout = '1s'");
    let server = Server::start_url(&cluster.url(), &[]);
    let mut alice = two_accounts(&server);
    assert_eq!(alice.balance(), 1000);
    let holder = Holder::hold(&cluster, "LOCK TABLE users IN ACCESS EXCLUSIVE MODE");
    alice.send(b"BALANCE\n");
    let pid = lock_waiter(&cluster);
    let started = Instant::now();
    let answer = alice
        .try_line()
        .unwrap_or_else(|| panic!("no answer to a read within {REPLY_DEADLINE:?}"));
    assert_eq!(err_code(&answer), Some("UNAVAILABLE"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "answered after {:?}: the read waited again",
        started.elapsed()
    );
    holder.release(&cluster);
    assert_eq!(alice.balance(), 1000);
    assert!(
        alive(&cluster, &pid),
        "the canceled reader's session was dropped"
    );
}
