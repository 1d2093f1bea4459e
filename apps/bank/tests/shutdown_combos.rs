//! Stopping `bank serve` (SIGTERM, SIGINT) in combinations the other suites do not make:
//! before it finished starting (its database locked by another process, SQLite or
//! PostgreSQL; alone and as a `--processes` worker), a second signal while password checks
//! wait on the workers, group-commit batches in flight, a client that half-closed, a
//! client held back by its unread replies, a TLS handshake half done, a metrics scrape
//! half sent, a second signal on a Unix-domain socket, and a reload (SIGHUP) with a stop
//! 10 ms behind it. After each: the exit status, the time the exit took, that every `OK`
//! a client read is in the database, and that no process is left behind.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{read_by_server, Backend, Client, TempDir, TestDb, BANK, PW};
use duo_testkit::{
    children, is_running, join_within, send_signal, wait_child_within, wait_until_within,
    ChildServer, TestCerts, LIMIT,
};

on_both_backends! {
    sigterm_with_batches_in_flight_answers_them_and_keeps_them,
}

/// A `bank` process started without waiting for its `listening on` line; killed (SIGKILL
/// by PID) and reaped on drop, with every child it still has.
struct Raw(Child);

impl Raw {
    fn start(args: &[&str]) -> Raw {
        let child = Command::new(BANK)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bank");
        Raw(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends `signal`, waits (at most `limit`) for the exit; the status, the time from the
    /// signal, stdout and stderr. Panics if it is still running then.
    fn stop(&mut self, signal: &str, limit: Duration) -> (ExitStatus, Duration, String, String) {
        let sent = Instant::now();
        send_signal(self.pid(), signal).expect("kill");
        let status = wait_child_within(&mut self.0, limit);
        let took = sent.elapsed();
        let Some(status) = status else {
            self.kill_all();
            let (out, err) = self.output();
            panic!("still running {limit:?} after SIG{signal}; stdout:\n{out}\nstderr:\n{err}");
        };
        let (out, err) = self.output();
        (status, took, out, err)
    }

    /// What it wrote on stdout and stderr (once it has exited).
    fn output(&mut self) -> (String, String) {
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = self.0.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = self.0.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        (out, err)
    }

    fn kill_all(&mut self) {
        let kids = children(self.pid());
        let _ = self.0.kill();
        let _ = wait_child_within(&mut self.0, Duration::from_secs(5));
        for pid in kids {
            if is_running(pid) {
                let _ = send_signal(pid, "KILL");
            }
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Whether process `pid` has `file` open.
fn has_open(pid: u32, file: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    entries
        .filter_map(Result::ok)
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|target| target == file))
}

/// A fresh SQLite file path (absolute, as `/proc/PID/fd` shows it) in `dir`, created with
/// an exclusive lock held on it by the returned connection: a bank opening it waits up to
/// its busy timeout.
fn locked_sqlite(dir: &TempDir) -> (PathBuf, rusqlite::Connection) {
    let dir = dir.path().canonicalize().unwrap();
    let db = dir.join("bank.db");
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch("CREATE TABLE other(x); BEGIN EXCLUSIVE; INSERT INTO other VALUES (1);")
        .unwrap();
    (db, lock)
}

/// How a process that was stopped before it was ready must end: at once, as the signal's
/// default action ends a process (it had served nothing), or with status 0.
fn ended_by_the_stop(status: ExitStatus, signal: i32, took: Duration, err: &str) {
    assert!(
        status.signal() == Some(signal) || status.code() == Some(0),
        "{status}; stderr:\n{err}"
    );
    assert!(
        took < Duration::from_secs(3),
        "the stop took {took:?} (the start went on waiting for the database); stderr:\n{err}"
    );
}

#[test]
fn a_stop_signal_while_the_sqlite_file_is_locked_at_start_ends_the_start() {
    for (signal, number) in [("TERM", 15), ("INT", 2)] {
        let dir = TempDir::new("locked_start");
        let (db, _lock) = locked_sqlite(&dir);
        let db_arg = db.to_str().unwrap();
        let mut bank = Raw::start(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            db_arg,
            "--hash-cost",
            "low",
        ]);
        let pid = bank.pid();
        // It is opening the database, which waits for the lock (10 s busy timeout).
        wait_until_within(LIMIT, "the bank opened its database", || has_open(pid, &db));
        let (status, took, out, err) = bank.stop(signal, Duration::from_secs(15));
        assert!(!out.contains("listening on"), "{out}");
        ended_by_the_stop(status, number, took, &err);
    }
}

#[test]
fn a_stop_while_the_worker_waits_for_the_locked_sqlite_file_ends_the_supervisor() {
    let dir = TempDir::new("locked_worker");
    let (db, _lock) = locked_sqlite(&dir);
    let db_arg = db.to_str().unwrap();
    let mut sup = Raw::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--db",
        db_arg,
        "--hash-cost",
        "low",
        "--processes",
        "1",
    ]);
    let mut worker = 0;
    wait_until_within(LIMIT, "the worker opened the database", || {
        worker = children(sup.pid()).into_iter().next().unwrap_or(0);
        worker != 0 && has_open(worker, &db)
    });
    let (status, took, out, err) = sup.stop("TERM", Duration::from_secs(15));
    assert!(!out.contains("listening on"), "{out}");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        !is_running(worker),
        "worker {worker} outlived the supervisor"
    );
    // The worker, told to stop while it waits for the lock, stops: the supervisor does not
    // wait for its stop timeout (6 s) to kill it.
    assert!(
        took < Duration::from_secs(3),
        "the stop took {took:?}; stderr:\n{err}"
    );
    assert!(!err.contains("after the stop: SIGKILL"), "{err}");
}

