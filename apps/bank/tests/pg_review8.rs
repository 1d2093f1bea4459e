//! Review (round 8) of the PostgreSQL backend: what a client sees when
//!
//! - a request id is reused through another front-end with another payee or amount;
//! - a pipelined batch mixes writes that fail and succeed (in order, as on SQLite);
//! - a DBA ends each of the bank's sessions (writer, reader, flush barrier) while idle;
//! - the database cancels a write on `statement_timeout`, or gives up a row lock on
//!   `lock_timeout` (SQLSTATE 55P03: the batch rolled back on a session still good);
//! - the schema version is not this program's;
//! - a balance would pass the largest `bigint`;
//! - two front-ends transfer between the same two accounts in opposite directions.
//!
//! The tests share one cluster (a database each); every reply has a deadline, and every
//! `bank` and `psql` this file starts is killed by PID on drop.

mod common;

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::pg::{client, err_code, failed_start, until_available, Holder};
use common::{Backend, Client, TestDb, PW};
use duo_testkit::{join_before, wait_until_within};

/// A fresh database on the shared cluster, or `None` (skipped) without PostgreSQL.
fn database(tag: &str) -> Option<TestDb> {
    TestDb::new(Backend::Postgres, tag)
}

/// The database's name (the last part of its URL).
fn db_name(db: &TestDb) -> String {
    db.url()
        .rsplit('/')
        .next()
        .expect("a database name")
        .to_owned()
}

/// `user` logged in through `addr` (registered first if new).
fn logged_in(addr: SocketAddr, user: &str) -> Client {
    let mut c = client(addr);
    let r = c.cmd(&format!("REGISTER {user} {PW}"));
    assert!(
        r == "OK registered" || err_code(&r) == Some("USER_EXISTS"),
        "{r}"
    );
    assert_eq!(
        c.cmd(&format!("LOGIN {user} {PW}")),
        format!("OK welcome {user}")
    );
    c
}

/// Alice (1000) and bob through `addr`: alice's connection.
fn two_accounts(addr: SocketAddr) -> Client {
    drop(logged_in(addr, "bob"));
    let mut alice = logged_in(addr, "alice");
    assert_eq!(alice.cmd("DEPOSIT 1000"), "OK 1000");
    alice
}

/// Sends `lines` in one write and reads one reply per line.
fn pipelined(c: &mut Client, lines: &[&str]) -> Vec<String> {
    let mut all = lines.join("\n");
    all.push('\n');
    c.send(all.as_bytes());
    lines.iter().map(|_| c.line()).collect()
}

/// A lock held in `db`'s database until released (the suite's [`common::pg::Holder`]).
fn hold(db: &TestDb, lock: &str) -> Holder {
    let cluster = db.cluster().expect("a PostgreSQL database");
    Holder::hold_in(cluster, Some(&db_name(db)), lock)
}

// ---------------------------------------------------------------------------------------
// Request ids across front-ends.

/// A request id recorded through front-end A, reused through front-end B: another amount
/// or payee is `BAD_REQUEST` (and moves nothing), the same transfer answers the first
/// outcome (moving nothing), also for a refusal that would now succeed.
#[test]
fn a_request_id_reused_through_another_front_end_answers_the_first_outcome_or_bad_request() {
    let Some(db) = database("rid_across") else {
        return;
    };
    let a = db.start(&[]);
    let b = db.start(&["--no-group-commit"]);
    let mut on_a = two_accounts(a.addr);
    let mut on_b = logged_in(b.addr, "alice");
    let reused = "ERR BAD_REQUEST request id already used for a different transfer";
    assert_eq!(on_a.cmd("TRANSFER bob 10 r1"), "OK 990");
    assert_eq!(on_b.cmd("TRANSFER bob 11 r1"), reused);
    assert_eq!(on_b.cmd("TRANSFER carol 10 r1"), reused);
    assert_eq!(on_b.cmd("TRANSFER bob 10 r1"), "OK 990");
    assert_eq!(
        on_a.cmd("TRANSFER bob 5000 r2"),
        "ERR INSUFFICIENT_FUNDS the balance does not cover the transfer"
    );
    assert_eq!(on_b.cmd("DEPOSIT 9000"), "OK 9990");
    assert_eq!(
        on_b.cmd("TRANSFER bob 5000 r2"),
        "ERR INSUFFICIENT_FUNDS the balance does not cover the transfer"
    );
    assert_eq!(on_b.cmd("TRANSFER bob 5001 r2"), reused);
    assert_eq!(on_a.balance(), 9990);
    assert_eq!(db.psql("SELECT sum(balance) FROM users"), "10000");
    assert_eq!(db.psql("SELECT count(*) FROM requests"), "2");
}

