//! Child processes without a server: run to completion, wait with a deadline, signal.

use std::io::{self, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often a wait for a child's exit looks again (`Child` has no timed wait).
const POLL: Duration = Duration::from_millis(10);

/// Waits for `child` to exit until `limit` passes; `None` if it is still running then.
pub fn wait_child_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on a child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// Sends `signal` (a name for `kill -s`: `TERM`, `INT`, `HUP`, `KILL`) to process `pid`
/// through `kill(1)`, so tests call no libc. Returns how `kill` exited; an error if it
/// cannot be run here.
pub fn send_signal(pid: u32, signal: &str) -> io::Result<ExitStatus> {
    Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdin(Stdio::null())
        .status()
}

/// How a command run by [`run_within`] ended, and everything it wrote.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// All of its standard output.
    pub stdout: String,
    /// All of its standard error.
    pub stderr: String,
}

/// Runs `cmd` to completion (stdin empty, stdout and stderr collected), killing it by PID
/// if it is still running after `limit`; that is an error naming the program, with what it
/// wrote until then.
pub fn run_within(cmd: &mut Command, limit: Duration) -> Result<Finished, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    finish_within(child, limit).map_err(|e| format!("{:?} {e}", cmd.get_program()))
}

/// Waits for a spawned `child` to exit, collecting its stdout and stderr (those that are
/// piped; the others come back empty). If it is still running after `limit` it is killed
/// by PID and reaped, and that is an error with what it wrote until then.
pub fn finish_within(mut child: Child, limit: Duration) -> Result<Finished, String> {
    // Both pipes are read on threads until they close (when the process exits, unless a
    // process it started keeps them open), so nothing written just before the exit is missed
    // and the child never blocks on a full pipe.
    let deadline = Instant::now() + limit;
    let stdout = child.stdout.take().map(read_to_end);
    let stderr = child.stderr.take().map(read_to_end);
    let status = wait_child_within(&mut child, limit);
    if status.is_none() {
        let _ = child.kill();
        let _ = wait_child_within(&mut child, limit);
    }
    // The reading is bounded too: a grandchild that inherited a pipe and lives on must not
    // hold the caller past its limit (what was read by then is returned).
    let stdout = stdout.map_or_else(String::new, |r| r.take_by(deadline));
    let stderr = stderr.map_or_else(String::new, |r| r.take_by(deadline));
    match status {
        Some(status) => Ok(Finished {
            status,
            stdout,
            stderr,
        }),
        None => Err(format!(
            "still running after {limit:?}; killed\nstdout: {stdout:?}\nstderr: {stderr:?}"
        )),
    }
}

/// What a pipe reader thread has read so far, and the thread.
struct PipeReader {
    bytes: Arc<Mutex<Vec<u8>>>,
    thread: JoinHandle<()>,
}

impl PipeReader {
    /// What was read, once the pipe has closed or `deadline` has passed (at least a moment
    /// after the process's exit, for the last bytes in flight).
    fn take_by(self, deadline: Instant) -> String {
        let deadline = deadline.max(Instant::now() + Duration::from_millis(100));
        while !self.thread.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        let bytes = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn read_to_end(mut pipe: impl Read + Send + 'static) -> PipeReader {
    let bytes = Arc::new(Mutex::new(Vec::new()));
    let sink = bytes.clone();
    let thread = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(&buf[..n]);
        }
    });
    PipeReader { bytes, thread }
}

/// The child processes of `pid` (those its main thread started), from
/// `/proc/PID/task/PID/children`; empty if `pid` is gone. A child that exited but was not
/// yet reaped (a zombie) is still listed.
pub fn children(pid: u32) -> std::collections::BTreeSet<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Waits until none of `pids` runs ([`is_running`]), or `limit` passes; whether none does.
pub fn all_gone_within<'a>(
    pids: impl IntoIterator<Item = &'a u32> + Clone,
    limit: std::time::Duration,
) -> bool {
    let gone = || pids.clone().into_iter().all(|p| !is_running(*p));
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if gone() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    gone()
}

/// Whether process `pid` exists and is not a zombie (exited, not yet reaped).
pub fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            // The state follows the command name, which is in parentheses and may hold any
            // character: read it after the last ')'.
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// One end of a socket pair whose other end is closed: a write to it fails with `EPIPE`
/// (`SIGPIPE` being ignored), as to a pipe whose reader is gone.
fn nowhere() -> Stdio {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    drop(ours);
    Stdio::from(std::os::fd::OwnedFd::from(theirs))
}

/// Which output stream of a command [`run_with_gone`] leads nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// Standard output (stderr is collected).
    Stdout,
    /// Standard error (stdout is collected).
    Stderr,
}

/// As [`run_within`], but with the `gone` stream leading nowhere (a write to it fails with
/// `EPIPE`, as when the reader of a pipe exits): for a program that must then end by
/// itself, with the right status and no panic. Its [`Finished`] has the other stream (the
/// `gone` one empty).
pub fn run_with_gone(cmd: &mut Command, gone: Gone, limit: Duration) -> Result<Finished, String> {
    let (stdout, stderr) = match gone {
        Gone::Stdout => (nowhere(), Stdio::piped()),
        Gone::Stderr => (Stdio::piped(), nowhere()),
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    finish_within(child, limit).map_err(|e| format!("{:?} {e}", cmd.get_program()))
}

/// Runs `cmd` with stdin empty and stdout and stderr leading nowhere (each one end of a
/// socket pair whose other end is closed: a write fails with `EPIPE`, `SIGPIPE` being
/// ignored), until it exits or `limit` passes (then killed by PID and reaped); its exit
/// code (`None`: killed by a signal). Panics if it does not exit in time: for a program
/// that must end by itself, with the right status, when it cannot print.
pub fn exit_code_without_output(cmd: &mut Command, limit: Duration) -> Option<i32> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(nowhere())
        .stderr(nowhere())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    let status = wait_child_within(&mut child, limit);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
        .unwrap_or_else(|| panic!("{:?} did not exit within {limit:?}", cmd.get_program()))
        .code()
}
