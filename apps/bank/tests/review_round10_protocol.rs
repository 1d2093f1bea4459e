//! Review round 10 of the bank app's protocol, server and SQLite store: combinations the
//! earlier rounds did not make. A transfer to a name holding a NUL byte (the payee is not
//! validated, "an invalid name is no user"), with and without a request id, between other
//! writes of one batch, on both backends; pipelined commands of every kind (CRLF and LF,
//! blank lines, NUL bytes, non-UTF-8, a line of exactly 1024 bytes) sent a byte at a time
//! by a client that half-closes after the last one; SIGTERM while half-closed clients'
//! transfers with request ids are queued to the writer, then every one retried after a
//! restart; amounts and `HISTORY` counts at their limits; and `kill -9` right after an
//! `OK`, restarted on the same file.

#[macro_use]
mod common;

use std::io::Write;
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use common::{ok_number, read_by_server, Backend, Client, Server, TempDir, TestDb, PW};
use duo_testkit::{join_within, LIMIT};

on_both_backends! {
    a_transfer_to_a_name_with_a_nul_byte_is_no_such_user,
}

fn code(reply: &str) -> &str {
    reply
        .strip_prefix("ERR ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or(reply)
}

/// The payee of a `TRANSFER` is not validated: a name no user can have is no user. One
/// holding a NUL byte (valid UTF-8, so it parses) got `NO_SUCH_USER` on SQLite but
/// `ERR INTERNAL` on PostgreSQL (text cannot hold a NUL: the whole `bank_apply` call
/// failed, and every write of the batch, other clients' too, was applied again one per
/// call). It is `NO_SUCH_USER` on both now, answered without the database.
fn a_transfer_to_a_name_with_a_nul_byte_is_no_such_user(backend: Backend) {
    let Some(db) = TestDb::new(backend, "nulpayee") else {
        return;
    };
    let server = db.start(&[]);
    let _bob = Client::logged_in(server.addr, "bob");
    let mut alice = Client::logged_in(server.addr, "alice");
    assert_eq!(alice.cmd("DEPOSIT 100"), "OK 100");
    // One burst: one write job, one batch.
    alice.send(
        b"DEPOSIT 1\nTRANSFER bob\0 5\nTRANSFER bob\0x 5 nul-1\nTRANSFER bob 5 nul-2\nDEPOSIT 1\n",
    );
    let replies: Vec<String> = (0..5).map(|_| alice.line()).collect();
    assert_eq!(replies[0], "OK 101", "{replies:?}");
    assert_eq!(code(&replies[1]), "NO_SUCH_USER", "{replies:?}");
    assert_eq!(code(&replies[2]), "NO_SUCH_USER", "{replies:?}");
    assert_eq!(replies[3], "OK 96", "{replies:?}");
    assert_eq!(replies[4], "OK 97", "{replies:?}");
    // Alone, and retried with its request id: the first outcome again.
    alice.send(b"TRANSFER \0 5\n");
    assert_eq!(code(&alice.line()), "NO_SUCH_USER");
    alice.send(b"TRANSFER bob\0x 5 nul-1\n");
    assert_eq!(code(&alice.line()), "NO_SUCH_USER");
    // Refused before the database, like an invalid amount: nothing was recorded under
    // its id, which is free for a transfer that runs.
    assert_eq!(alice.cmd("TRANSFER bob 5 nul-1"), "OK 92");
    assert_eq!(alice.cmd("TRANSFER bob 5 nul-1"), "OK 92");
    assert_eq!(alice.balance(), 92);
    // Before a login, the login is what is missing.
    let mut anon = Client::connect(server.addr);
    anon.send(b"TRANSFER bob\0 5\n");
    assert_eq!(code(&anon.line()), "NOT_AUTHENTICATED");
}

/// Sends `bytes` one byte per write (each its own segment: `TCP_NODELAY`), with the
/// server reading them as they come.
fn trickle(c: &mut Client, bytes: &[u8]) {
    for b in bytes {
        c.send(std::slice::from_ref(b));
    }
}

#[test]
fn every_kind_of_line_trickled_then_half_closed_is_answered_in_order() {
    let dir = TempDir::new("r10-trickle");
    let server = Server::start(&dir.join("bank.db"), &[]);
    let _bob = Client::logged_in(server.addr, "bob");
    let mut c = Client::connect(server.addr);
    let exact = format!("PING{}", " ".repeat(1020));
    assert_eq!(exact.len(), 1024);
    let mut input: Vec<u8> = Vec::new();
    input.extend_from_slice(format!("REGISTER carol {PW}\r\n").as_bytes());
    input.extend_from_slice(b"BALANCE\n");
    input.extend_from_slice(format!("login carol {PW}\r\n").as_bytes());
    input.extend_from_slice(b"\r\n\n \t \r\n");
    input.extend_from_slice(b"DEPOSIT +0001000\r\n");
    input.extend_from_slice(b"PI\0NG\n");
    input.extend_from_slice(b"WITHDRAW \xff\xfe\n");
    input.extend_from_slice(b"TRANSFER bob 10 id-1\r\n");
    input.extend_from_slice(b"TRANSFER bob 10 id-1\n");
    input.extend_from_slice(b"TRANSFER bob 11 id-1\n");
    input.extend_from_slice(exact.as_bytes());
    input.extend_from_slice(b"\r\n");
    input.extend_from_slice(b"HISTORY 2\r\n");
    input.extend_from_slice(b"PING\r\r\n");
    input.extend_from_slice(b"BALANCE\n");
    trickle(&mut c, &input);
    c.stream().shutdown(Shutdown::Write).unwrap();
    let got = String::from_utf8(c.expect_closed(LIMIT)).unwrap();
    let lines: Vec<&str> = got.lines().collect();
    let want_prefix = [
        "OK registered",
        "ERR NOT_AUTHENTICATED",
        "OK welcome carol",
        "OK 1000",
        "ERR UNKNOWN_COMMAND",
        "ERR BAD_REQUEST",
        "OK 990",
        "OK 990",
        "ERR BAD_REQUEST",
        "PONG",
        "OK 2",
    ];
    assert!(lines.len() == want_prefix.len() + 4, "{got}");
    for (i, want) in want_prefix.iter().enumerate() {
        assert!(lines[i].starts_with(want), "reply {i}: {got}");
    }
    assert!(lines[11].contains(" transfer_out bob -10 990 "), "{got}");
    assert!(lines[12].contains(" deposit - +1000 1000 "), "{got}");
    assert!(lines[13].starts_with("ERR UNKNOWN_COMMAND"), "{got}");
    assert_eq!(lines[14], "OK 990", "{got}");
}

#[test]
fn amounts_and_history_counts_at_their_limits() {
    let dir = TempDir::new("r10-limits");
    let server = Server::start(&dir.join("bank.db"), &[]);
    let mut c = Client::logged_in(server.addr, "alice");
    let _bob = Client::logged_in(server.addr, "bob");
    for bad in [
        "0",
        "-1",
        "+0",
        "000",
        "1000000000001",
        "+",
        "++5",
        "+-5",
        "5.0",
        "1e3",
        "0x10",
        "99999999999999999999999",
        "١",
    ] {
        assert_eq!(
            code(&c.cmd(&format!("DEPOSIT {bad}"))),
            "INVALID_AMOUNT",
            "{bad}"
        );
        assert_eq!(
            code(&c.cmd(&format!("TRANSFER bob {bad} lim-{}", bad.len()))),
            "INVALID_AMOUNT",
            "{bad}"
        );
    }
    assert_eq!(c.cmd("DEPOSIT 1"), "OK 1");
    assert_eq!(c.cmd("DEPOSIT 1000000000000"), "OK 1000000000001");
    assert_eq!(
        c.cmd("DEPOSIT +000000000000000000000000007"),
        "OK 1000000000008"
    );
    assert_eq!(c.cmd("TRANSFER bob 1000000000000 big"), "OK 8");
    // A refused id with invalid amount was not recorded: the id is free.
    assert_eq!(c.cmd("TRANSFER bob 1 lim-1"), "OK 7");
    assert_eq!(c.cmd("WITHDRAW 7"), "OK 0");
    for n in ["0", "1001", "-1", "x", "1 2"] {
        assert_eq!(
            code(&c.cmd(&format!("HISTORY {n}"))),
            "BAD_REQUEST",
            "HISTORY {n}"
        );
    }
    // 1001 entries in all: HISTORY 1000 gives the newest 1000, newest first.
    let burst = "DEPOSIT 1\n".repeat(995);
    c.send(burst.as_bytes());
    for i in 0..995 {
        assert_eq!(c.line(), format!("OK {}", i + 1));
    }
    assert_eq!(c.history(1).len(), 1);
    let all = c.history(1000);
    assert_eq!(all.len(), 1000);
    let ids: Vec<i64> = all
        .iter()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
    // The oldest entry (DEPOSIT 1) is the one left out.
    assert!(
        all[999].contains(" deposit - +1000000000000 "),
        "{}",
        all[999]
    );
    assert_eq!(c.history(10).len(), 10);
    assert_eq!(c.cmd("HISTORY"), "OK 10");
}

/// Several clients pipeline transfers with request ids, half-close, and the server gets
/// SIGTERM while their batches are queued to the writer. Each gets replies in order, then
/// the end of stream. After a restart, every transfer retried with its id: those answered
/// replay their answer, the rest (if any were not answered) run now, once.
#[test]
fn sigterm_with_half_closed_transfers_queued_then_retried_after_a_restart() {
    let dir = TempDir::new("r10-term");
    let db = dir.join("bank.db");
    let mut server = Server::start(&db, &["--workers", "2"]);
    const USERS: usize = 4;
    const N: usize = 150;
    let _sink = Client::logged_in(server.addr, "sink");
    let mut clients: Vec<Client> = (0..USERS)
        .map(|i| {
            let mut c = Client::logged_in(server.addr, &format!("payer{i}"));
            assert_eq!(c.cmd("DEPOSIT 100000"), "OK 100000");
            c
        })
        .collect();
    for c in &mut clients {
        let mut burst = String::new();
        for k in 0..N {
            burst.push_str(&format!("TRANSFER sink {} t{k}\n", k + 1));
        }
        c.send(burst.as_bytes());
        c.stream().shutdown(Shutdown::Write).unwrap();
    }
    for c in &clients {
        read_by_server(server.addr, c.stream());
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            thread::spawn(move || {
                let got = c.expect_closed(LIMIT);
                String::from_utf8(got).unwrap()
            })
        })
        .collect();
    let (status, took) = server.signal_and_wait("TERM", Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    let answers: Vec<Vec<String>> = readers
        .into_iter()
        .map(|r| {
            join_within("a client", r)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .collect();
    // Every command was read before the signal: every one is answered, in order.
    let mut total = 0;
    for (i, lines) in answers.iter().enumerate() {
        assert_eq!(lines.len(), N, "payer{i}: {lines:?}");
        let mut balance = 100000;
        for (k, line) in lines.iter().enumerate() {
            balance -= k as i64 + 1;
            assert_eq!(*line, format!("OK {balance}"), "payer{i} t{k}");
        }
        total += 100000 - balance;
    }
    let server = Server::start(&db, &[]);
    for (i, lines) in answers.iter().enumerate() {
        let mut c = Client::connect(server.addr);
        assert_eq!(
            c.cmd(&format!("LOGIN payer{i} {PW}")),
            format!("OK welcome payer{i}")
        );
        for (k, line) in lines.iter().enumerate() {
            assert_eq!(c.cmd(&format!("TRANSFER sink {} t{k}", k + 1)), *line);
        }
    }
    let mut sink = Client::connect(server.addr);
    assert_eq!(sink.cmd(&format!("LOGIN sink {PW}")), "OK welcome sink");
    assert_eq!(sink.balance(), total);
}

/// An `OK` means on disk: the server is killed (SIGKILL) the moment a client has read
/// the reply to a pipelined batch of writes (a registration, deposits, transfers with
/// ids); restarted on the same file, everything acknowledged is there, and the retried
/// transfers replay.
#[test]
fn kill_9_right_after_an_ok_loses_nothing_acknowledged() {
    let dir = TempDir::new("r10-kill9");
    let db = dir.join("bank.db");
    for round in 0..3 {
        let mut server = Server::start(&db, &[]);
        let user = format!("k{round}");
        let mut c = Client::connect(server.addr);
        assert_eq!(c.cmd(&format!("REGISTER {user} {PW}")), "OK registered");
        let _peer = Client::logged_in(server.addr, &format!("p{round}"));
        let mut burst = format!("LOGIN {user} {PW}\n");
        for k in 0..50 {
            burst.push_str(&format!("DEPOSIT 10\nTRANSFER p{round} 3 r{k}\n"));
        }
        c.send(burst.as_bytes());
        assert_eq!(c.line(), format!("OK welcome {user}"));
        let mut last = 0;
        for _ in 0..100 {
            last = ok_number(&c.line()).unwrap();
        }
        server.kill9();
        let server = Server::start(&db, &[]);
        let mut again = Client::connect(server.addr);
        assert_eq!(
            again.cmd(&format!("LOGIN {user} {PW}")),
            format!("OK welcome {user}")
        );
        assert_eq!(again.balance(), last, "round {round}");
        assert_eq!(
            again.cmd(&format!("TRANSFER p{round} 3 r49")),
            format!("OK {last}")
        );
        assert_eq!(again.history(1000).len(), 100);
    }
}

/// A client logs in twice with writes in flight between: every write acts on the account
/// logged in when it was sent; one that logs in as a user that does not exist is logged
/// out for the writes behind it, even while earlier writes are still committing.
#[test]
fn relogins_between_pipelined_transfers_with_the_same_request_id() {
    let dir = TempDir::new("r10-relogin");
    let server = Server::start(&dir.join("bank.db"), &[]);
    for u in ["alice", "bob", "carol"] {
        let mut c = Client::logged_in(server.addr, u);
        assert_eq!(c.cmd("DEPOSIT 100"), "OK 100");
    }
    let mut c = Client::logged_in(server.addr, "alice");
    let burst = format!(
        "TRANSFER carol 10 same\nLOGIN bob {PW}\nTRANSFER carol 10 same\nTRANSFER carol 20 same\n\
         LOGIN nobody {PW}\nTRANSFER carol 10 other\nLOGIN alice {PW}\nTRANSFER carol 10 same\n"
    );
    c.send(burst.as_bytes());
    let replies: Vec<String> = (0..8).map(|_| c.line()).collect();
    assert_eq!(replies[0], "OK 90", "{replies:?}");
    assert_eq!(replies[1], "OK welcome bob", "{replies:?}");
    assert_eq!(replies[2], "OK 90", "ids are per user: {replies:?}");
    assert_eq!(code(&replies[3]), "BAD_REQUEST", "{replies:?}");
    assert_eq!(code(&replies[4]), "AUTH_FAILED", "{replies:?}");
    assert_eq!(code(&replies[5]), "NOT_AUTHENTICATED", "{replies:?}");
    assert_eq!(replies[6], "OK welcome alice", "{replies:?}");
    assert_eq!(replies[7], "OK 90", "a replay: {replies:?}");
    c.stream().write_all(b"BALANCE\n").unwrap();
    assert_eq!(c.line(), "OK 90");
    let mut carol = Client::logged_in(server.addr, "carol");
    assert_eq!(carol.balance(), 120);
}
