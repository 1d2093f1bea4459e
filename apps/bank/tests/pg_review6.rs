//! Review of the bounded PostgreSQL calls (`store/postgres/conn.rs`) and the failure
//! handling around them.
//!
//! - A writer's session ended (`pg_terminate_backend`, SQLSTATE 57P01) while its batch
//!   runs: the batch rolled back, and the server said so; the bank must run it once more
//!   on a new session (as for any error the server reports before committing), also when
//!   the end of the connection is read together with the error.
//! - A session ended right after its commit, its reply and the termination notice
//!   delivered in one read (by a proxy of the test's own that holds the server's bytes):
//!   the batch counts as committed, once.
//! - `--db-timeout` expiring while the reply to a commit is held: `UNAVAILABLE`, the
//!   outcome found by the request id, nothing applied twice.
//! - 50 reconnects leave the bank's threads and file descriptors as they were.
//! - `--db-timeout` values that are not a number of seconds are usage errors (exit 2).
//!
//! Every test runs on a cluster of its own, stopped when the test ends, also when it
//! fails; every read of a reply has a deadline; the bank is killed by PID on drop.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{psql, Client, Server, BANK, PW};
use duo_testkit::pg::PgCluster;
use duo_testkit::{run_within, send_signal, wait_until_within};

/// How long a reply may take here.
const REPLY_DEADLINE: Duration = Duration::from_secs(8);

