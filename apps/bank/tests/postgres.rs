//! Several front-ends on one PostgreSQL database: independent `bank serve` processes
//! (each `--listen 127.0.0.1:0`) sharing one `--db postgres://...`, against a real,
//! throwaway cluster ([`PgCluster`]; every test is skipped with one line where PostgreSQL
//! is not installed, and fails under `CI`). Transfers through both at once, a retry by
//! request id through the other front-end after a `kill -9`, the database restarting
//! (`-m fast`) or crashing (`-m immediate`) under load, a front-end killed under load,
//! and the ways a start fails (no server, a foreign schema, a bad URL).
//!
//! The tests share one cluster (a database each), except those that restart one.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::pg::failed_start;
use common::{ok_number, Backend, Client, Gate, Server, TestDb, PW};
use duo_testkit::pg::PgCluster;
use duo_testkit::{join_before, wait_until_within, RefusedPort, Rng};

/// How long a whole load phase (threads started to threads joined) may take.
const LOAD_LIMIT: Duration = Duration::from_secs(40);

/// A fresh database on the shared cluster, or `None` (skipped) without PostgreSQL.
fn database(tag: &str) -> Option<TestDb> {
    TestDb::new(Backend::Postgres, tag)
}

/// The same database as `db`, reached over the cluster's Unix socket instead of TCP.
fn socket_url(db: &TestDb) -> String {
    let cluster = db.cluster().expect("a PostgreSQL database");
    let url = db.url();
    let name = url.rsplit('/').next().expect("a database name");
    format!(
        "postgresql://bank@/{name}?host={}&port={}",
        cluster.socket_dir().display(),
        cluster.port()
    )
}

/// Registers `user` through `addr` and deposits `cents`.
fn funded(addr: SocketAddr, user: &str, cents: i64) -> Client {
    let mut c = Client::logged_in(addr, user);
    assert_eq!(c.cmd(&format!("DEPOSIT {cents}")), format!("OK {cents}"));
    c
}

/// `user`'s balance, asked through a new connection to `addr`.
fn balance_of(addr: SocketAddr, user: &str) -> i64 {
    let mut c = Client::connect(addr);
    assert_eq!(
        c.cmd(&format!("LOGIN {user} {PW}")),
        format!("OK welcome {user}")
    );
    c.balance()
}

/// The error code of an `ERR` reply, or `None` for another reply.
fn err_code(reply: &str) -> Option<&str> {
    reply.strip_prefix("ERR ")?.split(' ').next()
}

#[test]
fn two_front_ends_share_accounts_and_conserve_money() {
    const START: i64 = 100_000;
    const PER_FRONT_END: usize = 3;
    const TRANSFERS: usize = 60;
    let Some(db) = database("two_front_ends") else {
        return;
    };
    // One front-end over TCP with group commit, the other over the Unix socket with one
    // transaction per write: both write the same rows.
    let a = db.start(&[]);
    let b = Server::start_url(&socket_url(&db), &["--no-group-commit"]);
    funded(a.addr, "alice", START);
    funded(b.addr, "bob", START);

    let gate = Gate::new(2 * PER_FRONT_END);
    let threads: Vec<_> = (0..2 * PER_FRONT_END)
        .map(|i| {
            let (addr, me, to) = if i % 2 == 0 {
                (a.addr, "alice", "bob")
            } else {
                (b.addr, "bob", "alice")
            };
            let gate = gate.clone();
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                assert_eq!(
                    c.cmd(&format!("LOGIN {me} {PW}")),
                    format!("OK welcome {me}")
                );
                let mut rng = Rng::new(i as u64 + 11);
                let mut sent = 0i64;
                gate.wait();
                let mut n = 0;
                while n < TRANSFERS {
                    // Some one by one, some pipelined four to a write.
                    let burst = if n % 5 == 0 { 4.min(TRANSFERS - n) } else { 1 };
                    let amounts: Vec<i64> =
                        (0..burst).map(|_| 1 + rng.below(2000) as i64).collect();
                    let wire: String = amounts
                        .iter()
                        .map(|amount| format!("TRANSFER {to} {amount}\n"))
                        .collect();
                    c.send(wire.as_bytes());
                    for amount in amounts {
                        let reply = c.line();
                        match ok_number(&reply) {
                            Some(after) => {
                                assert!(after >= 0, "{me}: negative balance {after}");
                                sent += amount;
                            }
                            None => assert_eq!(
                                err_code(&reply),
                                Some("INSUFFICIENT_FUNDS"),
                                "{me}: {reply}"
                            ),
                        }
                        n += 1;
                    }
                }
                (me, sent)
            })
        })
        .collect();
    let deadline = Instant::now() + LOAD_LIMIT;
    let mut sent: BTreeMap<&str, i64> = BTreeMap::new();
    for t in threads {
        let (me, amount) = join_before(deadline, "a transfer client", t);
        *sent.entry(me).or_default() += amount;
    }
    let alice = START - sent["alice"] + sent["bob"];
    let bob = START - sent["bob"] + sent["alice"];
    // Each front-end sees every account as the other one left it.
    for addr in [a.addr, b.addr] {
        assert_eq!(balance_of(addr, "alice"), alice);
        assert_eq!(balance_of(addr, "bob"), bob);
    }
    assert_eq!(alice + bob, 2 * START, "money created or destroyed");
    assert_eq!(
        db.psql("select sum(balance) from users"),
        (2 * START).to_string()
    );
}

