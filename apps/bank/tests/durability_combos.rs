//! Durability in combinations the other suites do not make: a writer's or the flush
//! barrier's database session ended (`pg_terminate_backend`) while a batch waits for its
//! barrier or while it waits for a row lock, one request id twice in one batch (one
//! connection pipelining, several racing, over two writers), a request id replayed with
//! other terms across a restart, a batch where one operation fails for a database reason
//! (a check constraint, a serialization failure, a deadlock), SIGTERM while a batch waits
//! for its barrier, and SQLite with its file locked by another process or its disk full. After each: money is conserved, every `OK` is in
//! the database, and every request id answers what happened, once.
//!
//! A barrier is held back by naming a synchronous standby that never connects
//! (`synchronous_standby_names`): synchronous commits (the barrier) then wait, while the
//! writers' commits (`synchronous_commit = off`) do not. Those tests run on a cluster of
//! their own.

#[macro_use]
mod common;

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    hold_synchronous_commits, ok_number, psql, release_synchronous_commits, Backend, Client,
    Server, TestDb, BANK, PW,
};
use duo_testkit::pg::PgCluster;
use duo_testkit::{run_within, wait_until_within, ChildServer};

on_both_backends! {
    a_request_id_twice_in_one_batch_moves_money_once,
    a_request_id_reused_with_other_terms_after_a_restart_is_refused,
    a_database_error_in_a_batch_fails_that_operation_alone,
}

/// The error code of an `ERR` reply.
fn err_code(reply: &str) -> Option<&str> {
    reply.strip_prefix("ERR ")?.split(' ').next()
}

/// `user`'s balance through a new connection.
fn balance_of(addr: std::net::SocketAddr, user: &str) -> i64 {
    let mut c = Client::connect(addr);
    assert_eq!(
        c.cmd(&format!("LOGIN {user} {PW}")),
        format!("OK welcome {user}")
    );
    c.balance()
}

// ---------------------------------------------------------------------------------------
// Request ids inside one batch, and across a restart.

fn a_request_id_twice_in_one_batch_moves_money_once(backend: Backend) {
    let Some(db) = TestDb::new(backend, "rid_twice") else {
        return;
    };
    let server = db.start(&[]);
    let mut alice = Client::logged_in(server.addr, "alice");
    drop(Client::logged_in(server.addr, "bob"));
    assert_eq!(alice.cmd("DEPOSIT 1000"), "OK 1000");
    // Pipelined: one job, one batch. The retry before the first answer gets the first
    // answer; the same id with another amount is refused.
    alice.send(b"TRANSFER bob 5 d1\nTRANSFER bob 5 d1\nTRANSFER bob 6 d1\nTRANSFER bob 7 d2\n");
    let replies: Vec<String> = (0..4).map(|_| alice.line()).collect();
    assert_eq!(replies[0], "OK 995", "{replies:?}");
    assert_eq!(replies[1], "OK 995", "{replies:?}");
    assert_eq!(err_code(&replies[2]), Some("BAD_REQUEST"), "{replies:?}");
    assert_eq!(replies[3], "OK 988", "{replies:?}");
    // A refusal is the first outcome too, even once the money is there.
    alice.send(b"TRANSFER bob 5000 d3\nDEPOSIT 10000\nTRANSFER bob 5000 d3\n");
    let replies: Vec<String> = (0..3).map(|_| alice.line()).collect();
    assert_eq!(
        err_code(&replies[0]),
        Some("INSUFFICIENT_FUNDS"),
        "{replies:?}"
    );
    assert_eq!(replies[1], "OK 10988", "{replies:?}");
    assert_eq!(
        err_code(&replies[2]),
        Some("INSUFFICIENT_FUNDS"),
        "{replies:?}"
    );

    // Two connections of one user racing with the same ids: each id moves money once.
    const IDS: usize = 40;
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let addr = server.addr;
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                assert_eq!(c.cmd(&format!("LOGIN alice {PW}")), "OK welcome alice");
                let wire: String = (0..IDS)
                    .map(|i| format!("TRANSFER bob 1 race{i}\n"))
                    .collect();
                c.send(wire.as_bytes());
                (0..IDS).map(|_| c.line()).collect::<Vec<_>>()
            })
        })
        .collect();
    let answers: Vec<Vec<String>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (i, (a, b)) in answers[0].iter().zip(&answers[1]).enumerate() {
        assert_eq!(a, b, "race{i}");
        assert!(ok_number(a).is_some(), "race{i}: {a}");
    }
    assert_eq!(balance_of(server.addr, "alice"), 10988 - IDS as i64);
    assert_eq!(balance_of(server.addr, "bob"), 12 + IDS as i64);
}

