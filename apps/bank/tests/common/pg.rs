//! Helpers of the PostgreSQL tests that run on a cluster of their own (`pg_in_doubt`,
//! `pg_stall`, `pg_review6`): the cluster, clients whose replies have a deadline, the two
//! accounts a test starts with, a `psql` session holding a lock, and the bank's sessions
//! that wait for one. The TCP proxy they put between the bank and the server is
//! [`super::pg_proxy`].

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use duo_testkit::pg::PgCluster;
use duo_testkit::{run_within, wait_until_within};

use super::{psql, Client, Server, BANK, PW};

/// How long a reply may take for a [`client`]: the bounds under test are a second or two,
/// and a connection attempt through a stalled path gives up after a second too.
pub(crate) const REPLY_DEADLINE: Duration = Duration::from_secs(8);

/// A cluster of the test's own (`fsync` off), named `BINARY::test`, or `None` (skipped)
/// without PostgreSQL. It is stopped when dropped, also when the test fails.
pub(crate) fn own_cluster(test: &str) -> Option<PgCluster> {
    named_cluster(PgCluster::builder().setting("fsync", "off"), test)
}

/// [`own_cluster`] with `max_connections` set.
pub(crate) fn own_cluster_sized(test: &str, max_connections: u32) -> Option<PgCluster> {
    named_cluster(
        PgCluster::builder()
            .setting("fsync", "off")
            .max_connections(max_connections),
        test,
    )
}

fn named_cluster(builder: duo_testkit::pg::PgClusterBuilder, test: &str) -> Option<PgCluster> {
    builder.for_test(&format!("{}::{test}", env!("CARGO_CRATE_NAME")))
}

/// The error code of an `ERR` reply.
pub(crate) fn err_code(reply: &str) -> Option<&str> {
    reply.strip_prefix("ERR ")?.split(' ').next()
}

/// A client whose replies must come within [`REPLY_DEADLINE`].
pub(crate) fn client(addr: SocketAddr) -> Client {
    let c = Client::connect(addr);
    c.stream()
        .set_read_timeout(Some(REPLY_DEADLINE))
        .expect("read timeout");
    c
}

/// `user` logged in on a new [`client`], registered first if needed.
pub(crate) fn logged_in(addr: SocketAddr, user: &str) -> Client {
    register_and_log_in(client(addr), user, true)
}

/// `user` logged in on a new [`client`], registered first: the name must be new.
pub(crate) fn new_user_logged_in(addr: SocketAddr, user: &str) -> Client {
    register_and_log_in(client(addr), user, false)
}

/// Registers `user` (password [`PW`]) on `c` (`ERR USER_EXISTS` is taken for done where
/// `may_exist`) and logs in.
fn register_and_log_in(mut c: Client, user: &str, may_exist: bool) -> Client {
    let r = c.cmd(&format!("REGISTER {user} {PW}"));
    assert!(
        r == "OK registered" || (may_exist && err_code(&r) == Some("USER_EXISTS")),
        "{r}"
    );
    assert_eq!(
        c.cmd(&format!("LOGIN {user} {PW}")),
        format!("OK welcome {user}")
    );
    c
}

/// Alice (1000) and bob on `server`, each logged in with `login`: alice's connection.
pub(crate) fn two_accounts(server: &Server, login: fn(SocketAddr, &str) -> Client) -> Client {
    let mut alice = login(server.addr, "alice");
    drop(login(server.addr, "bob"));
    assert_eq!(alice.cmd("DEPOSIT 1000"), "OK 1000");
    alice
}

/// Sends `line` until the answer is not `UNAVAILABLE` (at most 10 s): the bank reconnects
/// by itself once the database can be reached again.
pub(crate) fn until_available(c: &mut Client, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answer = c.cmd(line);
    while err_code(&answer) == Some("UNAVAILABLE") && Instant::now() < deadline {
        answer = c.cmd(line);
    }
    answer
}