#[test]
fn sigterm_while_another_front_end_holds_the_schema_lock_ends_the_start() {
    let Some(db) = TestDb::new(Backend::Postgres, "schema_lock") else {
        return;
    };
    let cluster = db.cluster().unwrap();
    let name = db.url().rsplit('/').next().unwrap().to_owned();
    // Another session holds the lock bank front-ends take to set the schema up (as one
    // starting at the same moment does, or one stuck in its start).
    let mut holder = cluster.command("psql");
    holder
        .args(["-X", "-q", "-d", &name])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut holder = Raw(holder.spawn().expect("psql"));
    holder
        .0
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"SELECT pg_advisory_lock(1650552427);\n")
        .unwrap();
    wait_until_within(LIMIT, "the lock is held", || {
        db.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted") == "1"
    });
    let url = db.url();
    let mut bank = Raw::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--db",
        &url,
        "--hash-cost",
        "low",
    ]);
    wait_until_within(LIMIT, "the bank waits for the lock", || {
        db.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted") == "1"
    });
    let (status, took, out, err) = bank.stop("TERM", Duration::from_secs(8));
    assert!(!out.contains("listening on"), "{out}");
    ended_by_the_stop(status, 15, took, &err);
    drop(holder);
}

/// `bank serve` on `db` with the real (slow) password hash, one worker thread.
fn start_slow_hashing(db: &Path) -> ChildServer {
    let mut cmd = Command::new(BANK);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--workers", "1", "--db"])
        .arg(db)
        .env("RUST_LOG", "info");
    ChildServer::builder(cmd)
        .startup(Duration::from_secs(30))
        .start()
}

#[test]
fn a_second_sigterm_does_not_wait_for_the_password_checks_queued() {
    let dir = TempDir::new("quit_hashes");
    let mut server = start_slow_hashing(&dir.join("bank.db"));
    let addr = server.addr();
    // Five logins, each a password check (about a second or more each in a debug build),
    // on the one worker: one runs, four wait in its queue.
    let clients: Vec<Client> = (0..5)
        .map(|i| {
            let mut c = Client::connect(addr);
            c.send(format!("LOGIN nobody{i} {PW}\n").as_bytes());
            read_by_server(addr, c.stream());
            c
        })
        .collect();
    server.signal("TERM");
    server.wait_for_stderr("shutting down", LIMIT);
    // "Again to quit at once": not after every queued check has run.
    let (status, took) = server.terminate("TERM", Duration::from_secs(20));
    let log = server.stderr_to_end(LIMIT);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        took < Duration::from_secs(4),
        "quitting took {took:?}: the queued password checks ran first\n{log}"
    );
    drop(clients);
}

