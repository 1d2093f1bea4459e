//! Every command's success and error paths, the client binary, the command line, and
//! shutdown on SIGTERM: against the real binary over TCP, on both storage backends
//! (`NAME::sqlite`, `NAME::postgres`) except the command-line checks of an SQLite path.

#[macro_use]
mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ok_number, Backend, Client, TempDir, TestDb, BANK, PW};
use duo_testkit::finish_within;

on_both_backends! {
    every_command_succeeds_and_fails_as_documented,
    a_full_worker_queue_answers_busy,
    the_client_binary_works_one_shot_and_interactively,
    sigterm_and_sigint_stop_the_server_cleanly,
    sigterm_answers_every_command_already_read,
    a_client_that_half_closes_after_its_commands_gets_every_reply,
}

fn code(reply: &str) -> &str {
    assert!(
        reply.starts_with("ERR "),
        "expected an error, got {reply:?}"
    );
    reply.split(' ').nth(1).unwrap()
}

fn every_command_succeeds_and_fails_as_documented(backend: Backend) {
    let Some(db) = TestDb::new(backend, "commands") else {
        return;
    };
    let server = db.start(&[]);
    let mut c = Client::connect(server.addr);

    // Anonymous commands.
    assert_eq!(c.cmd("PING"), "PONG");
    assert_eq!(c.cmd("ping"), "PONG");
    for cmd in [
        "BALANCE",
        "DEPOSIT 5",
        "WITHDRAW 5",
        "TRANSFER bob 5",
        "HISTORY",
    ] {
        assert_eq!(code(&c.cmd(cmd)), "NOT_AUTHENTICATED", "{cmd}");
    }
    assert_eq!(code(&c.cmd("FROB")), "UNKNOWN_COMMAND");
    assert_eq!(code(&c.cmd("PING now")), "BAD_REQUEST");
    // A blank line gets no reply: the next reply is the PING's.
    c.send(b"\n  \r\n");
    assert_eq!(c.cmd("PING"), "PONG");

    // REGISTER.
    assert_eq!(c.cmd(&format!("REGISTER alice {PW}")), "OK registered");
    assert_eq!(code(&c.cmd(&format!("REGISTER alice {PW}"))), "USER_EXISTS");
    assert_eq!(code(&c.cmd("REGISTER alice")), "BAD_REQUEST");
    assert_eq!(
        code(&c.cmd(&format!("REGISTER al.ice {PW}"))),
        "BAD_REQUEST"
    );
    assert_eq!(code(&c.cmd("REGISTER carol short")), "BAD_REQUEST");
    let long_name = "n".repeat(33);
    assert_eq!(
        code(&c.cmd(&format!("REGISTER {long_name} {PW}"))),
        "BAD_REQUEST"
    );
    let long_pw = "p".repeat(129);
    assert_eq!(
        code(&c.cmd(&format!("REGISTER carol {long_pw}"))),
        "BAD_REQUEST"
    );
    let max_name = "N".repeat(32);
    let max_pw = "p".repeat(128);
    assert_eq!(
        c.cmd(&format!("REGISTER {max_name} {max_pw}")),
        "OK registered"
    );

    // LOGIN.
    assert_eq!(code(&c.cmd("LOGIN alice wrongpass")), "AUTH_FAILED");
    assert_eq!(code(&c.cmd(&format!("LOGIN nobody {PW}"))), "AUTH_FAILED");
    assert_eq!(code(&c.cmd("LOGIN alice")), "BAD_REQUEST");
    assert_eq!(c.cmd(&format!("LOGIN alice {PW}")), "OK welcome alice");

    // BALANCE, DEPOSIT, WITHDRAW.
    assert_eq!(c.cmd("BALANCE"), "OK 0");
    assert_eq!(c.cmd("DEPOSIT 1000"), "OK 1000");
    assert_eq!(c.cmd("deposit +500"), "OK 1500");
    for bad in [
        "0",
        "-1",
        "abc",
        "1.5",
        "1000000000001",
        "99999999999999999999",
    ] {
        assert_eq!(
            code(&c.cmd(&format!("DEPOSIT {bad}"))),
            "INVALID_AMOUNT",
            "{bad}"
        );
        assert_eq!(
            code(&c.cmd(&format!("WITHDRAW {bad}"))),
            "INVALID_AMOUNT",
            "{bad}"
        );
        assert_eq!(
            code(&c.cmd(&format!("TRANSFER alice {bad}"))),
            "INVALID_AMOUNT",
            "{bad}"
        );
    }
    assert_eq!(code(&c.cmd("DEPOSIT")), "BAD_REQUEST");
    assert_eq!(code(&c.cmd("DEPOSIT 1 2")), "BAD_REQUEST");
    assert_eq!(code(&c.cmd("WITHDRAW 1501")), "INSUFFICIENT_FUNDS");
    assert_eq!(c.cmd("WITHDRAW 1"), "OK 1499");
    assert_eq!(c.cmd("BALANCE"), "OK 1499");

    // TRANSFER.
    assert_eq!(code(&c.cmd("TRANSFER bob 100")), "NO_SUCH_USER");
    assert_eq!(code(&c.cmd("TRANSFER b-o-b 100")), "NO_SUCH_USER");
    let mut b = Client::connect(server.addr);
    assert_eq!(b.cmd(&format!("REGISTER bob {PW}")), "OK registered");
    assert_eq!(c.cmd("TRANSFER bob 100"), "OK 1399");
    assert_eq!(code(&c.cmd("TRANSFER alice 100")), "BAD_REQUEST");
    assert_eq!(code(&c.cmd("TRANSFER bob 1400")), "INSUFFICIENT_FUNDS");
    assert_eq!(code(&c.cmd("TRANSFER bob")), "BAD_REQUEST");
    assert_eq!(code(&c.cmd("TRANSFER bob 1 bad/id")), "BAD_REQUEST");
    assert_eq!(c.cmd("BALANCE"), "OK 1399");

    // HISTORY: newest first, `<id> <kind> <counterparty or -> <signed> <after> <time>`.
    let h = c.history(10);
    assert_eq!(h.len(), 4, "{h:?}");
    let fields: Vec<Vec<&str>> = h.iter().map(|l| l.split(' ').collect()).collect();
    let expect = [
        ("transfer_out", "bob", "-100", "1399"),
        ("withdraw", "-", "-1", "1499"),
        ("deposit", "-", "+500", "1500"),
        ("deposit", "-", "+1000", "1000"),
    ];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut last_id = i64::MAX;
    for (f, (kind, other, amount, after)) in fields.iter().zip(expect) {
        assert_eq!(f.len(), 6, "{f:?}");
        let id: i64 = f[0].parse().unwrap();
        assert!(id < last_id, "newest first: {h:?}");
        last_id = id;
        assert_eq!((f[1], f[2], f[3], f[4]), (kind, other, amount, after));
        let t: i64 = f[5].parse().unwrap();
        assert!((now - 60..=now + 60).contains(&t), "time {t}");
    }
    assert_eq!(c.history(2).len(), 2);
    assert_eq!(c.history(1)[0], h[0]);
    assert_eq!(code(&c.cmd("HISTORY 0")), "BAD_REQUEST");
    assert_eq!(code(&c.cmd("HISTORY 1001")), "BAD_REQUEST");
    assert_eq!(code(&c.cmd("HISTORY 1 2")), "BAD_REQUEST");

    // The payee sees the money and who sent it; each connection acts on its own account.
    assert_eq!(b.cmd(&format!("LOGIN bob {PW}")), "OK welcome bob");
    assert_eq!(b.cmd("BALANCE"), "OK 100");
    let hb = b.history(10);
    assert_eq!(hb.len(), 1);
    assert!(hb[0].contains(" transfer_in alice +100 100 "), "{hb:?}");
    assert_eq!(c.cmd("BALANCE"), "OK 1399");
    // Logging in again on a connection switches its account.
    assert_eq!(c.cmd(&format!("LOGIN bob {PW}")), "OK welcome bob");
    assert_eq!(c.cmd("BALANCE"), "OK 100");

    // `\r\n` line ends work like `\n`.
    c.send(b"PING\r\nBALANCE\r\n");
    assert_eq!(c.line(), "PONG");
    assert_eq!(c.line(), "OK 100");

    // QUIT: `OK bye`, then the server closes; commands after it are not answered.
    c.send(b"QUIT\nPING\n");
    assert_eq!(c.line(), "OK bye");
    let rest = c.expect_closed(Duration::from_secs(5));
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    // Others are unaffected.
    assert_eq!(b.cmd("PING"), "PONG");
}

