//! Child processes the harness starts (servers under test, the load generator): start,
//! wait for the `listening on ADDR` line, sample CPU time from `/proc`, stop.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a server may take to print its `listening on` line.
const STARTUP: Duration = Duration::from_secs(60);

/// A running server, killed (by its PID) and reaped when dropped.
pub(crate) struct Server {
    name: String,
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts `exe args...`, with stderr appended to `log`, and waits for the line
    /// `listening on ADDR` on its stdout.
    pub(crate) fn start(
        name: &str,
        exe: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Server, String> {
        let log_file = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let mut server = Server {
            name: name.to_owned(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = match rx.recv_timeout(STARTUP) {
            Ok(Some(Ok(line))) => line,
            Ok(_) => {
                return Err(format!(
                    "{name} exited before listening (see {})",
                    log.display()
                ))
            }
            Err(_) => return Err(format!("{name} did not start listening within {STARTUP:?}")),
        };
        server.addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| format!("{name}: unexpected first line {line:?}"))?;
        Ok(server)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) the server has used so far.
    pub(crate) fn cpu_time(&self) -> Result<Duration, String> {
        cpu_time(self.pid()).map_err(|e| format!("{}: {e}", self.name))
    }

    /// How the server ended, if it has.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM (a graceful stop) and waits up to `grace` for the server to exit;
    /// returns its status and how long it took. Past `grace` it is killed, and that is an
    /// error.
    pub(crate) fn terminate(&mut self, grace: Duration) -> Result<(ExitStatus, Duration), String> {
        if let Some(status) = self.exited() {
            return Err(format!("had already exited: {status}"));
        }
        let sent = Instant::now();
        let kill = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .map_err(|e| format!("cannot run kill: {e}"))?;
        if !kill.success() {
            return Err(format!("kill -TERM {} failed: {kill}", self.pid()));
        }
        loop {
            if let Some(status) = self.exited() {
                return Ok((status, sent.elapsed()));
            }
            if sent.elapsed() > grace {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "still running {grace:?} after SIGTERM; killed (see its log)"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `utime + stime` of a process, from `/proc/PID/stat`.
pub(crate) fn cpu_time(pid: u32) -> Result<Duration, String> {
    duo_benches::cpu::cpu_time(pid).map_err(|e| format!("CPU time of {pid}: {e}"))
}

/// A numeric field of `/proc/PID/status` (`VmRSS`, `RssAnon` in KiB, `Threads`).
pub(crate) fn status_field(pid: u32, field: &str) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("/proc/{pid}/status has no {field}"))
}

/// Open file descriptors of a process (entries of `/proc/PID/fd`).
pub(crate) fn open_fds(pid: u32) -> Result<u64, String> {
    let dir =
        std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| format!("/proc/{pid}/fd: {e}"))?;
    Ok(dir.count() as u64)
}

/// Runs a command to completion with a wall-clock bound; returns its stdout. stderr goes
/// to `log`.
pub(crate) fn run_bounded(
    cmd: &mut Command,
    bound: Duration,
    log: &Path,
) -> Result<(bool, String), String> {
    let log_file = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        out
    });
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().unwrap_or_default();
    match status {
        Some(s) => Ok((s.success(), out)),
        None => Err(format!(
            "{:?} still running after {bound:?}; killed (see {})",
            cmd.get_program(),
            log.display()
        )),
    }
}
