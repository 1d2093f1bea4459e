//! Unit tests of the bank's store, on both backends: every test that is not about one
//! backend runs once on a fresh SQLite file (`NAME::sqlite`) and once on a throwaway
//! PostgreSQL cluster (`NAME::postgres`; skipped with one line where PostgreSQL is not
//! installed, failing under `CI`).

use super::*;
use crate::protocol::EntryKind;
use crate::store::PasswordHash;
use duo_testkit::pg::PgCluster;
use std::sync::Arc;

pub(super) use duo_testkit::TempDir;

/// What keeps a test's database alive (its directory or its cluster) until dropped.
type Guard = Box<dyn std::any::Any>;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A database of `backend` for test `name`, or `None` if PostgreSQL is not installed.
fn database(backend: Backend, name: &str) -> Option<(Guard, Database)> {
    Some(match backend {
        Backend::Sqlite => {
            let dir = TempDir::new("bank-store");
            let db = Database::Sqlite(dir.join("bank.db"));
            (Box::new(dir) as Guard, db)
        }
        Backend::Postgres => {
            let cluster = PgCluster::builder()
                .setting("fsync", "off")
                .for_test(name)?;
            let db = Database::Postgres(cluster.url());
            (Box::new(cluster) as Guard, db)
        }
    })
}

fn options(group_commit: bool) -> StoreOptions {
    StoreOptions {
        group_commit,
        early_release: true,
        db_timeout: Some(std::time::Duration::from_secs(30)),
        writers: 2,
        metrics: crate::BankMetrics::default(),
    }
}

/// A store with users alice and bob (ids returned), or `None` if the backend is missing.
fn setup(backend: Backend, name: &str, group_commit: bool) -> Option<(Guard, Store, i64, i64)> {
    let (guard, db) = database(backend, name)?;
    let store = Store::open(&db, options(group_commit)).unwrap();
    let reg = |name: &str| WriteOp::Register {
        name: name.into(),
        hash: PasswordHash("$argon2id$fake".into()),
    };
    let r = store.write_now(&[reg("alice"), reg("bob"), reg("alice")]);
    assert_eq!(r[0].as_ref().unwrap(), &WriteOutcome::Registered);
    assert_eq!(r[1].as_ref().unwrap(), &WriteOutcome::Registered);
    assert!(matches!(
        r[2].as_ref().unwrap(),
        WriteOutcome::Rejected(ErrorCode::UserExists, _)
    ));
    let a = store.user("alice").unwrap().unwrap().id;
    let b = store.user("bob").unwrap().unwrap().id;
    Some((guard, store, a, b))
}

/// Runs SQL under the store (set-ups a test cannot reach through the protocol).
fn raw_sql(store: &Store, sql: &str) {
    match store {
        Store::Sqlite(s) => s.execute_sql(sql),
        Store::Postgres(s) => s.execute_sql(sql),
    }
    .unwrap();
}

/// For each function `name(backend, test name)`, tests `name::sqlite` and `name::postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::*;

                #[test]
                fn sqlite() {
                    $name(Backend::Sqlite, concat!(stringify!($name), "::sqlite"));
                }

                #[test]
                fn postgres() {
                    $name(Backend::Postgres, concat!(stringify!($name), "::postgres"));
                }
            }
        )*
    };
}

on_both_backends! {
    deposits_withdrawals_and_transfers,
    balances_cannot_overflow,
    request_ids_make_transfers_idempotent,
    group_commit_batches_and_delivers_every_result,
    a_failing_write_fails_alone_and_the_others_apply_once,
    reopens_with_the_data,
    refuses_a_newer_or_foreign_schema,
    a_batch_records_every_outcome_whatever_comes_first,
}

fn balance(r: &Result<WriteOutcome, StoreError>) -> i64 {
    match r {
        Ok(WriteOutcome::Balance(b)) => *b,
        other => panic!("expected a balance, got {other:?}"),
    }
}

