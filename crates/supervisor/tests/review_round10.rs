//! Review round 10 of the process helpers and the supervisor, with the `demo` example as a
//! child process (and this test binary itself, executed again, for `terminate_by`).
//!
//! - `duo_sys::terminate_by` for a signal whose default action does not end the process
//!   returned with that signal unblocked in the calling thread and at its default action:
//!   a program that read it from a signalfd (blocked) lost the next one, and one that
//!   ignored it (`SIG_IGN`) no longer did. It puts back the mask and the disposition now.
//! - An upgrade (`SIGUSR2`) while a replacement worker was still starting adopted it as
//!   ready: its readiness pipe closed with the old image, and the deadline that retires a
//!   replacement stuck in its start was lost with the old image's timers. Stuck for good,
//!   it left the serving generation one short for ever (here: without any worker that
//!   accepts, once the new generation of the upgrade failed), and connections waited
//!   unserved. The pipe of a worker still starting is handed over now, and it gets its
//!   ready deadline again in the new image.
//! - The summed stats line lost what the workers counted during an upgrade's `exec`: the
//!   old image handed over its totals up to the moment of the hand-over, and the new one
//!   counted from the rows as it found them, later. Never backwards, but the `accepted`
//!   total stayed short for good (by some 40 of 800 connections made across an upgrade
//!   here; the test shows it in most runs on the old code, not all: it needs a connection
//!   accepted during the `exec`). The workers' own totals are handed over with the sum
//!   now, and the new image counts from those.
//! - The `demo` example panicked (exit status 101) when stderr was a pipe nobody reads
//!   (`eprintln!`), or stdout for its `listening on` line (`println!`).
//!
//! Every wait is bounded; a supervisor is killed by its guard if a test fails, and its
//! workers then by their parent-death signal.

#[allow(dead_code)]
mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::Command;

use common::{mode_file, Dir};
use duo_sys::{block_signals, terminate_by, Signal};
use duo_testkit::{example_binary, run_with_gone, ChildServer, Finished, Gone, LIMIT};

/// The variable that makes this test binary, executed again, run the child's part.
const TERMINATE_CHILD_VAR: &str = "DUO_R10_TERMINATE_BY_CHILD";

/// Bit `signal` of a `Sig*:` line of a `/proc/.../status` file.
fn status_bit(status_file: &str, field: &str, signal: i32) -> bool {
    let status = std::fs::read_to_string(status_file).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {status_file}"))
        .trim();
    let mask = u64::from_str_radix(hex, 16).unwrap();
    mask & (1 << (signal - 1)) != 0
}

/// `terminate_by` a signal whose default action is to be ignored (`SIGURG`) returns, and
/// leaves the signal as it found it: still blocked in the calling thread, still ignored
/// (the process starts with it ignored: `trap '' URG` in the shell that executes it).
#[test]
fn terminate_by_that_returns_puts_back_the_mask_and_the_disposition() {
    let urg = Signal::from_raw(23).unwrap();
    if std::env::var_os(TERMINATE_CHILD_VAR).is_some() {
        assert!(
            status_bit("/proc/self/status", "SigIgn:", 23),
            "started without SIGURG ignored"
        );
        block_signals(&[urg]).unwrap();
        assert!(status_bit("/proc/thread-self/status", "SigBlk:", 23));
        let e = terminate_by(urg);
        println!("terminate_by returned: {e}");
        assert!(
            status_bit("/proc/thread-self/status", "SigBlk:", 23),
            "SIGURG left unblocked in the calling thread"
        );
        assert!(
            status_bit("/proc/self/status", "SigIgn:", 23),
            "SIGURG no longer ignored"
        );
        println!("terminate_by child: ok");
        return;
    }
    let me = std::env::current_exe().unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("trap '' URG; exec \"$0\" --exact \"$1\" --nocapture --test-threads=1")
        .arg(&me)
        .arg("terminate_by_that_returns_puts_back_the_mask_and_the_disposition")
        .env(TERMINATE_CHILD_VAR, "1");
    let out = duo_testkit::run_within(&mut cmd, LIMIT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success() && out.stdout.contains("terminate_by child: ok"),
        "{out:?}"
    );
}

