//! An upgrade (`SIGUSR2`) checks the new binary before it executes it in place: a binary
//! that exits at once (a script `exit 3`, a build that crashes at start or rejects its
//! arguments) used to replace the supervisor's image (same PID), which then exited: its
//! workers got their parent-death `SIGTERM` and new connections were refused. Now the
//! binary is first run as a child with `DUO_UPGRADE_CHECK=1` (it checks its configuration
//! and exits 0 without serving, as `nginx -t`), and only a binary that passes is executed;
//! otherwise the old image serves on with its workers.
//!
//! The `demo` example runs from a copy in a directory of its own, which a test replaces on
//! disk (by a rename, as a package manager does). Every wait has a deadline; the
//! supervisor is killed by its guard if a test fails (its workers then get their
//! parent-death signal) and a probe left running is killed by PID.

#[allow(dead_code)]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::{replace, start_copy, Dir};
use duo_testkit::{
    children, example_binary, is_running, run_within, wait_until, ChildServer, LIMIT,
};

/// Connects, reads the worker's `pid N` greeting, checks one echo; returns the worker.
fn served_by(addr: SocketAddr) -> u32 {
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(LIMIT)).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).expect("greeting");
    let pid = line
        .trim()
        .strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad greeting {line:?}"));
    conn.write_all(b"ping\n").unwrap();
    let mut echo = [0u8; 5];
    reader.read_exact(&mut echo).expect("echo");
    assert_eq!(&echo, b"ping\n");
    pid
}

/// Waits for `needle` in the log; fails at once (with the log) if the supervisor exits
/// meanwhile, which is what an upgrade to a bad binary used to do.
fn wait_log_alive(server: &mut ChildServer, needle: &str) {
    wait_until(&format!("{needle:?} in the log"), || {
        if let Some(status) = server.try_wait() {
            panic!(
                "the supervisor exited ({status}) instead of logging {needle:?}; log:\n{}",
                server.stderr()
            );
        }
        server.stderr().contains(needle)
    });
}

/// The PID of the check process the log names last (`checking ... (process N`).
fn probe_pid(log: &str) -> u32 {
    let at = log.rfind("(process ").expect("the check's PID in the log");
    log[at + "(process ".len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a PID")
}

/// The bug as the reviewer reproduced it: the binary on disk replaced by a script that
/// exits 3. The supervisor (same PID) stays, its workers serve old and new connections,
/// the log names the status; then a good binary put back upgrades as before.
#[test]
fn an_upgrade_to_a_binary_that_exits_at_once_keeps_the_old_image_serving() {
    let dir = Dir::new("exit3");
    let (mut server, copy) = start_copy(&dir, &[]);
    let pid = server.pid();
    let workers = children(pid);
    assert_eq!(workers.len(), 2, "{workers:?}");
    // A connection open across the failed upgrade.
    let mut held = TcpStream::connect(server.addr()).unwrap();
    held.set_read_timeout(Some(LIMIT)).unwrap();
    let mut held_reader = BufReader::new(held.try_clone().unwrap());
    let mut greeting = String::new();
    held_reader.read_line(&mut greeting).unwrap();

    replace(&copy, b"#!/bin/sh\nexit 3\n");
    server.signal("USR2");
    wait_log_alive(&mut server, "upgrade refused");
    let log = server.stderr();
    assert!(log.contains("exit status 3"), "the status is named:\n{log}");
    assert!(log.contains("this image keeps running"), "{log}");
    assert!(server.try_wait().is_none(), "the supervisor is alive");
    assert_eq!(
        children(pid),
        workers,
        "the same workers, and no probe left"
    );
    held.write_all(b"still\n").unwrap();
    let mut echo = [0u8; 6];
    held_reader.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"still\n", "the held connection is served");
    for _ in 0..4 {
        let by = served_by(server.addr());
        assert!(
            workers.contains(&by),
            "served by {by}, not one of {workers:?}"
        );
    }

    // A good binary again: the upgrade goes through, same PID, new workers.
    replace(
        &copy,
        &std::fs::read(example_binary("duo-supervisor", "demo")).unwrap(),
    );
    server.signal("USR2");
    wait_log_alive(&mut server, "generation 2 is serving");
    assert_eq!(server.pid(), pid);
    wait_until("the old workers gone", || {
        let now = children(pid);
        now.len() == 2 && now.is_disjoint(&workers)
    });
    let by = served_by(server.addr());
    assert!(children(pid).contains(&by));
    let (status, _) = server.terminate("TERM", LIMIT);
    assert!(status.success(), "{status}");
}

