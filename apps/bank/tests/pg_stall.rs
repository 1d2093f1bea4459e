//! A stalled path to PostgreSQL: a TCP proxy of the test's own between the bank and the
//! server stops forwarding in both directions and keeps every socket open, as a dead
//! middlebox, a NAT that lost its state, or a hung server host would (the bank's kernel
//! sees its data acknowledged, so TCP timeouts and keepalives never fire). The links that
//! stalled stay dead; links made once the path is back work.
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

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{psql, Client, Server, PW};
use duo_testkit::pg::PgCluster;
use duo_testkit::wait_until_within;

/// How long a reply may take here: the bound under test is 1 s, and a connection attempt
/// through the stalled path gives up after 1 s too (`connect_timeout`).
const REPLY_DEADLINE: Duration = Duration::from_secs(8);

/// A cluster of this test's own, or `None` (skipped) without PostgreSQL.
fn own_cluster(test: &str) -> Option<PgCluster> {
    PgCluster::builder()
        .setting("fsync", "off")
        .for_test(&format!("pg_stall::{test}"))
}

/// The error code of an `ERR` reply.
fn err_code(reply: &str) -> Option<&str> {
    reply.strip_prefix("ERR ")?.split(' ').next()
}

/// A client whose replies must come within [`REPLY_DEADLINE`].
fn client(addr: SocketAddr) -> Client {
    let c = Client::connect(addr);
    c.stream()
        .set_read_timeout(Some(REPLY_DEADLINE))
        .expect("read timeout");
    c
}

/// `user` logged in (registered first if needed) on a new connection.
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

/// Sends `line` until the answer is not `UNAVAILABLE` (at most 10 s): the bank reconnects
/// by itself once the path is back.
fn until_available(c: &mut Client, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answer = c.cmd(line);
    while err_code(&answer) == Some("UNAVAILABLE") && Instant::now() < deadline {
        answer = c.cmd(line);
    }
    answer
}

// ---------------------------------------------------------------------------------------
// The stalling proxy.

#[derive(Default)]
struct State {
    /// Bumped at each stall and at each recovery: a link forwards only while the path is
    /// up and its epoch is the current one, so a link that saw a stall stays dead.
    epoch: u64,
    stalled: bool,
    /// The path stalls once a message (bank to server) containing these bytes has gone
    /// through.
    stall_after: Option<Vec<u8>>,
    stop: bool,
    /// Every socket, to shut down when the proxy goes.
    sockets: Vec<TcpStream>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// A TCP proxy on 127.0.0.1 to a PostgreSQL port that can stall; every link is shut down
/// on drop.
struct StallProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accepter: Option<thread::JoinHandle<()>>,
}

impl StallProxy {
    fn start(server_port: u16) -> StallProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let accepter = {
            let shared = shared.clone();
            thread::spawn(move || {
                for bank in listener.incoming() {
                    if shared.state.lock().unwrap().stop {
                        return;
                    }
                    let Ok(bank) = bank else { continue };
                    let Ok(pg) = TcpStream::connect(("127.0.0.1", server_port)) else {
                        continue;
                    };
                    link(bank, pg, &shared);
                }
            })
        };
        StallProxy {
            addr,
            shared,
            accepter: Some(accepter),
        }
    }

    /// Database `db`'s URL through the proxy; a connection attempt gives up after 1 s.
    fn url(&self, db: &str) -> String {
        format!("postgres://bank@{}/{db}?connect_timeout=1", self.addr)
    }

    /// Stalls the path once the next message containing `marker` has gone through.
    fn stall_after(&self, marker: &str) {
        self.shared.state.lock().unwrap().stall_after = Some(marker.as_bytes().to_vec());
    }

    fn stalled(&self) -> bool {
        self.shared.state.lock().unwrap().stalled
    }

    /// The path works again for new links.
    fn recover(&self) {
        let mut s = self.shared.state.lock().unwrap();
        s.stalled = false;
        s.epoch += 1;
        self.shared.changed.notify_all();
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        {
            let mut s = self.shared.state.lock().unwrap();
            s.stop = true;
            for sock in s.sockets.drain(..) {
                let _ = sock.shutdown(Shutdown::Both);
            }
            self.shared.changed.notify_all();
        }
        // Wakes the accepting thread.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accepter.take() {
            let _ = t.join();
        }
    }
}

