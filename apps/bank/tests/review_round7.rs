//! A review of the bank on its default SQLite backend against `docs/bank-protocol.md`
//! (round 7): what the server writes to its log when a write fails, and the interactive
//! client fed bytes that are not UTF-8. Against the real binary over TCP.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Client, Server, TempDir, BANK, PW};
use duo_testkit::{finish_within, ChildServer};

/// How long the log may take to show a line the server has written.
const LOG_LIMIT: Duration = Duration::from_secs(10);

/// "Passwords are stored only as salted argon2id hashes": in the database, nowhere else.
/// A `REGISTER` that fails with a database error (here a trigger refuses one name) is
/// logged with the operation it was; that line printed the operation's `Debug`, hash and
/// all (`Register { name: "poison", hash: "$argon2id$v=19$..." }`), handing whoever
/// reads the log (a log shipper, a support ticket) the salted hash to crack offline.
#[test]
fn a_register_failing_in_the_database_keeps_its_password_hash_out_of_the_log() {
    let dir = TempDir::new("r7-hash-log");
    let db = dir.join("bank.db");
    let mut cmd = Command::new(BANK);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--hash-cost", "low"])
        .arg("--db")
        .arg(&db)
        .env("RUST_LOG", "warn");
    // Its log is collected (`ChildServer::stderr`); the server is killed by PID on drop.
    let server = ChildServer::builder(cmd)
        .startup(Duration::from_secs(20))
        .start();
    // The server created the schema before it said `listening on`; a trigger beside it
    // (another connection, WAL) makes the insert of one user fail.
    let poison = rusqlite::Connection::open(&db).expect("open the database");
    poison
        .execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON users WHEN NEW.name = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
        )
        .expect("create the trigger");
    drop(poison);

    let mut c = Client::connect(server.addr());
    let reply = c.cmd(&format!("REGISTER poison {PW}"));
    assert!(reply.starts_with("ERR INTERNAL "), "{reply}");
    // The failing operation is logged (the line names the error) before its reply.
    server.wait_for_stderr("failed: database: poisoned", LOG_LIMIT);
    // Other names still register.
    assert_eq!(c.cmd(&format!("REGISTER fine {PW}")), "OK registered");
    let log = server.stderr();
    assert!(
        !log.contains("$argon2"),
        "a password hash reached the log:\n{log}"
    );
    assert!(
        log.contains("poison"),
        "the failed write is not named:\n{log}"
    );
}

/// "Without a command it reads command lines from standard input ... until end of input
/// or `QUIT`", and a line that is not UTF-8 is the server's to answer: `BAD_REQUEST`, the
/// connection staying usable (the `printf 'PING\xff\xfe\n' | nc` example). The client
/// instead stopped at such a line with `bank: error: connection: stream did not contain
/// valid UTF-8` (blaming the connection) and exit status 1, dropping the commands after
/// it.
#[test]
fn the_interactive_client_passes_a_line_that_is_not_utf8_to_the_server() {
    let dir = TempDir::new("r7-client-bytes");
    let srv = Server::start(&dir.join("bank.db"), &[]);
    let mut child = Command::new(BANK)
        .args(["client", "--connect", &srv.addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bank client");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"PING\nPING\xff\xfe\n  \t\nping\r\nQUIT\nPING\n")
        .expect("write the commands");
    drop(stdin);
    let out = finish_within(child, Duration::from_secs(10)).expect("bank client");
    assert_eq!(
        out.stdout, "PONG\nERR BAD_REQUEST line is not valid UTF-8\nPONG\nOK bye\n",
        "stderr: {}",
        out.stderr
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
}

/// "It exits 1 if it cannot connect or the connection breaks": a reply it cannot print
/// (standard output on a full disk, here `/dev/full`) is no broken connection, yet the
/// client said `bank: error: connection: No space left on device`, sending whoever reads
/// it after the network instead of the output.
#[test]
fn a_reply_the_client_cannot_print_is_reported_as_an_output_error() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("SKIPPED: no /dev/full");
        return;
    };
    let dir = TempDir::new("r7-client-stdout");
    let srv = Server::start(&dir.join("bank.db"), &[]);
    let child = Command::new(BANK)
        .args(["client", "--connect", &srv.addr.to_string(), "PING"])
        .stdin(Stdio::null())
        .stdout(full)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bank client");
    let out = finish_within(child, Duration::from_secs(10)).expect("bank client");
    assert_eq!(out.status.code(), Some(1), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("standard output") && !out.stderr.contains("connection"),
        "stderr: {}",
        out.stderr
    );
}

/// A read opens a reader connection on demand; it used to open the path with
/// `SQLITE_OPEN_CREATE`, so once the database file was gone (removed, or moved away by an
/// operator) a read made a new, empty database there, which the next start would take for
/// the bank. A reader now creates nothing: the read fails (an error reply), and no file
/// appears.
#[test]
fn a_read_after_the_database_file_is_gone_creates_no_file() {
    let dir = TempDir::new("r7-no-create");
    let db = dir.join("bank.db");
    let server = Server::start(&db, &[]);
    // No read has run yet: no reader is open.
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.clone().into_os_string();
        path.push(suffix);
        let _ = std::fs::remove_file(&path);
    }
    let mut client = Client::connect(server.addr);
    let reply = client.cmd(&format!("LOGIN nobody {PW}"));
    assert!(reply.starts_with("ERR "), "{reply}");
    assert!(!db.exists(), "a reader created {}", db.display());
}