// ---------------------------------------------------------------------------------------
// A batch mixing failures and successes.

/// The replies to a pipelined mix of writes that fail and succeed, in order.
fn mixed_batch_replies(db: &TestDb) -> Vec<String> {
    let server = db.start(&[]);
    let mut alice = two_accounts(server.addr);
    pipelined(
        &mut alice,
        &[
            "TRANSFER bob 600",
            "TRANSFER bob 600",
            "TRANSFER nobody 1",
            "TRANSFER alice 1",
            "DEPOSIT 300",
            "TRANSFER bob 600 m1",
            "TRANSFER bob 600 m1",
            "TRANSFER bob 601 m1",
            "WITHDRAW 1000",
            "TRANSFER bob 500 m3",
            "DEPOSIT 1000",
            "TRANSFER bob 500 m3",
            "TRANSFER bob 100 m2",
            "TRANSFER bob 100 m2",
            "WITHDRAW 1000",
            "BALANCE",
        ],
    )
}

/// Such a batch answers on PostgreSQL exactly what it answers on SQLite.
#[test]
fn a_batch_mixing_failing_and_succeeding_writes_answers_as_on_sqlite() {
    let Some(pg) = database("mixed_batch") else {
        return;
    };
    let sqlite = TestDb::new(Backend::Sqlite, "review8-mixed").expect("SQLite");
    let on_pg = mixed_batch_replies(&pg);
    assert_eq!(on_pg, mixed_batch_replies(&sqlite));
    assert_eq!(on_pg[0], "OK 400");
    assert_eq!(on_pg[6], "OK 100", "{on_pg:?}");
    assert_eq!(on_pg.last().map(String::as_str), Some("OK 0"), "{on_pg:?}");
    assert_eq!(pg.psql("SELECT sum(balance) FROM users"), "1300");
}

// ---------------------------------------------------------------------------------------
// Sessions ended by a DBA.

/// Ends the bank's idle session in `db` whose last query matches `like`; returns once it
/// is gone.
fn terminate(db: &TestDb, like: &str) {
    let which = format!(
        "FROM pg_stat_activity WHERE application_name = 'bank' AND datname = '{}' \
         AND query LIKE '{like}'",
        db_name(db)
    );
    let pids = db.psql(&format!("SELECT pid {which}"));
    assert!(!pids.is_empty(), "no session of the bank's ran {like:?}");
    db.psql(&format!("SELECT pg_terminate_backend(pid) {which}"));
    wait_until_within(Duration::from_secs(10), "the session gone", || {
        db.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid IN ({})",
            pids.replace('\n', ",")
        )) == "0"
    });
}

/// A DBA ends the writer's, then the reader's session while they are idle: the next
/// write and read are answered as if nothing happened (the server refused the call on
/// the dead session, nothing was done, and it is made again on a new one).
#[test]
fn writer_and_reader_sessions_ended_while_idle_are_replaced_unseen() {
    let Some(db) = database("ended_idle") else {
        return;
    };
    let server = db.start(&["--no-early-release"]);
    let mut alice = two_accounts(server.addr);
    assert_eq!(alice.balance(), 1000);
    terminate(&db, "%bank_apply%");
    assert_eq!(alice.cmd("DEPOSIT 5"), "OK 1005");
    terminate(&db, "%balance::int8%");
    assert_eq!(alice.cmd("BALANCE"), "OK 1005");
    assert_eq!(db.psql("SELECT sum(balance) FROM users"), "1005");
}

/// A DBA ends the flush-barrier session: writes may get `UNAVAILABLE` until it is made
/// again, and a transfer retried by its request id then moves its money once.
#[test]
fn the_barrier_session_ended_while_idle_is_replaced_and_a_retry_moves_money_once() {
    let Some(db) = database("barrier_ended") else {
        return;
    };
    let server = db.start(&[]);
    let mut alice = two_accounts(server.addr);
    terminate(&db, "%pg_logical_emit_message%");
    assert_eq!(until_available(&mut alice, "TRANSFER bob 10 b1"), "OK 990");
    assert_eq!(alice.cmd("BALANCE"), "OK 990");
    assert_eq!(db.psql("SELECT sum(balance) FROM users"), "1000");
}

