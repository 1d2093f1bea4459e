//! `echo serve --processes N` run from a terminal set to `stty tostop`, where a
//! background process that writes to the terminal is stopped by `SIGTTOU`. The workers
//! are in process groups of their own (so a Ctrl-C reaches them once, forwarded by the
//! supervisor), which makes them background processes of the terminal: their log lines
//! stopped them for good, so they never got ready (a bug found by review).
//!
//! The terminal is a pseudo-terminal that `script` (util-linux, on every Debian system)
//! makes the controlling terminal of a new session, in which a shell sets `tostop` and
//! becomes the supervisor. Every process is ended by its PID.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::round_trip;
use common::supervised::{proc_state, ECHO};
use duo_testkit::{children, is_running, send_signal, wait_until_within, ChildServer};

/// The supervisor (the child of `script`) and its workers, killed by PID when the test
/// ends, however it ends.
struct Job {
    supervisor: Option<u32>,
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(pid) = self.supervisor {
            for worker in children(pid) {
                let _ = send_signal(worker, "KILL");
            }
            let _ = send_signal(pid, "KILL");
        }
    }
}

#[test]
fn workers_logging_to_a_tostop_terminal_are_not_stopped() {
    let script = Path::new("/usr/bin/script");
    if !script.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "/usr/bin/script (util-linux) is missing"
        );
        eprintln!("skipped: /usr/bin/script (util-linux) is not installed");
        return;
    }
    // The shell writes its PID, the supervisor's once it executes echo, so that the test
    // ends it however the start goes. `-onlcr`: lines come out of the terminal as
    // written, without a carriage return.
    let pid_file = std::env::temp_dir().join(format!("duo-tostop-{}.pid", std::process::id()));
    let shell = format!(
        "echo $$ > {} && stty tostop -onlcr && exec {ECHO} serve --listen 127.0.0.1:0 \
         --processes 2 --io-threads 1",
        pid_file.display()
    );
    let mut cmd = Command::new(script);
    cmd.args(["--quiet", "--return", "--command", &shell, "/dev/null"])
        // Every worker logs as it starts: each writes to the terminal.
        .env("RUST_LOG", "info");
    let mut job = Job { supervisor: None };
    let started = ChildServer::builder(cmd)
        .allow_preamble()
        .startup(Duration::from_secs(8))
        .try_start();
    job.supervisor = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|pid| pid.trim().parse().ok());
    let _ = std::fs::remove_file(&pid_file);
    let server = started.unwrap_or_else(|e| {
        panic!("echo serve --processes 2 in a `stty tostop` terminal never got ready: {e}")
    });
    let supervisor = job.supervisor.expect("the supervisor's PID");
    let workers = children(supervisor);
    assert_eq!(workers.len(), 2, "workers of {supervisor}: {workers:?}");
    for _ in 0..4 {
        let mut s = std::net::TcpStream::connect(server.addr()).unwrap();
        round_trip(&mut s, b"still serving\n");
    }
    for pid in &workers {
        assert_ne!(proc_state(*pid), Some('T'), "worker {pid} is stopped");
    }

    send_signal(supervisor, "TERM").unwrap();
    wait_until_within(Duration::from_secs(10), "the supervisor exited", || {
        !is_running(supervisor) && workers.iter().all(|pid| !is_running(*pid))
    });
}