fn a_request_id_reused_with_other_terms_after_a_restart_is_refused(backend: Backend) {
    let Some(db) = TestDb::new(backend, "rid_terms") else {
        return;
    };
    let mut server = db.start(&[]);
    let mut alice = Client::logged_in(server.addr, "alice");
    drop(Client::logged_in(server.addr, "bob"));
    drop(Client::logged_in(server.addr, "carol"));
    assert_eq!(alice.cmd("DEPOSIT 100"), "OK 100");
    assert_eq!(alice.cmd("TRANSFER bob 10 t1"), "OK 90");
    assert_eq!(
        err_code(&alice.cmd("TRANSFER bob 1000 t2")),
        Some("INSUFFICIENT_FUNDS")
    );
    let (status, _) = server.signal_and_wait("TERM", Duration::from_secs(10));
    assert!(status.success());

    let server = db.start(&[]);
    let mut alice = Client::connect(server.addr);
    assert_eq!(alice.cmd(&format!("LOGIN alice {PW}")), "OK welcome alice");
    for line in [
        "TRANSFER bob 11 t1",
        "TRANSFER carol 10 t1",
        "TRANSFER bob 999 t2",
        "TRANSFER carol 1000 t2",
    ] {
        let reply = alice.cmd(line);
        assert_eq!(err_code(&reply), Some("BAD_REQUEST"), "{line}: {reply}");
    }
    // Pipelined in one batch too.
    alice.send(b"TRANSFER carol 10 t1\nTRANSFER bob 10 t1\n");
    assert_eq!(err_code(&alice.line()), Some("BAD_REQUEST"));
    assert_eq!(alice.line(), "OK 90");
    assert_eq!(alice.balance(), 90);
    assert_eq!(balance_of(server.addr, "bob"), 10);
    assert_eq!(balance_of(server.addr, "carol"), 0);
}

// ---------------------------------------------------------------------------------------
// A database error inside a batch.

/// Makes a deposit of exactly `amount` fail with a database error of SQLSTATE `state`
/// (PostgreSQL; on SQLite a trigger aborts it).
fn poison_deposits(db: &TestDb, amount: i64, state: &str) {
    match db.backend() {
        Backend::Postgres => {
            db.psql(&format!(
                "CREATE OR REPLACE FUNCTION poison_{state}() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                     IF NEW.kind = 'deposit' AND NEW.amount = {amount} THEN
                         RAISE EXCEPTION 'poisoned deposit' USING ERRCODE = '{state}';
                     END IF;
                     RETURN NEW;
                 END $$;
                 CREATE TRIGGER poison_{state} BEFORE INSERT ON ledger
                     FOR EACH ROW EXECUTE FUNCTION poison_{state}();"
            ));
        }
        Backend::Sqlite => {
            let c = rusqlite::Connection::open(db.arg()).unwrap();
            c.execute_batch(&format!(
                "CREATE TRIGGER poison_{state} BEFORE INSERT ON ledger
                 WHEN NEW.kind = 'deposit' AND NEW.amount = {amount}
                 BEGIN SELECT RAISE(ABORT, 'poisoned deposit'); END;"
            ))
            .unwrap();
        }
    }
}