#[test]
fn a_transfer_retried_through_another_front_end_moves_money_once() {
    let Some(db) = database("retry_elsewhere") else {
        return;
    };
    let mut a = db.start(&[]);
    let b = db.start(&[]);
    let mut alice_a = funded(a.addr, "alice", 1000);
    Client::logged_in(b.addr, "bob");

    assert_eq!(alice_a.cmd("TRANSFER bob 5 r1"), "OK 995");
    // r2 is sent and A killed before its reply is read: its fate is unknown to the client.
    alice_a.send(b"TRANSFER bob 7 r2\n");
    a.kill9();
    assert!(alice_a.try_line().is_none(), "a killed front-end answered");

    let mut alice_b = Client::connect(b.addr);
    assert_eq!(
        alice_b.cmd(&format!("LOGIN alice {PW}")),
        "OK welcome alice"
    );
    // The retry gets the first answer and moves nothing.
    assert_eq!(alice_b.cmd("TRANSFER bob 5 r1"), "OK 995");
    // Whether A applied r2 before dying or not, the retry settles it: applied once.
    assert_eq!(alice_b.cmd("TRANSFER bob 7 r2"), "OK 988");
    assert_eq!(alice_b.cmd("TRANSFER bob 7 r2"), "OK 988");
    let reused = alice_b.cmd("TRANSFER bob 6 r1");
    assert_eq!(err_code(&reused), Some("BAD_REQUEST"), "{reused}");
    let reused = alice_b.cmd("TRANSFER carol 5 r1");
    assert_eq!(err_code(&reused), Some("BAD_REQUEST"), "{reused}");

    assert_eq!(alice_b.balance(), 988);
    assert_eq!(balance_of(b.addr, "bob"), 12);
    let outs = alice_b
        .history(100)
        .iter()
        .filter(|line| line.contains(" transfer_out "))
        .count();
    assert_eq!(outs, 2, "each transfer in the ledger once");
    assert_eq!(
        db.psql("select count(*) from ledger where kind = 'transfer_in'"),
        "2"
    );
}

