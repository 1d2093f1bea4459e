//! The bank's worker pool in states the other suites do not combine: SIGTERM while a
//! worker is stuck in the database (a write lock held by another SQLite connection, a row
//! lock held by another PostgreSQL session), and SIGTERM while the jobs of clients that
//! have gone wait behind a write whose client stays.
//!
//! Every wait has a deadline; every server is killed by PID when its guard drops.

mod common;

use std::ffi::OsStr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{psql_in, read_by_server, Backend, Client, TestDb, BANK, PW};
use duo_testkit::{tcp_queues, wait_until_within, ChildServer};

/// How long the exit may take after SIGTERM: the 2 s grace and the 3 s drain limit, with
/// room for a loaded machine. Before the drain was bounded, a stuck job held the exit for
/// as long as the database did: 10 s per SQLite write (its busy timeout), for ever on a
/// PostgreSQL row lock.
const EXIT_LIMIT: Duration = Duration::from_secs(8);

/// Starts `bank serve` on `db` with `extra` options, its log captured.
fn start(db: &OsStr, extra: &[&str]) -> ChildServer {
    let mut cmd = Command::new(BANK);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(db)
        .args(["--hash-cost", "low"])
        .args(extra)
        .env("RUST_LOG", "warn");
    ChildServer::builder(cmd)
        .startup(Duration::from_secs(20))
        .start()
}

/// Logged-in clients `{tag}0`, `{tag}1`, ...
fn clients(server: &ChildServer, tag: &str, n: usize) -> Vec<Client> {
    (0..n)
        .map(|i| Client::logged_in(server.addr(), &format!("{tag}{i}")))
        .collect()
}

/// Sends SIGTERM and checks the exit is bounded (status 1, the reason on stderr) although
/// the workers are stuck; every client is closed without a reply.
fn sigterm_exits_without_the_stuck_work(mut server: ChildServer, stuck: Vec<Client>) {
    let (status, took) = server.terminate("TERM", EXIT_LIMIT);
    let log = server.stderr_to_end(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "took {took:?}; stderr:\n{log}");
    assert!(
        log.contains("did not finish within"),
        "the reason is logged; stderr:\n{log}"
    );
    assert!(!log.contains("panicked"), "stderr:\n{log}");
    for mut c in stuck {
        let rest = c.expect_closed(Duration::from_secs(5));
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    }
}

/// Another SQLite connection holds the write lock; three clients each have a deposit in
/// flight, without group commit (a transaction each, one after the other). SIGTERM: the
/// connections are closed after the grace period, and the process exits within the drain
/// limit instead of waiting out SQLite's 10 s busy timeout for every queued write (31 s
/// here before the fix, deaf to a second signal meanwhile). Nothing was acknowledged and
/// nothing was applied.
#[test]
fn a_write_stuck_on_a_locked_sqlite_file_does_not_hold_the_exit() {
    let db = TestDb::new(Backend::Sqlite, "stuck-sqlite").unwrap();
    let server = start(db.arg(), &["--no-group-commit", "--workers", "2"]);
    let mut stuck = clients(&server, "st", 3);
    let holder = rusqlite::Connection::open(db.arg()).unwrap();
    holder.busy_timeout(Duration::from_secs(5)).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    for c in &mut stuck {
        c.send(b"DEPOSIT 5\n");
    }
    for c in &stuck {
        read_by_server(server.addr(), c.stream());
    }
    sigterm_exits_without_the_stuck_work(server, stuck);

    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    let server = start(db.arg(), &[]);
    for i in 0..3 {
        let mut c = Client::connect(server.addr());
        assert_eq!(
            c.cmd(&format!("LOGIN st{i} {PW}")),
            format!("OK welcome st{i}")
        );
        assert_eq!(c.balance(), 0, "an unacknowledged deposit was applied");
    }
}

