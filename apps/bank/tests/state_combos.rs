//! Combinations of connection and server states that the other suites test one at a time
//! (`matrix.rs` has more): a slow but steady reader x the server's read pause (`QUEUE_HIGH`)
//! x its output hold (`OUTPUT_HIGH`) x the idle timeout, with and without a half-close; a
//! pipelined backlog longer than the idle timeout; `QUIT` behind replies a client reads
//! late; amounts at the largest balance inside one group-committed batch. Each test names
//! the states it combines.

#[macro_use]
mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Client, Server, TempDir, PW};
use duo_sys::socket2::{Domain, SockAddr, SockRef, Socket, Type};

/// The idle timeout of the servers whose clients are slow but steady (`--idle-timeout`).
const IDLE: &str = "2";
/// How long those clients take their replies slowly: past the idle timeout and its wheel's
/// tick (1/8 of it), with a margin.
const SLOW: Duration = Duration::from_millis(3500);

/// A connection whose receive buffer is small (16 KiB asked; the kernel doubles it): what
/// the client has not read stays on the server's side, and every few KiB it reads open its
/// window, which the server sees. [`widen`] it for bulk reads.
fn connect_small_window(addr: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(16 << 10).expect("SO_RCVBUF");
    s.connect_timeout(&SockAddr::from(addr), Duration::from_secs(5))
        .expect("connect to bank");
    let stream: TcpStream = s.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads from `stream` into `got` until `lines` line ends have arrived, the stream ends or
/// `limit` passes; whether they all arrived.
/// Gives the connection a large receive buffer: a small one makes a bulk read wait for a
/// delayed acknowledgement every window.
fn widen(stream: &TcpStream) {
    SockRef::from(stream)
        .set_recv_buffer_size(4 << 20)
        .expect("SO_RCVBUF");
}

fn read_lines(stream: &mut TcpStream, got: &mut Vec<u8>, lines: usize, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    let mut buf = vec![0; 64 << 10];
    let mut seen = bytecount(got);
    while seen < lines {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                seen += bytecount(&buf[..n]);
                got.extend_from_slice(&buf[..n]);
            }
        }
    }
    true
}

fn bytecount(b: &[u8]) -> usize {
    b.iter().filter(|&&c| c == b'\n').count()
}

/// Ledger entries of the slow reader's account, transfers from a payer with a 32-character
/// name: each `HISTORY 1000` reply is about 69 KB.
const ENTRIES: usize = 1000;
/// `HISTORY 1000` commands the slow reader pipelines: about 5.5 MB of replies, past what
/// the kernel buffers for the connection (its send buffer grows to 4 MiB) plus the
/// server's `OUTPUT_HIGH` (256 KiB).
const HISTORIES: usize = 80;

/// Registers `user` with [`ENTRIES`] transfers of 1 cent from a payer with a 32-character
/// name, and logs in on a small-window connection.
fn history_account(server: &Server, user: &str) -> TcpStream {
    drop(Client::logged_in(server.addr, user));
    let payer: String = format!("{user}_payer_{}", "x".repeat(32))
        .chars()
        .take(32)
        .collect();
    let mut setup = Client::logged_in(server.addr, &payer);
    assert_eq!(
        setup.cmd(&format!("DEPOSIT {ENTRIES}")),
        format!("OK {ENTRIES}")
    );
    setup.send(format!("TRANSFER {user} 1\n").repeat(ENTRIES).as_bytes());
    for i in 0..ENTRIES {
        assert_eq!(setup.line(), format!("OK {}", ENTRIES - i - 1));
    }
    drop(setup);
    logged_in_small_window(server, user)
}

/// A small-window connection logged in as `user`.
fn logged_in_small_window(server: &Server, user: &str) -> TcpStream {
    let mut s = connect_small_window(server.addr);
    s.write_all(format!("LOGIN {user} {PW}\n").as_bytes())
        .unwrap();
    let mut got = Vec::new();
    assert!(read_lines(&mut s, &mut got, 1, Duration::from_secs(10)));
    assert_eq!(got, format!("OK welcome {user}\n").as_bytes());
    s
}