#[test]
fn start_fails_fast_without_a_database_server_or_with_a_bad_url() {
    // A port nobody listens on, held (bound, never listening) for the whole test: no other
    // test's server or cluster can be given it meanwhile.
    let refused = RefusedPort::new();
    let port = refused.addr().port();
    let (code, stderr, took) = failed_start(&format!("postgres://bank@127.0.0.1:{port}/bank"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("bank: error:") && stderr.contains(&format!("127.0.0.1:{port}")),
        "the message names the database: {stderr}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");

    // A password in the URL is not echoed.
    let (code, stderr, _) = failed_start(&format!("postgres://bank:hunter2@127.0.0.1:{port}/bank"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "password in the message: {stderr}"
    );

    // Usage errors, before any connection.
    for bad in ["mysql://x", "postgres://bank@127.0.0.1:notaport/bank"] {
        let (code, stderr, _) = failed_start(bad);
        assert_eq!(code, Some(2), "{bad}: {stderr}");
        assert!(!stderr.is_empty(), "{bad}: a usage message");
    }
    drop(refused);
}

#[test]
fn a_foreign_schema_is_refused_and_left_alone() {
    let Some(db) = database("foreign") else {
        return;
    };
    db.psql("CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL)");
    let (code, stderr, _) = failed_start(&db.url());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("not a bank database"), "{stderr}");
    assert_eq!(
        db.psql(
            "select string_agg(table_name, ',') from information_schema.tables \
             where table_schema = 'public'"
        ),
        "users",
        "the bank created tables in a foreign database"
    );
}

/// A transfer a client sent and how it was finally answered.
#[derive(Debug, Clone)]
struct Sent {
    from: String,
    to: String,
    amount: i64,
    rid: String,
    /// The final reply (after retries of `UNAVAILABLE`).
    reply: String,
}

impl Sent {
    fn applied(&self) -> bool {
        self.reply.starts_with("OK ")
    }
}

/// Each account's balance after `START` each and the applied transfers of `sent`.
fn expected_balances(users: &[String], start: i64, sent: &[Sent]) -> BTreeMap<String, i64> {
    let mut balances: BTreeMap<String, i64> = users.iter().map(|u| (u.clone(), start)).collect();
    for s in sent.iter().filter(|s| s.applied()) {
        *balances.get_mut(&s.from).expect("a known user") -= s.amount;
        *balances.get_mut(&s.to).expect("a known user") += s.amount;
    }
    balances
}

/// Checks the database against the transfers the clients saw: every one applied exactly
/// once if acknowledged and not at all otherwise (the `requests` table and the ledger),
/// and every balance as they imply.
fn check_ledger(psql: impl Fn(&str) -> String, users: &[String], start: i64, sent: &[Sent]) {
    let recorded: BTreeSet<String> = psql(
        "select u.name || ' ' || r.request_id || ' ' || r.status || ' ' || r.amount \
         from requests r join users u on u.id = r.user_id",
    )
    .lines()
    .map(str::to_owned)
    .collect();
    let expected: BTreeSet<String> = sent
        .iter()
        .map(|s| {
            let status = if s.applied() {
                "OK"
            } else {
                err_code(&s.reply).expect("an error code")
            };
            format!("{} {} {status} {}", s.from, s.rid, s.amount)
        })
        .collect();
    assert_eq!(
        recorded, expected,
        "request outcomes differ from the replies"
    );
    // The ledger: one transfer_out per applied transfer, of its amount.
    let ledger = psql(
        "select u.name || ' ' || count(*) || ' ' || sum(-l.amount) from ledger l \
         join users u on u.id = l.user_id where l.kind = 'transfer_out' group by u.name \
         order by u.name",
    );
    let mut want: BTreeMap<&str, (usize, i64)> = BTreeMap::new();
    for s in sent.iter().filter(|s| s.applied()) {
        let e = want.entry(&s.from).or_default();
        e.0 += 1;
        e.1 += s.amount;
    }
    let want: Vec<String> = want
        .iter()
        .map(|(u, (n, sum))| format!("{u} {n} {sum}"))
        .collect();
    assert_eq!(ledger.lines().collect::<Vec<_>>(), want, "ledger");
    let balances = psql("select name || ' ' || balance from users order by name");
    let want: Vec<String> = expected_balances(users, start, sent)
        .iter()
        .map(|(u, b)| format!("{u} {b}"))
        .collect();
    assert_eq!(balances.lines().collect::<Vec<_>>(), want, "balances");
    assert_eq!(
        psql("select sum(balance) from users"),
        (start * users.len() as i64).to_string(),
        "money created or destroyed"
    );
}

/// The restart test's load: clients each sending transfers with request ids, retrying
/// those answered `UNAVAILABLE` with the same id.
struct Load {
    stop: AtomicBool,
    /// Transfers answered (a final answer, not `UNAVAILABLE`).
    answered: AtomicUsize,
    /// Replies that were `UNAVAILABLE`.
    unavailable: AtomicUsize,
}

#[test]
fn the_database_restarting_under_load_loses_and_duplicates_nothing() {
    restart_under_load(
        "postgres::the_database_restarting_under_load_loses_and_duplicates_nothing",
        PgCluster::restart_fast,
    );
}

/// The database crashing under load (`pg_ctl restart -m immediate`) loses the WAL that
/// was only in its memory. The writers' commits do not wait for the disk (early lock
/// release), so this is where an `OK` sent before its flush barrier would show: a
/// transfer acknowledged and then gone.
#[test]
fn the_database_crashing_under_load_loses_no_acknowledged_transfer() {
    restart_under_load(
        "postgres::the_database_crashing_under_load_loses_no_acknowledged_transfer",
        PgCluster::restart_immediate,
    );
}

/// Transfers with request ids through two front-ends, retried while `UNAVAILABLE`, across
/// `restart` of the database; then every reply is checked against the database.
fn restart_under_load(test: &str, restart: fn(&PgCluster) -> std::io::Result<()>) {
    const USERS: usize = 4;
    const CLIENTS: usize = 4;
    const START: i64 = 1_000_000;
    // Its own cluster: restarting the shared one would disturb the other tests.
    let Some(cluster) = PgCluster::builder().setting("fsync", "off").for_test(test) else {
        return;
    };
    let url = cluster.url();
    let a = Server::start_url(&url, &[]);
    let b = Server::start_url(&url, &[]);
    let front = [a.addr, b.addr];
    let users: Vec<String> = (0..USERS).map(|u| format!("u{u}")).collect();
    for u in &users {
        funded(a.addr, u, START);
    }

    let load = Arc::new(Load {
        stop: AtomicBool::new(false),
        answered: AtomicUsize::new(0),
        unavailable: AtomicUsize::new(0),
    });
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let load = load.clone();
            let addr = front[i % 2];
            let me = users[i % USERS].clone();
            let others: Vec<String> = users.iter().filter(|u| **u != me).cloned().collect();
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                assert_eq!(
                    c.cmd(&format!("LOGIN {me} {PW}")),
                    format!("OK welcome {me}")
                );
                let mut rng = Rng::new(i as u64 + 101);
                let mut sent = Vec::new();
                for n in 0.. {
                    if load.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let to = others[rng.below(others.len() as u64) as usize].clone();
                    let amount = 1 + rng.below(500) as i64;
                    let rid = format!("c{i}-{n}");
                    let line = format!("TRANSFER {to} {amount} {rid}");
                    // When this transfer was first answered UNAVAILABLE: its retries are
                    // bounded from there (the database went away then), not from the
                    // thread's start.
                    let mut unavailable_since: Option<Instant> = None;
                    let reply = loop {
                        let reply = c
                            .try_cmd(&line)
                            .unwrap_or_else(|| panic!("{me}: connection dropped at {line}"));
                        match err_code(&reply) {
                            None if reply.starts_with("OK ") => break reply,
                            Some("INSUFFICIENT_FUNDS") => break reply,
                            Some("UNAVAILABLE") => {
                                load.unavailable.fetch_add(1, Ordering::Relaxed);
                                let since = *unavailable_since.get_or_insert_with(Instant::now);
                                assert!(
                                    since.elapsed() < LOAD_LIMIT,
                                    "{me}: {line} still UNAVAILABLE after {LOAD_LIMIT:?}"
                                );
                                // A client's back-off between retries, not a wait on a
                                // condition.
                                thread::sleep(Duration::from_millis(20));
                            }
                            _ => panic!("{me}: {line}: unexpected reply {reply:?}"),
                        }
                    };
                    load.answered.fetch_add(1, Ordering::Relaxed);
                    sent.push(Sent {
                        from: me.clone(),
                        to,
                        amount,
                        rid,
                        reply,
                    });
                }
                sent
            })
        })
        .collect();

    let phase = Duration::from_secs(20);
    wait_until_within(phase, "transfers before the restart", || {
        load.answered.load(Ordering::Relaxed) >= 100
    });
    let before = load.answered.load(Ordering::Relaxed);
    // Probes logged in beforehand: after the restart they ask only for a balance.
    let mut probes: Vec<Client> = front
        .iter()
        .map(|&addr| {
            let mut c = Client::connect(addr);
            assert_eq!(c.cmd(&format!("LOGIN u0 {PW}")), "OK welcome u0");
            c
        })
        .collect();
    let restart_started = Instant::now();
    restart(&cluster).unwrap_or_else(|e| panic!("restart: {e}"));
    eprintln!("restart took {:?}", restart_started.elapsed());
    // Both front-ends serve again by themselves.
    for c in &mut probes {
        wait_until_within(phase, "a BALANCE after the restart", || {
            let reply = c.cmd("BALANCE");
            match err_code(&reply) {
                None => true,
                Some("UNAVAILABLE") => false,
                _ => panic!("BALANCE after the restart: {reply}"),
            }
        });
    }
    let after = load.answered.load(Ordering::Relaxed);
    wait_until_within(phase, "transfers after the restart", || {
        load.answered.load(Ordering::Relaxed) >= after + 100
    });
    load.stop.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + LOAD_LIMIT;
    let sent: Vec<Sent> = threads
        .into_iter()
        .flat_map(|t| join_before(deadline, "a transfer client", t))
        .collect();
    eprintln!(
        "{} transfers ({before} before the restart), {} UNAVAILABLE replies retried",
        sent.len(),
        load.unavailable.load(Ordering::Relaxed)
    );

    let balances = expected_balances(&users, START, &sent);
    for (u, want) in &balances {
        assert_eq!(balance_of(b.addr, u), *want, "{u}");
    }
    check_ledger(
        |sql| cluster.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}")),
        &users,
        START,
        &sent,
    );
}