// ---------------------------------------------------------------------------------------
// Statement and lock timeouts.

/// With `statement_timeout` set for the database, a write that waits for a row past it
/// is canceled: `UNAVAILABLE`, nothing applied, and the next write goes through.
#[test]
fn a_write_canceled_by_statement_timeout_answers_unavailable_and_the_next_succeeds() {
    let Some(db) = database("statement_timeout") else {
        return;
    };
    db.psql(&format!(
        "ALTER DATABASE {} SET statement_timeout = '300ms'",
        db_name(&db)
    ));
    let server = db.start(&[]);
    let mut alice = two_accounts(server.addr);
    let holder = hold(&db, "SELECT 1 FROM users WHERE name = 'bob' FOR UPDATE");
    assert_eq!(
        alice.cmd("TRANSFER bob 10 s1"),
        "ERR UNAVAILABLE database unavailable; try again later"
    );
    holder.release(db.cluster().unwrap());
    assert_eq!(alice.cmd("TRANSFER bob 10 s1"), "OK 990");
    assert_eq!(db.psql("SELECT sum(balance) FROM users"), "1000");
}

/// With `lock_timeout` set for the database (SQLSTATE 55P03 once a row lock is not had in
/// time), a pipelined batch of writes on a locked row: the statement rolled back on a
/// session still good, as with `statement_timeout`. Each write is answered `UNAVAILABLE`
/// (try again) at once, not run again one by one, each waiting a whole
/// timeout more, to be answered `INTERNAL` after eight of them.
#[test]
fn a_batch_that_times_out_on_a_row_lock_is_answered_unavailable_at_once() {
    const WRITES: usize = 8;
    let Some(db) = database("lock_timeout") else {
        return;
    };
    db.psql(&format!(
        "ALTER DATABASE {} SET lock_timeout = '400ms'",
        db_name(&db)
    ));
    let server = db.start(&[]);
    let mut alice = two_accounts(server.addr);
    let holder = hold(&db, "SELECT 1 FROM users WHERE name = 'alice' FOR UPDATE");
    // (Run again one by one, each write would wait a whole timeout more and end
    // `INTERNAL`: the replies tell the two paths apart, no clock needed.)
    let replies = pipelined(&mut alice, &["DEPOSIT 1"; WRITES]);
    for r in &replies {
        assert_eq!(
            r, "ERR UNAVAILABLE database unavailable; try again later",
            "{replies:?}"
        );
    }
    holder.release(db.cluster().unwrap());
    assert_eq!(alice.cmd("DEPOSIT 1"), "OK 1001");
}

/// With `lock_timeout` set, a read that cannot have its table (a DBA's `LOCK TABLE`)
/// within it: `UNAVAILABLE` (try again), not `INTERNAL`; once the lock is gone it reads.
#[test]
fn a_read_that_times_out_on_a_table_lock_answers_unavailable() {
    let Some(db) = database("read_lock_timeout") else {
        return;
    };
    db.psql(&format!(
        "ALTER DATABASE {} SET lock_timeout = '300ms'",
        db_name(&db)
    ));
    let server = db.start(&[]);
    let mut alice = two_accounts(server.addr);
    assert_eq!(alice.cmd("BALANCE"), "OK 1000");
    let holder = hold(&db, "LOCK TABLE users IN ACCESS EXCLUSIVE MODE");
    assert_eq!(
        alice.cmd("BALANCE"),
        "ERR UNAVAILABLE database unavailable; try again later"
    );
    holder.release(db.cluster().unwrap());
    assert_eq!(alice.cmd("BALANCE"), "OK 1000");
}

// ---------------------------------------------------------------------------------------
// Schema versions.