/// Every client's `DEPOSIT 1` replies read until the server closed: the count of `OK`s.
fn deposits_until_closed(c: &mut Client, sent: usize) -> i64 {
    let mut oks = 0;
    for _ in 0..sent {
        match c.try_line() {
            Some(line) if line.starts_with("OK ") => oks += 1,
            Some(line) => panic!("unexpected reply {line:?}"),
            None => break,
        }
    }
    oks
}

fn sigterm_with_batches_in_flight_answers_them_and_keeps_them(backend: Backend) {
    let Some(db) = TestDb::new(backend, "inflight") else {
        return;
    };
    let mut server = db.start(&["--workers", "2"]);
    let users: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
    let mut clients: Vec<Client> = users
        .iter()
        .map(|u| Client::logged_in(server.addr, u))
        .collect();
    const N: usize = 200;
    let burst = "DEPOSIT 1\n".repeat(N);
    for c in &mut clients {
        c.send(burst.as_bytes());
    }
    // Some of every burst is answered, so batches are committing when the signal comes.
    for c in &mut clients {
        assert_eq!(c.line(), "OK 1");
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| thread::spawn(move || 1 + deposits_until_closed(&mut c, N - 1)))
        .collect();
    let (status, took) = server.signal_and_wait("TERM", Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status}");
    // Every client reads its replies: none waits out the 2 s grace.
    assert!(took < Duration::from_secs(2), "{took:?}");
    let oks: Vec<i64> = readers
        .into_iter()
        .map(|r| join_within("a client", r))
        .collect();
    // Every OK is in the database, and nothing else is.
    let server = db.start(&[]);
    for (user, ok) in users.iter().zip(&oks) {
        let mut c = Client::connect(server.addr);
        assert_eq!(
            c.cmd(&format!("LOGIN {user} {PW}")),
            format!("OK welcome {user}")
        );
        assert_eq!(c.balance(), *ok, "{user}: {ok} deposits acknowledged");
    }
}

#[test]
fn sigterm_after_a_client_half_closed_answers_everything_it_sent() {
    let dir = TempDir::new("halfclose");
    let mut server = common::Server::start(&dir.join("bank.db"), &["--workers", "2"]);
    let mut c = Client::logged_in(server.addr, "alice");
    c.send("DEPOSIT 1\n".repeat(300).as_bytes());
    c.stream().shutdown(std::net::Shutdown::Write).unwrap();
    read_by_server(server.addr, c.stream());
    let (status, took) = server.signal_and_wait("TERM", Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(4), "{took:?}");
    let got = c.expect_closed(Duration::from_secs(5));
    let text = String::from_utf8(got).unwrap();
    let replies: Vec<&str> = text.lines().collect();
    assert_eq!(replies.len(), 300, "{text}");
    assert_eq!(replies.last(), Some(&"OK 300"));
}