/// The slow reader: an account of [`history_account`], pipelines [`HISTORIES`] `HISTORY 1000` and `pings` `PING`s in
/// one write, reads its replies at about 64 KB/s for `slow` (a read every 62 ms, well
/// inside the idle timeout), then reads the rest at full speed. With `half_close` it
/// half-closes right after its commands, and expects the end of stream after the last
/// reply; otherwise it checks that the connection still answers. Returns the bytes it got
/// and whether every reply arrived (and then the end of stream, or the connection is
/// still open).
fn slow_reader(
    server: &Server,
    user: &str,
    pings: usize,
    slow: Duration,
    half_close: bool,
) -> (Vec<u8>, bool) {
    let mut s = history_account(server, user);
    let mut got = Vec::new();
    let mut burst = "HISTORY 1000\n".repeat(HISTORIES);
    burst.push_str(&"PING\n".repeat(pings));
    s.write_all(burst.as_bytes()).unwrap();
    if half_close {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }

    // The slow phase: 4 KiB every 62 ms.
    let start = Instant::now();
    let mut buf = [0; 4 << 10];
    while start.elapsed() < slow {
        std::thread::sleep(Duration::from_millis(62));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return (got, false),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    widen(&s);
    let lines = HISTORIES * (ENTRIES + 1) + pings;
    let all = read_lines(&mut s, &mut got, lines, Duration::from_secs(20));
    if half_close {
        // Then the end of stream.
        let mut rest = Vec::new();
        let ended = all && s.read_to_end(&mut rest).is_ok() && rest.is_empty();
        return (got, ended);
    }
    // And the connection is still there.
    let open = all
        && s.write_all(b"PING\n").is_ok()
        && read_lines(&mut s, &mut got, lines + 1, Duration::from_secs(5));
    if open {
        assert!(got.ends_with(b"\nPONG\n"));
        got.truncate(got.len() - 5);
    }
    (got, open)
}

/// Checks the slow reader's replies: the histories, then the pongs, in order.
fn check_replies(got: &[u8], pings: usize) {
    let text = String::from_utf8_lossy(got);
    let mut lines = text.lines();
    for h in 0..HISTORIES {
        assert_eq!(lines.next(), Some("OK 1000"), "history {h}");
        for _ in 0..ENTRIES {
            assert!(lines.next().is_some_and(|l| l.contains(" transfer_in ")));
        }
    }
    for _ in 0..pings {
        assert_eq!(lines.next(), Some("PONG"));
    }
    assert_eq!(lines.next(), None);
}

/// `OUTPUT_HIGH` x `QUEUE_HIGH` x idle timeout x a slow reader. The client pipelines more
/// than 4096 commands, so the server stops reading from it; their replies pass the 256 KiB
/// mark, so the server starts no command until they drain; and the client takes them
/// slowly but steadily, longer than the idle timeout. It is receiving replies the whole
/// time, so it is not idle; before the fix nothing refreshed
/// its idle timer in that state (no command is read, none completes, and the output never
/// empties for a write-complete): it was evicted with thousands of commands unanswered.
#[test]
fn a_paused_client_draining_replies_slowly_past_output_high_is_not_evicted() {
    let dir = TempDir::new("combo-drain-paused");
    let server = Server::start(&dir.join("bank.db"), &["--idle-timeout", IDLE]);
    let pings = 4500; // with the histories, past QUEUE_HIGH (4096): reading pauses
    let (got, all) = slow_reader(&server, "drainer", pings, SLOW, false);
    assert!(
        all,
        "the connection ended after {} reply lines of {}: the server evicted a client as \
         idle (2 s) while it was taking its replies, 4 KiB every 62 ms",
        bytecount(&got),
        HISTORIES * (ENTRIES + 1) + pings
    );
    check_replies(&got, pings);
}

/// `QUEUE_HIGH` x `OUTPUT_HIGH` x a slow reader x idle timeout, and a half-close right after
/// the commands (which the server sees only once it reads again): every reply, then the
/// end of stream.
#[test]
fn a_half_closed_paused_client_draining_slowly_gets_every_reply_then_the_end() {
    let dir = TempDir::new("combo-drain-half");
    let server = Server::start(&dir.join("bank.db"), &["--idle-timeout", IDLE]);
    let pings = 4500;
    let (got, all) = slow_reader(&server, "closer", pings, SLOW, true);
    assert!(
        all,
        "after {} reply lines of {}, the connection ended early or stayed open: a client \
         that half-closed after its commands and takes its replies slowly must get them \
         all, then the end of stream",
        bytecount(&got),
        HISTORIES * (ENTRIES + 1) + pings
    );
    check_replies(&got, pings);
}

/// As the paused one, without `QUEUE_HIGH`: the client pipelines only its histories (the server
/// keeps reading from it) and then waits for them. Their replies pass `OUTPUT_HIGH`, so
/// the server holds the rest of its commands back while it takes them slowly: its
/// commands are waiting for the server, not the other way round.
#[test]
fn a_reading_client_draining_replies_slowly_past_output_high_is_not_evicted() {
    let dir = TempDir::new("combo-drain-reading");
    let server = Server::start(&dir.join("bank.db"), &["--idle-timeout", IDLE]);
    let (got, all) = slow_reader(&server, "sipper", 0, SLOW, false);
    assert!(
        all,
        "the connection ended after {} reply lines of {}: the server evicted a client as \
         idle (2 s) while its commands waited for it and it was taking their replies",
        bytecount(&got),
        HISTORIES * (ENTRIES + 1)
    );
    check_replies(&got, 0);
}

/// Pipelining x idle timeout, neither paused nor held back by its output: the client
/// sends its commands in one write and waits for the replies, which come steadily (each
/// write is slowed by a lock the test takes on the SQLite file after every deposit) but
/// all together take longer than the idle timeout. `docs/bank-protocol.md`: "While the
/// server is working through a client's pipelined commands (and may have stopped reading
/// from it), each command it completes ... counts as activity"; before the fix only a
/// paused client's completions did, so this one was evicted halfway.
#[test]
fn a_pipelined_backlog_completing_steadily_outlasts_the_idle_timeout() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const ROUNDS: i64 = 10;
    const READS: usize = 200;
    let dir = TempDir::new("combo-backlog");
    let db = dir.join("bank.db");
    let server = Server::start(&db, &["--idle-timeout", IDLE]);
    let mut c = Client::logged_in(server.addr, "pacer");

    // The test holds SQLite's write lock, and lets it go for one deposit at a time: it
    // takes it again as soon as the deposit has committed, and holds it 300 ms. So a
    // deposit completes about every 300 ms (plus the busy handler's poll), well inside
    // the idle timeout.
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let locker = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let lock = rusqlite::Connection::open(&db).expect("open the bank database");
            lock.busy_timeout(Duration::from_secs(10)).unwrap();
            let balance = || -> i64 {
                lock.query_row("SELECT balance FROM users WHERE name = 'pacer'", [], |r| {
                    r.get(0)
                })
                .unwrap()
            };
            lock.execute_batch("BEGIN IMMEDIATE").unwrap();
            ready_tx.send(()).unwrap();
            let mut seen = 0;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(300));
                lock.execute_batch("ROLLBACK").unwrap();
                while balance() == seen && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                seen = balance();
                lock.execute_batch("BEGIN IMMEDIATE").unwrap();
            }
            lock.execute_batch("ROLLBACK").unwrap();
        })
    };
    ready.recv_timeout(Duration::from_secs(10)).unwrap();
    // Each deposit followed by reads (jobs too, some ms together), so that the locker
    // takes the lock before the next deposit does.
    let round = format!("DEPOSIT 1\n{}", "BALANCE\n".repeat(READS));
    let start = Instant::now();
    c.send(round.repeat(ROUNDS as usize).as_bytes());
    let mut replies = Vec::new();
    for _ in 0..ROUNDS as usize * (1 + READS) {
        match c.try_line() {
            Some(line) => replies.push(line),
            None => break,
        }
    }
    stop.store(true, Ordering::SeqCst);
    locker.join().unwrap();
    let expected: Vec<String> = (1..=ROUNDS)
        .flat_map(|b| vec![format!("OK {b}"); 1 + READS])
        .collect();
    assert_eq!(
        replies,
        expected,
        "the connection was closed after {} of {} replies: evicted as idle (2 s) in the \
         middle of its pipelined backlog, a command completing at least every ~0.4 s",
        replies.len(),
        expected.len()
    );
    assert!(
        start.elapsed() > Duration::from_millis(2600),
        "the backlog took {:?}: the locker did not pace it past the idle timeout",
        start.elapsed()
    );
}