/// A bank database of another schema version: a newer one is refused as newer, an older
/// or unreadable one as not a bank database; both exit 1 and leave the data alone.
#[test]
fn a_schema_version_that_is_not_this_programs_is_refused_at_start() {
    let Some(db) = database("schema_version") else {
        return;
    };
    drop(two_accounts(db.start(&[]).addr));
    for (version, says) in [
        ("2", "schema version 2 is newer than this program's (1)"),
        ("0", "not a bank database (schema version \"0\")"),
        ("one", "not a bank database (schema version \"one\")"),
    ] {
        db.psql(&format!(
            "UPDATE bank_meta SET value = '{version}' WHERE key = 'schema_version'"
        ));
        let (code, stderr, _) = failed_start(&db.url());
        assert_eq!(code, Some(1), "version {version}: {stderr}");
        assert!(stderr.contains(says), "version {version}: {stderr}");
    }
    assert_eq!(db.psql("SELECT sum(balance) FROM users"), "1000");
}

// ---------------------------------------------------------------------------------------
// The limits of a bigint.

/// Balances near 2^63-1: a deposit or transfer that would pass it is `INVALID_AMOUNT`
/// (in a batch beside writes that succeed), one that reaches it exactly is applied.
#[test]
fn writes_that_would_pass_the_largest_balance_are_invalid_amounts() {
    let Some(db) = database("bigint_limits") else {
        return;
    };
    let server = db.start(&[]);
    let mut alice = two_accounts(server.addr);
    db.psql("UPDATE users SET balance = 9223372036854775807 - 500 WHERE name = 'bob'");
    let replies = pipelined(
        &mut alice,
        &[
            "TRANSFER bob 1000",
            "TRANSFER bob 400",
            "TRANSFER bob 200",
            "TRANSFER bob 100",
            "TRANSFER bob 1",
        ],
    );
    let over = "ERR INVALID_AMOUNT the recipient's balance would exceed the largest amount \
                the bank can hold";
    assert_eq!(replies, [over, "OK 600", over, "OK 500", over]);
    let mut bob = logged_in(server.addr, "bob");
    assert_eq!(bob.cmd("BALANCE"), "OK 9223372036854775807");
    assert_eq!(
        bob.cmd("DEPOSIT 1"),
        "ERR INVALID_AMOUNT the balance would exceed the largest amount the bank can hold"
    );
    assert_eq!(bob.cmd("WITHDRAW 7"), "OK 9223372036854775800");
    assert_eq!(bob.cmd("DEPOSIT 7"), "OK 9223372036854775807");
    assert_eq!(
        bob.history(1)[0].split(' ').nth(4),
        Some("9223372036854775807")
    );
}

// ---------------------------------------------------------------------------------------
// Opposite directions through two front-ends.

/// Alice pays bob through front-end A while bob pays alice through front-end B, each
/// with several connections pipelining: every transfer succeeds (the rows are locked in
/// id order, so no batch deadlocks and none is answered `INTERNAL`), and money is
/// conserved.
#[test]
fn opposite_transfers_through_two_front_ends_all_succeed() {
    const CONNECTIONS: usize = 2;
    const EACH: usize = 40;
    let Some(db) = database("opposite") else {
        return;
    };
    let a = db.start(&["--db-writers", "2", "--workers", "4"]);
    let b = db.start(&["--db-writers", "2", "--workers", "4"]);
    drop(two_accounts(a.addr));
    let mut bob = logged_in(b.addr, "bob");
    assert_eq!(bob.cmd("DEPOSIT 1000"), "OK 1000");
    let threads: Vec<_> = (0..2 * CONNECTIONS)
        .map(|i| {
            let (addr, me, to) = if i % 2 == 0 {
                (a.addr, "alice", "bob")
            } else {
                (b.addr, "bob", "alice")
            };
            thread::spawn(move || {
                let mut c = logged_in(addr, me);
                let line = format!("TRANSFER {to} 1");
                let lines = vec![line.as_str(); EACH];
                pipelined(&mut c, &lines)
                    .into_iter()
                    .filter(|r| ok_balance(r).is_none())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for t in threads {
        let failed = join_before(deadline, "a client's transfers", t);
        assert!(failed.is_empty(), "{failed:?}");
    }
    assert_eq!(db.psql("SELECT sum(balance) FROM users"), "2000");
    assert_eq!(
        db.psql("SELECT count(*) FROM ledger WHERE kind = 'transfer_out'"),
        (2 * CONNECTIONS * EACH).to_string()
    );
}

/// The number of an `OK <n>` reply.
fn ok_balance(reply: &str) -> Option<i64> {
    reply.strip_prefix("OK ")?.parse().ok()
}
