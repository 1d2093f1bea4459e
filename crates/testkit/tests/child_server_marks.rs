//! Review round 12 (odds and ends): waiting for a *new* stderr line of a child server.
//! `wait_for_stderr` matches anything seen so far, so a test waiting for the second
//! `reloaded` line returned at once on the first one (and signalled too early); a mark
//! taken before the action and `wait_for_stderr_after` wait for a line written after it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use duo_testkit::ChildServer;

const LIMIT: Duration = Duration::from_secs(10);

/// A "server" that logs `tick N` to stderr for each line it reads on stdin.
fn ticker() -> ChildServer {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "echo 'listening on 127.0.0.1:1'; echo 'tick 0' >&2; n=0; \
         while read x; do n=$((n+1)); echo \"tick $n\" >&2; done; exec sleep 30",
    ]);
    ChildServer::builder(cmd).stdin(Stdio::piped()).start()
}

#[test]
fn a_mark_separates_old_lines_from_new_ones() {
    let mut server = ticker();
    server.wait_for_stderr("tick 0", LIMIT);
    let mark = server.stderr_mark();
    // Nothing new yet: the old line is before the mark, and the plain wait still sees it.
    assert!(
        !server.stderr_since(mark).contains("tick"),
        "{:?}",
        server.stderr()
    );
    server.wait_for_stderr("tick", LIMIT);

    server.stdin().write_all(b"go\n").unwrap();
    let after = server.wait_for_stderr_after(mark, "tick", LIMIT);
    assert!(server.stderr_since(mark).contains("tick 1"));
    // The returned mark is past the match: the next wait needs one more line.
    assert!(
        !server.stderr_since(after).contains("tick"),
        "{:?}",
        server.stderr()
    );
    server.stdin().write_all(b"go\n").unwrap();
    server.wait_for_stderr_after(after, "tick", LIMIT);
    assert!(server.stderr_since(after).contains("tick 2"));
    // The whole log is still there for the plain accessors.
    assert!(server.stderr().contains("tick 0") && server.stderr().contains("tick 2"));
}

#[test]
#[should_panic(expected = "after the mark")]
fn waiting_after_a_mark_for_an_old_line_times_out() {
    let server = ticker();
    server.wait_for_stderr("tick 0", LIMIT);
    let mark = server.stderr_mark();
    server.wait_for_stderr_after(mark, "tick 0", Duration::from_millis(200));
}