#[test]
fn a_front_end_killed_under_load_leaves_the_other_serving() {
    const USERS: usize = 4;
    const START: i64 = 1_000_000;
    let Some(db) = database("kill_front_end") else {
        return;
    };
    let mut a = db.start(&[]);
    let b = db.start(&[]);
    let users: Vec<String> = (0..USERS).map(|u| format!("u{u}")).collect();
    for u in &users {
        funded(b.addr, u, START);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    // Clients 0 and 1 on B (users u0, u1), 2 and 3 on A (u2, u3); all pay everyone.
    let threads: Vec<_> = (0..USERS)
        .map(|i| {
            let on_b = i < 2;
            let addr = if on_b { b.addr } else { a.addr };
            let me = users[i].clone();
            let others: Vec<String> = users.iter().filter(|u| **u != me).cloned().collect();
            let (stop, answered) = (stop.clone(), answered.clone());
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                assert_eq!(
                    c.cmd(&format!("LOGIN {me} {PW}")),
                    format!("OK welcome {me}")
                );
                let mut rng = Rng::new(i as u64 + 201);
                let mut sent = Vec::new();
                // The transfer cut off by the kill, if any: its outcome is unknown.
                let mut cut = None;
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let to = others[rng.below(others.len() as u64) as usize].clone();
                    let amount = 1 + rng.below(500) as i64;
                    let rid = format!("k{i}-{n}");
                    let line = format!("TRANSFER {to} {amount} {rid}");
                    let Some(reply) = c.try_cmd(&line) else {
                        assert!(!on_b, "{me}: B dropped the connection at {line}");
                        cut = Some((to, amount, rid));
                        break;
                    };
                    if !reply.starts_with("OK ") {
                        assert_eq!(
                            err_code(&reply),
                            Some("INSUFFICIENT_FUNDS"),
                            "{me}: {reply}"
                        );
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                    sent.push(Sent {
                        from: me.clone(),
                        to,
                        amount,
                        rid,
                        reply,
                    });
                }
                (me, sent, cut)
            })
        })
        .collect();

    let phase = Duration::from_secs(20);
    wait_until_within(phase, "transfers before the kill", || {
        answered.load(Ordering::Relaxed) >= 100
    });
    a.kill9();
    let after = answered.load(Ordering::Relaxed);
    wait_until_within(phase, "transfers through B after the kill", || {
        answered.load(Ordering::Relaxed) >= after + 100
    });
    stop.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + LOAD_LIMIT;
    let mut sent = Vec::new();
    for t in threads {
        let (from, mut s, cut) = join_before(deadline, "a transfer client", t);
        // Settle a transfer cut off by the kill: its retry through B says what happened.
        if let Some((to, amount, rid)) = cut {
            let mut c = Client::connect(b.addr);
            assert_eq!(
                c.cmd(&format!("LOGIN {from} {PW}")),
                format!("OK welcome {from}")
            );
            let reply = c.cmd(&format!("TRANSFER {to} {amount} {rid}"));
            assert!(
                reply.starts_with("OK ") || err_code(&reply) == Some("INSUFFICIENT_FUNDS"),
                "retry of {rid}: {reply}"
            );
            s.push(Sent {
                from,
                to,
                amount,
                rid,
                reply,
            });
        }
        sent.extend(s);
    }
    eprintln!("{} transfers", sent.len());
    let mut total = 0;
    for (u, want) in expected_balances(&users, START, &sent) {
        let got = balance_of(b.addr, &u);
        assert_eq!(got, want, "{u}");
        total += got;
    }
    assert_eq!(total, START * USERS as i64, "money created or destroyed");
    check_ledger(|sql| db.psql(sql), &users, START, &sent);
}

