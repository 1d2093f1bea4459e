//! A review of the bank's command-line front (round 8): the database URL as messages and
//! logs show it (a password the URL parser reads is never shown; a URL that does not
//! parse says why), a `--db` path beginning with `file:`, `--db-writers` on SQLite, a
//! `--connect` value that is no address, and `bank client` against a peer that is no bank
//! server (an endless reply line, a `HISTORY` count no bank sends) or a plaintext one with
//! `--tls`. The binary runs for real, against a fake server or a bank on SQLite over
//! loopback; nothing here needs PostgreSQL.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use bank::Database;
use common::BANK;

use common::run_bank as bank;

/// URLs whose password (as tokio-postgres reads it: everything between the first `:` and
/// the first `@`) holds a character the redaction took for the end of the host part
/// (`/`, `?`), or that pass it as a query parameter whose name is percent-encoded.
/// Each also has a port out of range, so that `bank serve` refuses it at once.
const LEAKY_URLS: [(&str, &str); 4] = [
    ("postgres://bank:pa/ss3cret@127.0.0.1:99999/bank", "ss3cret"),
    ("postgres://bank:pa?ss3cret@127.0.0.1:99999/bank", "ss3cret"),
    (
        "postgresql://bank:x/y?ss3cret@127.0.0.1:99999/bank",
        "ss3cret",
    ),
    (
        "postgres://bank@127.0.0.1:99999/bank?pass%77ord=ss3cret",
        "ss3cret",
    ),
];

/// The same URLs with a valid port: they parse, and are shown (`Display`, the form of
/// every log line and message) and debugged (`Debug`, as in a `{:?}` of the server's
/// settings) without the password.
#[test]
fn a_password_the_url_parser_reads_is_never_shown() {
    for (url, secret) in LEAKY_URLS {
        let url = url.replace("99999", "5432");
        let db = Database::parse(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
        let shown = db.to_string();
        assert!(!shown.contains(secret), "{url} is shown as {shown}");
        assert!(shown.contains("***"), "{url} is shown as {shown}");
        assert!(shown.contains("5432"), "{url} is shown as {shown}");
        let debugged = format!("{db:?}");
        assert!(!debugged.contains(secret), "{url} debugs as {debugged}");
    }
    // A URL without a password is shown as it is.
    let plain = "postgres://bank@[::1]:5432,db2:5433/bank?application_name=a@b";
    assert_eq!(Database::parse(plain).unwrap().to_string(), plain);
}

/// `bank serve` with such a URL that does not parse: a usage error whose message shows the
/// URL without the password (it showed the whole password for `/` and `?`).
#[test]
fn a_database_url_that_does_not_parse_keeps_an_odd_password_out_of_the_message() {
    for (url, secret) in LEAKY_URLS {
        let done = bank(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            url,
            "--hash-cost",
            "low",
        ]);
        assert_eq!(done.status.code(), Some(2), "{url}: {}", done.stderr);
        assert!(done.stderr.contains("--db"), "{url}: {}", done.stderr);
        assert!(
            !done.stderr.contains(secret),
            "{url}: the password is on stderr:\n{}",
            done.stderr
        );
    }
}

