//! A throwaway PostgreSQL cluster for tests and benchmarks: [`PgCluster`].
//!
//! Each cluster lives in a directory of its own, `/tmp/duo-pg-<pid>-<counter>-<nanos>/`
//! (short, as a Unix socket's path is limited to 107 bytes), holding `data/`, the server's
//! Unix socket and `server.log`. It is made by `initdb` (superuser `bank`, `trust`
//! authentication, UTF-8, no locale, no fsync of the new files), started by `pg_ctl` on a
//! free loopback port and the socket directory, and gets a database `bank`. Dropping it
//! stops the server (`pg_ctl stop -m immediate`, then `SIGKILL` by PID if it is still
//! there) and removes the directory, also when a test panics.
//!
//! The binaries come from [`bin_dir`]: `$DUO_PG_BIN`, else `pg_config --bindir`, else the
//! newest `/usr/lib/postgresql/*/bin`. PostgreSQL refuses to run as root, so when this
//! process's effective uid is 0 every PostgreSQL program is run as the `postgres` account
//! (the child's uid and gid are set before `exec`, so a deadline kills the program itself,
//! not a wrapper), and the cluster's directory belongs to that account.
//!
//! Tests start a cluster with [`PgCluster::for_test`], which skips (one line, `None`) where
//! PostgreSQL is not installed, unless the `CI` variable is set: there a missing
//! PostgreSQL fails the test.
//!
//! ```no_run
//! use duo_testkit::pg::PgCluster;
//!
//! let Some(pg) = PgCluster::builder().setting("fsync", "off").for_test("doc") else {
//!     return;
//! };
//! assert_eq!(pg.psql("select 1").unwrap(), "1");
//! // A benchmark runs PostgreSQL's own tools against it.
//! let status = pg.command("pgbench").args(["-i", "-s", "1"]).status().unwrap();
//! assert!(status.success());
//! ```

use std::fmt::Display;
use std::fs::{self, DirBuilder};
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{chown, DirBuilderExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::process::{is_running, run_within, send_signal};

/// The user (a superuser, made by `initdb`) and the database every cluster has.
const USER: &str = "bank";
/// The database made after the start.
const DATABASE: &str = "bank";
/// How long `pg_ctl` waits for the server to start, stop or restart (`-t`), in seconds.
const SERVER_WAIT_SECS: u64 = 60;
/// The bound on a `pg_ctl` run that waits: its own `-t`, and some.
const PG_CTL_LIMIT: Duration = Duration::from_secs(SERVER_WAIT_SECS + 30);
/// The bound on any other PostgreSQL program this module runs (`initdb`, `psql`).
const COMMAND_LIMIT: Duration = Duration::from_secs(60);
/// How long dropping a cluster waits for `pg_ctl stop -m immediate`, then for the killed
/// postmaster to go.
const DROP_LIMIT: Duration = Duration::from_secs(5);
/// How often a start is tried on a fresh port when the one picked got taken meanwhile.
const PORT_ATTEMPTS: usize = 5;
/// The default `max_connections`: room for a benchmark's clients.
const DEFAULT_MAX_CONNECTIONS: u32 = 200;
/// The line [`PgCluster::for_test`] ends with when it skips.
const NOT_FOUND: &str = "PostgreSQL not found (set DUO_PG_BIN or install postgresql)";

/// Numbers the clusters of this process, for their directory names.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The directory of the PostgreSQL programs to use, one that holds `initdb`:
/// `$DUO_PG_BIN` if it is set (and `None` if that has no `initdb`), else
/// `pg_config --bindir` if it has `initdb`, else the highest-versioned
/// `/usr/lib/postgresql/*/bin` that does (Debian's layout, where `pg_config` may be absent).
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DUO_PG_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return has_initdb(&dir).then_some(dir);
    }
    pg_config_bindir()
        .filter(|dir| has_initdb(dir))
        .or_else(debian_bindir)
}

/// Whether `dir` holds an `initdb`.
fn has_initdb(dir: &Path) -> bool {
    dir.join("initdb").is_file()
}

