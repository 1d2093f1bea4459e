//! A pipelining client that the server has paused (its own `QUEUE_HIGH` backpressure)
//! keeps its connection while its commands complete: the idle timeout is for clients
//! that are silent, not for one whose heartbeats the server is not reading meanwhile.
//!
//! `docs/bank-protocol.md`: "any command (such as `PING`) resets the timer", and "A client
//! that pipelines faster than its commands complete is paused (the server stops reading
//! from it) while 4096 commands wait, and resumed when they drain ... nothing is dropped".
//! Before the fix (found by a review helper) the idle timer was refreshed only when a
//! command was read, which does not happen while reading is paused: a backlog that took
//! longer than the timeout to drain was cut off, the commands already read unanswered.
//! A finished command, and replies taken while commands wait, now count as activity.

mod common;

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{ok_number, Client, Server, TempDir, PW};

/// The server's idle timeout, in seconds.
const IDLE_SECS: u64 = 2;
/// After each deposit commits, the test takes SQLite's write lock for this long (the
/// server's writer waits; its busy timeout is 10 s): so the next deposit completes about
/// this much later (plus SQLite's busy-handler poll, at most 100 ms), well inside the idle
/// timeout. The connection makes progress all along, just not fast.
const LOCK_HOLD: Duration = Duration::from_millis(600);
/// Groups of one `DEPOSIT` and `PINGS` `PING`s, pipelined in one write (8010 commands:
/// past QUEUE_HIGH, 4096, so the server stops reading until fewer than 1024 wait).
const GROUPS: usize = 10;
const PINGS: usize = 800;

#[test]
fn a_paused_client_whose_commands_are_progressing_is_not_evicted_as_idle() {
    let dir = TempDir::new("paused-idle");
    let db = dir.join("bank.db");
    let server = Server::start(&db, &["--idle-timeout", &IDLE_SECS.to_string()]);
    let mut c = Client::logged_in(server.addr, "piper");

    // Slow the writes down, steadily: each deposit is followed by a lock hold.
    let stop_lock = Arc::new(AtomicBool::new(false));
    let locker = {
        let (db, stop) = (db.clone(), stop_lock.clone());
        thread::spawn(move || {
            let lock = rusqlite::Connection::open(&db).expect("open the bank database");
            lock.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut seen = 0;
            while !stop.load(Ordering::SeqCst) {
                let balance: i64 = lock
                    .query_row("SELECT balance FROM users WHERE name = 'piper'", [], |r| {
                        r.get(0)
                    })
                    .unwrap();
                if balance > seen {
                    seen = balance;
                    lock.execute_batch("BEGIN IMMEDIATE")
                        .expect("take the write lock");
                    thread::sleep(LOCK_HOLD);
                    lock.execute_batch("ROLLBACK").unwrap();
                } else {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };

    // All in one write: the server reads it all, queues it, and stops reading.
    let mut burst = String::new();
    for _ in 0..GROUPS {
        burst.push_str("DEPOSIT 1\n");
        burst.push_str(&"PING\n".repeat(PINGS));
    }
    c.send(burst.as_bytes());

    // Meanwhile a heartbeat every 200 ms, as a well-behaved client would.
    let stop_beat = Arc::new(AtomicBool::new(false));
    let beats = Arc::new(AtomicUsize::new(0));
    let beater = {
        let mut w = c.stream().try_clone().unwrap();
        let (stop, beats) = (stop_beat.clone(), beats.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(200));
                if w.write_all(b"PING\n").is_err() {
                    break;
                }
                beats.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    // Read the replies as they come, in order.
    let mut answered = 0;
    let mut acked_deposits = 0;
    'groups: for g in 0..GROUPS {
        let Some(line) = c.try_line() else {
            break 'groups;
        };
        assert_eq!(
            ok_number(&line),
            Some(g as i64 + 1),
            "deposit {g}: {line:?}"
        );
        answered += 1;
        acked_deposits += 1;
        for _ in 0..PINGS {
            let Some(line) = c.try_line() else {
                break 'groups;
            };
            assert_eq!(line, "PONG");
            answered += 1;
        }
    }
    stop_beat.store(true, Ordering::SeqCst);
    beater.join().unwrap();
    let mut heartbeats_answered = 0;
    if answered == GROUPS * (PINGS + 1) {
        for _ in 0..beats.load(Ordering::SeqCst) {
            match c.try_line() {
                Some(line) => {
                    assert_eq!(line, "PONG");
                    heartbeats_answered += 1;
                }
                None => break,
            }
        }
    }
    stop_lock.store(true, Ordering::SeqCst);
    locker.join().unwrap();

    // What reached the database, for the message.
    let mut check = Client::connect(server.addr);
    assert_eq!(check.cmd(&format!("LOGIN piper {PW}")), "OK welcome piper");
    let balance = check.balance();

    assert_eq!(
        answered,
        GROUPS * (PINGS + 1),
        "the connection was closed after {answered} of {} replies ({acked_deposits} \
         deposits acknowledged, balance now {balance}) although the client sent a \
         heartbeat every 200 ms, read every reply, and a deposit completed at least every \
         ~{} ms: the server evicted it as idle ({IDLE_SECS} s) while it was itself not \
         reading from it (paused at 4096 queued commands)",
        GROUPS * (PINGS + 1),
        LOCK_HOLD.as_millis()
    );
    assert_eq!(heartbeats_answered, beats.load(Ordering::SeqCst));
    assert_eq!(balance, GROUPS as i64);
}
