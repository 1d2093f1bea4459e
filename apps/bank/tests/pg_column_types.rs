//! The bank's columns widened under a running server on PostgreSQL.
//!
//! A DBA may widen a column in place (`bigint` to `numeric`, `text` to `varchar`): the
//! values stay what they were. The bank's reads must go on answering the same figures, on
//! the connections that were open and on new ones, and its writes must go on applying:
//! not panic on a column of an unexpected type, nor answer `INTERNAL` until a restart.

mod common;

use common::{Backend, Client, TestDb, PW};

#[test]
fn widened_columns_are_read_and_written_as_before() {
    let Some(db) = TestDb::new(Backend::Postgres, "widened_columns") else {
        return;
    };
    let server = db.start(&[]);
    let mut alice = Client::logged_in(server.addr, "alice");
    drop(Client::logged_in(server.addr, "bob"));
    assert_eq!(alice.cmd("DEPOSIT 1000"), "OK 1000");
    assert_eq!(alice.cmd("TRANSFER bob 10 w1"), "OK 990");
    let before = alice.history(5);
    assert_eq!(before.len(), 2, "{before:?}");

    db.psql(
        "ALTER TABLE users ALTER COLUMN balance TYPE numeric(20, 0), \
                           ALTER COLUMN password_hash TYPE varchar(500); \
         ALTER TABLE ledger ALTER COLUMN amount TYPE numeric(20, 0), \
                            ALTER COLUMN balance_after TYPE numeric(20, 0), \
                            ALTER COLUMN time TYPE numeric(20, 0), \
                            ALTER COLUMN kind TYPE varchar(20), \
                            ALTER COLUMN counterparty TYPE varchar(200)",
    );

    // The connection that was open, then a new one (a new login reads the hash).
    assert_eq!(alice.cmd("BALANCE"), "OK 990");
    assert_eq!(alice.history(5), before);
    let mut again = Client::connect(server.addr);
    assert_eq!(again.cmd(&format!("LOGIN alice {PW}")), "OK welcome alice");
    assert_eq!(again.cmd("BALANCE"), "OK 990");
    assert_eq!(again.history(5), before);

    // Writes apply, and what they wrote reads back.
    assert_eq!(again.cmd("TRANSFER bob 5 w2"), "OK 985");
    assert_eq!(again.cmd("WITHDRAW 85"), "OK 900");
    assert_eq!(again.cmd("BALANCE"), "OK 900");
    let after = again.history(5);
    assert_eq!(after.len(), 4, "{after:?}");
    assert_eq!(after[2..], before[..], "the older entries unchanged");
    let mut bob = Client::connect(server.addr);
    assert_eq!(bob.cmd(&format!("LOGIN bob {PW}")), "OK welcome bob");
    assert_eq!(bob.cmd("BALANCE"), "OK 15");
    assert_eq!(
        db.psql("SELECT sum(balance) FROM users"),
        "915",
        "money conserved"
    );
}

/// The composite type `bank_apply` returns, widened: the writers' prepared call is planned
/// anew (nothing was committed by the call that found it stale) and every write applies.
#[test]
fn a_widened_outcome_type_does_not_stop_writes() {
    let Some(db) = TestDb::new(Backend::Postgres, "widened_outcome") else {
        return;
    };
    let server = db.start(&[]);
    let mut alice = Client::logged_in(server.addr, "alice");
    drop(Client::logged_in(server.addr, "bob"));
    assert_eq!(alice.cmd("DEPOSIT 1000"), "OK 1000");
    db.psql(
        "ALTER TYPE bank_outcome ALTER ATTRIBUTE balance TYPE numeric(20, 0), \
                                 ALTER ATTRIBUTE message TYPE varchar(500)",
    );
    assert_eq!(alice.cmd("DEPOSIT 10"), "OK 1010");
    assert_eq!(alice.cmd("TRANSFER bob 10 o1"), "OK 1000");
    assert_eq!(
        alice.cmd("TRANSFER nobody 10 o2").split(' ').nth(1),
        Some("NO_SUCH_USER")
    );
    assert_eq!(
        alice.cmd("WITHDRAW 5000").split(' ').nth(1),
        Some("INSUFFICIENT_FUNDS")
    );
    let mut again = Client::logged_in(server.addr, "carol");
    assert_eq!(again.cmd("DEPOSIT 7"), "OK 7");
    assert_eq!(db.psql("SELECT sum(balance) FROM users"), "1017");
}