/// What `pg_config --bindir` says, if there is a `pg_config`.
fn pg_config_bindir() -> Option<PathBuf> {
    let done = run_within(
        Command::new("pg_config").arg("--bindir"),
        Duration::from_secs(10),
    )
    .ok()?;
    let dir = done.stdout.trim();
    (done.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The `bin` of the highest version under `/usr/lib/postgresql` that has `initdb`.
fn debian_bindir() -> Option<PathBuf> {
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            // "15" or "9.6": compared as numbers, part by part.
            let version: Vec<u32> = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<_>>()?;
            let bin = entry.path().join("bin");
            has_initdb(&bin).then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

/// Whether this runs under CI (`CI` set and not empty), where a missing PostgreSQL fails.
fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// The account PostgreSQL's programs run as when this process is root.
#[derive(Debug, Clone, Copy)]
struct Account {
    uid: u32,
    gid: u32,
}

/// `Some(postgres)` when this process runs as root (PostgreSQL refuses to), else `None`:
/// the programs run as this process does.
fn run_as() -> io::Result<Option<Account>> {
    if effective_uid()? != 0 {
        return Ok(None);
    }
    let id = |flag: &str| -> io::Result<u32> {
        let done = run_within(
            Command::new("id").args([flag, "postgres"]),
            Duration::from_secs(10),
        )
        .map_err(io::Error::other)?;
        done.stdout.trim().parse().map_err(|_| {
            io::Error::other(format!(
                "running as root, PostgreSQL needs the `postgres` account: `id {flag} postgres` \
                 said {:?} {:?}",
                done.stdout, done.stderr
            ))
        })
    };
    Ok(Some(Account {
        uid: id("-u")?,
        gid: id("-g")?,
    }))
}

/// This process's effective uid, from `/proc/self/status` (no libc here).
fn effective_uid() -> io::Result<u32> {
    let status = fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1)?.parse().ok())
        .ok_or_else(|| io::Error::other("no effective uid in /proc/self/status"))
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// `-c name=value` for a command line that `pg_ctl` hands to `sh`: quoted for the shell.
fn shell_setting(name: &str, value: &str) -> String {
    format!("-c '{}'", format!("{name}={value}").replace('\'', r"'\''"))
}

/// Options for a [`PgCluster`]; made by [`PgCluster::builder`].
#[derive(Debug, Clone)]
pub struct PgClusterBuilder {
    settings: Vec<(String, String)>,
    max_connections: u32,
}

impl PgClusterBuilder {
    /// Sets server parameter `name` to `value` (`-c name=value` at every start and
    /// restart): `fsync=off` for fast tests, `shared_buffers=256MB` for a benchmark.
    pub fn setting(mut self, name: &str, value: impl Display) -> PgClusterBuilder {
        self.settings.push((name.to_owned(), value.to_string()));
        self
    }

    /// The server's `max_connections` (default 200).
    pub fn max_connections(mut self, n: u32) -> PgClusterBuilder {
        self.max_connections = n;
        self
    }

    /// Makes and starts the cluster (see [`PgCluster`]); the error says which step failed,
    /// with the tail of the server's log.
    pub fn start(self) -> io::Result<PgCluster> {
        PgCluster::launch(self)
    }

    /// For a test: the started cluster, or `None` after printing one line
    /// `skipped TEST: PostgreSQL not found (...)` where [`bin_dir`] finds none and the `CI`
    /// variable is unset or empty. Panics (failing the test) when PostgreSQL is absent
    /// under CI, when `$DUO_PG_BIN` names a directory without `initdb`, or when the
    /// cluster cannot be started (with the server log's tail).
    pub fn for_test(self, test: &str) -> Option<PgCluster> {
        if bin_dir().is_none() {
            if let Some(dir) = std::env::var_os("DUO_PG_BIN").filter(|d| !d.is_empty()) {
                panic!("{test}: DUO_PG_BIN={dir:?} holds no initdb");
            }
            assert!(
                !under_ci(),
                "{test}: {NOT_FOUND}; CI is set, so this fails instead of skipping \
                 (.ci/run installs postgresql)"
            );
            println!("skipped {test}: {NOT_FOUND}");
            return None;
        }
        match self.start() {
            Ok(cluster) => Some(cluster),
            Err(e) => panic!("{test}: cannot start a PostgreSQL cluster: {e}"),
        }
    }
}

/// A running PostgreSQL server on a cluster of its own, made for one test or benchmark
/// and removed when dropped (see the [module documentation](self)).
///
/// It listens on `127.0.0.1:`[`port`](Self::port) ([`url`](Self::url)) and on a Unix
/// socket in [`socket_dir`](Self::socket_dir) ([`socket_url`](Self::socket_url)); user
/// and database are both `bank`, with `trust` authentication (no password).
/// [`psql`](Self::psql) runs SQL, [`command`](Self::command) gives any PostgreSQL
/// program (`pgbench`) aimed at it.
#[derive(Debug)]
pub struct PgCluster {
    /// The PostgreSQL programs.
    bin: PathBuf,
    /// The cluster's own directory: `data/`, the socket, `server.log`.
    dir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    /// The server options given to `pg_ctl -o` (at start and restart).
    options: String,
    /// Whom the programs run as, when not as this process.
    account: Option<Account>,
}

impl PgCluster {
    /// Options for a cluster: server settings, `max_connections`.
    pub fn builder() -> PgClusterBuilder {
        PgClusterBuilder {
            settings: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// Makes and starts a cluster with the default options.
    pub fn start() -> io::Result<PgCluster> {
        PgCluster::builder().start()
    }

    /// For a test, with the default options: see [`PgClusterBuilder::for_test`].
    pub fn for_test(test: &str) -> Option<PgCluster> {
        PgCluster::builder().for_test(test)
    }

    fn launch(options: PgClusterBuilder) -> io::Result<PgCluster> {
        let bin = bin_dir().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, NOT_FOUND))?;
        let account = run_as()?;
        let dir = make_dir(account)?;
        // The guard exists from here: a failure below removes the directory (and stops a
        // server that did start).
        let mut cluster = PgCluster {
            bin,
            data: dir.join("data"),
            log: dir.join("server.log"),
            dir,
            port: 0,
            options: String::new(),
            account,
        };
        cluster
            .set_up(&options)
            .map_err(|e| io::Error::new(e.kind(), format!("{e}\n{}", cluster.log_report())))?;
        Ok(cluster)
    }

    /// `initdb`, start on a free port (another one if it got taken meanwhile), `bank`.
    fn set_up(&mut self, options: &PgClusterBuilder) -> io::Result<()> {
        self.run(
            // The port is not chosen yet (the bootstrap server reads `PGPORT`).
            self.command("initdb")
                .env_remove("PGPORT")
                .arg("-D")
                .arg(&self.data)
                .args(["-U", USER, "--auth=trust", "-E", "UTF8", "--no-locale"])
                .arg("--no-sync"),
            COMMAND_LIMIT,
        )?;
        for attempt in 1..=PORT_ATTEMPTS {
            self.port = free_port()?;
            self.options = self.server_options(options);
            let log_before = fs::metadata(&self.log).map_or(0, |m| m.len());
            match self.pg_ctl("start", &[]) {
                Ok(_) => break,
                Err(e) if attempt == PORT_ATTEMPTS || !self.port_was_taken(log_before) => {
                    return Err(e)
                }
                // Taken between the pick and the server's bind: another port.
                Err(_) => {}
            }
        }
        self.psql_in("postgres", &format!("CREATE DATABASE {DATABASE}"))?;
        Ok(())
    }

    /// The `-o` string: where to listen, then the builder's settings.
    fn server_options(&self, options: &PgClusterBuilder) -> String {
        let socket_dir = self.dir.to_string_lossy();
        let mut all = vec![
            shell_setting("port", &self.port.to_string()),
            shell_setting("listen_addresses", "127.0.0.1"),
            shell_setting("unix_socket_directories", &socket_dir),
            shell_setting("max_connections", &options.max_connections.to_string()),
        ];
        all.extend(options.settings.iter().map(|(n, v)| shell_setting(n, v)));
        all.join(" ")
    }

    /// The server's address over TCP: `postgres://bank@127.0.0.1:PORT/bank`.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The server's address over its Unix socket:
    /// `postgresql://bank@/bank?host=SOCKET_DIR&port=PORT`.
    pub fn socket_url(&self) -> String {
        format!(
            "postgresql://{USER}@/{DATABASE}?host={}&port={}",
            self.dir.display(),
            self.port
        )
    }

    /// The TCP port on 127.0.0.1 (also the number in the Unix socket's name).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server's Unix socket (`.s.PGSQL.PORT`): the cluster's own.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory (`initdb -D`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The postmaster's PID, from the first line of `postmaster.pid`; `None` when the
    /// server is not running (the file is gone).
    pub fn postmaster_pid(&self) -> Option<u32> {
        fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Restarts the server (`pg_ctl restart -m fast`: sessions are ended, committed data
    /// stays) with the same options; returns once it accepts connections again.
    pub fn restart_fast(&self) -> io::Result<()> {
        self.pg_ctl("restart", &["-m", "fast"]).map(drop)
    }

    /// Crashes and restarts the server (`pg_ctl restart -m immediate`: every process ends
    /// at once, nothing is checkpointed, and what was in the server's memory only, such as
    /// WAL of commits that did not wait for it to reach the disk, is lost; start-up then
    /// recovers from the WAL files); returns once it accepts connections again.
    pub fn restart_immediate(&self) -> io::Result<()> {
        self.pg_ctl("restart", &["-m", "immediate"]).map(drop)
    }

    /// Stops the server (`pg_ctl stop -m fast`) and waits until it is gone; nothing to do
    /// if it is not running. The directory stays until the cluster is dropped.
    pub fn stop(&mut self) -> io::Result<()> {
        if self.postmaster_pid().is_none() {
            return Ok(());
        }
        self.pg_ctl("stop", &["-m", "fast"]).map(drop)
    }

    /// Runs `sql` (one or more statements) with `psql -X -At -v ON_ERROR_STOP=1` over the
    /// Unix socket as user `bank` in database `bank`; its output trimmed (rows one a line,
    /// columns separated by `|`). An error carries what `psql` wrote to stderr.
    pub fn psql(&self, sql: &str) -> io::Result<String> {
        self.psql_in(DATABASE, sql)
    }

    /// [`psql`](Self::psql) in database `db`.
    fn psql_in(&self, db: &str, sql: &str) -> io::Result<String> {
        let out = self.run(
            self.command("psql")
                .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql]),
            COMMAND_LIMIT,
        )?;
        Ok(out.trim().to_owned())
    }

    /// A command for PostgreSQL program `program` (`pgbench`, `psql`, `pg_dump`...) of
    /// [`bin_dir`], aimed at this cluster: `PGHOST` (the socket directory), `PGPORT`,
    /// `PGUSER` and `PGDATABASE` are set (and variables that would override them, such
    /// as `PGHOSTADDR` or `PGSERVICE`, removed); it runs in the cluster's directory and,
    /// when this process is root, as the `postgres` account (with `HOME` the cluster's
    /// directory). Add the arguments and run it, bounded in time (say with
    /// [`run_within`](crate::run_within())).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(&self.dir)
            .env("PGHOST", &self.dir)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", USER)
            .env("PGDATABASE", DATABASE)
            .env("PGCONNECT_TIMEOUT", "10");
        for var in [
            "PGHOSTADDR",
            "PGSERVICE",
            "PGSERVICEFILE",
            "PGOPTIONS",
            "PGSSLMODE",
            "PGDATA",
        ] {
            cmd.env_remove(var);
        }
        if let Some(account) = self.account {
            cmd.uid(account.uid).gid(account.gid).env("HOME", &self.dir);
        }
        cmd
    }

    /// The last `lines` lines of the server's log, for a failure message.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read(&self.log).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The log's tail as a paragraph of an error message.
    fn log_report(&self) -> String {
        format!(
            "the server's log (removed with the cluster), last lines:\n{}",
            self.log_tail(30)
        )
    }

    /// Whether the log, after its first `from` bytes, says the port was in use.
    fn port_was_taken(&self, from: u64) -> bool {
        let log = fs::read(&self.log).unwrap_or_default();
        let from = usize::try_from(from).unwrap_or(usize::MAX).min(log.len());
        // "could not bind IPv4 address "127.0.0.1": Address already in use" (messages are
        // in English: the cluster has no locale).
        String::from_utf8_lossy(&log[from..]).contains("Address already in use")
    }

    /// `pg_ctl ACTION` on this cluster's data, waiting (`-w -t 60`) for it to take effect,
    /// with the server options and log file for a start or restart.
    fn pg_ctl(&self, action: &str, extra: &[&str]) -> io::Result<String> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", &SERVER_WAIT_SECS.to_string()])
            .args(extra);
        if action != "stop" {
            cmd.arg("-l").arg(&self.log).args(["-o", &self.options]);
        }
        self.run(cmd.arg(action), PG_CTL_LIMIT)
    }

    /// Runs `cmd` to completion within `limit`: its stdout if it succeeded, else an error
    /// with how it ended and its stderr.
    fn run(&self, cmd: &mut Command, limit: Duration) -> io::Result<String> {
        let program = Path::new(cmd.get_program())
            .file_name()
            .map_or_else(String::new, |p| p.to_string_lossy().into_owned());
        let done = run_within(cmd, limit).map_err(io::Error::other)?;
        if done.status.success() {
            Ok(done.stdout)
        } else {
            Err(io::Error::other(format!(
                "{program} failed ({}): {}{}",
                done.status,
                done.stderr.trim(),
                if done.stderr.trim().is_empty() {
                    done.stdout.trim()
                } else {
                    ""
                }
            )))
        }
    }
}

