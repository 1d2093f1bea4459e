//! Protocol and session states combined: logins, re-logins and failed logins with
//! pipelined commands in flight, one user on two connections, request ids across users,
//! transfers to oneself, amounts at the edges, unknown commands between valid ones, long
//! lines and many tiny commands, `QUIT` with commands pending. On SQLite, against the real
//! binary over TCP.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, Server, TempDir, BANK, PW};
use duo_testkit::finish_within;

/// A server on a fresh SQLite database in `dir`.
fn server(dir: &TempDir, extra: &[&str]) -> Server {
    Server::start(&dir.join("bank.db"), extra)
}

/// Sends `lines` in one write and returns the next `n` reply lines.
fn pipeline(c: &mut Client, lines: &[&str], n: usize) -> Vec<String> {
    let mut bytes = String::new();
    for l in lines {
        bytes.push_str(l);
        bytes.push('\n');
    }
    c.send(bytes.as_bytes());
    (0..n).map(|_| c.line()).collect()
}

/// The error code of `reply` (`ERR <CODE> ...`), or the whole reply if it is no error.
fn code(reply: &str) -> &str {
    reply
        .strip_prefix("ERR ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or(reply)
}

/// Logins, re-logins and writes pipelined in one packet: each command acts on the account
/// of the last successful `LOGIN` before it, writes are not batched across a login.
#[test]
fn pipelined_relogins_switch_accounts_between_writes() {
    let dir = TempDir::new("relogin-pipe");
    let srv = server(&dir, &[]);
    let mut c = Client::connect(srv.addr);
    let a = format!("LOGIN alice {PW}");
    let b = format!("LOGIN bob {PW}");
    let ra = format!("REGISTER alice {PW}");
    let rb = format!("REGISTER bob {PW}");
    let lines = [
        "BALANCE",
        ra.as_str(),
        rb.as_str(),
        a.as_str(),
        "DEPOSIT 5",
        "DEPOSIT 6",
        b.as_str(),
        "DEPOSIT 7",
        "FROB",
        "DEPOSIT 8",
        "TRANSFER alice 3 r1",
        a.as_str(),
        "TRANSFER bob 2 r1",
        "TRANSFER bob 2 r1",
        "BALANCE",
        b.as_str(),
        "TRANSFER alice 3 r1",
        "BALANCE",
    ];
    let replies = pipeline(&mut c, &lines, lines.len());
    let expect = [
        "ERR NOT_AUTHENTICATED",
        "OK registered",
        "OK registered",
        "OK welcome alice",
        "OK 5",
        "OK 11",
        "OK welcome bob",
        "OK 7",
        "ERR UNKNOWN_COMMAND",
        "OK 15",
        "OK 12",
        "OK welcome alice",
        "OK 12",
        "OK 12",
        "OK 12",
        "OK welcome bob",
        "OK 12",
        "OK 14",
    ];
    for (i, (got, want)) in replies.iter().zip(expect).enumerate() {
        assert!(
            got.starts_with(want),
            "reply {i} to {:?}: {got:?}, want {want:?}: {replies:?}",
            lines[i]
        );
    }
}

/// Request ids are per user: the same id used by two users (and by one user on two
/// connections) executes once per user.
#[test]
fn request_ids_are_per_user_across_connections_and_relogins() {
    let dir = TempDir::new("rid-users");
    let srv = server(&dir, &[]);
    let mut a1 = Client::logged_in(srv.addr, "alice");
    let mut a2 = Client::logged_in(srv.addr, "alice");
    let mut b = Client::logged_in(srv.addr, "bob");
    Client::logged_in(srv.addr, "carol");
    assert_eq!(a1.cmd("DEPOSIT 100"), "OK 100");
    assert_eq!(b.cmd("DEPOSIT 100"), "OK 100");
    assert_eq!(a1.cmd("TRANSFER carol 10 same"), "OK 90");
    // The same user on another connection: a retry.
    assert_eq!(a2.cmd("TRANSFER carol 10 same"), "OK 90");
    assert_eq!(code(&a2.cmd("TRANSFER carol 11 same")), "BAD_REQUEST");
    // Another user: its own transfer.
    assert_eq!(b.cmd("TRANSFER carol 10 same"), "OK 90");
    // Re-login on one connection as the other user.
    assert_eq!(a2.cmd(&format!("LOGIN bob {PW}")), "OK welcome bob");
    assert_eq!(a2.cmd("TRANSFER carol 10 same"), "OK 90");
    assert_eq!(a2.cmd("BALANCE"), "OK 90");
    let mut c = Client::connect(srv.addr);
    assert_eq!(c.cmd(&format!("LOGIN carol {PW}")), "OK welcome carol");
    assert_eq!(c.balance(), 20);
}

/// A transfer to oneself is refused, also with a request id, and its retry replays the
/// refusal; amounts at the edges of the range.
#[test]
fn transfers_to_self_and_amount_edges() {
    let dir = TempDir::new("self-amounts");
    let srv = server(&dir, &[]);
    let mut a = Client::logged_in(srv.addr, "alice");
    Client::logged_in(srv.addr, "bob");
    assert_eq!(a.cmd("DEPOSIT 1000000000000"), "OK 1000000000000");
    assert_eq!(code(&a.cmd("TRANSFER alice 5 me")), "BAD_REQUEST");
    assert_eq!(code(&a.cmd("TRANSFER alice 5 me")), "BAD_REQUEST");
    assert_eq!(code(&a.cmd("TRANSFER bob 5 me")), "BAD_REQUEST");
    assert_eq!(code(&a.cmd("TRANSFER alice 5")), "BAD_REQUEST");
    for bad in [
        "+",
        "+0",
        "-0",
        "++5",
        "+-5",
        "0x10",
        "1_000",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551616",
        "1000000000001",
        "１２",
        "5\u{0}",
    ] {
        for cmd in ["DEPOSIT", "WITHDRAW"] {
            let r = a.cmd(&format!("{cmd} {bad}"));
            assert_eq!(code(&r), "INVALID_AMOUNT", "{cmd} {bad:?}: {r}");
        }
        let r = a.cmd(&format!("TRANSFER bob {bad}"));
        assert_eq!(code(&r), "INVALID_AMOUNT", "TRANSFER {bad:?}: {r}");
    }
    assert_eq!(
        a.cmd("DEPOSIT +000000000000000000000001"),
        "OK 1000000000001"
    );
    assert_eq!(a.cmd("WITHDRAW 1000000000000"), "OK 1");
    assert_eq!(a.cmd("TRANSFER bob +1"), "OK 0");
}

/// `QUIT` behind pending commands: they are answered, the ones after it are not run.
#[test]
fn quit_with_commands_pending() {
    let dir = TempDir::new("quit-pending");
    let srv = server(&dir, &[]);
    let mut c = Client::logged_in(srv.addr, "alice");
    let replies = pipeline(
        &mut c,
        &["DEPOSIT 5", "HISTORY 1", "QUIT", "DEPOSIT 5", "PING"],
        4,
    );
    assert_eq!(replies[0], "OK 5");
    assert_eq!(replies[1], "OK 1");
    assert_eq!(replies[3], "OK bye", "{replies:?}");
    let rest = c.expect_closed(Duration::from_secs(5));
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    let mut d = Client::logged_in(srv.addr, "alice");
    assert_eq!(d.balance(), 5);
}

/// Many tiny commands in one write, and lines at the length limit.
#[test]
fn many_tiny_commands_and_lines_at_the_limit() {
    let dir = TempDir::new("tiny");
    let srv = server(&dir, &[]);
    let mut c = Client::logged_in(srv.addr, "alice");
    let n = 20_000;
    let mut bytes = Vec::new();
    for i in 0..n {
        bytes.extend_from_slice(if i % 2 == 0 { b"PING\n" } else { b"x\n" });
    }
    bytes.extend_from_slice(b"BALANCE\n");
    let start = Instant::now();
    c.send(&bytes);
    for i in 0..n {
        let l = c.line();
        if i % 2 == 0 {
            assert_eq!(l, "PONG");
        } else {
            assert_eq!(code(&l), "UNKNOWN_COMMAND");
        }
    }
    assert_eq!(c.line(), "OK 0");
    assert!(start.elapsed() < Duration::from_secs(8));

    // Exactly 1024 bytes (with `\r\n`), then 1025.
    let at_limit = format!("PING{}", " ".repeat(1020));
    assert_eq!(at_limit.len(), 1024);
    c.send(format!("{at_limit}\r\n").as_bytes());
    assert_eq!(c.line(), "PONG");
    c.send(format!("{at_limit} \r\nPING\n").as_bytes());
    assert_eq!(code(&c.line()), "LINE_TOO_LONG");
    let rest = c.expect_closed(Duration::from_secs(5));
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

/// Failed logins count per connection, a success between them does not reset the count,
/// and the fifth drops what was pipelined behind it.
#[test]
fn failed_logins_around_a_success() {
    let dir = TempDir::new("fail-success");
    let srv = server(&dir, &[]);
    let mut c = Client::logged_in(srv.addr, "alice");
    assert_eq!(c.cmd("DEPOSIT 10"), "OK 10");
    let good = format!("LOGIN alice {PW}");
    let lines = [
        "LOGIN alice wrongpass1",
        "LOGIN alice wrongpass2",
        good.as_str(),
        "LOGIN alice wrongpass3",
        "LOGIN nobody wrongpass4",
        good.as_str(),
        "LOGIN alice wrongpass5",
        "DEPOSIT 1",
        "PING",
    ];
    let replies = pipeline(&mut c, &lines, 7);
    assert_eq!(replies[2], "OK welcome alice");
    assert_eq!(replies[5], "OK welcome alice");
    assert!(replies[6].contains("too many failed logins"), "{replies:?}");
    let rest = c.expect_closed(Duration::from_secs(5));
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    let mut d = Client::logged_in(srv.addr, "alice");
    assert_eq!(d.balance(), 10);
}

/// A `LOGIN` that fails (a wrong password checked on a worker, or a password too short
/// to check) logs the connection out: the commands pipelined behind it get
/// `NOT_AUTHENTICATED` and never act on the account logged in before it.
#[test]
fn a_failed_relogin_logs_the_connection_out() {
    let dir = TempDir::new("fail-logout");
    let srv = server(&dir, &[]);
    let mut bob = Client::logged_in(srv.addr, "bob");
    assert_eq!(bob.cmd("QUIT"), "OK bye");
    let mut c = Client::logged_in(srv.addr, "alice");
    assert_eq!(c.cmd("DEPOSIT 500"), "OK 500");
    let good = format!("LOGIN alice {PW}");
    let lines = [
        "LOGIN bob wrong-password",
        "WITHDRAW 300",
        "TRANSFER bob 100 t1",
        good.as_str(),
        "BALANCE",
        "LOGIN bob short",
        "WITHDRAW 200",
        "BALANCE",
    ];
    let replies = pipeline(&mut c, &lines, lines.len());
    let codes: Vec<&str> = replies.iter().map(|r| code(r)).collect();
    assert_eq!(
        codes,
        [
            "AUTH_FAILED",
            "NOT_AUTHENTICATED",
            "NOT_AUTHENTICATED",
            "OK welcome alice",
            "OK 500",
            "AUTH_FAILED",
            "NOT_AUTHENTICATED",
            "NOT_AUTHENTICATED",
        ],
        "{replies:?}"
    );
    let mut d = Client::logged_in(srv.addr, "alice");
    assert_eq!(d.balance(), 500);
    let mut b = Client::logged_in(srv.addr, "bob");
    assert_eq!(b.balance(), 0);
}

/// `bank client` with `args` against `srv`: its exit status and standard output; fails the
/// test if it runs longer than 10 s (its reply timeout is 30 s).
fn run_client(srv: &Server, args: &[&str]) -> (Option<i32>, String) {
    let child = Command::new(BANK)
        .args(["client", "--connect", &srv.addr.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bank client");
    let out = finish_within(child, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("bank client {args:?}: {e}"));
    (out.status.code(), out.stdout)
}

/// The one-shot client and lines the server answers with no reply or with several: a
/// blank command (the server ignores a blank line) is skipped, not waited for; a command
/// word holding a line end would send two lines and read one reply, so the next
/// command's reply would be taken for it: a usage error. Before the fix the client sent
/// the blank line and waited for a reply that never comes, until its 30 s timeout.
#[test]
fn the_one_shot_client_skips_blank_commands_and_refuses_line_ends() {
    let dir = TempDir::new("client-blank");
    let srv = server(&dir, &[]);
    assert_eq!(
        run_client(&srv, &["PING", ";", "", ";", " \t", ";", "PING"]),
        (Some(0), "PONG\nPONG\n".to_owned())
    );
    assert_eq!(run_client(&srv, &[""]), (Some(0), String::new()));
    let (status, out) = run_client(&srv, &["PING\nQUIT", ";", "PING"]);
    assert_eq!((status, out.as_str()), (Some(2), ""));
    let (status, out) = run_client(&srv, &["PING\r", ";", "PING"]);
    assert_eq!((status, out.as_str()), (Some(2), ""));
}
