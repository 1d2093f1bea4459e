//! Shared test harness: start `bank serve` as a user would, talk to it over TCP.
//!
//! Every wait has a deadline; every server is killed by PID when its guard drops; every
//! temporary directory is removed when its guard drops.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use duo_testkit::ChildServer;

/// The `bank` binary under test.
pub(crate) const BANK: &str = env!("CARGO_BIN_EXE_bank");
/// How long any single reply may take.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// A password that passes validation.
pub(crate) const PW: &str = "secret123";

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bank-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn db(&self) -> PathBuf {
        self.0.join("bank.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
        let mut cmd = Command::new(BANK);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(db)
            .args(["--hash-cost", "low"])
            .args(extra)
            .env(
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

    /// The next reply line, without its line end; panics on EOF or timeout.
    pub(crate) fn line(&mut self) -> String {
        self.try_line().expect("a reply line")
    }

    /// The next reply line, or `None` on EOF or error.
    pub(crate) fn try_line(&mut self) -> Option<String> {
        let mut buf = String::new();
        match self.reader.read_line(&mut buf) {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                assert!(buf.ends_with('\n'), "partial line {buf:?}");
                buf.pop();
                Some(buf)
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