fn a_database_error_in_a_batch_fails_that_operation_alone(backend: Backend) {
    let Some(db) = TestDb::new(backend, "poison") else {
        return;
    };
    // Made once, so the schema exists for the triggers.
    let mut first = db.start(&[]);
    drop(Client::logged_in(first.addr, "bob"));
    let (status, _) = first.signal_and_wait("TERM", Duration::from_secs(10));
    assert!(status.success());
    // 23514: check violation; 40001: serialization failure; 40P01: deadlock (retried,
    // then the batch runs one operation per call).
    let poisons = [(13, "23514"), (17, "40001"), (19, "40P01")];
    for (amount, state) in poisons {
        poison_deposits(&db, amount, state);
        if backend == Backend::Sqlite {
            break; // one trigger is enough: SQLite has no codes to tell apart
        }
    }
    let server = db.start(&[]);
    let mut alice = Client::logged_in(server.addr, "alice");
    // One job, one batch: the poisoned deposits fail alone, everything else applies once.
    let mut wire = String::new();
    let mut expected = Vec::new();
    let mut balance = 0;
    let amounts: Vec<i64> = if backend == Backend::Sqlite {
        vec![1, 13, 2, 13, 4]
    } else {
        vec![1, 13, 2, 17, 4, 19, 8]
    };
    for (i, amount) in amounts.iter().enumerate() {
        wire.push_str(&format!("DEPOSIT {amount}\n"));
        let poisoned = poisons.iter().any(|(a, _)| a == amount);
        if poisoned {
            expected.push(None);
        } else {
            balance += amount;
            expected.push(Some(balance));
        }
        wire.push_str(&format!("TRANSFER bob 1 p{i}\n"));
        if balance >= 1 {
            balance -= 1;
            expected.push(Some(balance));
        } else {
            expected.push(None);
        }
    }
    alice.send(wire.as_bytes());
    let replies: Vec<String> = expected.iter().map(|_| alice.line()).collect();
    for (reply, want) in replies.iter().zip(&expected) {
        match want {
            Some(b) => assert_eq!(ok_number(reply), Some(*b), "{replies:?}"),
            None => assert!(reply.starts_with("ERR "), "{replies:?}"),
        }
    }
    assert_eq!(alice.balance(), balance, "{replies:?}");
    let moved = expected.iter().skip(1).step_by(2).flatten().count() as i64;
    assert_eq!(balance_of(server.addr, "bob"), moved, "{replies:?}");
}

// ---------------------------------------------------------------------------------------
// Sessions ended while a batch waits for its flush barrier (PostgreSQL).

/// A cluster of this test's own (its settings change), or `None` without PostgreSQL.
fn own_cluster(test: &str) -> Option<PgCluster> {
    PgCluster::builder()
        .setting("fsync", "off")
        .for_test(&format!("durability_combos::{test}"))
}

/// The pids of the bank's sessions whose last query contains `pattern`.
fn backends(cluster: &PgCluster, pattern: &str) -> Vec<String> {
    let out = psql(
        cluster,
        &format!(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'bank' \
             AND query LIKE '%{pattern}%'"
        ),
    );
    out.lines().map(str::to_owned).collect()
}

/// Waits until the barrier session waits for the standby.
fn barrier_waiting(cluster: &PgCluster) {
    wait_until_within(Duration::from_secs(10), "a barrier waiting", || {
        psql(
            cluster,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bank' \
             AND wait_event = 'SyncRep'",
        ) != "0"
    });
}

fn terminate(cluster: &PgCluster, pids: &[String]) {
    assert!(!pids.is_empty(), "no session to terminate");
    for pid in pids {
        psql(cluster, &format!("SELECT pg_terminate_backend({pid})"));
    }
}

/// Alice (1000) and bob on a front-end of `cluster`.
fn two_accounts(server: &Server) -> Client {
    let mut alice = Client::logged_in(server.addr, "alice");
    drop(Client::logged_in(server.addr, "bob"));
    assert_eq!(alice.cmd("DEPOSIT 1000"), "OK 1000");
    alice
}