on_both_backends! {
    balances_at_the_i64_limit_refuse_what_would_overflow,
}

/// Amounts near the largest balance (2^63-1 cents) x a pipelined batch: transfers and a
/// deposit to an account 5 cents below the limit, in one group-committed write job, each
/// checked against the balance the earlier ones of the batch left.
fn balances_at_the_i64_limit_refuse_what_would_overflow(backend: common::Backend) {
    let Some(db) = common::TestDb::new(backend, "combo-i64") else {
        return;
    };
    let server = db.start(&[]);
    let mut rich = Client::logged_in(server.addr, "rich");
    let mut payer = Client::logged_in(server.addr, "payer");
    assert_eq!(payer.cmd("DEPOSIT 100"), "OK 100");
    let near = i64::MAX - 5;
    let sql = format!("UPDATE users SET balance = {near} WHERE name = 'rich'");
    match backend {
        common::Backend::Sqlite => {
            let c = rusqlite::Connection::open(db.arg()).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            c.execute_batch(&sql).unwrap();
        }
        common::Backend::Postgres => {
            db.psql(&sql);
        }
    }
    assert_eq!(rich.balance(), near);
    payer.send(b"TRANSFER rich 3 t1\nTRANSFER rich 3 t2\nTRANSFER rich 2 t3\nTRANSFER rich 3 t2\nBALANCE\n");
    let replies: Vec<String> = (0..5).map(|_| payer.line()).collect();
    assert_eq!(replies[0], "OK 97");
    assert!(replies[1].starts_with("ERR INVALID_AMOUNT "), "{replies:?}");
    assert_eq!(replies[2], "OK 95");
    assert_eq!(replies[3], replies[1], "a replay of the refusal");
    assert_eq!(replies[4], "OK 95");
    assert_eq!(rich.balance(), i64::MAX);
    assert!(rich.cmd("DEPOSIT 1").starts_with("ERR INVALID_AMOUNT "));
    assert_eq!(
        rich.cmd(&format!("WITHDRAW {}", 1_000_000_000_000i64)),
        format!("OK {}", i64::MAX - 1_000_000_000_000)
    );
    let h = rich.history(3);
    assert!(h[0].contains(" withdraw - -1000000000000 "), "{h:?}");
    assert!(
        h[1].contains(&format!(" transfer_in payer +2 {} ", i64::MAX)),
        "{h:?}"
    );
    assert!(
        h[2].contains(&format!(" transfer_in payer +3 {} ", near + 3)),
        "{h:?}"
    );
}

