//! `bank serve --processes N`: a supervisor and its worker processes on one PostgreSQL
//! database, run as a user runs them; the usage errors. Every child is killed by PID (a
//! dropped `ChildServer`), every wait is bounded. The PostgreSQL test is skipped (with a
//! line saying so) where PostgreSQL is not installed.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use duo_testkit::pg::PgCluster;
use duo_testkit::{
    children, is_running, join_within, run_within, wait_until_within, ChildServer, RefusedPort,
    TempDir,
};

const BANK: &str = env!("CARGO_BIN_EXE_bank");
const SOCKET_ACTIVATE: &str = "/usr/bin/systemd-socket-activate";
const PW: &str = "secret123";
/// How long any single reply, start or stop may take.
const LIMIT: Duration = Duration::from_secs(15);

/// `bank serve --listen 127.0.0.1:0 --db DB --hash-cost low EXTRA...`, its log on the
/// test's stderr.
fn bank_serve(db: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(BANK);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--db", db])
        .args(["--hash-cost", "low", "--workers", "2"])
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("BANK_TEST_LOG").unwrap_or("info".into()),
        );
    cmd
}

/// A line-protocol connection with read deadlines.
struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, LIMIT).expect("connect to bank");
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        stream.set_write_timeout(Some(LIMIT)).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    /// Sends `line` and returns the reply line, without its line end.
    fn cmd(&mut self, line: &str) -> String {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .unwrap_or_else(|e| panic!("sending {line:?}: {e}"));
        let mut reply = String::new();
        self.reader
            .read_line(&mut reply)
            .unwrap_or_else(|e| panic!("reply to {line:?}: {e}"));
        assert!(reply.ends_with('\n'), "no reply to {line:?}: {reply:?}");
        reply.trim_end().to_owned()
    }

    /// A new connection logged in as `user`.
    fn logged_in(addr: SocketAddr, user: &str) -> Client {
        let mut c = Client::connect(addr);
        assert_eq!(
            c.cmd(&format!("LOGIN {user} {PW}")),
            format!("OK welcome {user}")
        );
        c
    }
}

/// The `listening on` address's port's established connections held by each of `pids`:
/// socket inodes from `/proc/PID/fd`, matched against `/proc/net/tcp`.
fn connections_per_worker(pids: &BTreeSet<u32>, port: u16) -> Vec<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let served: BTreeSet<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            // State 01: established.
            (local_port == port && *f.get(3)? == "01").then(|| f.get(9).map(|i| i.to_string()))?
        })
        .collect();
    pids.iter()
        .map(|pid| {
            let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                return 0;
            };
            dir.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .filter(|inode| served.contains(inode))
                .count()
        })
        .collect()
}

#[test]
fn workers_share_a_postgres_database_reload_and_drain() {
    let test = "workers_share_a_postgres_database_reload_and_drain";
    let Some(pg) = PgCluster::builder().setting("fsync", "off").for_test(test) else {
        return;
    };
    let t0 = Instant::now();
    let mut server = ChildServer::builder(bank_serve(&pg.url(), &["--processes", "2"]))
        .startup(Duration::from_secs(30))
        .start();
    let addr = server.addr();
    let sup = server.pid();
    // The supervisor announces itself once every worker is ready.
    let workers = children(sup);
    assert_eq!(workers.len(), 2, "two workers: {workers:?}");
    eprintln!("{test}: started in {:?}", t0.elapsed());

    // Accounts made and used over several connections, whichever worker each lands on.
    for user in ["alice", "bob"] {
        assert_eq!(
            Client::connect(addr).cmd(&format!("REGISTER {user} {PW}")),
            "OK registered"
        );
    }
    let mut alice = Client::logged_in(addr, "alice");
    assert_eq!(alice.cmd("DEPOSIT 100"), "OK 100");
    let mut held = Vec::new();
    for i in 0..6 {
        let mut c = Client::logged_in(addr, "alice");
        assert_eq!(c.cmd("TRANSFER bob 5"), format!("OK {}", 95 - 5 * i));
        held.push(c);
    }
    let mut bob = Client::logged_in(addr, "bob");
    assert_eq!(bob.cmd("BALANCE"), "OK 30");
    assert_eq!(alice.cmd("BALANCE"), "OK 70");
    let again = Client::connect(addr).cmd(&format!("REGISTER alice {PW}"));
    assert!(again.starts_with("ERR USER_EXISTS"), "{again}");
    let spread = connections_per_worker(&workers, addr.port());
    eprintln!("{test}: connections per worker {spread:?}");
    assert_eq!(
        spread.iter().sum::<usize>(),
        8,
        "every connection on a worker"
    );
    drop(held);

    // SIGHUP: a new generation of two, the old one drains away; the data stays.
    server.signal("HUP");
    wait_until_within(LIMIT, "a new generation of workers", || {
        let now = children(sup);
        now.len() == 2 && now.is_disjoint(&workers)
    });
    let reloaded = children(sup);
    // The connections made before the reload were closed by the draining workers.
    let mut rest = Vec::new();
    let _ = alice.reader.read_to_end(&mut rest);
    let mut bob = Client::logged_in(addr, "bob");
    assert_eq!(bob.cmd("WITHDRAW 30"), "OK 0");
    assert_eq!(Client::logged_in(addr, "alice").cmd("BALANCE"), "OK 70");

    // SIGTERM drains every worker (an open connection is closed) and exits 0.
    let (status, took) = server.terminate("TERM", LIMIT);
    assert!(status.success(), "exit status {status}");
    eprintln!("{test}: stopped in {took:?}; whole test {:?}", t0.elapsed());
    let mut rest = Vec::new();
    bob.reader
        .read_to_end(&mut rest)
        .expect("EOF after the drain");
    for pid in workers.union(&reloaded) {
        assert!(!is_running(*pid), "worker {pid} outlived its supervisor");
    }
}

