//! Shared test harness: start `bank serve` as a user would, talk to it over TCP.
//!
//! Every wait has a deadline; every server is killed by PID when its guard drops; every
//! temporary directory is removed when its guard drops.
//!
//! The protocol suites run on both storage backends: a [`TestDb`] is a fresh SQLite file
//! or a fresh PostgreSQL database (on a cluster shared by the tests of one test binary
//! that run at the same time), and [`on_both_backends!`] turns each `fn NAME(Backend)`
//! into the tests `NAME::sqlite` and `NAME::postgres`.
//!
//! [`pg`] and [`pg_proxy`] serve the PostgreSQL tests that run on a cluster of their own.
#![allow(dead_code)] // every test binary uses a part of it

pub(crate) mod pg;
pub(crate) mod pg_proxy;

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use duo_testkit::pg::PgCluster;
use duo_testkit::{run_within, ChildServer};

/// The `bank` binary under test.
pub(crate) const BANK: &str = env!("CARGO_BIN_EXE_bank");
/// How long any single reply may take.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// A password that passes validation.
pub(crate) const PW: &str = "secret123";

#[allow(unused_imports)] // not every test binary that includes this module uses it
pub(crate) use duo_testkit::TempDir;

/// Waits until the server on `server` has read everything `client` sent it: the client's
/// send queue is empty (acknowledged) and so is the server's receive queue (its loop took
/// the bytes, and parsed and dispatched them in the same callback). The server's row may
/// be gone already (it answered everything and closed). A loaded machine may take a
/// while: the bound is generous.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub(crate) fn read_by_server(server: SocketAddr, client: &TcpStream) {
    let (srv, cli) = (server.port(), client.local_addr().unwrap().port());
    duo_testkit::wait_until_within(
        3 * duo_testkit::LIMIT,
        "the server read the request",
        || {
            duo_testkit::tcp_queues(srv, cli).is_none_or(|(_, rx)| rx == 0)
                && duo_testkit::tcp_queues(cli, srv).is_some_and(|(tx, _)| tx == 0)
        },
    );
}

/// Appends `serve --listen 127.0.0.1:0 --hash-cost low --db DB` to `cmd`: a server on
/// a free port, with password hashes cheap enough for tests.
pub(crate) fn serve_args(cmd: &mut Command, db: impl AsRef<OsStr>) -> &mut Command {
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--hash-cost",
        "low",
        "--db",
    ])
    .arg(db)
}

/// A running `bank serve`, killed (SIGKILL by PID) and reaped on drop.
pub(crate) struct Server {
    child: ChildServer,
    pub(crate) addr: SocketAddr,
}

impl Server {
    /// Starts `bank serve --listen 127.0.0.1:0 --db <db> --hash-cost low <extra>` and waits
    /// (at most 20 s) for its `listening on` line. Its log goes to the test's stderr.
    pub(crate) fn start(db: &Path, extra: &[&str]) -> Server {
        Server::start_on(db.as_os_str(), extra)
    }

    /// [`Server::start`] with any `--db` value: a PostgreSQL URL, `sqlite:PATH`.
    pub(crate) fn start_url(db: &str, extra: &[&str]) -> Server {
        Server::start_on(OsStr::new(db), extra)
    }

