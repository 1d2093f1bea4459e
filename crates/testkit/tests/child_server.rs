//! The child-process helpers against real processes: `sh` scripts standing in for servers.

use std::process::Command;
use std::time::Duration;

use duo_testkit::{run_within, ChildServer};

/// A "server" that announces an address, logs, then sleeps until signalled.
fn sh(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    cmd
}

#[test]
fn start_reads_the_address_and_collects_the_output() {
    let mut server = ChildServer::start(sh(
        "echo 'listening on 127.0.0.1:4321'; echo more; echo 'a log line' >&2; exec sleep 30",
    ));
    assert_eq!(server.addr(), "127.0.0.1:4321".parse().unwrap());
    server.wait_for_stderr("a log line", Duration::from_secs(10));
    assert_eq!(server.line_starting("mo", Duration::from_secs(10)), "more");
    let (status, _) = server.terminate("TERM", Duration::from_secs(10));
    assert!(!status.success(), "sleep dies of SIGTERM: {status}");
}

#[test]
fn a_server_that_exits_or_says_something_else_is_an_error() {
    let exited = ChildServer::builder(sh("echo oops >&2; exit 3")).try_start();
    let err = exited.expect_err("no listening line");
    assert!(
        err.contains("closed its stdout") && err.contains("oops"),
        "{err}"
    );
    let wrong = ChildServer::builder(sh("echo 'listening on nowhere'; exec sleep 30")).try_start();
    assert!(wrong
        .expect_err("bad address")
        .contains("\"listening on nowhere\""));
    let silent = ChildServer::builder(sh("exec sleep 30"))
        .startup(Duration::from_millis(100))
        .try_start();
    assert!(silent.expect_err("silent").contains("within"));
}

#[test]
fn a_dropped_server_is_killed() {
    let server = ChildServer::start(sh("echo 'listening on 127.0.0.1:1'; exec sleep 30"));
    let proc_dir = format!("/proc/{}", server.pid());
    drop(server);
    // Reaped, not just killed: no zombie left behind.
    assert!(!std::path::Path::new(&proc_dir).exists());
}

#[test]
fn run_within_collects_both_streams_and_bounds_the_time() {
    let done = run_within(
        &mut sh("echo out; echo err >&2; exit 2"),
        Duration::from_secs(10),
    )
    .expect("finishes");
    assert_eq!(
        (done.status.code(), &done.stdout[..], &done.stderr[..]),
        (Some(2), "out\n", "err\n")
    );
    let hung = run_within(&mut sh("exec sleep 30"), Duration::from_millis(100));
    assert!(hung.expect_err("killed").contains("still running"));
    // A process the child started keeps the pipes open after the child is killed: the
    // limit still holds (the grandchild ends by itself 6 s later, well past the bound).
    let limit = Duration::from_secs(1);
    let start = std::time::Instant::now();
    let orphaned = run_within(&mut sh("sleep 6 & echo started; exec sleep 30"), limit);
    let took = start.elapsed();
    let err = orphaned.expect_err("killed");
    assert!(
        err.contains("still running") && err.contains("started"),
        "{err}"
    );
    assert!(
        took < limit + Duration::from_secs(2),
        "run_within took {took:?}"
    );
}

#[test]
fn the_listening_line_must_come_first_unless_a_preamble_is_allowed() {
    let script = "echo banner; echo 'listening on 127.0.0.1:9'; exec sleep 30";
    let strict = ChildServer::builder(sh(script)).try_start();
    assert!(strict.expect_err("banner first").contains("\"banner\""));
    let lenient = ChildServer::builder(sh(script)).allow_preamble().start();
    assert_eq!(lenient.addr(), "127.0.0.1:9".parse().unwrap());
}

#[test]
fn a_line_that_is_not_utf8_does_not_stop_the_reading() {
    let mut server = ChildServer::start(sh(
        "echo 'listening on 127.0.0.1:9'; printf 'bad \\377 byte\\n'; echo after; exec sleep 30",
    ));
    assert_eq!(
        server.line_starting("after", Duration::from_secs(10)),
        "after"
    );
}

#[test]
fn earlier_lines_are_skipped_and_stdin_can_be_piped() {
    let mut server = ChildServer::builder(sh(
        "echo 'running 1 test'; echo 'listening on [::1]:80'; read x; echo \"got $x\"; exec sleep 30",
    ))
    .allow_preamble()
    .stdin(std::process::Stdio::piped())
    .start();
    assert_eq!(server.addr(), "[::1]:80".parse().unwrap());
    std::io::Write::write_all(server.stdin(), b"ping\n").unwrap();
    assert_eq!(
        server.line_starting("got", Duration::from_secs(10)),
        "got ping"
    );
}
