//! `bank serve --listen unix:/path` and `bank client --connect unix:/path`, run as a user
//! would (SQLite in a temporary directory): one session over the socket file, the file
//! removed at a graceful stop; `--processes` with a unix: address is a usage error.

use std::process::Command;
use std::time::Duration;

use duo_testkit::{run_within, ChildServer, TempDir};

const BANK: &str = env!("CARGO_BIN_EXE_bank");

fn client(listen: &str, words: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(BANK);
    cmd.args(["client", "--connect", listen]).args(words);
    let out = run_within(&mut cmd, Duration::from_secs(20)).unwrap();
    (out.status.code(), out.stdout)
}

#[test]
fn a_session_over_a_socket_file() {
    let dir = TempDir::new("session");
    let sock = dir.join("bank.sock");
    let listen = format!("unix:{}", sock.display());
    let mut cmd = Command::new(BANK);
    cmd.args(["serve", "--listen", &listen, "--db"])
        .arg(dir.join("bank.db"))
        .args(["--hash-cost", "low", "--io-threads", "1"])
        .env("RUST_LOG", "info");
    let mut server = ChildServer::start(cmd);
    assert_eq!(server.announced(), listen);

    assert_eq!(client(&listen, &["PING"]), (Some(0), "PONG\n".into()));
    let (code, out) = client(
        &listen,
        &[
            "REGISTER",
            "alice",
            "secret123",
            ";",
            "LOGIN",
            "alice",
            "secret123",
            ";",
            "DEPOSIT",
            "250",
            ";",
            "BALANCE",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out, "OK registered\nOK welcome alice\nOK 250\nOK 250\n",
        "replies in order"
    );

    let (status, _) = server.terminate("TERM", Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists(), "the socket file is removed at exit");
    // Nobody listens any more: the client says so and fails.
    let (code, _) = client(&listen, &["PING"]);
    assert_eq!(code, Some(1));
}

#[test]
fn processes_with_a_unix_address_is_a_usage_error() {
    let dir = TempDir::new("processes");
    let mut cmd = Command::new(BANK);
    cmd.args(["serve", "--processes", "1", "--listen"])
        .arg(format!("unix:{}", dir.join("bank.sock").display()))
        .arg("--db")
        .arg(dir.join("bank.db"));
    let out = run_within(&mut cmd, Duration::from_secs(20)).unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("--processes needs a TCP"),
        "{}",
        out.stderr
    );
}