/// The PIDs of the `started worker PID (generation G` lines of `log`, in order.
fn started(log: &str, generation: u64) -> Vec<u32> {
    let tail = format!(" (generation {generation},");
    log.lines()
        .filter_map(|l| l.split("started worker ").nth(1))
        .filter_map(|rest| rest.split_once(&tail).map(|(pid, _)| pid.parse().ok()))
        .flatten()
        .collect()
}

/// A replacement stuck in its start (`silent`) when the supervisor upgrades, whose new
/// generation then fails (`fail`): the stuck one was adopted as ready and, without its
/// ready deadline, served nothing for ever; the connection below was never answered. Now
/// it is retired at its ready deadline and replaced by a worker that serves.
#[test]
fn an_upgrade_while_a_replacement_starts_keeps_its_ready_deadline() {
    let dir = Dir::new("r10-stuck-replacement");
    let mode = mode_file(&dir, "echo");
    let mut cmd = Command::new(example_binary("duo-supervisor", "demo"));
    cmd.arg("1")
        .env("DEMO_MODE_FILE", &mode)
        .env("DEMO_READY_TIMEOUT_MS", "3000")
        .env("DEMO_STOP_TIMEOUT_MS", "1000")
        .env("RUST_LOG", "info");
    let server = ChildServer::start(cmd);
    server.wait_for_stderr("generation 1 is serving", LIMIT);
    let first = started(&server.stderr(), 1);
    assert_eq!(first.len(), 1, "{}", server.stderr());
    mode_file(&dir, "silent");
    duo_testkit::send_signal(first[0], "KILL").unwrap();
    duo_testkit::wait_until("the replacement's start", || {
        started(&server.stderr(), 1).len() == 2
    });
    let stuck = started(&server.stderr(), 1)[1];
    // (It reads the mode file at its start: not yet the next mode.)
    server.wait_for_stderr(&format!("demo worker {stuck}: mode Silent"), LIMIT);
    // The upgrade's new generation fails: the serving one (the stuck replacement) goes on.
    mode_file(&dir, "fail");
    server.signal("USR2");
    server.wait_for_stderr("generation 1 keeps serving", LIMIT);
    let log = server.stderr();
    assert!(
        log.contains(&format!("adopting worker {stuck} (generation 1")),
        "the replacement was not adopted as serving (retired before the upgrade?):\n{log}"
    );
    mode_file(&dir, "echo");
    // Waits in the listening socket's queue until a worker that serves takes it.
    let conn = TcpStream::connect(server.addr()).unwrap();
    conn.set_read_timeout(Some(LIMIT)).unwrap();
    let mut line = String::new();
    let read = BufReader::new(conn).read_line(&mut line);
    assert!(
        matches!(read, Ok(n) if n > 0) && line.starts_with("pid "),
        "no worker served within {LIMIT:?} ({read:?}, {line:?}); log:\n{}",
        server.stderr()
    );
    assert_ne!(line.trim(), format!("pid {stuck}"));
}