/// Runs `bank serve ... --processes N` expecting a usage error; returns its stderr.
fn usage_error(db: &str, processes: &str) -> String {
    let mut cmd = bank_serve(db, &["--processes", processes]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = run_within(&mut cmd, LIMIT).expect("bank serve exits");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "nothing on stdout: {out:?}");
    out.stderr
}

#[test]
fn socket_activation_one_process_on_sqlite() {
    if !Path::new(SOCKET_ACTIVATE).exists() {
        println!("skipped: {SOCKET_ACTIVATE} is not installed");
        return;
    }
    let dir = TempDir::new("activated");
    let db = dir.join("bank.db").to_string_lossy().into_owned();
    // The activator binds the port itself: it is held (bound, refusing connections) until
    // just before the activator starts, so no other test's server is given it meanwhile.
    let reserved = RefusedPort::new();
    let addr = reserved.addr();
    let serve = bank_serve(&db, &["--processes", "1"]);
    let mut cmd = Command::new(SOCKET_ACTIVATE);
    cmd.args(["-l", &addr.to_string()])
        .arg(serve.get_program())
        .args(serve.get_args())
        .envs(serve.get_envs().filter_map(|(k, v)| Some((k, v?))));
    // The activator starts bank on the first connection: connect first (once it listens),
    // then the `listening on` line comes.
    let first = std::thread::spawn(move || {
        let deadline = Instant::now() + LIMIT;
        let stream = loop {
            match TcpStream::connect(addr) {
                // Dialling a port nobody listens on yet, the kernel may pick that very
                // port as the source and connect the socket to itself (TCP simultaneous
                // open): not the activator; drop it and dial again.
                Ok(s) if s.local_addr().ok() == s.peer_addr().ok() => {
                    drop(s);
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("connect {addr}: {e}"),
            }
        };
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        let mut c = Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        };
        assert_eq!(c.cmd("PING"), "PONG");
    });
    drop(reserved);
    let mut server = ChildServer::start(cmd);
    assert_eq!(server.addr(), addr, "serves on the inherited socket");
    join_within("the first connection", first);
    assert_eq!(children(server.pid()).len(), 1, "one worker");
    assert_eq!(
        Client::connect(addr).cmd(&format!("REGISTER carol {PW}")),
        "OK registered"
    );
    let (status, _) = server.terminate("TERM", LIMIT);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", server.stderr());
}

#[test]
fn several_processes_on_sqlite_are_a_usage_error() {
    let dir = TempDir::new("sqlite");
    let db = dir.join("bank.db");
    for db in [
        db.to_string_lossy().into_owned(),
        format!("sqlite:{}", db.display()),
    ] {
        let stderr = usage_error(&db, "2");
        assert!(
            stderr.contains("SQLite") && stderr.contains("one writer process"),
            "{stderr}"
        );
        assert!(stderr.contains("PostgreSQL"), "{stderr}");
    }
    assert!(!db.exists(), "no database was created");
}

#[test]
fn zero_processes_is_a_usage_error() {
    let stderr = usage_error("postgres://bank@127.0.0.1:1/bank", "0");
    assert!(
        stderr.contains("--processes must be at least 1"),
        "{stderr}"
    );
}

/// A worker sent `SIGHUP` or `SIGUSR2` itself (`pkill -HUP bank` reaches every bank
/// process): the supervisor's signals, which a worker logs and ignores. It used to die of
/// the default action, resetting its connections (a client in the middle of its session
/// lost it).
#[test]
fn a_worker_sent_the_supervisors_signals_keeps_serving() {
    let dir = TempDir::new("worker-signals");
    let db = dir.join("bank.db");
    let mut server = ChildServer::builder(bank_serve(db.to_str().unwrap(), &["--processes", "1"]))
        .startup(Duration::from_secs(30))
        .start();
    let workers = children(server.pid());
    assert_eq!(workers.len(), 1, "{workers:?}");
    let worker = *workers.iter().next().unwrap();
    assert_eq!(
        Client::connect(server.addr()).cmd(&format!("REGISTER alice {PW}")),
        "OK registered"
    );
    let mut alice = Client::logged_in(server.addr(), "alice");
    assert_eq!(alice.cmd("DEPOSIT 5"), "OK 5");
    for (signal, name) in [("HUP", "SIGHUP"), ("USR2", "SIGUSR2")] {
        duo_testkit::send_signal(worker, signal).unwrap();
        let handled = format!("worker {worker}: {name} ");
        wait_until_within(
            LIMIT,
            "the worker to handle the signal or die of it",
            || !is_running(worker) || server.stderr().contains(&handled),
        );
        assert!(
            is_running(worker),
            "the worker died of {name}:\n{}",
            server.stderr()
        );
        assert_eq!(
            alice.cmd("BALANCE"),
            "OK 5",
            "the session goes on after {name}"
        );
    }
    assert_eq!(children(server.pid()), workers, "{}", server.stderr());
    let (status, _) = server.terminate("TERM", LIMIT);
    assert!(status.success(), "{status}");
}