#[test]
fn a_second_sigterm_on_a_unix_socket_removes_it_and_leaves_a_clean_database() {
    let dir = TempDir::new("unix_quit");
    let sock = dir.path().join("bank.sock");
    let listen = format!("unix:{}", sock.display());
    let db = dir.join("bank.db");
    let mut cmd = Command::new(BANK);
    cmd.args(["serve", "--listen", &listen, "--hash-cost", "low", "--db"])
        .arg(&db)
        .env("RUST_LOG", "info");
    let mut server = ChildServer::builder(cmd).start();
    let connect = || {
        let s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let mut a = connect();
    let mut reader = std::io::BufReader::new(a.try_clone().unwrap());
    let mut cmd = |line: &str| {
        a.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut reply = String::new();
        std::io::BufRead::read_line(&mut reader, &mut reply).unwrap();
        reply
    };
    assert_eq!(cmd(&format!("REGISTER alice {PW}")), "OK registered\n");
    assert_eq!(cmd(&format!("LOGIN alice {PW}")), "OK welcome alice\n");
    assert_eq!(cmd("DEPOSIT 7"), "OK 7\n");
    // Another process holds the write lock: the next deposit waits on a worker, and the
    // drain waits for it.
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    a.write_all(b"DEPOSIT 3\n").unwrap();
    wait_until_within(LIMIT, "the server read the deposit", || {
        duo_sys::bytes_unacknowledged(std::os::fd::AsFd::as_fd(&a)).is_ok_and(|n| n == 0)
    });
    server.signal("TERM");
    server.wait_for_stderr("shutting down", LIMIT);
    server.signal("TERM");
    server.wait_for_stderr("again: quitting now", LIMIT);
    let quit = Instant::now();
    lock.execute_batch("COMMIT").unwrap();
    let status = server.wait_exit(Duration::from_secs(10));
    let took = quit.elapsed();
    let log = server.stderr_to_end(LIMIT);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(took < Duration::from_secs(2), "{took:?}\n{log}");
    assert!(!sock.exists(), "the socket file is left behind");
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    let c = rusqlite::Connection::open(&db).unwrap();
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let balance: i64 = c
        .query_row("SELECT balance FROM users WHERE name = 'alice'", [], |r| {
            r.get(0)
        })
        .unwrap();
    // A write that was running completes (its reply may be lost with the connection).
    assert_eq!(balance, 10, "client read {rest:?}");
    assert!(rest.is_empty() || rest == "OK 10\n", "{rest:?}");
}

#[test]
fn sigterm_with_a_tls_handshake_half_done_and_a_scrape_half_sent_exits_at_once() {
    let certs = TestCerts::new("bank-shutdown");
    let dir = TempDir::new("tls_scrape");
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    let mut server = common::Server::start(
        &dir.join("bank.db"),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let metrics = server.metrics_addr();
    // A ClientHello's first bytes, no more; a scrape's request line, no more.
    let mut tls = TcpStream::connect(server.addr).unwrap();
    tls.write_all(&[0x16, 0x03, 0x01, 0x00, 0x80, 0x01])
        .unwrap();
    let mut scrape = TcpStream::connect(metrics).unwrap();
    scrape.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    read_by_server(server.addr, &tls);
    let (status, took) = server.signal_and_wait("TERM", Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    // Neither waits out the 2 s grace.
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

#[test]
fn a_stop_10_ms_after_a_reload_exits_0_and_leaves_no_worker() {
    let Some(db) = TestDb::new(Backend::Postgres, "reload_stop") else {
        return;
    };
    let url = db.url();
    let mut cmd = Command::new(BANK);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--hash-cost", "low"])
        .args(["--processes", "2", "--workers", "2", "--db", &url])
        .env("RUST_LOG", "info");
    let mut sup = ChildServer::builder(cmd)
        .startup(Duration::from_secs(30))
        .start();
    let mut alice = Client::logged_in(sup.addr(), "alice");
    assert_eq!(alice.cmd("DEPOSIT 5"), "OK 5");
    let first: Vec<u32> = children(sup.pid()).into_iter().collect();
    assert_eq!(first.len(), 2);
    sup.signal("HUP");
    thread::sleep(Duration::from_millis(10)); // the combination under test, not a wait
    let (status, took) = sup.terminate("TERM", Duration::from_secs(15));
    let log = sup.stderr_to_end(LIMIT);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(took < Duration::from_secs(8), "{took:?}\n{log}");
    let started: Vec<u32> = log
        .lines()
        .filter_map(|l| l.split("started worker ").nth(1))
        .filter_map(|r| r.split(' ').next()?.parse().ok())
        .collect();
    assert!(started.len() >= 2, "{log}");
    for pid in started {
        assert!(
            !is_running(pid),
            "worker {pid} outlived the supervisor\n{log}"
        );
    }
    assert_eq!(
        db.psql("SELECT balance FROM users WHERE name = 'alice'"),
        "5"
    );
}