/// Another PostgreSQL session holds a client's row (`FOR UPDATE`, then sleeps): the
/// client's deposit waits for the lock, which nothing would ever release. SIGTERM: the
/// process exits within the drain limit (before the fix it waited as long as the lock was
/// held: for ever, SIGTERM again or not). The deposit was never acknowledged, and its
/// outcome is unknown (as for a write cut off by the grace period): the server's session
/// does not notice its client has gone while it waits for the lock, and applies the
/// statement once the lock is free. So the balance is 0 or the deposit, never more.
#[test]
fn a_write_stuck_on_a_postgres_row_lock_does_not_hold_the_exit() {
    let Some(db) = TestDb::new(Backend::Postgres, "stuck-pg") else {
        return;
    };
    let cluster = db.cluster().unwrap();
    let name = db.url().rsplit('/').next().unwrap().to_owned();
    let server = start(db.arg(), &[]);
    let mut stuck = clients(&server, "pg", 1);
    let mut holder = cluster.command("psql");
    holder
        .args([
            "-X",
            "-d",
            &name,
            "-c",
            "BEGIN; SELECT 1 FROM users WHERE name = 'pg0' FOR UPDATE; \
             SELECT pg_sleep(600); COMMIT;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut holder = HolderGuard(holder.spawn().expect("psql"));
    let count = |sql: &str| psql_in(cluster, &name, sql);
    wait_until_within(Duration::from_secs(10), "the row held", || {
        count(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(600)%' \
             AND wait_event = 'PgSleep'",
        ) == "1"
    });
    stuck[0].send(b"DEPOSIT 5\n");
    wait_until_within(Duration::from_secs(10), "the deposit waiting", || {
        count(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bank' \
             AND wait_event_type = 'Lock'",
        ) == "1"
    });
    sigterm_exits_without_the_stuck_work(server, stuck);

    // The holder's session sleeps on without its client: end it.
    count(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE query LIKE '%pg_sleep(600)%' AND pid <> pg_backend_pid()",
    );
    holder.0.wait().unwrap();
    let server = start(db.arg(), &[]);
    let mut c = Client::connect(server.addr());
    assert_eq!(c.cmd(&format!("LOGIN pg0 {PW}")), "OK welcome pg0");
    let balance = c.balance();
    assert!(balance == 0 || balance == 5, "balance {balance}");
}

/// The `psql` that holds the row, killed by PID if the test fails first.
struct HolderGuard(std::process::Child);

impl Drop for HolderGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One worker, stuck on a client's deposit (another SQLite connection holds the write
/// lock); behind it on the queue the logins of two clients that reset their connections
/// once the server had read them. SIGTERM, then the lock is released within the grace
/// period: the client that stayed gets its deposit acknowledged, the jobs of the clients
/// that left are dropped quietly (no error, no panic in the log), the process exits 0,
/// and the acknowledged deposit is on disk.
#[test]
fn sigterm_with_the_jobs_of_gone_clients_queued_behind_a_client_that_stays() {
    let db = TestDb::new(Backend::Sqlite, "gone-sqlite").unwrap();
    let mut server = start(db.arg(), &["--workers", "1"]);
    let mut stays = Client::logged_in(server.addr(), "stays");
    let gone: Vec<Client> = (0..2)
        .map(|i| {
            // Registered; the login that gets queued comes on a fresh connection.
            drop(Client::logged_in(server.addr(), &format!("gone{i}")));
            Client::connect(server.addr())
        })
        .collect();
    let holder = rusqlite::Connection::open(db.arg()).unwrap();
    holder.busy_timeout(Duration::from_secs(5)).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    stays.send(b"DEPOSIT 5\n");
    read_by_server(server.addr(), stays.stream());
    for (i, mut c) in gone.into_iter().enumerate() {
        c.send(format!("LOGIN gone{i} {PW}\nBALANCE\n").as_bytes());
        read_by_server(server.addr(), c.stream());
        // A reset: the server's end is closed at once, the jobs stay queued.
        socket2::SockRef::from(c.stream())
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        let port = c.stream().local_addr().unwrap().port();
        drop(c);
        let it = server.addr().port();
        wait_until_within(Duration::from_secs(10), "the reset to arrive", || {
            tcp_queues(it, port).is_none()
        });
    }
    server.signal("TERM");
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    assert_eq!(stays.line(), "OK 5");
    assert!(stays.expect_closed(Duration::from_secs(10)).is_empty());
    let status = server.wait_exit(EXIT_LIMIT);
    let log = server.stderr_to_end(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "stderr:\n{log}");
    assert!(
        !log.contains("ERROR") && !log.contains("panicked"),
        "stderr:\n{log}"
    );

    let server = start(db.arg(), &[]);
    let mut c = Client::connect(server.addr());
    assert_eq!(c.cmd(&format!("LOGIN stays {PW}")), "OK welcome stays");
    assert_eq!(c.balance(), 5);
}
