//! Child processes the harness starts (servers under test, the load generator): start,
//! wait for the `listening on ADDR` line, sample CPU time from `/proc`, stop.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use duo_testkit::ChildServer;

/// How long a server may take to print its `listening on` line.
const STARTUP: Duration = Duration::from_secs(60);

/// A running server under test (the tests' [`ChildServer`], with errors as strings for
/// the harness's report), killed by its PID and reaped when dropped.
pub(crate) struct Server {
    name: String,
    child: ChildServer,
}

impl Server {
    /// Starts `exe args...`, with stderr written to `log`, and waits for the line
    /// `listening on ADDR` on its stdout.
    pub(crate) fn start(
        name: &str,
        exe: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Server, String> {
        let log_file = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.args(args);
        ends_with_harness(&mut cmd);
        let child = ChildServer::builder(cmd)
            .startup(STARTUP)
            .stderr(log_file)
            .try_start()
            .map_err(|e| format!("{name}: {e} (see {})", log.display()))?;
        Ok(Server {
            name: name.to_owned(),
            child,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.child.addr()
    }

    /// The address as the `listening on` line gave it: `HOST:PORT`, or `unix:/path`,
    /// `unix:@name` for a server on a Unix-domain socket.
    pub(crate) fn announced(&self) -> &str {
        self.child.announced()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// CPU time (user + system) the server has used so far.
    pub(crate) fn cpu_time(&self) -> Result<Duration, String> {
        cpu_time(self.pid()).map_err(|e| format!("{}: {e}", self.name))
    }

    /// How the server ended, if it has.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait()
    }

    /// Sends SIGTERM (a graceful stop) and waits up to `grace` for the server to exit;
    /// returns its status and how long it took. Past `grace` it is killed, and that is an
    /// error.
    pub(crate) fn terminate(&mut self, grace: Duration) -> Result<(ExitStatus, Duration), String> {
        self.child.try_terminate("TERM", grace)
    }
}

/// Makes the child `cmd` starts get SIGTERM when the harness ends without stopping it
/// (killed by a CI timeout's SIGTERM or by SIGKILL, its terminal gone): no server, load
/// generator or Prometheus outlives the harness that started it. The signal follows the
/// thread that spawns the child (see [`duo_sys::set_parent_death_signal`]): spawn from a
/// thread that outlives the child.
pub(crate) fn ends_with_harness(cmd: &mut Command) {
    duo_sys::set_parent_death_signal(cmd, duo_sys::Signal::TERM);
}

/// `utime + stime` of a process, from `/proc/PID/stat`.
pub(crate) fn cpu_time(pid: u32) -> Result<Duration, String> {
    duo_testkit::cpu_time(pid).map_err(|e| format!("CPU time of {pid}: {e}"))
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

/// Runs a command to completion with a wall-clock bound; returns whether it succeeded and
/// its stdout. stderr goes to `log`.
pub(crate) fn run_bounded(
    cmd: &mut Command,
    bound: Duration,
    log: &Path,
) -> Result<(bool, String), String> {
    let log_file = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    ends_with_harness(cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    duo_testkit::finish_within(child, bound)
        .map(|done| (done.status.success(), done.stdout))
        .map_err(|e| format!("{:?} {e} (see {})", cmd.get_program(), log.display()))
}

/// A file in a run directory kept on purpose (`observe --keep-dir`): never removed as left
/// behind.
pub(crate) const KEEP_MARK: &str = ".kept";

/// Removes the directories in `dir` named `PREFIX<PID>` or `PREFIX<PID>-...` whose process
/// is gone (killed, so it never removed its own), except those kept on purpose
/// ([`KEEP_MARK`]). Others' directories it cannot remove are left alone.
pub(crate) fn remove_left_behind(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let pid = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .map(|rest| rest.split_once('-').map_or(rest, |(pid, _)| pid))
            .and_then(|pid| pid.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        let path = entry.path();
        let gone = pid != std::process::id() && !duo_testkit::is_running(pid);
        if gone && entry.file_type().is_ok_and(|t| t.is_dir()) && !path.join(KEEP_MARK).exists() {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}
