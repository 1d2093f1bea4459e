//! Review of round 4: combinations of today's changes no other test puts together.
//!
//! - On PostgreSQL, a batch that fails with a class-42 error is run once more on a new
//!   session, in case the old session's plans or compiled function predate a change of
//!   the schema. When the error is the schema itself (a table renamed away, a privilege
//!   revoked), the new session meets it again: a session that has never completed a call
//!   is not stale, and replacing it for every batch costs a connection per write for as
//!   long as the schema stays broken.

mod common;

use std::collections::BTreeSet;

use common::{Backend, Client, TestDb};

/// The server sessions the bank holds on `db` now (their process ids).
fn bank_sessions(db: &TestDb) -> BTreeSet<String> {
    db.psql(
        "SELECT pid FROM pg_stat_activity \
         WHERE application_name = 'bank' AND datname = current_database()",
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

#[test]
fn a_permanent_schema_error_does_not_cost_a_session_per_batch() {
    let Some(db) = TestDb::new(Backend::Postgres, "permanent_schema_error") else {
        return;
    };
    let server = db.start(&["--db-writers", "1", "--workers", "2"]);
    let mut alice = Client::logged_in(server.addr, "alice");
    assert_eq!(alice.cmd("DEPOSIT 100"), "OK 100");

    // Every deposit writes a ledger row: with the table gone, each fails (42P01).
    db.psql("ALTER TABLE ledger RENAME TO ledger_away");
    let internal = |reply: String| {
        assert!(reply.starts_with("ERR INTERNAL"), "{reply}");
    };
    // The first failure may try a new session (the old one may have been stale).
    internal(alice.cmd("DEPOSIT 1"));
    let after_first = bank_sessions(&db);
    for _ in 0..4 {
        internal(alice.cmd("DEPOSIT 1"));
    }
    let after_more = bank_sessions(&db);
    let new: Vec<&String> = after_more.difference(&after_first).collect();
    assert!(
        new.is_empty(),
        "the failing batches after the first opened new sessions {new:?} \
         (before {after_first:?}, after {after_more:?})"
    );

    // The schema repaired: writes apply again, on the session kept.
    db.psql("ALTER TABLE ledger_away RENAME TO ledger");
    assert_eq!(alice.cmd("DEPOSIT 1"), "OK 101");
    assert_eq!(alice.cmd("BALANCE"), "OK 101");
}