/// A replacement slow to start (`slow`) when the supervisor upgrades: the new image reads
/// its readiness pipe and sees it report ready (the byte went nowhere before: the worker
/// logged that the supervisor no longer waited).
#[test]
fn an_upgrade_while_a_replacement_starts_hears_it_report_ready() {
    let dir = Dir::new("r10-slow-replacement");
    let mode = mode_file(&dir, "echo");
    let mut cmd = Command::new(example_binary("duo-supervisor", "demo"));
    cmd.arg("1")
        .env("DEMO_MODE_FILE", &mode)
        .env("DEMO_READY_TIMEOUT_MS", "5000")
        .env("DEMO_STOP_TIMEOUT_MS", "1000")
        .env("RUST_LOG", "info");
    let server = ChildServer::start(cmd);
    server.wait_for_stderr("generation 1 is serving", LIMIT);
    let first = started(&server.stderr(), 1);
    mode_file(&dir, "slow");
    duo_testkit::send_signal(first[0], "KILL").unwrap();
    duo_testkit::wait_until("the replacement's start", || {
        started(&server.stderr(), 1).len() == 2
    });
    let slow = started(&server.stderr(), 1)[1];
    server.wait_for_stderr(&format!("demo worker {slow}: mode Slow"), LIMIT);
    mode_file(&dir, "fail");
    server.signal("USR2");
    server.wait_for_stderr(&format!("adopting worker {slow}"), LIMIT);
    server.wait_for_stderr(&format!("worker {slow} (generation 1) is ready"), LIMIT);
    let log = server.stderr();
    assert!(!log.contains("no longer waits for readiness"), "{log}");
}

/// Runs the demo with `args`, its `gone` stream leading nowhere; how it ended, and what it
/// wrote on the other stream.
fn demo_with(gone: Gone, args: &[&str]) -> Finished {
    let mut cmd = Command::new(example_binary("duo-supervisor", "demo"));
    cmd.args(args).env("RUST_LOG", "info");
    run_with_gone(&mut cmd, gone, LIMIT).unwrap_or_else(|e| panic!("demo {args:?}: {e}"))
}

/// A bad command line with nobody reading stderr: exit status 2 (not 101, a panic).
#[test]
fn the_demo_with_stderr_gone_exits_with_its_status_not_a_panic() {
    let out = demo_with(Gone::Stderr, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = demo_with(Gone::Stderr, &["1", "nonsense"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// Nobody reads stdout: the `listening on` line cannot be written. The demo says so and
/// exits with status 1 once its workers have stopped, rather than panicking (101).
#[test]
fn the_demo_with_stdout_gone_exits_1_not_a_panic() {
    let out = demo_with(Gone::Stdout, &["1"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    assert!(out.stderr.contains("listening on"), "{out:?}");
}

/// The `accepted` total of the last `stats:` line of `log`.
fn last_accepted(log: &str) -> Option<u64> {
    log.lines()
        .rev()
        .filter(|l| l.contains("stats: generation"))
        .find_map(|l| {
            l.split(" accepted")
                .next()?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
}

/// Connections accepted while the upgrade's `exec` runs are counted by the summed stats
/// line: its `accepted` total, once the clients are done, is every connection made
/// (it counted none of those the worker accepted between the hand-over of the totals and
/// the new image's first look at the rows).
#[test]
fn the_stats_line_counts_the_connections_of_an_upgrade() {
    let dir = Dir::new("r10-stats-upgrade");
    let mode = mode_file(&dir, "echo");
    let mut cmd = Command::new(example_binary("duo-supervisor", "demo"));
    cmd.arg("1")
        .env("DEMO_MODE_FILE", &mode)
        .env("DEMO_READY_TIMEOUT_MS", "2000")
        .env("DEMO_STOP_TIMEOUT_MS", "1000")
        .env("RUST_LOG", "info");
    let server = ChildServer::start(cmd);
    // The upgrade's generation never gets ready: the first one serves throughout (nobody
    // is killed with a connection accepted and not yet counted).
    mode_file(&dir, "silent");
    let addr = server.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut made = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                common::worker_of_connection(addr);
                made += 1;
            }
            made
        })
    };
    duo_testkit::wait_until("some connections first", || {
        last_accepted(&server.stderr()).is_some_and(|n| n > 0)
    });
    server.signal("USR2");
    server.wait_for_stderr("starting generation 2", LIMIT);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let made = client.join().unwrap();
    // (A line every 200 ms.)
    let deadline = std::time::Instant::now() + LIMIT / 2;
    while last_accepted(&server.stderr()) != Some(made) {
        assert!(
            std::time::Instant::now() < deadline,
            "{made} connections made, the stats line says {:?}:\n{}",
            last_accepted(&server.stderr()),
            server.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
