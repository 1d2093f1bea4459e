//! Review of the bounded PostgreSQL calls (`store/postgres/conn.rs`) and the failure
//! handling around them.
//!
//! - A writer's session ended (`pg_terminate_backend`, SQLSTATE 57P01) while its batch
//!   runs: the batch rolled back, and the server said so; the bank must run it once more
//!   on a new session (as for any error the server reports before committing), also when
//!   the end of the connection is read together with the error.
//! - A session ended right after its commit, its reply and the termination notice
//!   delivered in one read (by a proxy of the test's own that holds the server's bytes,
//!   `common::pg_proxy` with `Fault::HoldReply`): the batch counts as committed, once.
//! - `--db-timeout` expiring while the reply to a commit is held: `UNAVAILABLE`, the
//!   outcome found by the request id, nothing applied twice.
//! - 50 reconnects leave the bank's threads and file descriptors as they were.
//! - `--db-timeout` values that are not a number of seconds are usage errors (exit 2).
//!
//! Every test runs on a cluster of its own, stopped when the test ends, also when it
//! fails; every read of a reply has a deadline; the bank is killed by PID on drop.

mod common;

use std::time::Duration;

use common::pg::{
    alive, err_code, lock_waiter, new_user_logged_in, own_cluster, Holder, REPLY_DEADLINE,
};
use common::pg_proxy::{contains, Fault, Proxy, READY_FOR_QUERY};
use common::{psql, Client, Server, BANK};
use duo_testkit::pg::PgCluster;
use duo_testkit::{run_within, send_signal, wait_until_within};

/// Alice (1000) and bob on `server` (new names): alice's connection.
fn two_accounts(server: &Server) -> Client {
    common::pg::two_accounts(server, new_user_logged_in)
}

/// The next reply line, within [`REPLY_DEADLINE`].
fn answer(c: &mut Client, what: &str) -> String {
    c.try_line()
        .unwrap_or_else(|| panic!("no answer to {what} within {REPLY_DEADLINE:?}"))
}

/// Alice's `TRANSFER bob 10 {rid}` and the `DEPOSIT 5` behind it were applied once: the
/// transfer's retry answers its first answer, and the totals count one transfer and one
/// deposit besides [`two_accounts`]' own.
fn assert_applied_once(cluster: &PgCluster, alice: &mut Client, rid: &str) {
    assert_eq!(alice.cmd(&format!("TRANSFER bob 10 {rid}")), "OK 990");
    assert_eq!(alice.balance(), 995);
    assert_eq!(psql(cluster, "SELECT sum(balance) FROM users"), "1005");
    let deposits = psql(
        cluster,
        "SELECT count(*) FROM ledger WHERE kind = 'deposit'",
    );
    assert_eq!(
        deposits, "2",
        "the deposit was applied twice, or not at all"
    );
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
    let holder = Holder::row(&cluster, "alice");
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
    assert_applied_once(&cluster, &mut alice, "td1");
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
    let proxy = Proxy::start(cluster.port());
    let server = Server::start_url(&proxy.url_with_connect_timeout("bank", 2), &[]);
    let mut alice = two_accounts(&server);
    proxy.plan("ta57p01", Fault::HoldReply);
    alice.send(b"TRANSFER bob 10 ta57p01\nDEPOSIT 5\n");
    let pid = proxy.wait_answered(&cluster);
    assert!(!pid.is_empty(), "the held session is gone");
    psql(&cluster, &format!("SELECT pg_terminate_backend({pid})"));
    let transfer = answer(&mut alice, "the transfer");
    let deposit = answer(&mut alice, "the deposit");
    let delivered = proxy.delivered();
    assert!(
        contains(&delivered, READY_FOR_QUERY) && contains(&delivered, b"57P01"),
        "the answer and the termination notice did not go together: {:?}",
        String::from_utf8_lossy(&delivered)
    );
    assert_eq!((transfer.as_str(), deposit.as_str()), ("OK 990", "OK 995"));
    assert_applied_once(&cluster, &mut alice, "ta57p01");
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
    let proxy = Proxy::start(cluster.port());
    for (i, extra) in [&[][..], &["--no-early-release"][..]].iter().enumerate() {
        let db = format!("d{i}");
        psql(&cluster, &format!("CREATE DATABASE {db}"));
        let mut args = vec!["--db-timeout", "1"];
        args.extend_from_slice(extra);
        let server = Server::start_url(&proxy.url_with_connect_timeout(&db, 2), &args);
        let mut alice = two_accounts(&server);
        let rid = format!("dl-{i}");
        proxy.plan(&rid, Fault::HoldReply);
        alice.send(format!("TRANSFER bob 10 {rid}\nDEPOSIT 5\n").as_bytes());
        let pid = proxy.wait_answered(&cluster);
        assert!(!pid.is_empty(), "{extra:?}: the held session is gone");
        let transfer = answer(&mut alice, "the transfer");
        let deposit = answer(&mut alice, "the deposit");
        assert_eq!(err_code(&transfer), Some("UNAVAILABLE"), "{extra:?}");
        assert_eq!(err_code(&deposit), Some("UNAVAILABLE"), "{extra:?}");
        // Ended before the answers went out.
        assert!(
            !alive(&cluster, &pid),
            "{extra:?}: the old session is still there"
        );
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