/// A cluster of this test's own, or `None` (skipped) without PostgreSQL.
fn own_cluster(test: &str) -> Option<PgCluster> {
    PgCluster::builder()
        .setting("fsync", "off")
        .for_test(&format!("pg_review6::{test}"))
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

/// `user` logged in (registered first) on a new connection.
fn logged_in(addr: SocketAddr, user: &str) -> Client {
    let mut c = client(addr);
    assert_eq!(c.cmd(&format!("REGISTER {user} {PW}")), "OK registered");
    assert_eq!(
        c.cmd(&format!("LOGIN {user} {PW}")),
        format!("OK welcome {user}")
    );
    c
}

/// Alice (1000) and bob on `server`: alice's connection.
fn two_accounts(server: &Server) -> Client {
    let mut alice = logged_in(server.addr, "alice");
    drop(logged_in(server.addr, "bob"));
    assert_eq!(alice.cmd("DEPOSIT 1000"), "OK 1000");
    alice
}

/// The next reply line, within [`REPLY_DEADLINE`].
fn answer(c: &mut Client, what: &str) -> String {
    c.try_line()
        .unwrap_or_else(|| panic!("no answer to {what} within {REPLY_DEADLINE:?}"))
}

/// Whether server process `pid` has exited (its sockets closed): gone, or a zombie.
fn exited(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

// ---------------------------------------------------------------------------------------
// A session ended while its batch runs.

/// A `psql` that holds `user`'s row locked (`FOR UPDATE`) until released; returns once
/// the lock is held. Killed by PID on drop.
struct RowHolder(Child);

impl RowHolder {
    fn hold(cluster: &PgCluster, user: &str) -> RowHolder {
        let mut cmd = cluster.command("psql");
        cmd.args([
            "-X",
            "-c",
            &format!(
                "SET statement_timeout = 0; SET lock_timeout = 0; \
                 BEGIN; SELECT 1 FROM users WHERE name = '{user}' FOR UPDATE; \
                 SELECT pg_sleep(60) AS review6_holder; COMMIT;"
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let holder = RowHolder(cmd.spawn().expect("psql"));
        wait_until_within(Duration::from_secs(10), "the row held", || {
            psql(
                cluster,
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE query LIKE '%AS review6_holder%' AND wait_event = 'PgSleep'",
            ) == "1"
        });
        holder
    }

    /// Ends the holding session (its transaction rolls back) and reaps the `psql`.
    fn release(mut self, cluster: &PgCluster) {
        psql(
            cluster,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query LIKE '%AS review6_holder%' AND pid <> pg_backend_pid()",
        );
        let _ = duo_testkit::wait_child_within(&mut self.0, Duration::from_secs(10));
    }
}

impl Drop for RowHolder {
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

/// Resumes a stopped bank when dropped (also when the test fails).
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        assert!(send_signal(pid, "STOP").expect("kill").success());
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = send_signal(self.0, "CONT");
    }
}

/// A DBA ends the session of a writer whose batch waits for a row: the server answers
/// the call with 57P01 (`terminating connection due to administrator command`), rolls the
/// batch back, and closes. The bank is stopped meanwhile, so that it reads the error and
/// the end of the connection together. Nothing was committed and the server said so: the
/// batch is run once more on a new session, as the module docs promise for an error the
/// server reports, and its commands are answered by that run (not `UNAVAILABLE`).
#[test]
fn a_batch_whose_session_is_ended_while_it_runs_is_run_again_on_a_new_session() {
    let Some(cluster) = own_cluster("terminated_during_batch") else {
        return;
    };
    let server = Server::start_url(&cluster.url(), &[]);
    let mut alice = two_accounts(&server);
    let holder = RowHolder::hold(&cluster, "alice");
    alice.send(b"TRANSFER bob 10 td1\nDEPOSIT 5\n");
    let pid = lock_waiter(&cluster);
    {
        let _stopped = Stopped::stop(server.pid());
        psql(&cluster, &format!("SELECT pg_terminate_backend({pid})"));
        wait_until_within(Duration::from_secs(10), "the session gone", || exited(&pid));
    }
    // The run on a new session waits for the row too, then commits.
    holder.release(&cluster);
    let transfer = answer(&mut alice, "the transfer");
    let deposit = answer(&mut alice, "the deposit");
    assert_eq!(
        (transfer.as_str(), deposit.as_str()),
        ("OK 990", "OK 995"),
        "a batch the server rolled back (57P01) was not run again"
    );
    assert_eq!(alice.cmd("TRANSFER bob 10 td1"), "OK 990");
    assert_eq!(alice.balance(), 995);
    assert_eq!(psql(&cluster, "SELECT sum(balance) FROM users"), "1005");
    assert_eq!(
        psql(
            &cluster,
            "SELECT count(*) FROM ledger WHERE kind = 'deposit'"
        ),
        "2"
    );
}

// ---------------------------------------------------------------------------------------
// A proxy that holds the server's answer to one call.

/// What `ReadyForQuery` starts with: `Z`, then its length (5).
const READY_FOR_QUERY: &[u8] = b"Z\0\0\0\x05";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[derive(Default)]
struct HoldState {
    /// The bytes (bank to server) of the call whose answer is to be held.
    marker: Option<Vec<u8>>,
    /// The held link's port on the server's side (`pg_stat_activity.client_port`).
    held_port: Option<u16>,
    /// The server has answered the held call completely (its transaction ended).
    answered: bool,
    /// What went to the bank in one write once the server closed the held link.
    delivered: Vec<u8>,
    /// Every socket, to shut down when the proxy goes.
    sockets: Vec<TcpStream>,
    stop: bool,
}

/// A TCP proxy on 127.0.0.1 to a PostgreSQL port. The answer to the call marked by
/// [`HoldProxy::hold`], and everything the server sends after it, is held until the
/// server closes the link; then it all goes to the bank in one write, and the link is
/// closed.
struct HoldProxy {
    addr: SocketAddr,
    state: Arc<Mutex<HoldState>>,
    accepter: Option<thread::JoinHandle<()>>,
}

impl HoldProxy {
    fn start(server_port: u16) -> HoldProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(HoldState::default()));
        let accepter = {
            let state = state.clone();
            thread::spawn(move || {
                for bank in listener.incoming() {
                    if state.lock().unwrap().stop {
                        return;
                    }
                    let Ok(bank) = bank else { continue };
                    let Ok(pg) = TcpStream::connect(("127.0.0.1", server_port)) else {
                        continue;
                    };
                    hold_link(bank, pg, &state);
                }
            })
        };
        HoldProxy {
            addr,
            state,
            accepter: Some(accepter),
        }
    }

    /// Database `db`'s URL through the proxy.
    fn url(&self, db: &str) -> String {
        format!("postgres://bank@{}/{db}?connect_timeout=2", self.addr)
    }

    /// Holds the answer to the next call containing `marker`.
    fn hold(&self, marker: &str) {
        let mut s = self.state.lock().unwrap();
        s.marker = Some(marker.as_bytes().to_vec());
        s.held_port = None;
        s.answered = false;
        s.delivered.clear();
    }

    /// Waits until the server has answered the held call; the server process of its
    /// session.
    fn wait_answered(&self, cluster: &PgCluster) -> String {
        wait_until_within(Duration::from_secs(10), "the held call answered", || {
            self.state.lock().unwrap().answered
        });
        let port = self.state.lock().unwrap().held_port.expect("the held link");
        psql(
            cluster,
            &format!("SELECT pid FROM pg_stat_activity WHERE client_port = {port}"),
        )
    }
}

impl Drop for HoldProxy {
    fn drop(&mut self) {
        {
            let mut s = self.state.lock().unwrap();
            s.stop = true;
            for sock in s.sockets.drain(..) {
                let _ = sock.shutdown(Shutdown::Both);
            }
        }
        // Wakes the accepting thread.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accepter.take() {
            let _ = t.join();
        }
    }
}

/// Forwards between `bank` and `pg` on two threads, holding as planned.
fn hold_link(bank: TcpStream, pg: TcpStream, state: &Arc<Mutex<HoldState>>) {
    let _ = bank.set_nodelay(true);
    let _ = pg.set_nodelay(true);
    let (Ok(bank2), Ok(pg2)) = (bank.try_clone(), pg.try_clone()) else {
        return;
    };
    let port = pg.local_addr().map(|a| a.port()).unwrap_or(0);
    {
        let mut s = state.lock().unwrap();
        for sock in [&bank, &pg] {
            if let Ok(sock) = sock.try_clone() {
                s.sockets.push(sock);
            }
        }
    }
    // Set (bank to server, before the call goes on) when this link's answer is held.
    let doomed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (state, doomed) = (state.clone(), doomed.clone());
        let (mut from, mut to) = (bank, pg);
        thread::spawn(move || {
            let mut tail: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                tail.extend_from_slice(&buf[..n]);
                {
                    let mut s = state.lock().unwrap();
                    if s.marker.as_ref().is_some_and(|m| contains(&tail, m)) {
                        s.marker = None;
                        s.held_port = Some(port);
                        doomed.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                let keep = tail.len().saturating_sub(128);
                tail.drain(..keep);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            // The bank closed (or the proxy goes): so does the server's side.
            let _ = to.shutdown(Shutdown::Write);
        });
    }
    {
        let state = state.clone();
        let (mut from, mut to) = (pg2, bank2);
        thread::spawn(move || {
            let mut held: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if doomed.load(std::sync::atomic::Ordering::SeqCst) {
                    held.extend_from_slice(&buf[..n]);
                    if contains(&held, READY_FOR_QUERY) {
                        state.lock().unwrap().answered = true;
                    }
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            // The server closed: what it said since the held call goes in one write.
            if !held.is_empty() {
                let _ = to.write_all(&held);
                state.lock().unwrap().delivered = held;
            }
            let _ = to.shutdown(Shutdown::Both);
        });
    }
}

// ---------------------------------------------------------------------------------------
// A session ended right after its commit; a deadline while a commit's answer is held.

/// The answer to alice's transfer (and a deposit behind it, one batch) is held; the DBA
/// ends the session, which has committed; its answer and the termination notice (57P01)
/// reach the bank in one read. The batch committed: it is answered so, once (a retry
/// would apply the deposit twice).
#[test]
fn a_commit_answered_together_with_the_end_of_its_session_counts_once() {
    let Some(cluster) = own_cluster("terminated_after_commit") else {
        return;
    };
    let proxy = HoldProxy::start(cluster.port());
    let server = Server::start_url(&proxy.url("bank"), &[]);
    let mut alice = two_accounts(&server);
    proxy.hold("ta57p01");
    alice.send(b"TRANSFER bob 10 ta57p01\nDEPOSIT 5\n");
    let pid = proxy.wait_answered(&cluster);
    assert!(!pid.is_empty(), "the held session is gone");
    psql(&cluster, &format!("SELECT pg_terminate_backend({pid})"));
    let transfer = answer(&mut alice, "the transfer");
    let deposit = answer(&mut alice, "the deposit");
    let delivered = proxy.state.lock().unwrap().delivered.clone();
    assert!(
        contains(&delivered, READY_FOR_QUERY) && contains(&delivered, b"57P01"),
        "the answer and the termination notice did not go together: {:?}",
        String::from_utf8_lossy(&delivered)
    );
    assert_eq!((transfer.as_str(), deposit.as_str()), ("OK 990", "OK 995"));
    assert_eq!(alice.cmd("TRANSFER bob 10 ta57p01"), "OK 990");
    assert_eq!(alice.balance(), 995);
    assert_eq!(psql(&cluster, "SELECT sum(balance) FROM users"), "1005");
    assert_eq!(
        psql(
            &cluster,
            "SELECT count(*) FROM ledger WHERE kind = 'deposit'"
        ),
        "2",
        "the deposit was applied twice"
    );
}

/// `--db-timeout 1` expires while the answer to a committed batch is held (the path
/// otherwise works): `UNAVAILABLE`; the bank ends the old session before answering, and
/// the outcome is found: the transfer's retry answers its first answer, once, and the
/// deposit was applied once.
#[test]
fn a_deadline_while_a_commits_answer_is_held_finds_the_outcome() {
    let Some(cluster) = own_cluster("deadline_after_commit") else {
        return;
    };
    let proxy = HoldProxy::start(cluster.port());
    for (i, extra) in [&[][..], &["--no-early-release"][..]].iter().enumerate() {
        let db = format!("d{i}");
        psql(&cluster, &format!("CREATE DATABASE {db}"));
        let mut args = vec!["--db-timeout", "1"];
        args.extend_from_slice(extra);
        let server = Server::start_url(&proxy.url(&db), &args);
        let mut alice = two_accounts(&server);
        let rid = format!("dl-{i}");
        proxy.hold(&rid);
        alice.send(format!("TRANSFER bob 10 {rid}\nDEPOSIT 5\n").as_bytes());
        let pid = proxy.wait_answered(&cluster);
        assert!(!pid.is_empty(), "{extra:?}: the held session is gone");
        let transfer = answer(&mut alice, "the transfer");
        let deposit = answer(&mut alice, "the deposit");
        assert_eq!(err_code(&transfer), Some("UNAVAILABLE"), "{extra:?}");
        assert_eq!(err_code(&deposit), Some("UNAVAILABLE"), "{extra:?}");
        // Ended before the answers went out.
        let left = psql(
            &cluster,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
        );
        assert_eq!(left, "0", "{extra:?}: the old session is still there");
        let retry = format!("TRANSFER bob 10 {rid}");
        assert_eq!(alice.cmd(&retry), "OK 990", "{extra:?}");
        assert_eq!(alice.cmd(&retry), "OK 990", "{extra:?}");
        assert_eq!(alice.balance(), 995, "{extra:?}");
        let sum = common::psql_in(&cluster, &db, "SELECT sum(balance) FROM users");
        assert_eq!(sum, "1005", "{extra:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Reconnects leak nothing.

/// The bank's threads and open file descriptors.
fn threads_and_fds(pid: u32) -> (usize, usize) {
    let count = |dir: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{dir}"))
            .map(Iterator::count)
            .unwrap_or(0)
    };
    (count("task"), count("fd"))
}

/// Every session of the bank (its writer and its reader) ended 25 times (each time waited
/// for), a write and a read after each: the bank reconnects 50 times, and ends with the threads and file
/// descriptors it had (no runtime, thread or socket left behind per connection).
#[test]
fn fifty_reconnects_leave_no_thread_or_descriptor_behind() {
    let Some(cluster) = own_cluster("reconnects") else {
        return;
    };
    // Without early release: no barrier session, whose end would make a committed write
    // UNAVAILABLE by design.
    let server = Server::start_url(
        &cluster.url(),
        &["--workers", "2", "--db-writers", "1", "--no-early-release"],
    );
    let mut alice = two_accounts(&server);
    // One session of the test's own ends them (a psql each time would be slow).
    let mut dba = postgres::Client::connect(&cluster.url(), postgres::NoTls).expect("connect");
    let mut end_all = || -> i64 {
        let ended: i64 = dba
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = 'bank'",
                &[],
            )
            .expect("end the bank's sessions")
            .get(0);
        // Gone from the view once each has sent its notice (57P01) and is exiting.
        wait_until_within(Duration::from_secs(5), "the bank's sessions gone", || {
            let left: i64 = dba
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bank'",
                    &[],
                )
                .expect("the bank's sessions")
                .get(0);
            left == 0
        });
        ended
    };
    // The server reports the end of an idle session: nothing was sent on it, and the
    // call goes to a new one.
    let round = |alice: &mut Client, i: i64| {
        assert_eq!(
            alice.cmd("DEPOSIT 1"),
            format!("OK {}", 1000 + i),
            "round {i}"
        );
        assert_eq!(
            alice.cmd("BALANCE"),
            format!("OK {}", 1000 + i),
            "round {i}"
        );
    };
    end_all();
    round(&mut alice, 1);
    let before = threads_and_fds(server.pid());
    for i in 2..=26 {
        assert_eq!(end_all(), 2, "round {i}: the bank's writer and reader");
        round(&mut alice, i);
    }
    let after = threads_and_fds(server.pid());
    eprintln!("threads and descriptors: before {before:?}, after {after:?}");
    assert!(
        after.0 <= before.0 + 2 && after.1 <= before.1 + 4,
        "threads and descriptors before 50 reconnects {before:?}, after {after:?}"
    );
}

// ---------------------------------------------------------------------------------------
// --db-timeout values.

/// A `--db-timeout` that is not a whole number of seconds that fits (negative, not a
/// number, too large), and a negative `--idle-timeout` or `--stall-ms`: exit 2, a message
/// naming the option (a negative number was an "unexpected argument"); the server does
/// not start.
#[test]
fn bad_db_timeouts_are_usage_errors() {
    for bad in [
        &["--db-timeout", "-1"][..],
        &["--db-timeout=-1"],
        &["--db-timeout", "abc"],
        &["--db-timeout", "1.5"],
        &["--db-timeout", ""],
        &["--db-timeout", "99999999999999999999999"],
        // The other timeouts in seconds or milliseconds, likewise.
        &["--idle-timeout", "-1"],
        &["--stall-ms", "-5"],
    ] {
        let mut cmd = std::process::Command::new(BANK);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            "postgres://bank@127.0.0.1:1/x",
        ])
        .args(bad);
        let done = run_within(&mut cmd, Duration::from_secs(10)).expect("bank");
        assert_eq!(done.status.code(), Some(2), "{bad:?}: {}", done.stderr);
        assert!(
            done.stderr.contains(bad[0].split('=').next().unwrap()),
            "{bad:?}: the message does not name the option: {}",
            done.stderr
        );
    }
}

/// The largest `--db-timeout` is a limit that never comes: calls work as without one.
#[test]
fn the_largest_db_timeout_works() {
    let Some(cluster) = own_cluster("largest_timeout") else {
        return;
    };
    let max = u64::MAX.to_string();
    let server = Server::start_url(&cluster.url(), &["--db-timeout", &max]);
    let mut alice = two_accounts(&server);
    assert_eq!(alice.cmd("TRANSFER bob 10 big1"), "OK 990");
    assert_eq!(alice.balance(), 990);
}
