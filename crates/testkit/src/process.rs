//! Child processes without a server: run to completion, wait with a deadline, signal.

use std::io::{self, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
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
/// if it is still running after `limit`; that is an error naming the program.
pub fn run_within(cmd: &mut Command, limit: Duration) -> Result<Finished, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    // Both pipes are read to their end on threads, joined once the process has exited (the
    // pipes close with it), so nothing written just before the exit is missed and the child
    // never blocks on a full pipe.
    let stdout = read_to_end(child.stdout.take().expect("piped stdout"));
    let stderr = read_to_end(child.stderr.take().expect("piped stderr"));
    let Some(status) = wait_child_within(&mut child, limit) else {
        let _ = child.kill();
        let _ = wait_child_within(&mut child, limit);
        return Err(format!(
            "{:?} still running after {limit:?}; killed",
            cmd.get_program()
        ));
    };
    Ok(Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Reads `pipe` to its end on a thread of its own.
fn read_to_end(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