/// Pipelining x `QUIT` x a client that reads late: `QUIT` is answered `OK bye` after the
/// replies before it, "then the server closes". Here those replies are a little more than
/// the kernel holds for a connection whose client does not read, so the rest of them (and
/// the `OK bye`) wait in the server's output buffer, and the client is busy for 4 s before
/// it reads (the server needs a second or two to make the replies). It must still get every reply, then the end of stream, as a client that
/// half-closes does. Before the fix the server gave it 2 s (`CLOSE_LINGER`, meant for the
/// peer to close its side after the server's half-close) counted from the moment it took
/// `QUIT`, not from its half-close, and then closed, dropping what it had not written.
///
/// How much the kernel holds depends on its settings (here about 3.7 MB), and `QUIT` is
/// taken only while less than `OUTPUT_HIGH` (256 KiB) waits: so connections with 50, 54
/// and 58 `HISTORY 1000` replies (69 KB each) in front of their `QUIT` run at once, and one
/// of them lands in that window wherever the kernel's capacity lies in 3.2-4 MB.
#[test]
fn a_quit_behind_replies_the_client_reads_late_gets_them_all_then_the_end() {
    let dir = TempDir::new("combo-quit-late");
    let server = Server::start(&dir.join("bank.db"), &[]);
    drop(history_account(&server, "quitter"));
    let counts: Vec<usize> = (50..=58).step_by(4).collect();
    let mut conns: Vec<(usize, TcpStream)> = counts
        .iter()
        .map(|&n| (n, logged_in_small_window(&server, "quitter")))
        .collect();
    for (n, s) in &mut conns {
        let mut burst = "HISTORY 1000\n".repeat(*n);
        burst.push_str("QUIT\n");
        s.write_all(burst.as_bytes()).unwrap();
    }
    std::thread::sleep(Duration::from_secs(4));
    let readers: Vec<_> = conns
        .into_iter()
        .map(|(n, mut s)| {
            std::thread::spawn(move || {
                widen(&s);
                let mut got = Vec::new();
                let lines = n * (ENTRIES + 1) + 1;
                let all = read_lines(&mut s, &mut got, lines, Duration::from_secs(10));
                let mut rest = Vec::new();
                let ended = all && s.read_to_end(&mut rest).is_ok() && rest.is_empty();
                (n, got, all && ended)
            })
        })
        .collect();
    for r in readers {
        let (n, got, complete) = r.join().unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(
            complete,
            "{n} histories then QUIT: the connection ended after {} reply lines of {} (the \
             last {:?}), or did not end after OK bye: the server dropped replies it had not \
             written yet when it closed after QUIT",
            bytecount(&got),
            n * (ENTRIES + 1) + 1,
            text.lines().last()
        );
        let mut lines = text.lines();
        for _ in 0..n {
            assert_eq!(lines.next(), Some("OK 1000"));
            for _ in 0..ENTRIES {
                assert!(lines.next().is_some_and(|l| l.contains(" transfer_in ")));
            }
        }
        assert_eq!(lines.next(), Some("OK bye"));
        assert_eq!(lines.next(), None);
    }
}