fn code(r: &Result<WriteOutcome, StoreError>) -> ErrorCode {
    match r {
        Ok(WriteOutcome::Rejected(c, _)) => *c,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// The outcome a replay answered with (it must be one: a transfer retried by its request
/// id, which applied nothing).
fn replay(r: &Result<WriteOutcome, StoreError>) -> Result<WriteOutcome, StoreError> {
    match r {
        Ok(WriteOutcome::Replayed(first)) => Ok((**first).clone()),
        other => panic!("expected a replay, got {other:?}"),
    }
}

fn tr(from: i64, to: &str, amount: i64, rid: Option<&str>) -> WriteOp {
    WriteOp::Transfer {
        from,
        from_name: if from == 1 { "alice" } else { "bob" }.into(),
        to: to.into(),
        amount,
        request_id: rid.map(Into::into),
    }
}

#[test]
fn sqlite_is_in_wal_mode_with_full_sync() {
    let (_guard, store, _, _) = setup(Backend::Sqlite, "wal", true).unwrap();
    let Store::Sqlite(s) = &store else {
        unreachable!()
    };
    let (mode, sync) = s.pragmas();
    assert_eq!(mode, "wal");
    assert_eq!(sync, 2, "FULL");
}

/// Early lock release (the writers commit without waiting for the disk, a flush barrier
/// before any reply) is on with group commit unless turned off, and off where the server
/// will not run barriers, where every write still works.
#[test]
fn postgres_releases_locks_early_with_group_commit_where_barriers_run() {
    let Some((guard, db)) = database(Backend::Postgres, "early_release") else {
        return;
    };
    let cluster = guard.downcast_ref::<PgCluster>().unwrap();
    let opened = std::cell::Cell::new(0);
    let open = |db: &Database, group_commit: bool, early_release: bool| {
        opened.set(opened.get() + 1);
        let store = Store::open(
            db,
            StoreOptions {
                group_commit,
                early_release,
                db_timeout: Some(std::time::Duration::from_secs(30)),
                writers: 1,
                metrics: crate::BankMetrics::default(),
            },
        )
        .unwrap();
        let Store::Postgres(pg) = &store else {
            unreachable!()
        };
        let early = pg.early_release();
        let r = store.write_now(&[WriteOp::Register {
            name: format!("u{}", opened.get()),
            hash: PasswordHash("h".into()),
        }]);
        assert!(matches!(r[0], Ok(WriteOutcome::Registered)), "{r:?}");
        (store, early)
    };
    // A role that may not run the barrier's function, in a database it sets up itself.
    cluster
        .psql(
            "CREATE ROLE plain LOGIN; GRANT CREATE ON SCHEMA public TO plain; \
             REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) \
             FROM PUBLIC",
        )
        .unwrap();
    let Database::Postgres(url) = &db else {
        unreachable!()
    };
    let plain = Database::Postgres(url.replacen("bank@", "plain@", 1));
    let (store, early) = open(&plain, true, true);
    assert!(
        !early,
        "no barriers: every commit must wait for its own flush"
    );
    let u = store.user("u1").unwrap().unwrap().id;
    assert_eq!(
        balance(&store.write_now(&[WriteOp::Deposit { user: u, amount: 7 }])[0]),
        7
    );
    assert_eq!(store.balance(u).unwrap(), 7);
    drop(store);
    assert!(open(&db, true, true).1);
    assert!(!open(&db, false, true).1, "without group commit");
    assert!(!open(&db, true, false).1, "turned off");
}

fn reopens_with_the_data(backend: Backend, name: &str) {
    let Some((guard, db)) = database(backend, name) else {
        return;
    };
    let store = Store::open(&db, options(true)).unwrap();
    let r = store.write_now(&[WriteOp::Register {
        name: "alice".into(),
        hash: PasswordHash("h".into()),
    }]);
    assert!(matches!(r[0], Ok(WriteOutcome::Registered)));
    let a = store.user("alice").unwrap().unwrap().id;
    assert_eq!(
        balance(&store.write_now(&[WriteOp::Deposit { user: a, amount: 5 }])[0]),
        5
    );
    drop(store);
    // Opening again finds the schema in place (idempotent set-up) and the data.
    let store = Store::open(&db, options(false)).unwrap();
    assert_eq!(store.balance(a).unwrap(), 5);
    drop(guard);
}

fn refuses_a_newer_or_foreign_schema(backend: Backend, name: &str) {
    let Some((_guard, db)) = database(backend, name) else {
        return;
    };
    let store = Store::open(&db, options(true)).unwrap();
    match backend {
        Backend::Sqlite => raw_sql(&store, "PRAGMA user_version = 7"),
        Backend::Postgres => raw_sql(
            &store,
            "UPDATE bank_meta SET value = '7' WHERE key = 'schema_version'",
        ),
    }
    drop(store);
    let e = Store::open(&db, options(true)).unwrap_err().to_string();
    assert!(e.contains("newer"), "{e}");
    if let Backend::Postgres = backend {
        // Someone else's `users` table and no bank_meta: refused, nothing added.
        let Database::Postgres(url) = &db else {
            unreachable!()
        };
        let mut c = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
        c.batch_execute("DROP TABLE bank_meta, ledger, requests; ")
            .unwrap();
        let e = Store::open(&db, options(true)).unwrap_err().to_string();
        assert!(e.contains("not a bank database"), "{e}");
        let meta: Option<String> = c
            .query_one("SELECT to_regclass('bank_meta')::text", &[])
            .unwrap()
            .get(0);
        assert_eq!(meta, None);
    }
}

/// A bank set up in `public`, then a schema named after the role appears (first on the
/// default search path): the server refuses, naming both schemas, instead of creating a
/// second, empty bank there.
#[test]
fn a_bank_behind_another_schema_of_the_search_path_is_refused() {
    let Some((_guard, db)) = database(Backend::Postgres, "search_path") else {
        return;
    };
    let store = Store::open(&db, options(true)).unwrap();
    drop(store);
    let Database::Postgres(url) = &db else {
        unreachable!()
    };
    let mut c = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
    c.batch_execute("CREATE SCHEMA AUTHORIZATION CURRENT_USER")
        .unwrap();
    let e = Store::open(&db, options(true)).unwrap_err().to_string();
    assert!(e.contains("\"public\"") && e.contains("search_path"), "{e}");
    let tables: i64 = c
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_user",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "tables created in the role's own schema");
}

fn deposits_withdrawals_and_transfers(backend: Backend, name: &str) {
    let Some((_guard, store, a, b)) = setup(backend, name, true) else {
        return;
    };
    let r = store.write_now(&[
        WriteOp::Deposit {
            user: a,
            amount: 1000,
        },
        WriteOp::Withdraw { user: a, amount: 1 },
        WriteOp::Withdraw {
            user: a,
            amount: 5000,
        },
        tr(a, "bob", 300, None),
        tr(a, "carol", 1, None),
        tr(a, "alice", 1, None),
        tr(a, "bob", 700, None),
    ]);
    assert_eq!(balance(&r[0]), 1000);
    assert_eq!(balance(&r[1]), 999);
    assert_eq!(code(&r[2]), ErrorCode::InsufficientFunds);
    assert_eq!(balance(&r[3]), 699);
    assert_eq!(code(&r[4]), ErrorCode::NoSuchUser);
    assert_eq!(code(&r[5]), ErrorCode::BadRequest);
    assert_eq!(code(&r[6]), ErrorCode::InsufficientFunds);
    assert_eq!(store.balance(a).unwrap(), 699);
    assert_eq!(store.balance(b).unwrap(), 300);
    assert_eq!(store.total().unwrap(), 999);

    let h = store.history(a, 10).unwrap();
    let lines: Vec<String> = h.iter().map(|e| e.line()).collect();
    assert_eq!(h.len(), 3, "{lines:?}");
    assert_eq!(h[0].kind, EntryKind::TransferOut);
    assert_eq!(h[0].counterparty.as_deref(), Some("bob"));
    assert_eq!((h[0].amount, h[0].balance_after), (-300, 699));
    assert_eq!((h[1].kind, h[1].amount), (EntryKind::Withdraw, -1));
    assert_eq!((h[2].kind, h[2].amount), (EntryKind::Deposit, 1000));
    assert!(h[0].id > h[1].id && h[1].id > h[2].id);
    let hb = store.history(b, 10).unwrap();
    assert_eq!(hb.len(), 1);
    assert_eq!(hb[0].kind, EntryKind::TransferIn);
    assert_eq!(hb[0].counterparty.as_deref(), Some("alice"));
    assert_eq!(store.history(a, 1).unwrap().len(), 1);
}

fn balances_cannot_overflow(backend: Backend, name: &str) {
    let Some((_guard, store, a, _)) = setup(backend, name, true) else {
        return;
    };
    raw_sql(
        &store,
        &format!("UPDATE users SET balance = {} WHERE id = {a}", i64::MAX - 5),
    );
    let r = store.write_now(&[WriteOp::Deposit { user: a, amount: 6 }]);
    assert_eq!(code(&r[0]), ErrorCode::InvalidAmount);
    assert_eq!(store.balance(a).unwrap(), i64::MAX - 5);
}

fn request_ids_make_transfers_idempotent(backend: Backend, name: &str) {
    let Some((_guard, store, a, b)) = setup(backend, name, true) else {
        return;
    };
    store.write_now(&[WriteOp::Deposit {
        user: a,
        amount: 100,
    }]);
    let r = store.write_now(&[
        tr(a, "bob", 40, Some("r1")),
        tr(a, "bob", 40, Some("r1")),
        tr(a, "bob", 41, Some("r1")),
        tr(a, "bob", 500, Some("r2")),
        tr(b, "alice", 10, Some("r1")),
    ]);
    assert_eq!(balance(&r[0]), 60);
    assert_eq!(balance(&replay(&r[1])), 60, "replayed");
    assert_eq!(
        code(&r[2]),
        ErrorCode::BadRequest,
        "same id, other transfer"
    );
    assert_eq!(code(&r[3]), ErrorCode::InsufficientFunds);
    assert_eq!(balance(&r[4]), 30, "ids are per user");
    // The refusal is replayed too, even though the balance now covers it.
    store.write_now(&[WriteOp::Deposit {
        user: a,
        amount: 1000,
    }]);
    let r = store.write_now(&[tr(a, "bob", 500, Some("r2")), tr(a, "bob", 40, Some("r1"))]);
    assert_eq!(code(&replay(&r[0])), ErrorCode::InsufficientFunds);
    assert_eq!(balance(&replay(&r[1])), 60);
    assert_eq!(store.balance(a).unwrap(), 1070);
    assert_eq!(store.balance(b).unwrap(), 30);
}

/// A batch whose first operations record nothing (a refusal without a request id, a
/// replay) still records the ledger rows and request outcomes of the ones after them, in
/// the right place: a retry then replays instead of moving money again.
fn a_batch_records_every_outcome_whatever_comes_first(backend: Backend, name: &str) {
    let Some((_guard, store, a, b)) = setup(backend, name, true) else {
        return;
    };
    store.write_now(&[WriteOp::Deposit {
        user: a,
        amount: 100,
    }]);
    let r = store.write_now(&[tr(a, "bob", 5, Some("r0"))]);
    assert_eq!(balance(&r[0]), 95);
    // A refusal first, then a transfer with an id: its outcome must be recorded.
    let r = store.write_now(&[
        WriteOp::Withdraw {
            user: b,
            amount: 50,
        },
        tr(a, "bob", 3, Some("q")),
    ]);
    assert_eq!(code(&r[0]), ErrorCode::InsufficientFunds);
    assert_eq!(balance(&r[1]), 92);
    let again = store.write_now(&[tr(a, "bob", 3, Some("q"))]);
    assert_eq!(balance(&replay(&again[0])), 92, "replayed, not moved again");
    assert_eq!(store.balance(a).unwrap(), 92);
    let r = store.write_now(&[
        WriteOp::Withdraw {
            user: b,
            amount: 50,
        }, // refused: bob has 5
        tr(a, "bob", 5, Some("r0")),             // a replay
        tr(a, "carol", 1, None),                 // refused, nothing recorded
        tr(a, "bob", 10, Some("r1")),            // applied
        tr(a, "nobody", 1, Some("r2")),          // refused, recorded
        WriteOp::Deposit { user: b, amount: 7 }, // applied
    ]);
    assert_eq!(code(&r[0]), ErrorCode::InsufficientFunds);
    assert_eq!(balance(&replay(&r[1])), 95, "replayed");
    assert_eq!(code(&r[2]), ErrorCode::NoSuchUser);
    assert_eq!(balance(&r[3]), 82);
    assert_eq!(code(&r[4]), ErrorCode::NoSuchUser);
    assert_eq!(balance(&r[5]), 25);
    // Retries move nothing and answer as the first time, message included.
    let again = store.write_now(&[tr(a, "bob", 10, Some("r1")), tr(a, "nobody", 1, Some("r2"))]);
    assert_eq!(balance(&replay(&again[0])), 82);
    assert_eq!(replay(&again[1]).ok(), r[4].as_ref().ok().cloned());
    assert_eq!(store.balance(a).unwrap(), 82);
    assert_eq!(store.balance(b).unwrap(), 25);
    // The ledger has exactly the changes that happened, newest first.
    let kinds = |id| {
        store
            .history(id, 10)
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, e.amount, e.balance_after))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        kinds(a),
        [
            (EntryKind::TransferOut, -10, 82),
            (EntryKind::TransferOut, -3, 92),
            (EntryKind::TransferOut, -5, 95),
            (EntryKind::Deposit, 100, 100),
        ]
    );
    assert_eq!(
        kinds(b),
        [
            (EntryKind::Deposit, 7, 25),
            (EntryKind::TransferIn, 10, 18),
            (EntryKind::TransferIn, 3, 8),
            (EntryKind::TransferIn, 5, 5),
        ]
    );
}