#[test]
fn a_writer_session_ended_while_its_batch_waits_for_the_barrier() {
    let Some(cluster) = own_cluster("writer_ended") else {
        return;
    };
    let server = Server::start_url(&cluster.url(), &[]);
    let mut alice = two_accounts(&server);
    hold_synchronous_commits(&cluster);
    alice.send(b"TRANSFER bob 10 w1\n");
    barrier_waiting(&cluster);
    // The batch committed (its writer does not wait for the standby); its writer's
    // session goes before the barrier answers.
    terminate(&cluster, &backends(&cluster, "bank_apply"));
    release_synchronous_commits(&cluster);
    // The barrier's session lived throughout: the commit is confirmed.
    assert_eq!(alice.line(), "OK 990");
    // The writer reconnects: nothing was in flight on its dead session.
    assert_eq!(alice.cmd("TRANSFER bob 10 w2"), "OK 980");
    assert_eq!(alice.cmd("TRANSFER bob 10 w1"), "OK 990");
    assert_eq!(balance_of(server.addr, "bob"), 20);
    assert_eq!(psql(&cluster, "SELECT sum(balance) FROM users"), "1000");
}

#[test]
fn the_barrier_session_ended_while_a_batch_waits_for_it() {
    let Some(cluster) = own_cluster("barrier_ended") else {
        return;
    };
    let server = Server::start_url(&cluster.url(), &[]);
    let mut alice = two_accounts(&server);
    hold_synchronous_commits(&cluster);
    alice.send(b"TRANSFER bob 10 b1\nDEPOSIT 5\n");
    barrier_waiting(&cluster);
    terminate(&cluster, &backends(&cluster, "pg_logical_emit_message"));
    // The commit cannot be confirmed: the outcome is unknown.
    let first = alice.line();
    let second = alice.line();
    release_synchronous_commits(&cluster);
    assert_eq!(err_code(&first), Some("UNAVAILABLE"), "{first}");
    assert_eq!(err_code(&second), Some("UNAVAILABLE"), "{second}");
    // Both were committed, and the database did not restart: the retry gets the
    // transfer's first answer, and moves nothing again.
    assert_eq!(alice.cmd("TRANSFER bob 10 b1"), "OK 990");
    assert_eq!(alice.cmd("TRANSFER bob 10 b1"), "OK 990");
    assert_eq!(alice.balance(), 995);
    assert_eq!(balance_of(server.addr, "bob"), 10);
    assert_eq!(psql(&cluster, "SELECT sum(balance) FROM users"), "1005");
}

// ---------------------------------------------------------------------------------------
// SQLite: the file locked by another process, the disk full.

#[test]
fn sqlite_locked_by_another_process_waits_and_loses_nothing() {
    let dir = common::TempDir::new("locked");
    let db = dir.join("bank.db");
    let server = Server::start(&db, &[]);
    let mut alice = Client::logged_in(server.addr, "alice");
    assert_eq!(alice.cmd("DEPOSIT 100"), "OK 100");
    // Another process takes the write lock for a while.
    let other = rusqlite::Connection::open(&db).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    alice.send(b"DEPOSIT 5\n");
    // No answer while the lock is held (the writer waits for it, up to its busy timeout).
    alice
        .stream()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert_eq!(alice.try_line(), None, "answered while the file was locked");
    alice
        .stream()
        .set_read_timeout(Some(common::REPLY_TIMEOUT))
        .unwrap();
    other.execute_batch("COMMIT").unwrap();
    assert_eq!(alice.line(), "OK 105");
    assert_eq!(alice.balance(), 105);
}

/// `bank serve` on SQLite file `db` with its file size limited to `kib` KiB (`ulimit
/// -f`; a write past it fails with EFBIG, as on a full disk).
fn start_limited(db: &std::path::Path, kib: u64) -> ChildServer {
    let mut cmd = Command::new("bash");
    cmd.args([
        "-c",
        &format!(
            "trap '' XFSZ; ulimit -S -f {kib}; exec \"$0\" serve --listen 127.0.0.1:0 --db \"$1\" \
             --hash-cost low"
        ),
        BANK,
    ])
    .arg(db)
    .env("RUST_LOG", "error");
    ChildServer::builder(cmd)
        .startup(Duration::from_secs(20))
        .stderr(Stdio::inherit())
        .start()
}

