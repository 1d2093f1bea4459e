//! A review of the bank's protocol handling and sessions on its SQLite backend against
//! `docs/bank-protocol.md` (round 8). Against the real binary over TCP.

mod common;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use common::{Client, Server, TempDir, REPLY_TIMEOUT};

/// The server's idle timeout in these tests, in seconds.
const IDLE_SECS: u64 = 1;
/// How long the test holds SQLite's write lock while a command of the client waits for
/// it: three idle timeouts (the server's writer waits up to its 10 s busy timeout).
const HOLD: Duration = Duration::from_secs(3 * IDLE_SECS);

/// "Heartbeat and idle eviction": "While the server is working through a client's
/// pipelined commands ... a client is not evicted in the middle of its backlog." A
/// command the server takes longer than the idle timeout to answer (here a `DEPOSIT`
/// waiting for the database's write lock, which another program holds; a long worker
/// queue does the same) closed its connection as idle: the client, waiting for its
/// reply with a `BALANCE` queued behind it, saw the end of stream, and the deposit was
/// then committed all the same, acknowledged to nobody. The client is not idle while
/// the server works on its command; a client that is silent once answered still is.
#[test]
fn a_command_slower_than_the_idle_timeout_keeps_its_connection() {
    let dir = TempDir::new("r8-slow-command");
    let db = dir.join("bank.db");
    let server = Server::start(&db, &["--idle-timeout", &IDLE_SECS.to_string()]);
    let mut c = Client::logged_in(server.addr, "patient");

    let lock = rusqlite::Connection::open(&db).expect("open the bank database");
    lock.execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    c.send(b"DEPOSIT 5\nBALANCE\n");

    // While the lock is held nothing may come back, not even the end of stream.
    c.stream().set_read_timeout(Some(HOLD)).unwrap();
    let mut byte = [0u8; 1];
    let waited = Instant::now();
    match c.stream().peek(&mut byte) {
        Ok(0) => panic!(
            "the connection was closed as idle after {:?} while its DEPOSIT waited",
            waited.elapsed()
        ),
        Ok(_) => panic!("a reply came while the write lock was held"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Err(e) => panic!(
            "the connection failed after {:?} while its DEPOSIT waited: {e}",
            waited.elapsed()
        ),
    }
    lock.execute_batch("ROLLBACK").unwrap();
    c.stream().set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    assert_eq!(c.line(), "OK 5", "the deposit");
    assert_eq!(c.line(), "OK 5", "the balance behind it");

    // Answered and silent: evicted as before, within the timeout and a tick or so.
    let silent = Instant::now();
    let rest = c.expect_closed(Duration::from_secs(5 * IDLE_SECS));
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(
        silent.elapsed() < Duration::from_secs(3 * IDLE_SECS),
        "a silent client was evicted only after {:?}",
        silent.elapsed()
    );
}