fn group_commit_batches_and_delivers_every_result(backend: Backend, name: &str) {
    for group in [true, false] {
        let Some((_guard, store, a, b)) = setup(backend, name, group) else {
            return;
        };
        let store = Arc::new(store);
        store.write_now(&[WriteOp::Deposit {
            user: a,
            amount: 1000,
        }]);
        let (tx, rx) = std::sync::mpsc::channel();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let tx = tx.clone();
                        let (from, to) = if (t + i) % 2 == 0 {
                            (a, "bob")
                        } else {
                            (b, "alice")
                        };
                        store.submit_write(WriteJob {
                            ops: vec![tr(from, to, 7, None), tr(from, to, 3, None)],
                            done: Box::new(move |r| tx.send(r).unwrap()),
                        });
                    }
                })
            })
            .collect();
        drop(tx);
        for t in threads {
            t.join().unwrap();
        }
        let results: Vec<WriteResults> = rx.iter().collect();
        assert_eq!(results.len(), 200);
        assert!(results.iter().all(|r| r.len() == 2));
        assert_eq!(store.total().unwrap(), 1000);
        assert!(store.balance(a).unwrap() >= 0 && store.balance(b).unwrap() >= 0);
        let oks = results
            .iter()
            .flatten()
            .filter(|r| matches!(r, Ok(WriteOutcome::Balance(_))))
            .count();
        let ledger = store.history(a, 1000).unwrap().len() + store.history(b, 1000).unwrap().len();
        assert_eq!(ledger, 1 + 2 * oks);
    }
}

fn a_failing_write_fails_alone_and_the_others_apply_once(backend: Backend, name: &str) {
    let Some((_guard, store, a, b)) = setup(backend, name, true) else {
        return;
    };
    // User 999 999 does not exist: reading its balance is a database error (no row),
    // which sends the batch down the one-savepoint-per-operation path.
    let ghost = 999_999;
    let results = store.write_now(&[
        WriteOp::Deposit {
            user: a,
            amount: 100,
        },
        WriteOp::Deposit {
            user: ghost,
            amount: 5,
        },
        tr(a, "bob", 30, None),
        WriteOp::Withdraw {
            user: ghost,
            amount: 1,
        },
    ]);
    assert!(matches!(results[0], Ok(WriteOutcome::Balance(100))));
    assert!(results[1].is_err());
    assert!(matches!(results[2], Ok(WriteOutcome::Balance(70))));
    assert!(results[3].is_err());
    // Applied exactly once, though the first attempt had applied the first ones.
    assert_eq!(store.balance(a).unwrap(), 70);
    assert_eq!(store.balance(b).unwrap(), 30);
    assert_eq!(store.total().unwrap(), 100);
    assert_eq!(store.history(a, 10).unwrap().len(), 2);
}