    /// [`Server::start`] with the `--db` value `db`.
    fn start_on(db: &OsStr, extra: &[&str]) -> Server {
        let mut cmd = Command::new(BANK);
        serve_args(&mut cmd, db).args(extra).env(
            "RUST_LOG",
            std::env::var("BANK_TEST_LOG").unwrap_or("warn".into()),
        );
        let child = ChildServer::builder(cmd)
            .startup(Duration::from_secs(20))
            .stderr(Stdio::inherit())
            .start();
        Server {
            addr: child.addr(),
            child,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The address of its metrics endpoint (started with `--metrics 127.0.0.1:0`): the
    /// `metrics on ADDR` line after `listening on`.
    pub(crate) fn metrics_addr(&mut self) -> SocketAddr {
        self.child.metrics_addr(Duration::from_secs(10))
    }

    /// SIGKILL, and reap.
    pub(crate) fn kill9(&mut self) {
        self.child.kill();
    }

    /// Sends `signal` (a name for `kill -s`) and waits at most `limit` for the exit.
    /// Returns the status and how long it took.
    pub(crate) fn signal_and_wait(
        &mut self,
        signal: &str,
        limit: Duration,
    ) -> (ExitStatus, Duration) {
        self.child.terminate(signal, limit)
    }
}

/// A line-protocol client with read deadlines.
pub(crate) struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub(crate) fn connect(addr: SocketAddr) -> Client {
        let stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to bank");
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = stream.set_nodelay(true);
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    /// Registers `user` (password [`PW`]) and logs in on a new connection.
    pub(crate) fn logged_in(addr: SocketAddr, user: &str) -> Client {
        let mut c = Client::connect(addr);
        let r = c.cmd(&format!("REGISTER {user} {PW}"));
        assert!(
            r == "OK registered" || r.starts_with("ERR USER_EXISTS"),
            "{r}"
        );
        assert_eq!(
            c.cmd(&format!("LOGIN {user} {PW}")),
            format!("OK welcome {user}")
        );
        c
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to bank");
    }

    /// Tries to send; false if the connection is gone.
    pub(crate) fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// The next reply line, without its line end; panics on EOF or timeout, saying which.
    pub(crate) fn line(&mut self) -> String {
        match self.read_reply() {
            Ok(Some(line)) => line,
            Ok(None) => panic!("a reply line: the bank closed the connection"),
            Err(e) => panic!("a reply line: {e}"),
        }
    }

    /// The next reply line, or `None` on EOF or error.
    pub(crate) fn try_line(&mut self) -> Option<String> {
        self.read_reply().ok().flatten()
    }

    /// The next reply line; `None` at EOF; an error (with what was read of the line)
    /// when the read fails or times out.
    fn read_reply(&mut self) -> std::io::Result<Option<String>> {
        let mut buf = String::new();
        match self.reader.read_line(&mut buf) {
            Ok(0) => Ok(None),
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("{e} (read of the line so far: {buf:?})"),
            )),
            Ok(_) => {
                assert!(buf.ends_with('\n'), "partial line {buf:?}");
                buf.pop();
                Ok(Some(buf))
            }
        }
    }

    /// Sends `line` and returns its one-line reply.
    pub(crate) fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\n").as_bytes());
        self.line()
    }

    /// `cmd`, or `None` if the connection failed.
    pub(crate) fn try_cmd(&mut self, line: &str) -> Option<String> {
        if !self.try_send(format!("{line}\n").as_bytes()) {
            return None;
        }
        self.try_line()
    }

    /// `HISTORY n`: the entry lines.
    pub(crate) fn history(&mut self, n: usize) -> Vec<String> {
        let first = self.cmd(&format!("HISTORY {n}"));
        let count: usize = first
            .strip_prefix("OK ")
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad HISTORY reply {first:?}"));
        (0..count).map(|_| self.line()).collect()
    }

    /// The balance, from `BALANCE`.
    pub(crate) fn balance(&mut self) -> i64 {
        let r = self.cmd("BALANCE");
        r.strip_prefix("OK ")
            .and_then(|b| b.parse().ok())
            .unwrap_or_else(|| panic!("bad BALANCE reply {r:?}"))
    }

    /// Waits (within `limit`) for the server to close; returns the bytes read before the
    /// end of stream. Panics if the connection stays open.
    pub(crate) fn expect_closed(&mut self, limit: Duration) -> Vec<u8> {
        self.stream.set_read_timeout(Some(limit)).unwrap();
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => rest,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => rest,
            Err(e) => panic!(
                "connection not closed within {limit:?}: {e}; read {:?}",
                String::from_utf8_lossy(&rest)
            ),
        }
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

/// Parses `OK <n>`.
pub(crate) fn ok_number(reply: &str) -> Option<i64> {
    reply.strip_prefix("OK ")?.parse().ok()
}

/// A start line for `n` threads, like `std::sync::Barrier` but with a deadline: a thread
/// that dies before arriving makes the others panic instead of waiting forever.
pub(crate) struct Gate {
    arrived: std::sync::atomic::AtomicUsize,
    n: usize,
}

impl Gate {
    pub(crate) fn new(n: usize) -> std::sync::Arc<Gate> {
        std::sync::Arc::new(Gate {
            arrived: AtomicUsize::new(0),
            n,
        })
    }

