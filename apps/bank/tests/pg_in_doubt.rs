//! The in-doubt commit on PostgreSQL, and the database changing under a running server.
//!
//! A commit whose acknowledgement never arrives: the link to the database dropped (by a
//! TCP proxy of the test's own between the bank and PostgreSQL) right after the call was
//! sent, or after the server had answered it but before the answer got through; the
//! writer's session ended (`pg_terminate_backend`) or the database crashed
//! (`pg_ctl restart -m immediate`) while a commit waits for a synchronous standby, that is
//! after the commit is on the server's disk and before it is acknowledged. The client must
//! never get `OK` for what was not committed, and a transfer that was committed must be
//! resolved by its request id: the retry answers the first answer, once.
//!
//! Also: `lock_timeout` and `statement_timeout` set on the database, `max_connections`
//! reached at start and at reconnect, two front-ends racing on one request id, and the
//! schema changed under a running server (a column's type, a table that appears in front
//! of the bank's on the `search_path`).
//!
//! Every test runs on a cluster of its own (its settings change, it restarts), which is
//! stopped when the test ends, also when it fails.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pg::{err_code, lock_waiters, own_cluster_sized, until_available, Holder};
use common::pg_proxy::{Fault, Proxy};
use common::{
    hold_synchronous_commits, psql, release_synchronous_commits, Client, Server, BANK, PW,
};
use duo_testkit::pg::PgCluster;
use duo_testkit::{run_within, wait_until_within};

/// `user`'s balance through a new connection.
fn balance_of(addr: SocketAddr, user: &str) -> i64 {
    let mut c = Client::connect(addr);
    assert_eq!(
        c.cmd(&format!("LOGIN {user} {PW}")),
        format!("OK welcome {user}")
    );
    c.balance()
}

/// Alice (1000) and bob on `server`: alice's connection.
fn two_accounts(server: &Server) -> Client {
    common::pg::two_accounts(server, Client::logged_in)
}

fn terminate(cluster: &PgCluster, pids: &[String]) {
    assert!(!pids.is_empty(), "no session to terminate");
    for pid in pids {
        psql(cluster, &format!("SELECT pg_terminate_backend({pid})"));
    }
}

/// Ends every session of the bank (they reconnect on next use).
fn terminate_all(cluster: &PgCluster) {
    psql(
        cluster,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'bank'",
    );
    wait_until_within(Duration::from_secs(10), "the bank's sessions gone", || {
        psql(
            cluster,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bank'",
        ) == "0"
    });
}

/// Waits until `n` of the bank's sessions wait for the standby, running a query that
/// contains `pattern`.
fn waiting_for_standby(cluster: &PgCluster, pattern: &str) -> Vec<String> {
    let mut pids = Vec::new();
    wait_until_within(Duration::from_secs(10), "a commit waiting", || {
        pids = psql(
            cluster,
            &format!(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'bank' \
                 AND wait_event = 'SyncRep' AND query LIKE '%{pattern}%'"
            ),
        )
        .lines()
        .map(str::to_owned)
        .collect();
        !pids.is_empty()
    });
    pids
}

// ---------------------------------------------------------------------------------------
// The link dropped around a commit.