fn a_full_worker_queue_answers_busy(backend: Backend) {
    let Some(db) = TestDb::new(backend, "busy") else {
        return;
    };
    let server = db.start(&["--workers", "1", "--queue-capacity", "1"]);
    let mut clients: Vec<Client> = (0..24)
        .map(|i| Client::logged_in(server.addr, &format!("u{i}")))
        .collect();
    let mut busy = 0;
    for _round in 0..50 {
        for c in &mut clients {
            c.send(b"DEPOSIT 1\nBALANCE\n");
        }
        for c in &mut clients {
            for _ in 0..2 {
                let r = c.line();
                if r.starts_with("ERR BUSY") {
                    busy += 1;
                } else {
                    assert!(r.starts_with("OK "), "{r}");
                }
            }
        }
        if busy > 0 {
            break;
        }
    }
    assert!(busy > 0, "no BUSY with one worker and a queue of one");
    // A refused deposit did nothing: the balance is the number of deposits in the ledger.
    for c in &mut clients {
        let deposits = c.history(1000).len() as i64;
        assert_eq!(c.balance(), deposits);
    }
}

fn the_client_binary_works_one_shot_and_interactively(backend: Backend) {
    let Some(db) = TestDb::new(backend, "client") else {
        return;
    };
    let server = db.start(&[]);
    let addr = server.addr.to_string();
    let run = |args: &[&str]| {
        let out = Command::new(BANK)
            .args(["client", "--connect", &addr])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    assert_eq!(run(&["PING"]), (Some(0), "PONG\n".into()));
    assert_eq!(
        run(&["REGISTER", "dora", PW]),
        (Some(0), "OK registered\n".into())
    );
    assert_eq!(
        run(&["LOGIN", "dora", PW, ";", "DEPOSIT", "250", ";", "HISTORY", "1", ";", "BALANCE"]).0,
        Some(0)
    );
    let (status, out) = run(&["LOGIN", "dora", PW, ";", "WITHDRAW", "-5", ";", "BALANCE"]);
    assert_eq!(status, Some(1), "an ERR reply fails the one-shot client");
    assert_eq!(
        out,
        "OK welcome dora\nERR INVALID_AMOUNT amount must be a whole number of cents from 1 to 1000000000000\n"
    );

    let mut child = Command::new(BANK)
        .args(["client", "--connect", &addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("LOGIN dora {PW}\n\nBALANCE\nHISTORY 5\nNOPE\nQUIT\n").as_bytes())
        .unwrap();
    let out = wait_output(child, Duration::from_secs(15));
    assert_eq!(out.0, Some(0));
    let lines: Vec<&str> = out.1.lines().collect();
    assert_eq!(lines[0], "OK welcome dora");
    assert_eq!(lines[1], "OK 250");
    assert_eq!(lines[2], "OK 1");
    assert!(lines[3].contains(" deposit - +250 250 "), "{lines:?}");
    assert!(lines[4].starts_with("ERR UNKNOWN_COMMAND"), "{lines:?}");
    assert_eq!(lines[5], "OK bye");
    assert_eq!(lines.len(), 6);

    // Nobody listening: a clear error, status 1.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let out = Command::new(BANK)
        .args(["client", "--connect", &dead_addr, "PING"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

fn wait_output(child: std::process::Child, limit: Duration) -> (Option<i32>, String) {
    let out = finish_within(child, limit).unwrap_or_else(|e| panic!("child {e}"));
    (out.status.code(), out.stdout)
}

#[test]
fn bad_flags_exit_2_and_runtime_errors_exit_1() {
    let dir = TempDir::new("flags");
    let db = dir.join("bank.db");
    let db = db.to_str().unwrap();
    for args in [
        vec![],
        vec!["serve", "--bogus"],
        vec!["serve", "--workers", "0", "--db", db],
        vec!["serve", "--workers", "many", "--db", db],
        vec!["serve", "--listen", "not an address", "--db", db],
        vec!["serve", "--idle-timeout", "-1", "--db", db],
        // Beyond duo-workers' ThreadPool::MAX_CAPACITY (2^24 jobs).
        vec!["serve", "--queue-capacity", "16777217", "--db", db],
        vec!["serve", "--loops", "-1", "--db", db],
        vec!["serve", "--io-threads", "0", "--loops", "4", "--db", db],
        vec!["serve", "--loop-sharing", "any", "--db", db],
        vec![
            "serve",
            "--loops",
            "4",
            "--loop-sharing",
            "sometimes",
            "--db",
            db,
        ],
        vec!["frobnicate"],
    ] {
        let out = Command::new(BANK).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: a usage message");
        if args.windows(2).any(|w| w == ["--io-threads", "0"]) {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("--loops needs I/O threads"), "{err}");
        }
    }
    let out = Command::new(BANK).args(["--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));

    // A database in a directory that does not exist.
    let missing = dir.path().join("no/such/dir/bank.db");
    let out = Command::new(BANK)
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot open database"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A port already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = Command::new(BANK)
        .args([
            "serve",
            "--listen",
            &taken.local_addr().unwrap().to_string(),
            "--db",
            db,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
}

fn sigterm_and_sigint_stop_the_server_cleanly(backend: Backend) {
    let Some(first) = TestDb::new(backend, "signal") else {
        return;
    };
    for signal in ["TERM", "INT"] {
        let db = first.sibling("signal");
        let mut server = db.start(&[]);
        let mut idle = Client::logged_in(server.addr, "erin");
        assert_eq!(idle.cmd("DEPOSIT 42"), "OK 42");
        // A connection that has not even finished its line.
        let mut partial = Client::connect(server.addr);
        partial.send(b"BALA");
        let (status, took) = server.signal_and_wait(signal, Duration::from_secs(10));
        assert_eq!(status.code(), Some(0), "SIG{signal}");
        eprintln!("SIG{signal}: exit after {took:?}");
        assert!(took < Duration::from_secs(5), "SIG{signal} took {took:?}");
        idle.expect_closed(Duration::from_secs(5));
        partial.expect_closed(Duration::from_secs(5));

        // What was acknowledged is there after the restart.
        let server = db.start(&[]);
        let mut c = Client::logged_in(server.addr, "erin");
        assert_eq!(c.cmd("BALANCE"), "OK 42");
        assert_eq!(ok_number(&c.cmd("DEPOSIT 1")), Some(43));
    }
}

/// SIGTERM while a client's pipelined deposits are being committed: every command the
/// server had read is answered before it closes, so the replies the client got and the
/// balance after a restart agree exactly (a write committed with its reply dropped would
/// show as a balance above the acknowledged count).
fn sigterm_answers_every_command_already_read(backend: Backend) {
    const DEPOSITS: usize = 4000;
    let Some(db) = TestDb::new(backend, "sigterm-inflight") else {
        return;
    };
    let mut server = db.start(&[]);
    let mut c = Client::logged_in(server.addr, "sam");
    c.send("DEPOSIT 1\n".repeat(DEPOSITS).as_bytes());
    assert_eq!(c.line(), "OK 1");
    let (status, _) = server.signal_and_wait("TERM", Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    let rest = String::from_utf8(c.expect_closed(Duration::from_secs(5))).unwrap();
    let mut acknowledged = 1;
    for line in rest.lines() {
        acknowledged += 1;
        assert_eq!(
            line,
            format!("OK {acknowledged}"),
            "replies in order, none lost"
        );
    }
    eprintln!("{acknowledged} of {DEPOSITS} deposits acknowledged before the exit");

    let server = db.start(&[]);
    let mut c = Client::connect(server.addr);
    assert_eq!(c.cmd(&format!("LOGIN sam {PW}")), "OK welcome sam");
    assert_eq!(
        c.balance(),
        acknowledged as i64,
        "every committed deposit was acknowledged, and every acknowledged one committed"
    );
}

fn a_client_that_half_closes_after_its_commands_gets_every_reply(backend: Backend) {
    let Some(db) = TestDb::new(backend, "half-close") else {
        return;
    };
    let server = db.start(&[]);
    let mut c = Client::connect(server.addr);
    // All commands in one write, then end of stream at once (`nc -N`): the replies are
    // computed on workers after the server has seen the EOF.
    c.send(
        format!("REGISTER hc {PW}\nLOGIN hc {PW}\nDEPOSIT 500\nWITHDRAW 200\nBALANCE\nPING\n")
            .as_bytes(),
    );
    c.stream().shutdown(std::net::Shutdown::Write).unwrap();
    let rest = c.expect_closed(Duration::from_secs(15));
    assert_eq!(
        String::from_utf8(rest).unwrap(),
        "OK registered\nOK welcome hc\nOK 500\nOK 300\nOK 300\nPONG\n"
    );
}