/// Forwards between `bank` and `pg` on two threads while the path is up; once it stalls,
/// this link forwards nothing more (what it reads is dropped) but keeps its sockets open.
fn link(bank: TcpStream, pg: TcpStream, shared: &Arc<Shared>) {
    let _ = bank.set_nodelay(true);
    let _ = pg.set_nodelay(true);
    let epoch = {
        let mut s = shared.state.lock().unwrap();
        for sock in [&bank, &pg] {
            if let Ok(sock) = sock.try_clone() {
                s.sockets.push(sock);
            }
        }
        s.epoch
    };
    let (Ok(bank2), Ok(pg2)) = (bank.try_clone(), pg.try_clone()) else {
        return;
    };
    for (mut from, mut to, watch) in [(bank, pg, true), (pg2, bank2, false)] {
        let shared = shared.clone();
        thread::spawn(move || {
            let mut tail: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut s = shared.state.lock().unwrap();
                // A dead link waits here until the proxy goes (its reader then fails).
                while !s.stop && (s.stalled || s.epoch != epoch) {
                    s = shared.changed.wait(s).unwrap();
                }
                if s.stop {
                    return;
                }
                let mut stall_now = false;
                if watch {
                    // The marker may span two reads: look at the end of the previous one.
                    tail.extend_from_slice(&buf[..n]);
                    if let Some(marker) = &s.stall_after {
                        if tail.windows(marker.len()).any(|w| w == &marker[..]) {
                            stall_now = true;
                        }
                    }
                    let keep = tail.len().saturating_sub(128);
                    tail.drain(..keep);
                }
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
                if stall_now {
                    s.stall_after = None;
                    s.stalled = true;
                    s.epoch += 1;
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------
// The path stalls while a commit is in flight.

/// Alice (1000) and bob on `server`: alice's connection.
fn two_accounts(server: &Server) -> Client {
    let mut alice = logged_in(server.addr, "alice");
    drop(logged_in(server.addr, "bob"));
    assert_eq!(alice.cmd("DEPOSIT 1000"), "OK 1000");
    alice
}

/// The path stalls right after alice's transfer went through to the server, which commits
/// it: its answer never comes back. The transfer, and a read on another connection, are
/// answered `UNAVAILABLE` within the bound; once the path is back the bank recovers by
/// itself, and the retry of the transfer answers the first outcome, once.
fn stall_around_a_commit(test: &str, extra: &[&str]) {
    let Some(cluster) = own_cluster(test) else {
        return;
    };
    let proxy = StallProxy::start(cluster.port());
    let mut args = vec!["--db-timeout", "1"];
    args.extend_from_slice(extra);
    let server = Server::start_url(&proxy.url("bank"), &args);
    let mut alice = two_accounts(&server);
    let mut reader = logged_in(server.addr, "alice");
    assert_eq!(reader.balance(), 1000);

    proxy.stall_after("st1");
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

/// A `psql` that runs `lock` in a transaction and holds it until it is ended; returns once
/// the lock is held. Killed by PID on drop.
struct Holder(std::process::Child);

impl Holder {
    fn hold(cluster: &PgCluster, lock: &str) -> Holder {
        let mut cmd = cluster.command("psql");
        cmd.args([
            "-X",
            "-c",
            &format!(
                "SET statement_timeout = 0; SET lock_timeout = 0; \
                 BEGIN; {lock}; SELECT pg_sleep(60) AS stall_holder; COMMIT;"
            ),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        let holder = Holder(cmd.spawn().expect("psql"));
        wait_until_within(Duration::from_secs(10), "the lock held", || {
            psql(
                cluster,
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%AS stall_holder%' \
                 AND wait_event = 'PgSleep'",
            ) == "1"
        });
        holder
    }

    /// Ends the holding session (its transaction rolls back) and reaps the `psql`.
    fn release(mut self, cluster: &PgCluster) {
        psql(
            cluster,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query LIKE '%AS stall_holder%' AND pid <> pg_backend_pid()",
        );
        let _ = duo_testkit::wait_child_within(&mut self.0, Duration::from_secs(10));
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pid of the one session of the bank's that waits for a lock (at most 10 s).
fn lock_waiter(cluster: &PgCluster) -> String {
    let mut pid = String::new();
    wait_until_within(Duration::from_secs(10), "a call waiting for a lock", || {
        pid = psql(
            cluster,
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'bank' \
             AND wait_event_type = 'Lock'",
        );
        !pid.is_empty()
    });
    pid
}

/// How many of the bank's sessions wait for a lock.
fn lock_waiters(cluster: &PgCluster) -> String {
    psql(
        cluster,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bank' \
         AND wait_event_type = 'Lock'",
    )
}

/// Whether the server session `pid` is still there.
fn alive(cluster: &PgCluster, pid: &str) -> bool {
    psql(
        cluster,
        &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
    ) == "1"
}

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
    let holder = Holder::hold(
        &cluster,
        "SELECT 1 FROM users WHERE name = 'alice' FOR UPDATE",
    );
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
        "0",
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