/// Sends alice's transfer `rid` of 10 to bob, and a deposit of 5 behind it (one batch),
/// through `proxy` cutting as `cut` says; both get `UNAVAILABLE`. The retry answers the
/// first answer, once. After [`Fault::CutAfterReply`] the deposit was committed as well;
/// after [`Fault::CutAfterSend`] it may have been, or not (the bank ends the session of a lost
/// connection, which may not have run the call yet), and the balance says which.
fn cut_around_the_commit(cut: Fault) {
    let Some(cluster) = own_cluster_sized(&format!("cut_{cut:?}"), 100) else {
        return;
    };
    let proxy = Proxy::start(cluster.port());
    for (i, extra) in [&[][..], &["--no-early-release"][..]].iter().enumerate() {
        let db = format!("m{i}");
        psql(&cluster, &format!("CREATE DATABASE {db}"));
        let server = Server::start_url(&proxy.url(&db), extra);
        let mut alice = two_accounts(&server);
        let rid = format!("cut-{i}");
        proxy.plan(&rid, cut);
        alice.send(format!("TRANSFER bob 10 {rid}\nDEPOSIT 5\n").as_bytes());
        let (first, second) = (alice.line(), alice.line());
        assert_eq!(proxy.cuts(), i + 1, "{extra:?}: the link was not cut");
        // Never OK: the bank cannot know the commit happened.
        assert_eq!(err_code(&first), Some("UNAVAILABLE"), "{extra:?}: {first}");
        assert_eq!(
            err_code(&second),
            Some("UNAVAILABLE"),
            "{extra:?}: {second}"
        );
        // The server got the call, which committed: the retry answers its answer.
        let retry = format!("TRANSFER bob 10 {rid}");
        assert_eq!(alice.cmd(&retry), "OK 990", "{extra:?}");
        assert_eq!(alice.cmd(&retry), "OK 990", "{extra:?}");
        let balance = alice.balance();
        if cut == Fault::CutAfterReply {
            assert_eq!(balance, 995, "{extra:?}");
        } else {
            assert!(balance == 995 || balance == 990, "{extra:?}: {balance}");
        }
        assert_eq!(balance_of(server.addr, "bob"), 10, "{extra:?}");
        let sum = common::psql_in(&cluster, &db, "SELECT sum(balance) FROM users");
        assert_eq!(sum, (balance + 10).to_string(), "{extra:?}");
        let deposits = common::psql_in(
            &cluster,
            &db,
            "SELECT count(*) FROM ledger WHERE kind = 'deposit' AND amount = 5",
        );
        assert_eq!(
            deposits,
            if balance == 995 { "1" } else { "0" },
            "{extra:?}"
        );
    }
}

#[test]
fn the_answer_to_a_commit_lost_on_the_way_back_is_resolved_by_the_request_id() {
    cut_around_the_commit(Fault::CutAfterReply);
}

#[test]
fn a_link_dropped_right_after_the_call_is_sent_is_resolved_by_the_request_id() {
    cut_around_the_commit(Fault::CutAfterSend);
}

// ---------------------------------------------------------------------------------------
// A commit on disk and not yet acknowledged: it waits for a synchronous standby.

/// Holds synchronous commits, sends alice's transfer, waits until a commit of the bank's
/// (its own with `--no-early-release`, else the barrier) waits for the standby, does
/// `fault`, releases the commits, and checks the answer and the retry.
fn fault_while_a_commit_waits(test: &str, fault: fn(&PgCluster, &[String])) {
    let Some(cluster) = own_cluster_sized(test, 100) else {
        return;
    };
    for (i, extra) in [&[][..], &["--no-early-release"][..]].iter().enumerate() {
        psql(
            &cluster,
            "DROP TABLE IF EXISTS users, ledger, requests, bank_meta CASCADE",
        );
        let server = Server::start_url(&cluster.url(), extra);
        let mut alice = two_accounts(&server);
        hold_synchronous_commits(&cluster);
        let rid = format!("w{i}");
        alice.send(format!("TRANSFER bob 10 {rid}\n").as_bytes());
        let waiting = if extra.is_empty() {
            "pg_logical_emit_message"
        } else {
            "bank_apply"
        };
        let pids = waiting_for_standby(&cluster, waiting);
        fault(&cluster, &pids);
        let first = alice.try_line();
        release_synchronous_commits(&cluster);
        // The commit is on the server's disk: never a failure that says nothing was done.
        if let Some(first) = &first {
            assert!(
                first == "OK 990" || err_code(first) == Some("UNAVAILABLE"),
                "{extra:?}: {first}"
            );
        }
        // The retry (on a new connection if the server closed this one) answers it, once.
        let mut alice = Client::connect(server.addr);
        assert_eq!(alice.cmd(&format!("LOGIN alice {PW}")), "OK welcome alice");
        let retry = format!("TRANSFER bob 10 {rid}");
        let answer = until_available(&mut alice, &retry);
        assert_eq!(answer, "OK 990", "{extra:?}: first answer {first:?}");
        assert_eq!(alice.cmd(&retry), "OK 990", "{extra:?}");
        assert_eq!(balance_of(server.addr, "bob"), 10, "{extra:?}");
        assert_eq!(psql(&cluster, "SELECT sum(balance) FROM users"), "1000");
    }
}

