//! SQLite store tests under database faults: errors that make SQLite roll back the whole
//! transaction rather than the statement (`SQLITE_FULL` here, from `max_page_count`).

use super::*;
use crate::store::PasswordHash;
use std::path::Path;

use super::tests::TempDir;

fn store_at(path: &Path) -> sqlite::SqliteStore {
    let options = StoreOptions {
        group_commit: true,
        early_release: true,
        db_timeout: Some(std::time::Duration::from_secs(30)),
        writers: 1,
        metrics: crate::BankMetrics::default(),
    };
    sqlite::SqliteStore::open(path, options).unwrap()
}

/// Registers `names` (ids 1, 2, ... in order) and gives the first `funds`.
fn populate(store: &sqlite::SqliteStore, names: &[&str], funds: i64) {
    let ops: Vec<WriteOp> = names
        .iter()
        .map(|n| WriteOp::Register {
            name: (*n).into(),
            hash: PasswordHash("$argon2id$fake".into()),
        })
        .chain([WriteOp::Deposit {
            user: 1,
            amount: funds,
        }])
        .collect();
    assert!(store.write_now(&ops).iter().all(Result::is_ok));
}

/// Caps the writer's database at the pages it has now: a write that needs one more page
/// fails with `SQLITE_FULL`, which rolls back the whole transaction.
fn cap_pages(store: &sqlite::SqliteStore, path: &Path) {
    let pages: i64 = rusqlite::Connection::open(path)
        .unwrap()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    store
        .execute_sql(&format!("PRAGMA max_page_count = {pages}"))
        .unwrap();
}

/// A transfer from user 1 (alice) to `to`; `from_name` goes into the payee's ledger row.
fn transfer(from_name: &str, to: &str, amount: i64, rid: &str) -> WriteOp {
    WriteOp::Transfer {
        from: 1,
        from_name: from_name.into(),
        to: to.into(),
        amount,
        request_id: Some(rid.into()),
    }
}

/// An operation whose failure rolls back SQLite's whole transaction (not only its
/// statement) fails alone: the operations after it are neither committed outside the
/// batch while reported failed, nor lost; a retry of each applies it exactly once.
#[test]
fn a_failure_that_ends_the_transaction_fails_alone() {
    let dir = TempDir::new("bank-store");
    let path = dir.join("bank.db");
    let store = store_at(&path);
    populate(&store, &["alice", "bob", "carol"], 1000);
    cap_pages(&store, &path);
    // The middle transfer's ledger row for carol needs overflow pages (a huge payer name
    // in it): SQLITE_FULL in the middle of the batch, on both passes.
    let huge = "x".repeat(64 * 1024);
    let ops = [
        transfer("alice", "bob", 10, "before"),
        transfer(&huge, "carol", 20, "huge"),
        transfer("alice", "bob", 30, "after"),
    ];
    let results = store.write_now(&ops);
    let bob = store.balance(2).unwrap();
    let carol = store.balance(3).unwrap();
    assert_eq!(store.total().unwrap(), 1000, "money conserved");
    // Whatever was answered, the database must agree with it.
    let moved = |r: &Result<WriteOutcome, StoreError>, amount: i64| match r {
        Ok(WriteOutcome::Balance(_)) => amount,
        Ok(other) => panic!("unexpected outcome {other:?}"),
        Err(_) => 0,
    };
    assert_eq!(
        bob,
        moved(&results[0], 10) + moved(&results[2], 30),
        "bob's balance disagrees with the answers {results:?}"
    );
    assert_eq!(carol, moved(&results[1], 20), "answers {results:?}");
    // The failing one alone fails.
    assert!(results[1].is_err(), "{results:?}");
    assert!(
        matches!(results[0], Ok(WriteOutcome::Balance(990))),
        "{results:?}"
    );
    assert!(
        matches!(results[2], Ok(WriteOutcome::Balance(960))),
        "{results:?}"
    );
    // Retries: the applied ones replay, the failed one applies once (room again).
    store
        .execute_sql("PRAGMA max_page_count = 1000000")
        .unwrap();
    let again = store.write_now(&ops);
    let replayed = |r: &Result<WriteOutcome, StoreError>, b: i64| match r {
        Ok(WriteOutcome::Replayed(first)) => **first == WriteOutcome::Balance(b),
        _ => false,
    };
    assert!(replayed(&again[0], 990), "{again:?}");
    assert!(
        matches!(again[1], Ok(WriteOutcome::Balance(940))),
        "{again:?}"
    );
    assert!(replayed(&again[2], 960), "{again:?}");
    assert_eq!(store.balance(1).unwrap(), 940);
    assert_eq!(store.balance(2).unwrap(), 40);
    assert_eq!(store.balance(3).unwrap(), 20);
    assert_eq!(store.total().unwrap(), 1000);
}

/// Whatever a batch answered, the database agrees: the transfers (from alice, with
/// request ids) answered with a balance moved their money, the others moved nothing.
fn assert_agrees(store: &sqlite::SqliteStore, ops: &[WriteOp], results: &WriteResults) {
    assert_eq!(results.len(), ops.len());
    let mut received = std::collections::HashMap::<String, i64>::new();
    let mut paid = 0;
    for (op, result) in ops.iter().zip(results) {
        let WriteOp::Transfer { to, amount, .. } = op else {
            unreachable!()
        };
        match result {
            Ok(WriteOutcome::Balance(_)) => {
                *received.entry(to.clone()).or_default() += amount;
                paid += amount;
            }
            Ok(other) => panic!("unexpected outcome {other:?}"),
            Err(_) => {}
        }
    }
    assert_eq!(store.total().unwrap(), 1000, "money conserved");
    assert_eq!(store.balance(1).unwrap(), 1000 - paid, "alice; {results:?}");
    for (id, name) in [(2, "bob"), (3, "carol")] {
        let expected = received.get(name).copied().unwrap_or(0);
        assert_eq!(store.balance(id).unwrap(), expected, "{name}; {results:?}");
    }
}

/// When no operation finds room, none applies and each is answered with an error; the
/// retries apply each once when there is room again.
#[test]
fn a_full_database_fails_every_operation_and_applies_none() {
    let dir = TempDir::new("bank-store");
    let path = dir.join("bank.db");
    let store = store_at(&path);
    populate(&store, &["alice", "bob", "carol"], 1000);
    cap_pages(&store, &path);
    let huge = "x".repeat(64 * 1024);
    // More failures that end the transaction than the batch starts over for, with small
    // transfers between them that would fit.
    let ops: Vec<WriteOp> = (0..12)
        .map(|i| {
            let rid = format!("r{i}");
            if i % 2 == 0 {
                transfer(&huge, "carol", 1, &rid)
            } else {
                transfer("alice", "bob", 1, &rid)
            }
        })
        .collect();
    let results = store.write_now(&ops);
    assert_agrees(&store, &ops, &results);
    assert!(results.iter().step_by(2).all(Result::is_err), "{results:?}");
    // Retried with room: each applies once (those already applied replay).
    store
        .execute_sql("PRAGMA max_page_count = 1000000")
        .unwrap();
    let again = store.write_now(&ops);
    assert!(again.iter().all(Result::is_ok), "{again:?}");
    assert_eq!(store.balance(1).unwrap(), 988);
    assert_eq!(store.balance(2).unwrap(), 6);
    assert_eq!(store.balance(3).unwrap(), 6);
    let third = store.write_now(&ops);
    assert_eq!(third.len(), 12);
    assert_eq!(store.balance(1).unwrap(), 988, "retries replay");
}