/// A `psql` that runs a locking statement in a transaction and holds the lock until
/// released; found in `pg_stat_activity` by an `application_name` of its own. Killed by
/// PID on drop.
pub(crate) struct Holder {
    psql: Child,
    tag: String,
}

impl Holder {
    /// Runs `lock` (say `LOCK TABLE users`) in a transaction that then sleeps; returns
    /// once the lock is held.
    pub(crate) fn hold(cluster: &PgCluster, lock: &str) -> Holder {
        Holder::hold_in(cluster, None, lock)
    }

    /// As [`Holder::hold`], in `database` (the cluster's default without one).
    pub(crate) fn hold_in(cluster: &PgCluster, database: Option<&str>, lock: &str) -> Holder {
        static N: AtomicUsize = AtomicUsize::new(0);
        let tag = format!("duo_holder_{}", N.fetch_add(1, Ordering::SeqCst));
        let mut cmd = cluster.command("psql");
        if let Some(database) = database {
            cmd.env("PGDATABASE", database);
        }
        cmd.env("PGAPPNAME", &tag)
            .args([
                "-X",
                "-c",
                &format!(
                    "SET statement_timeout = 0; SET lock_timeout = 0; \
                     BEGIN; {lock}; SELECT pg_sleep(60); COMMIT;"
                ),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let holder = Holder {
            psql: cmd.spawn().expect("psql"),
            tag,
        };
        wait_until_within(Duration::from_secs(10), "the lock held", || {
            psql(
                cluster,
                &format!(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = '{}' AND wait_event = 'PgSleep'",
                    holder.tag
                ),
            ) == "1"
        });
        holder
    }

    /// Holds `user`'s row locked (`FOR UPDATE`).
    pub(crate) fn row(cluster: &PgCluster, user: &str) -> Holder {
        Holder::hold(
            cluster,
            &format!("SELECT 1 FROM users WHERE name = '{user}' FOR UPDATE"),
        )
    }

    /// Ends the holding session (its transaction rolls back) and reaps the `psql`.
    pub(crate) fn release(mut self, cluster: &PgCluster) {
        psql(
            cluster,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = '{}'",
                self.tag
            ),
        );
        let _ = duo_testkit::wait_child_within(&mut self.psql, Duration::from_secs(10));
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.psql.kill();
        let _ = self.psql.wait();
    }
}

/// The bank's sessions that wait for a lock, as `psql` lists a column: `what`, one a line.
fn bank_lock_waiters(cluster: &PgCluster, what: &str) -> String {
    psql(
        cluster,
        &format!(
            "SELECT {what} FROM pg_stat_activity WHERE application_name = 'bank' \
             AND wait_event_type = 'Lock'"
        ),
    )
}

/// The pid of the one session of the bank's that waits for a lock (at most 10 s).
pub(crate) fn lock_waiter(cluster: &PgCluster) -> String {
    let mut pid = String::new();
    wait_until_within(Duration::from_secs(10), "a call waiting for a lock", || {
        pid = bank_lock_waiters(cluster, "pid");
        !pid.is_empty()
    });
    pid
}

/// How many of the bank's sessions wait for a lock.
pub(crate) fn lock_waiters(cluster: &PgCluster) -> usize {
    bank_lock_waiters(cluster, "count(*)").parse().unwrap()
}

/// Whether the server session `pid` is still there.
pub(crate) fn alive(cluster: &PgCluster, pid: &str) -> bool {
    psql(
        cluster,
        &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
    ) == "1"
}

/// Runs `bank serve --db <db>` that is expected to fail at start: its exit status code,
/// its stderr and how long it ran (killed, failing the test, after 30 s).
pub(crate) fn failed_start(db: &str) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let done = run_within(
        super::serve_args(&mut Command::new(BANK), db),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("bank serve --db {db} did not end by itself: {e}"));
    assert!(
        !done.stdout.contains("listening on"),
        "bank serve --db {db} started: {}",
        done.stdout
    );
    (done.status.code(), done.stderr, started.elapsed())
}