    /// Arrives and waits (at most 30 s) for the others.
    pub(crate) fn wait(&self) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let start = Instant::now();
        while self.arrived.load(Ordering::SeqCst) < self.n {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "gate: only {} of {} threads arrived",
                self.arrived.load(Ordering::SeqCst),
                self.n
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Where a test's accounts live: the two `bank serve --db` backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// A fresh SQLite file in a [`TempDir`].
    Sqlite,
    /// A fresh database on a throwaway PostgreSQL cluster ([`shared_cluster`]).
    Postgres,
}

/// For each `fn NAME(backend: Backend)` of the test file, the tests `NAME::sqlite` and
/// `NAME::postgres` (the latter skipped with one line where PostgreSQL is not installed,
/// failing under `CI`; see [`TestDb::new`]). The file declares `#[macro_use] mod common;`.
#[allow(unused_macros)] // not every test file runs on both backends
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    super::$name($crate::common::Backend::Sqlite);
                }

                #[test]
                fn postgres() {
                    super::$name($crate::common::Backend::Postgres);
                }
            }
        )*
    };
}

/// The cluster the PostgreSQL tests of this test binary share while any of them runs.
static SHARED_CLUSTER: Mutex<Weak<PgCluster>> = Mutex::new(Weak::new());

/// The PostgreSQL cluster of this test binary: the one a running test already holds, or a
/// new one (`fsync=off`, 300 connections) made for `test`. It is stopped and removed when
/// the last test holding it drops it, so a test binary leaves none behind (a later test
/// may then make another). `None` (after one `skipped` line) where PostgreSQL is not
/// installed and `CI` is unset; panics under `CI`. A test that restarts or stops its
/// cluster makes its own with [`PgCluster::builder`] instead.
pub(crate) fn shared_cluster(test: &str) -> Option<Arc<PgCluster>> {
    let mut shared = SHARED_CLUSTER
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(cluster) = shared.upgrade() {
        return Some(cluster);
    }
    // Made under the lock: tests starting together share the one cluster.
    let cluster = Arc::new(
        PgCluster::builder()
            .setting("fsync", "off")
            .max_connections(300)
            .for_test(test)?,
    );
    *shared = Arc::downgrade(&cluster);
    Some(cluster)
}

/// A fresh, empty database for one test: an SQLite file or a PostgreSQL database of its
/// own. The file's directory is removed on drop; the PostgreSQL database goes with its
/// cluster.
pub(crate) struct TestDb {
    backend: Backend,
    /// The `--db` value.
    arg: OsString,
    /// The SQLite file's directory.
    dir: Option<TempDir>,
    /// The PostgreSQL cluster and the database's name on it.
    pg: Option<(Arc<PgCluster>, String)>,
}

impl TestDb {
    /// A fresh database of `backend` for the test `tag` (a word naming it, used in paths
    /// and database names), or `None` if the backend is PostgreSQL and it is not installed
    /// (see [`shared_cluster`]).
    pub(crate) fn new(backend: Backend, tag: &str) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = TempDir::new(tag);
                Some(TestDb {
                    backend,
                    arg: dir.join("bank.db").into_os_string(),
                    dir: Some(dir),
                    pg: None,
                })
            }
            Backend::Postgres => {
                let cluster = shared_cluster(&format!("{tag} on PostgreSQL"))?;
                Some(TestDb::on_cluster(cluster, tag))
            }
        }
    }

    /// A new database named after `tag` on `cluster`.
    pub(crate) fn on_cluster(cluster: Arc<PgCluster>, tag: &str) -> TestDb {
        static N: AtomicUsize = AtomicUsize::new(0);
        let word: String = tag
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let name = format!("t_{word}_{}", N.fetch_add(1, Ordering::SeqCst));
        cluster
            .psql(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| {
                panic!(
                    "CREATE DATABASE {name}: {e}\nthe cluster's log:\n{}",
                    cluster.log_tail(40)
                )
            });
        let url = format!("postgres://bank@127.0.0.1:{}/{name}", cluster.port());
        TestDb {
            backend: Backend::Postgres,
            arg: url.into(),
            dir: None,
            pg: Some((cluster, name)),
        }
    }

    /// Another fresh database of the same backend (on the same cluster), for a test that
    /// needs several.
    pub(crate) fn sibling(&self, tag: &str) -> TestDb {
        match &self.pg {
            Some((cluster, _)) => TestDb::on_cluster(cluster.clone(), tag),
            None => TestDb::new(Backend::Sqlite, tag).expect("SQLite is always there"),
        }
    }

    pub(crate) fn backend(&self) -> Backend {
        self.backend
    }

    /// The `--db` value: the SQLite file's path, or the PostgreSQL URL (TCP).
    pub(crate) fn arg(&self) -> &OsStr {
        &self.arg
    }

    /// The `--db` value as text.
    pub(crate) fn url(&self) -> String {
        self.arg.to_string_lossy().into_owned()
    }

    /// Starts `bank serve` on this database ([`Server::start`]).
    pub(crate) fn start(&self, extra: &[&str]) -> Server {
        Server::start_on(&self.arg, extra)
    }

    /// The PostgreSQL cluster, if that is the backend.
    pub(crate) fn cluster(&self) -> Option<&PgCluster> {
        self.pg.as_ref().map(|(c, _)| &**c)
    }

    /// Runs `sql` in this PostgreSQL database with `psql -X -At -v ON_ERROR_STOP=1` (at
    /// most 30 s); its output trimmed. Panics on an SQLite database or a failure.
    pub(crate) fn psql(&self, sql: &str) -> String {
        let (cluster, name) = self.pg.as_ref().expect("psql on a PostgreSQL database");
        psql_in(cluster, name, sql)
    }
}