/// A binary that crashes at start (a signal), one that rejects its arguments (exit 2), and
/// one that records what the check gets: nothing beyond stdio (never a listening socket),
/// the check's variable, none of the upgrade's hand-over variables.
#[test]
fn a_crashing_binary_is_refused_and_the_check_inherits_no_socket() {
    let dir = Dir::new("crash");
    let (mut server, copy) = start_copy(&dir, &[]);
    let pid = server.pid();
    let workers = children(pid);

    // (`SIGKILL`: a crash with no core dump to write.)
    replace(&copy, b"#!/bin/sh\nkill -KILL $$\n");
    server.signal("USR2");
    wait_log_alive(&mut server, "killed by signal 9");
    assert!(
        server.stderr().contains("upgrade refused"),
        "{}",
        server.stderr()
    );

    let seen = dir.join("seen");
    let script = format!(
        "#!/bin/sh\nfor fd in /proc/$$/fd/*; do echo \"fd $fd $(readlink $fd)\"; done > {s}\n\
         env >> {s}\necho 'usage: demo WORKERS [MODE]' >&2\nexit 2\n",
        s = seen.display()
    );
    replace(&copy, script.as_bytes());
    server.signal("USR2");
    wait_log_alive(&mut server, "exit status 2");
    let seen = std::fs::read_to_string(&seen).unwrap();
    assert!(!seen.contains("socket:"), "the check got a socket:\n{seen}");
    assert!(seen.contains("DUO_UPGRADE_CHECK=1"), "{seen}");
    for var in [
        "LISTEN_FDS",
        "LISTEN_PID",
        "DUO_SUPERVISOR_ADOPT",
        "DUO_SUPERVISOR_STATS_FD",
    ] {
        assert!(!seen.contains(&format!("{var}=")), "{var} was set:\n{seen}");
    }
    assert_eq!(children(pid), workers);
    assert!(workers.contains(&served_by(server.addr())));
    let (status, _) = server.terminate("TERM", LIMIT);
    assert!(status.success(), "{status}");
}

/// A binary whose check never ends is killed (by its PID) at the ready timeout, and the
/// upgrade refused naming the timeout.
#[test]
fn a_check_that_hangs_is_killed_at_the_ready_timeout() {
    let dir = Dir::new("hang");
    let (mut server, copy) = start_copy(&dir, &[("DEMO_READY_TIMEOUT_MS", "600")]);
    let pid = server.pid();
    let workers = children(pid);
    replace(&copy, b"#!/bin/sh\nexec sleep 30\n");
    server.signal("USR2");
    wait_log_alive(&mut server, "upgrade refused");
    let log = server.stderr();
    assert!(log.contains("600ms"), "the timeout is named:\n{log}");
    let probe = probe_pid(&log);
    wait_until("the check killed and reaped", || !is_running(probe));
    wait_until("only the workers are children", || children(pid) == workers);
    assert!(workers.contains(&served_by(server.addr())));
    let (status, _) = server.terminate("TERM", LIMIT);
    assert!(status.success(), "{status}");
}

/// The check itself, as the probe runs it: the demo with `DUO_UPGRADE_CHECK=1` exits 0
/// at once without serving (no `listening on`, no worker); a configuration it refuses
/// exits 2, as without the variable.
#[test]
fn the_check_exits_without_serving() {
    let demo = example_binary("duo-supervisor", "demo");
    let done = run_within(
        Command::new(&demo).arg("2").env("DUO_UPGRADE_CHECK", "1"),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(done.status.code(), Some(0), "{done:?}");
    assert!(done.stdout.is_empty(), "{}", done.stdout);
    assert!(!done.stderr.contains("started worker"), "{}", done.stderr);
    let done = run_within(
        Command::new(&demo).arg("0").env("DUO_UPGRADE_CHECK", "1"),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(done.status.code(), Some(2), "{done:?}");
}