#[test]
fn sqlite_with_the_disk_full_answers_errors_and_loses_nothing_acknowledged() {
    let dir = common::TempDir::new("full");
    let db = dir.join("bank.db");
    let mut limited = start_limited(&db, 256);
    let addr = limited.addr();
    let mut alice = Client::logged_in(addr, "alice");
    let mut acked = 0i64;
    let mut errors = 0;
    let started = Instant::now();
    let mut n = 0;
    while errors < 20 && started.elapsed() < Duration::from_secs(20) {
        n += 1;
        // Pipelined bursts: batches of several deposits.
        let burst = 20;
        let wire: String = (0..burst)
            .map(|i| format!("DEPOSIT {}\n", 1 + (n + i) % 7))
            .collect();
        alice.send(wire.as_bytes());
        let mut last_ok = None;
        for i in 0..burst {
            let reply = alice.line();
            let amount = 1 + (n + i) % 7;
            match ok_number(&reply) {
                Some(b) => {
                    acked += amount as i64;
                    last_ok = Some(b);
                }
                None => {
                    assert_eq!(err_code(&reply), Some("INTERNAL"), "{reply}");
                    errors += 1;
                }
            }
        }
        if let Some(b) = last_ok {
            assert_eq!(b, acked, "balance after the acknowledged deposits");
        }
    }
    assert!(errors >= 20, "the disk never filled ({acked} deposited)");
    // Room again: writes work again, on the same server.
    let done = run_within(
        Command::new("prlimit").args(["--pid", &limited.pid().to_string(), "--fsize=unlimited:"]),
        Duration::from_secs(10),
    )
    .expect("prlimit");
    assert!(done.status.success(), "prlimit: {}", done.stderr);
    let reply = alice.cmd("DEPOSIT 1000");
    assert_eq!(
        ok_number(&reply),
        Some(acked + 1000),
        "after the disk has room: {reply}"
    );
    acked += 1000;
    limited.kill();
    let server = Server::start(&db, &[]);
    assert_eq!(balance_of(server.addr, "alice"), acked);
    let c = rusqlite::Connection::open(&db).unwrap();
    let ledger: i64 = c
        .query_row("SELECT COALESCE(SUM(amount), 0) FROM ledger", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(ledger, acked);
}

#[test]
fn a_writer_session_ended_twice_while_its_batch_waits_for_a_lock() {
    let Some(cluster) = own_cluster("writer_lock") else {
        return;
    };
    let server = Server::start_url(&cluster.url(), &[]);
    let mut alice = two_accounts(&server);
    // Another session holds alice's row: the batch waits for it, uncommitted.
    let mut holder = cluster.command("psql");
    holder
        .args([
            "-X",
            "-c",
            "BEGIN; SELECT 1 FROM users WHERE name = 'alice' FOR UPDATE; \
             SELECT pg_sleep(30); COMMIT;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut holder = holder.spawn().expect("psql");
    wait_until_within(Duration::from_secs(10), "the row held", || {
        psql(
            &cluster,
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' \
             AND wait_event = 'PgSleep'",
        ) == "1"
    });
    alice.send(b"TRANSFER bob 10 l1\n");
    let waiting = || {
        psql(
            &cluster,
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'bank' \
             AND wait_event_type = 'Lock'",
        )
    };
    // Ended while waiting (nothing committed): tried once more on a new session if the
    // session's end reads as a refusal (it may read as a lost connection instead), which
    // waits too, and is ended as well, until the client hears back. (A session just ended
    // may still be listed: only one not ended yet is ended.)
    let mut ended: Vec<String> = Vec::new();
    alice
        .stream()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        assert!(
            Instant::now() < deadline,
            "no answer after ending {ended:?}"
        );
        if let Some(pid) = waiting().lines().find(|p| !ended.iter().any(|e| e == p)) {
            let pid = pid.to_owned();
            terminate(&cluster, std::slice::from_ref(&pid));
            ended.push(pid);
        }
        if ended.is_empty() {
            continue;
        }
        if let Some(line) = alice.try_line() {
            break line;
        }
    };
    alice
        .stream()
        .set_read_timeout(Some(common::REPLY_TIMEOUT))
        .unwrap();
    assert_eq!(err_code(&first), Some("UNAVAILABLE"), "{first}");
    let holders = psql(
        &cluster,
        "SELECT pid FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()",
    );
    terminate(&cluster, &[holders]);
    let _ = holder.wait();
    // It was not applied: the retry applies it now, once.
    assert_eq!(alice.cmd("TRANSFER bob 10 l1"), "OK 990");
    assert_eq!(alice.cmd("TRANSFER bob 10 l1"), "OK 990");
    assert_eq!(balance_of(server.addr, "bob"), 10);
    assert_eq!(psql(&cluster, "SELECT sum(balance) FROM users"), "1000");
}

/// SIGTERM while a batch waits for its barrier: its reply still comes if the barrier
/// returns within the grace period; else the connection closes without it, and the
/// retry on the restarted server says what happened.
#[test]
fn sigterm_with_a_batch_waiting_for_its_barrier() {
    let Some(cluster) = own_cluster("sigterm") else {
        return;
    };
    for late in [false, true] {
        psql(
            &cluster,
            "DROP TABLE IF EXISTS users, ledger, requests, bank_meta CASCADE",
        );
        let mut server = Server::start_url(&cluster.url(), &[]);
        let mut alice = two_accounts(&server);
        hold_synchronous_commits(&cluster);
        alice.send(b"TRANSFER bob 10 s1\nDEPOSIT 1\n");
        barrier_waiting(&cluster);
        let stopping =
            thread::spawn(move || server.signal_and_wait("TERM", Duration::from_secs(20)));
        if late {
            // The grace period ends: the connection closes without the replies.
            let rest = alice.expect_closed(Duration::from_secs(10));
            assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
        }
        release_synchronous_commits(&cluster);
        if !late {
            assert_eq!(alice.line(), "OK 990");
            assert_eq!(alice.line(), "OK 991");
            assert!(alice.expect_closed(Duration::from_secs(10)).is_empty());
        }
        let (status, _) = stopping.join().expect("the stop");
        assert!(status.success(), "late {late}: {status}");
        let server = Server::start_url(&cluster.url(), &[]);
        let mut alice = Client::connect(server.addr);
        assert_eq!(alice.cmd(&format!("LOGIN alice {PW}")), "OK welcome alice");
        assert_eq!(alice.cmd("TRANSFER bob 10 s1"), "OK 990", "late {late}");
        assert_eq!(alice.balance(), 991, "late {late}");
        assert_eq!(balance_of(server.addr, "bob"), 10);
    }
}

#[test]
fn request_ids_raced_over_two_writers_move_money_once() {
    let Some(db) = TestDb::new(Backend::Postgres, "rid_writers") else {
        return;
    };
    let server = db.start(&["--db-writers", "2", "--workers", "6"]);
    let mut alice = Client::logged_in(server.addr, "alice");
    drop(Client::logged_in(server.addr, "bob"));
    assert_eq!(alice.cmd("DEPOSIT 100000"), "OK 100000");
    const IDS: usize = 200;
    const CONNS: usize = 4;
    let threads: Vec<_> = (0..CONNS)
        .map(|k| {
            let addr = server.addr;
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                assert_eq!(c.cmd(&format!("LOGIN alice {PW}")), "OK welcome alice");
                let mut out = Vec::new();
                // Bursts of different sizes, so the batches cut the ids differently.
                let mut i = 0;
                while i < IDS {
                    let burst = (1 + (i + k) % 7).min(IDS - i);
                    let wire: String = (i..i + burst)
                        .map(|j| format!("TRANSFER bob {} x{j}\n", 1 + j % 3))
                        .collect();
                    c.send(wire.as_bytes());
                    out.extend((0..burst).map(|_| c.line()));
                    i += burst;
                }
                out
            })
        })
        .collect();
    let answers: Vec<Vec<String>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut moved = 0;
    for (j, first) in answers[0].iter().enumerate() {
        for other in &answers[1..] {
            assert_eq!(first, &other[j], "x{j}");
        }
        assert!(ok_number(first).is_some(), "x{j}: {first}");
        moved += 1 + j as i64 % 3;
    }
    assert_eq!(balance_of(server.addr, "bob"), moved);
    assert_eq!(db.psql("SELECT sum(balance) FROM users"), "100000");
    assert_eq!(
        db.psql("SELECT count(*) FROM ledger WHERE kind = 'transfer_out'"),
        IDS.to_string()
    );
}
