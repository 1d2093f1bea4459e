//! `stop_self` for real: this test executes itself as a child (a `harness = false` test,
//! so the child's only thread blocks the stop signal as a supervisor's threads all do) in
//! a process group of its own, not orphaned (its parent, this test, is in another group
//! of the same session), and plays Ctrl-Z with `kill -s TSTP` and `fg` with
//! `kill -s CONT`, reading the child's state from `/proc/PID/stat` (`T`: stopped). Every
//! wait is bounded; the child is killed by its PID if it overstays.
//!
//! - A second Ctrl-Z still pending when `stop_self` runs (two Ctrl-Z in quick succession)
//!   stopped the process twice: the pending one on unblocking, then the raised one once
//!   continued, so it took two `fg` to go on.
//! - Two Ctrl-Z one after the other stop the process each time.
//! - The signal's disposition is restored afterwards (it was left at `SIG_DFL`: an
//!   ignored `SIGTSTP`, inherited by the processes the caller starts next, was not).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use duo_sys::{block_signals, signal_process, stop_self, Signal};
use duo_testkit::send_signal;

const CASE: &str = "DUO_STOP_SELF_CASE";
/// How long a stop, a continue or an exit may take to show.
const SHOWS: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    match std::env::var(CASE) {
        Ok(case) => child(&case),
        Err(_) => {
            parent();
            println!("stop_self: ok");
            ExitCode::SUCCESS
        }
    }
}

/// Whether `SIGTSTP` is ignored in this process (`SigIgn` of `/proc/self/status`).
fn tstp_ignored() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap();
    mask & (1 << (Signal::TSTP.as_raw() - 1)) != 0
}

fn child(case: &str) -> ExitCode {
    block_signals(&[Signal::TSTP]).unwrap();
    match case {
        "pending" => {
            // A second Ctrl-Z came while the first was being handled: pending, blocked.
            signal_process(std::process::id(), Signal::TSTP).unwrap();
            stop_self(Signal::TSTP).unwrap();
        }
        "twice" => {
            stop_self(Signal::TSTP).unwrap();
            eprintln!("continued once");
            stop_self(Signal::TSTP).unwrap();
        }
        "ignored" => {
            assert!(tstp_ignored(), "started with SIGTSTP ignored");
            stop_self(Signal::TSTP).unwrap();
            assert!(tstp_ignored(), "SIGTSTP ignored again after the stop");
        }
        other => panic!("no case {other}"),
    }
    eprintln!("done");
    ExitCode::SUCCESS
}

/// A child and what it wrote to its stderr so far (read by a thread of this test).
struct Kid {
    child: Child,
    err: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

/// The child running `case` in a process group of its own; with `ignored`, started with
/// `SIGTSTP` ignored (as a shell's `trap '' TSTP` leaves it for the program it runs).
fn spawn(case: &str, ignored: bool) -> Kid {
    let me = std::env::current_exe().unwrap();
    let mut cmd = if ignored {
        let mut c = Command::new("sh");
        c.arg("-c").arg("trap '' TSTP; exec \"$0\"").arg(me);
        c
    } else {
        Command::new(me)
    };
    cmd.env(CASE, case)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err = Arc::new(Mutex::new(String::new()));
    let sink = err.clone();
    // Ends at the child's exit (or kill): the pipe's end of file.
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok(n @ 1..) = stderr.read(&mut buf) {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    Kid {
        child,
        err,
        reader: Some(reader),
    }
}

impl Kid {
    fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Waits until `ok` holds, at most [`SHOWS`]; kills the child and fails if not.
    fn wait_for(&mut self, what: &str, mut ok: impl FnMut(&mut Kid) -> bool) {
        let deadline = Instant::now() + SHOWS;
        while !ok(self) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "child {}: not {what} within {SHOWS:?}\n{}",
                    self.child.id(),
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until the child is stopped, then continues it.
    fn stop_seen_then_continue(&mut self) {
        let pid = self.child.id();
        self.wait_for("stopped", |_| state(pid) == Some('T'));
        send_signal(pid, "CONT").unwrap();
    }

    /// Waits until the child has exited, and checks that it succeeded.
    fn exits_ok(mut self, case: &str) {
        self.wait_for("exited after one continue", |k| {
            k.child.try_wait().unwrap().is_some()
        });
        let status = self.child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
        let err = self.stderr();
        assert!(status.success(), "child {case}: {status}\n{err}");
        assert!(err.ends_with("done\n"), "child {case}:\n{err}");
    }
}

/// The state letter of process `pid` (`T`: stopped), if it still exists.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn parent() {
    // Two Ctrl-Z, the second pending: one stop, one `fg`.
    let mut c = spawn("pending", false);
    c.stop_seen_then_continue();
    c.exits_ok("pending");

    // Two Ctrl-Z one after the other: two stops.
    let mut c = spawn("twice", false);
    c.stop_seen_then_continue();
    c.wait_for("continued", |k| k.stderr().contains("continued once"));
    c.stop_seen_then_continue();
    c.exits_ok("twice");

    // The disposition the process had is back afterwards.
    let mut c = spawn("ignored", true);
    c.stop_seen_then_continue();
    c.exits_ok("ignored");
}