/// A fake server on loopback: it answers the first line it reads with `reply`, then holds
/// the connection open (neither closing nor sending more) until dropped.
struct FakeServer {
    addr: SocketAddr,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    fn start(reply: Vec<u8>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let Ok((conn, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = Vec::new();
            if reader.read_until(b'\n', &mut line).is_err() {
                return;
            }
            // The client may stop reading (and close) before all of it is written.
            let _ = (&conn).write_all(&reply);
            // Held open until the test ends (bounded, should the test never say so).
            let _ = stopped.recv_timeout(Duration::from_secs(30));
        });
        FakeServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        // Unblocks an accept that never got its connection.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A peer that sends one endless line (here 8 MiB without a line end, then nothing): the
/// client kept every byte (a peer streaming for ever grew it without bound) and then
/// waited 30 s for the line's end. It gives up once the line is longer than any bank
/// reply, says the peer is no bank server, and exits 1.
#[test]
fn a_reply_line_longer_than_any_bank_reply_is_refused_at_once() {
    let server = FakeServer::start(vec![b'x'; 8 << 20]);
    let connect = server.addr.to_string();
    let done = bank(&["client", "--connect", &connect, "PING"]);
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert!(
        done.stderr.contains("bank server"),
        "the message says what is wrong: {}",
        done.stderr
    );
    assert!(
        done.stdout.is_empty(),
        "printed: {} bytes",
        done.stdout.len()
    );
}

/// `HISTORY` answered `OK 4000000000`: the client waited for four billion lines (and would
/// have kept each one a peer sent). A bank sends at most `HISTORY_MAX` entries; more is
/// no bank's reply, refused at once with exit status 1, nothing printed.
#[test]
fn a_history_count_no_bank_sends_is_refused_at_once() {
    let server = FakeServer::start(b"OK 4000000000\n".to_vec());
    let connect = server.addr.to_string();
    let done = bank(&["client", "--connect", &connect, "HISTORY"]);
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert!(
        done.stderr.contains("bank server"),
        "the message says what is wrong: {}",
        done.stderr
    );
    assert!(done.stdout.is_empty(), "printed: {}", done.stdout);
}

/// A `--connect` value that is no address (a missing port, an IPv6 address without
/// brackets, a port out of range, an empty Unix path) is a usage error (exit 2, as a bad
/// `--listen` is), naming the value; it was `cannot connect to ...: invalid socket
/// address` and exit 1, a runtime failure, as if a server had been tried.
#[test]
fn a_connect_value_that_is_no_address_is_a_usage_error() {
    for (connect, needle) in [
        ("127.0.0.1", "127.0.0.1"),
        ("localhost", "localhost"),
        ("::1:7100", "brackets"),
        ("127.0.0.1:70000", "127.0.0.1:70000"),
        ("127.0.0.1:", "127.0.0.1:"),
        ("unix:", "unix:"),
    ] {
        let done = bank(&["client", "--connect", connect, "PING"]);
        assert_eq!(
            done.status.code(),
            Some(2),
            "--connect {connect}: {}",
            done.stderr
        );
        assert!(
            done.stderr.contains("--connect") && done.stderr.contains(needle),
            "--connect {connect}: the message names the value: {}",
            done.stderr
        );
        assert!(!done.stderr.contains("panicked"), "{}", done.stderr);
    }
}

/// `--db-writers` above 1 on SQLite (one writer connection, whatever the flag says) is a
/// usage error, as `--processes` above 1 there is; it was taken and ignored, the server
/// serving as if it had not been given.
#[test]
fn db_writers_above_one_on_sqlite_is_a_usage_error() {
    let dir = common::TempDir::new("r8cli-writers");
    let db = dir.join("bank.db").to_string_lossy().into_owned();
    let done = bank(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--db",
        &db,
        "--hash-cost",
        "low",
        "--db-writers",
        "4",
    ]);
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(
        done.stderr.contains("--db-writers") && done.stderr.contains("PostgreSQL"),
        "{}",
        done.stderr
    );
    assert!(done.stdout.is_empty(), "announced: {}", done.stdout);
}

/// `bank client --tls` against a plaintext bank: the server answers the ClientHello with
/// a plaintext `ERR` line, which the client reported as `connection: received corrupt
/// message of type InvalidContentType`. It says the server does not speak TLS, as the
/// reverse case says to use `--tls`, and exits 1.
#[test]
fn a_tls_client_of_a_plaintext_server_fails_and_says_to_leave_out_tls() {
    let dir = common::TempDir::new("r8cli-tls-plain");
    let certs = duo_testkit::TestCerts::new("bank-r8cli-tls-plain");
    let ca = certs.path("ca.pem");
    let server = common::Server::start(&dir.join("bank.db"), &[]);
    let connect = server.addr.to_string();
    let done = bank(&[
        "client",
        "--connect",
        &connect,
        "--tls",
        "--ca",
        &ca,
        "PING",
    ]);
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert!(
        done.stderr.contains("does not speak TLS") && done.stderr.contains("--tls"),
        "the message says what is wrong: {}",
        done.stderr
    );
    assert!(done.stdout.is_empty(), "printed: {}", done.stdout);
}

/// A PostgreSQL URL that does not parse: the message says what is wrong with it (an
/// unknown parameter, a bad port, a value of a known one), not only `invalid connection
/// string` (tokio-postgres keeps the reason in the error's source, which was dropped).
#[test]
fn a_database_url_that_does_not_parse_says_why() {
    for (url, why) in [
        ("postgres://bank:pw@127.0.0.1:5432/bank?bogus=1", "bogus"),
        ("postgres://bank:pw@127.0.0.1:99999/bank", "port"),
        (
            "postgresql://bank@127.0.0.1/bank?connect_timeout=soon",
            "connect_timeout",
        ),
    ] {
        let done = bank(&["serve", "--listen", "127.0.0.1:0", "--db", url]);
        assert_eq!(done.status.code(), Some(2), "{url}: {}", done.stderr);
        assert!(
            done.stderr.contains(why),
            "{url}: the message names {why:?}: {}",
            done.stderr
        );
        assert!(!done.stderr.contains(":pw@"), "{url}: {}", done.stderr);
    }
}

/// `--db file:b.db` is the relative path `file:b.db`, as the docs read a path. SQLite (built
/// with URI names on) took it for the URI of `b.db`: it created `b.db`, and the server
/// then exited 1 with `cannot stat file:b.db ... after opening it` (and `file:b.db?mode=ro`
/// or `?nolock=1` would have been options, not a name). It serves on `file:b.db` now.
#[test]
fn a_database_path_beginning_with_file_colon_is_a_path() {
    let dir = common::TempDir::new("r8cli-file-colon");
    let mut cmd = Command::new(BANK);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--hash-cost", "low"])
        .args(["--db", "file:b.db"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn");
    // Killed by PID on drop.
    let server = duo_testkit::ChildServer::builder(cmd)
        .startup(Duration::from_secs(20))
        .start();
    let mut c = common::Client::connect(server.addr());
    assert_eq!(c.cmd("REGISTER alice secret123"), "OK registered");
    assert!(dir.path().join("file:b.db").exists(), "no file:b.db");
    assert!(!dir.path().join("b.db").exists(), "b.db was created");
}