impl Drop for PgCluster {
    /// Stops the server at once (`pg_ctl stop -m immediate`, bounded), kills the
    /// postmaster by PID if it is still running then, and removes the cluster's directory;
    /// if the thread is panicking (a failing test), prints the server log's tail first.
    fn drop(&mut self) {
        // The log goes with the directory: a failing test shows its tail first.
        if thread::panicking() {
            eprintln!(
                "PostgreSQL cluster {}: {}",
                self.dir.display(),
                self.log_report()
            );
        }
        if let Some(pid) = self.postmaster_pid() {
            let mut stop = self.command("pg_ctl");
            stop.arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "-t"])
                .arg(DROP_LIMIT.as_secs().to_string())
                .arg("stop");
            let _ = run_within(&mut stop, DROP_LIMIT + Duration::from_secs(2));
            // Only a postgres process: after a crash the PID may be another's by now.
            if is_running(pid) && is_postgres(pid) {
                let _ = send_signal(pid, "KILL");
                let deadline = Instant::now() + DROP_LIMIT;
                while is_running(pid) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether process `pid` runs a `postgres` binary (`/proc/PID/cmdline`'s first word).
fn is_postgres(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let program = cmdline.split(|&b| b == 0).next().unwrap_or_default();
        program.ends_with(b"postgres") || program.ends_with(b"postmaster")
    })
}

/// Makes the cluster's directory, `/tmp/duo-pg-<pid>-<counter>-<nanos>` (not `$TMPDIR`,
/// which may be too long for a socket path), owned by `account` when given.
fn make_dir(account: Option<Account>) -> io::Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = PathBuf::from(format!("/tmp/duo-pg-{}-{n}-{nanos}", std::process::id()));
    DirBuilder::new().mode(0o700).create(&dir)?;
    if let Some(account) = account {
        if let Err(e) = chown(&dir, Some(account.uid), Some(account.gid)) {
            let _ = fs::remove_dir(&dir);
            return Err(e);
        }
    }
    Ok(dir)
}