#[test]
fn the_session_ended_while_its_commit_waits_for_a_standby() {
    fault_while_a_commit_waits("terminated", terminate);
}

#[test]
fn the_database_crashing_while_a_commit_waits_for_a_standby() {
    fault_while_a_commit_waits("crashed", |cluster, _| {
        cluster
            .restart_immediate()
            .unwrap_or_else(|e| panic!("restart: {e}\n{}", cluster.log_tail(20)));
    });
}

// ---------------------------------------------------------------------------------------
// Timeouts set on the database.

/// With `setting` on the database, a transfer and a deposit that wait for alice's row
/// (held by another session) fail without being applied, and the retry applies the
/// transfer once, after the row is free.
fn timeout_on_the_database(test: &str, setting: &str) {
    let Some(cluster) = own_cluster_sized(test, 100) else {
        return;
    };
    psql(&cluster, &format!("ALTER DATABASE bank SET {setting}"));
    let server = Server::start_url(&cluster.url(), &[]);
    let mut alice = two_accounts(&server);
    let holder = Holder::row(&cluster, "alice");
    alice.send(b"TRANSFER bob 10 t1\nDEPOSIT 5\n");
    let (first, second) = (alice.line(), alice.line());
    holder.release(&cluster);
    for answer in [&first, &second] {
        assert!(
            matches!(err_code(answer), Some("INTERNAL" | "UNAVAILABLE")),
            "{setting}: {answer}"
        );
    }
    // Nothing was applied, and the retry applies the transfer now, once.
    assert_eq!(alice.balance(), 1000, "{setting}: {first} / {second}");
    assert_eq!(alice.cmd("TRANSFER bob 10 t1"), "OK 990", "{setting}");
    assert_eq!(alice.cmd("TRANSFER bob 10 t1"), "OK 990", "{setting}");
    assert_eq!(alice.cmd("DEPOSIT 5"), "OK 995", "{setting}");
    assert_eq!(balance_of(server.addr, "bob"), 10);
}

#[test]
fn lock_timeout_on_the_database_fails_writes_that_wait_and_applies_their_retry_once() {
    timeout_on_the_database("lock_timeout", "lock_timeout = '300ms'");
}

#[test]
fn statement_timeout_on_the_database_fails_writes_that_wait_and_applies_their_retry_once() {
    timeout_on_the_database("statement_timeout", "statement_timeout = '300ms'");
}

// ---------------------------------------------------------------------------------------
// max_connections.

/// Makes the roles of the max_connections tests: `teller`, the bank's (not a superuser,
/// so that the slots reserved for superusers stay for the test's own `psql`), owner of
/// database `tdb`, and `filler`, for the sessions that take the other slots.
fn tellers_database(cluster: &PgCluster) -> String {
    psql(
        cluster,
        "CREATE ROLE teller LOGIN; CREATE ROLE filler LOGIN",
    );
    psql(cluster, "CREATE DATABASE tdb OWNER teller");
    format!("postgres://teller@127.0.0.1:{}/tdb", cluster.port())
}

/// `psql` sessions of role `filler` that sleep, taking every connection slot not
/// reserved for superusers; killed by PID on drop.
struct Fillers(Vec<Child>);