/// Reads after a database restart: the front-end's pooled reader connections all died
/// with the old server, yet once the server accepts again, the first read succeeds ("reads
/// are retried once on a new connection"), however many dead ones the pool holds.
#[test]
fn the_first_read_after_a_database_restart_succeeds() {
    const READERS: usize = 4;
    let Some(cluster) = PgCluster::builder()
        .setting("fsync", "off")
        .for_test("postgres::the_first_read_after_a_database_restart_succeeds")
    else {
        return;
    };
    // The account is made through a front-end on the Unix socket, gone before the test
    // proper; the one under test is the only TCP client.
    let socket = format!(
        "postgresql://bank@/bank?host={}&port={}",
        cluster.socket_dir().display(),
        cluster.port()
    );
    let mut maker = Server::start_url(&socket, &[]);
    funded(maker.addr, "u0", 100);
    maker.kill9();
    let workers = READERS.to_string();
    let server = Server::start_url(&cluster.url(), &["--workers", &workers]);
    // Concurrent reads fill the reader pool.
    let gate = Gate::new(READERS);
    let threads: Vec<_> = (0..READERS)
        .map(|_| {
            let gate = gate.clone();
            let addr = server.addr;
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                assert_eq!(c.cmd(&format!("LOGIN u0 {PW}")), "OK welcome u0");
                gate.wait();
                c.send("BALANCE\n".repeat(300).as_bytes());
                for _ in 0..300 {
                    assert_eq!(c.line(), "OK 100");
                }
            })
        })
        .collect();
    let deadline = Instant::now() + LOAD_LIMIT;
    for t in threads {
        join_before(deadline, "a reading client", t);
    }
    let tcp_sessions = || {
        cluster
            .psql(
                "select count(*) from pg_stat_activity where backend_type = 'client backend' \
                 and client_addr is not null",
            )
            .unwrap_or_else(|e| panic!("pg_stat_activity: {e}"))
    };
    let pooled: usize = tcp_sessions().parse().expect("a count");
    assert!(pooled >= 2, "the test needs 2 pooled readers, has {pooled}");

    cluster
        .restart_fast()
        .unwrap_or_else(|e| panic!("restart: {e}"));
    let mut c = Client::connect(server.addr);
    let login = c.cmd(&format!("LOGIN u0 {PW}"));
    let balance = c.cmd("BALANCE");
    assert_eq!(
        (login.as_str(), balance.as_str()),
        ("OK welcome u0", "OK 100"),
        "reads right after the restart ({pooled} pooled connections before it)"
    );
}

/// The database restarts while the front-end has nothing to write: the writer's idle
/// connection is dead, but nothing was sent on it, so the next writes must just work
/// (not `UNAVAILABLE`, which tells a client the outcome is unknown).
#[test]
fn writes_after_a_database_restart_while_idle_succeed() {
    let Some(cluster) = PgCluster::builder()
        .setting("fsync", "off")
        .for_test("postgres::writes_after_a_database_restart_while_idle_succeed")
    else {
        return;
    };
    let server = Server::start_url(&cluster.url(), &[]);
    let mut c = funded(server.addr, "u0", 100);
    drop(Client::logged_in(server.addr, "u1"));
    cluster
        .restart_fast()
        .unwrap_or_else(|e| panic!("restart: {e}"));
    for (n, left) in [(1, 99), (2, 97), (3, 94)] {
        assert_eq!(
            c.cmd(&format!("TRANSFER u1 {n}")),
            format!("OK {left}"),
            "transfer {n} after the restart"
        );
    }
    assert_eq!(balance_of(server.addr, "u1"), 6);
}
