//! Review round 10 of the examples and the apps' output paths: `bank client`'s prompt.
//!
//! An interactive `bank client` (standard input a terminal) printed its `bank> ` prompt
//! with `eprint!`, which panics (exit status 101) when stderr cannot be written (a pipe
//! whose reader is gone, a full disk). The prompt is only a courtesy to whoever types: a
//! client that cannot show it now reads and answers the commands all the same (and a
//! failure to flush it is no longer reported as a failure of the connection).
//!
//! Standard input is made a terminal by `script(1)` (util-linux), which runs the client
//! on a pseudo-terminal and passes on what the test types, then the end of its input. Every run is
//! bounded; a program still running at the deadline is killed by its PID.

mod common;

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::thread;

use common::BANK;
use duo_testkit::{finish_within, join_within, LIMIT};

/// `bank client` with a terminal for stdin and stderr on `/dev/full` (every write fails
/// with `ENOSPC`): it sends the command typed, prints the reply, gets the end of its input
/// and exits 0, without a panic (it exited 101 at the first prompt).
#[test]
fn an_interactive_client_whose_prompt_cannot_be_shown_goes_on() {
    if Command::new("script").arg("--version").output().is_err() {
        println!("skipped: script(1) (util-linux) cannot be run here");
        return;
    }
    // A server that answers one line, then waits until the client closes.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let server = thread::spawn(move || {
        let (conn, _) = listener.accept().expect("accept");
        let mut reader = BufReader::new(conn.try_clone().expect("try_clone"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("a command");
        (&conn).write_all(b"OK pong\n").expect("the reply");
        let _ = io::copy(&mut reader, &mut io::sink());
        line
    });
    let client = format!("'{BANK}' client --connect {addr} 2>/dev/full");
    let mut script = Command::new("script")
        .args(["-qec", &client, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn script");
    // Typed on the terminal, then the end of input.
    let mut typed = script.stdin.take().expect("stdin");
    typed.write_all(b"PING\n").expect("typing");
    drop(typed);
    let out = finish_within(script, LIMIT).unwrap_or_else(|e| panic!("{client}: {e}"));
    assert_eq!(out.status.code(), Some(0), "{client}: {out:?}");
    assert!(out.stdout.contains("OK pong"), "{client}: {out:?}");
    assert!(!out.stdout.contains("panicked"), "{out:?}");
    let command = join_within("the server", server);
    assert_eq!(command, "PING\n");
}