impl Fillers {
    /// Opens sessions until the server refuses one.
    fn fill(cluster: &PgCluster) -> Fillers {
        let mut fillers = Fillers(Vec::new());
        for n in 0..50 {
            let mut cmd = cluster.command("psql");
            cmd.env("PGUSER", "filler")
                .args([
                    "-X",
                    "-d",
                    "tdb",
                    "-c",
                    &format!("SELECT pg_sleep(60) AS filler{n}"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = cmd.spawn().expect("psql");
            // Up (sleeping), or refused (its psql exits at once).
            let mut refused = false;
            wait_until_within(Duration::from_secs(10), "a filler up or refused", || {
                refused = child.try_wait().ok().flatten().is_some();
                refused
                    || psql(
                        cluster,
                        &format!(
                            "SELECT count(*) FROM pg_stat_activity \
                             WHERE query LIKE '%AS filler{n}' AND wait_event = 'PgSleep'"
                        ),
                    ) == "1"
            });
            fillers.0.push(child);
            if refused {
                assert!(n > 0, "not one filler got a session");
                return fillers;
            }
        }
        panic!("the server took 50 sessions");
    }

    /// Ends the sessions (a killed `psql` would leave its sleeping session behind).
    fn release(self, cluster: &PgCluster) {
        psql(
            cluster,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE usename = 'filler'",
        );
    }
}

impl Drop for Fillers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn max_connections_reached_at_start_fails_the_start_with_a_message() {
    let Some(cluster) = own_cluster_sized("max_at_start", 8) else {
        return;
    };
    let url = tellers_database(&cluster);
    let fillers = Fillers::fill(&cluster);
    let done = run_within(
        common::serve_args(&mut Command::new(BANK), &url),
        Duration::from_secs(30),
    )
    .expect("bank serve ends by itself");
    fillers.release(&cluster);
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert!(
        done.stderr.contains("reserved for"),
        "stderr: {}",
        done.stderr
    );
    assert!(!done.stdout.contains("listening on"), "{}", done.stdout);
}

#[test]
fn max_connections_reached_at_reconnect_answers_unavailable_then_recovers() {
    let Some(cluster) = own_cluster_sized("max_at_reconnect", 8) else {
        return;
    };
    let url = tellers_database(&cluster);
    let server = Server::start_url(&url, &[]);
    let mut alice = two_accounts(&server);
    terminate_all(&cluster);
    let fillers = Fillers::fill(&cluster);
    // No session to be had: an answer, quickly, and nothing applied.
    let started = Instant::now();
    let answer = alice.cmd("TRANSFER bob 10 m1");
    assert_eq!(err_code(&answer), Some("UNAVAILABLE"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let answer = alice.cmd("BALANCE");
    assert_eq!(err_code(&answer), Some("UNAVAILABLE"), "{answer}");
    fillers.release(&cluster);
    // Slots free again: the bank reconnects by itself.
    let answer = until_available(&mut alice, "TRANSFER bob 10 m1");
    assert_eq!(answer, "OK 990");
    assert_eq!(alice.cmd("TRANSFER bob 10 m1"), "OK 990");
    assert_eq!(alice.balance(), 990);
}

// ---------------------------------------------------------------------------------------
// Two front-ends racing on one request id.

#[test]
fn two_front_ends_racing_on_one_request_id_move_money_once() {
    let Some(cluster) = own_cluster_sized("race", 100) else {
        return;
    };
    let a = Server::start_url(&cluster.url(), &[]);
    let b = Server::start_url(&cluster.url(), &["--no-group-commit"]);
    drop(two_accounts(&a));
    for round in 0..3 {
        let holder = Holder::row(&cluster, "alice");
        let mut clients: Vec<Client> = [a.addr, b.addr, a.addr, b.addr]
            .iter()
            .map(|&addr| {
                let mut c = Client::connect(addr);
                assert_eq!(c.cmd(&format!("LOGIN alice {PW}")), "OK welcome alice");
                c
            })
            .collect();
        for c in &mut clients {
            c.send(format!("TRANSFER bob 10 race{round}\n").as_bytes());
        }
        // All four wait for the row.
        wait_until_within(Duration::from_secs(10), "four writes waiting", || {
            lock_waiters(&cluster) >= 3
        });
        holder.release(&cluster);
        let expected = format!("OK {}", 990 - 10 * round);
        for c in &mut clients {
            assert_eq!(c.line(), expected, "round {round}");
        }
    }
    assert_eq!(balance_of(b.addr, "bob"), 30);
    assert_eq!(
        psql(
            &cluster,
            "SELECT count(*) FROM ledger WHERE kind = 'transfer_out'"
        ),
        "3"
    );
}

// ---------------------------------------------------------------------------------------
// The schema changed under a running server.

#[test]
fn a_column_type_changed_under_a_running_server_does_not_break_reads_for_good() {
    let Some(cluster) = own_cluster_sized("column_type", 100) else {
        return;
    };
    let server = Server::start_url(&cluster.url(), &[]);
    let mut alice = two_accounts(&server);
    assert_eq!(alice.balance(), 1000);
    // A compatible change a DBA may make: the prepared reads no longer match the table.
    psql(
        &cluster,
        "ALTER TABLE users ALTER COLUMN password_hash TYPE varchar(500); \
         ALTER TABLE ledger ALTER COLUMN kind TYPE varchar(20)",
    );
    let mut again = Client::connect(server.addr);
    assert_eq!(again.cmd(&format!("LOGIN alice {PW}")), "OK welcome alice");
    assert_eq!(again.history(1).len(), 1);
    assert_eq!(again.cmd("TRANSFER bob 10 c1"), "OK 990");
    assert_eq!(again.balance(), 990);
}

#[test]
fn a_table_that_appears_in_front_of_the_banks_on_the_search_path_is_not_used() {
    let Some(cluster) = own_cluster_sized("search_path", 100) else {
        return;
    };
    let server = Server::start_url(&cluster.url(), &[]);
    let mut alice = two_accounts(&server);
    // The role's own schema ("$user" comes first on the default search_path) gets a
    // `users` table of someone else's; the bank's sessions are then made anew.
    psql(
        &cluster,
        "CREATE SCHEMA bank; \
         CREATE TABLE bank.users (LIKE public.users INCLUDING ALL); \
         CREATE TABLE bank.ledger (LIKE public.ledger INCLUDING ALL)",
    );
    terminate_all(&cluster);
    // New sessions still read and write the bank's tables (a write with a request id:
    // one that gets UNAVAILABLE while the bank reconnects is retried safely).
    assert_eq!(until_available(&mut alice, "BALANCE"), "OK 1000");
    assert_eq!(until_available(&mut alice, "TRANSFER bob 10 s1"), "OK 990");
    let mut again = Client::connect(server.addr);
    assert_eq!(again.cmd(&format!("LOGIN alice {PW}")), "OK welcome alice");
    assert_eq!(again.balance(), 990);
    assert_eq!(again.history(1).len(), 1);
    assert_eq!(
        psql(&cluster, "SELECT count(*) FROM bank.users, bank.ledger"),
        "0"
    );
}

// ---------------------------------------------------------------------------------------
// A write whose link broke while it waited for a lock.

#[test]
fn a_write_cut_off_while_it_waits_for_a_lock_does_not_commit_after_its_answer() {
    let Some(cluster) = own_cluster_sized("zombie", 100) else {
        return;
    };
    let proxy = Proxy::start(cluster.port());
    let server = Server::start_url(&proxy.url("bank"), &[]);
    let mut alice = two_accounts(&server);
    let holder = Holder::row(&cluster, "alice");
    // The call reaches the server and waits for alice's row; the link breaks meanwhile.
    proxy.plan("z1", Fault::CutAfterSend);
    alice.send(b"TRANSFER bob 10 z1\nDEPOSIT 5\n");
    let (first, second) = (alice.line(), alice.line());
    assert_eq!(proxy.cuts(), 1, "the link was not cut");
    assert_eq!(err_code(&first), Some("UNAVAILABLE"), "{first}");
    assert_eq!(err_code(&second), Some("UNAVAILABLE"), "{second}");
    // What the protocol says to do: a deposit has no request id, so look at the balance
    // before repeating it. It was not applied: repeat it.
    assert_eq!(alice.balance(), 1000);
    alice.send(b"DEPOSIT 5\n");
    wait_until_within(Duration::from_secs(10), "the repeat waiting", || {
        lock_waiters(&cluster) >= 1
    });
    holder.release(&cluster);
    let repeat = alice.line();
    // Every write that waited for the row has had it (the next one comes after them).
    wait_until_within(Duration::from_secs(10), "no write waiting", || {
        lock_waiters(&cluster) == 0
    });
    let retry = alice.cmd("TRANSFER bob 10 z1");
    let deposits = psql(
        &cluster,
        "SELECT count(*) FROM ledger WHERE kind = 'deposit' AND amount = 5",
    );
    // The call cut off did not commit after it was answered: one deposit, and the
    // transfer is done by its retry.
    assert_eq!(
        (repeat.as_str(), retry.as_str(), deposits.as_str()),
        ("OK 1005", "OK 995", "1")
    );
    assert_eq!(psql(&cluster, "SELECT sum(balance) FROM users"), "1005");
}