/// Runs `sql` in database `db` of `cluster` with `psql` (at most 30 s); its output
/// trimmed. Panics (with psql's stderr) if it fails.
pub(crate) fn psql_in(cluster: &PgCluster, db: &str, sql: &str) -> String {
    let mut cmd = cluster.command("psql");
    cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql]);
    let done = run_within(&mut cmd, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("psql {sql:?}: {e}"));
    assert!(
        done.status.success(),
        "psql {sql:?}: {}: {}",
        done.status,
        done.stderr
    );
    done.stdout.trim().to_owned()
}

/// Runs `sql` on `cluster` (database `bank`), panicking on failure with the server's log.
pub(crate) fn psql(cluster: &PgCluster, sql: &str) -> String {
    cluster
        .psql(sql)
        .unwrap_or_else(|e| panic!("psql {sql:?}: {e}\n{}", cluster.log_tail(20)))
}

/// Holds every synchronous commit of `cluster` back (it names a synchronous standby that
/// never comes: the flush barriers, and every commit with `synchronous_commit` on) until
/// [`release_synchronous_commits`]; waits until a probe commit is seen waiting.
pub(crate) fn hold_synchronous_commits(cluster: &PgCluster) {
    psql(
        cluster,
        "ALTER SYSTEM SET synchronous_standby_names = 'nobody'",
    );
    psql(cluster, "SELECT pg_reload_conf()");
    duo_testkit::wait_until_within(Duration::from_secs(10), "synchronous commits held", || {
        // A probe commit that waits for the standby is still running after a while
        // (killed then; its session waits on until the commits are released).
        let mut cmd = cluster.command("psql");
        cmd.args([
            "-X",
            "-At",
            "-c",
            "SELECT pg_logical_emit_message(true, 'probe', '')",
        ]);
        run_within(&mut cmd, Duration::from_millis(500)).is_err()
    });
}

/// Lets the commits [`hold_synchronous_commits`] held go.
pub(crate) fn release_synchronous_commits(cluster: &PgCluster) {
    psql(cluster, "ALTER SYSTEM RESET synchronous_standby_names");
    psql(cluster, "SELECT pg_reload_conf()");
}

/// `GET /metrics` of the endpoint at `addr`: the body (a test failure unless 200).
pub(crate) fn scrape(addr: SocketAddr) -> String {
    let (status, body) = duo_testkit::http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// How long one run of the binary to its end may take (`run_bank`): the client's own
/// reply timeout is 30 s, so a client still waiting when this runs out has taken a bad
/// reply for a slow one.
pub(crate) const RUN_LIMIT: Duration = Duration::from_secs(8);

/// Runs `bank ARGS..` to its end within [`RUN_LIMIT`] (`RUST_LOG=warn`, backtraces on).
pub(crate) fn run_bank(args: &[&str]) -> duo_testkit::Finished {
    let mut cmd = std::process::Command::new(BANK);
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "1");
    duo_testkit::run_within(&mut cmd, RUN_LIMIT)
        .unwrap_or_else(|e| panic!("bank {args:?} did not end: {e}"))
}
