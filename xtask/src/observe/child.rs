//! The processes `observe` starts (echo, loadgen, Prometheus): each held by a guard that
//! stops it by its PID when dropped, also when the run fails half-way.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use duo_testkit::{send_signal, wait_child_within};

/// How long a stopped process may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running child process; dropping it sends SIGTERM to its PID, waits up to
/// [`STOP_GRACE`], then sends SIGKILL, and reaps it.
#[derive(Debug)]
pub(super) struct Running {
    name: String,
    child: Child,
}

impl Running {
    /// Starts `cmd` with stdin empty, stderr written to `log` and stdout too, or piped
    /// with `pipe_stdout`.
    pub(super) fn spawn(
        name: &str,
        cmd: &mut Command,
        log: &Path,
        pipe_stdout: bool,
    ) -> Result<Running, String> {
        let log_file = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let stdout = if pipe_stdout {
            Stdio::piped()
        } else {
            log_file
                .try_clone()
                .map_err(|e| format!("{}: {e}", log.display()))?
                .into()
        };
        crate::process::ends_with_harness(cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        Ok(Running {
            name: name.to_owned(),
            child,
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the process ended, if it has (without waiting).
    pub(super) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// An error if the process has exited.
    pub(super) fn still_running(&mut self) -> Result<(), String> {
        match self.exited() {
            None => Ok(()),
            Some(status) => Err(format!(
                "{} (PID {}) exited: {status}",
                self.name,
                self.pid()
            )),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let pid = self.pid();
        let termed = send_signal(pid, "TERM").is_ok_and(|s| s.success());
        if !termed || wait_child_within(&mut self.child, STOP_GRACE).is_none() {
            let _ = self.child.kill();
            let _ = wait_child_within(&mut self.child, STOP_GRACE);
        }
    }
}

/// The echo server, started with `--metrics`, and the two addresses it printed.
#[derive(Debug)]
pub(super) struct Echo {
    pub(super) process: Running,
    /// Where it serves echo (the `listening on` line).
    pub(super) addr: SocketAddr,
    /// Where it serves `/metrics` (the `metrics on` line).
    pub(super) metrics: SocketAddr,
}

impl Echo {
    /// Starts `exe serve --listen 127.0.0.1:0 --metrics 127.0.0.1:0` (with `--processes N`
    /// if `processes` is given; stderr to `log`) and waits up to `startup` for its
    /// `listening on ADDR` and `metrics on ADDR` lines (in either order).
    pub(super) fn start(
        exe: &Path,
        log: &Path,
        startup: Duration,
        processes: Option<usize>,
    ) -> Result<Echo, String> {
        let mut cmd = Command::new(exe);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ]);
        if let Some(n) = processes {
            cmd.args(["--processes", &n.to_string()]);
        }
        let mut process = Running::spawn("echo", &mut cmd, log, true)?;
        let lines = read_lines(&mut process)?;
        let deadline = Instant::now() + startup;
        // Both lines, in either order; any other line is an error.
        let (mut addr, mut metrics) = (None, None);
        let (addr, metrics) = loop {
            if let (Some(a), Some(m)) = (addr, metrics) {
                break (a, m);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "echo printed no `listening on` and `metrics on` lines within \
                         {startup:?} (its log: {})",
                        log.display()
                    ))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "echo closed its stdout before its `listening on` and `metrics on` \
                         lines (does it know --metrics? its log: {})",
                        log.display()
                    ))
                }
            };
            let parse = |prefix: &str| line.strip_prefix(prefix)?.trim().parse().ok();
            if let Some(a) = parse("listening on ") {
                addr = Some(a);
            } else if let Some(a) = parse("metrics on ") {
                metrics = Some(a);
            } else {
                return Err(format!(
                    "echo printed {line:?} where `listening on ADDR` or `metrics on ADDR` \
                     was due"
                ));
            }
        };
        Ok(Echo {
            process,
            addr,
            metrics,
        })
    }
}

/// Reads the child's piped stdout line by line on a thread of its own (which keeps
/// draining it, so the child never blocks on a full pipe).
fn read_lines(process: &mut Running) -> Result<mpsc::Receiver<String>, String> {
    let stdout = process
        .child
        .stdout
        .take()
        .ok_or_else(|| format!("{}: stdout is not piped", process.name))?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Keep reading after the receiver is gone.
            let _ = tx.send(line);
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use super::Echo;
    use crate::observe::RunDir;

    /// Writes an executable shell script to `path`. A child shell writes it, so this
    /// process never holds the file open for writing: a child that another test forks
    /// meanwhile would inherit such a descriptor until its `exec`, and running the
    /// script then fails with ETXTBSY ("Text file busy").
    fn write_script(path: &Path, script: &str) {
        let mut sh = Command::new("sh")
            .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
            .arg(path)
            .stdin(Stdio::piped())
            .spawn()
            .expect("start sh");
        let mut stdin = sh.stdin.take().expect("piped stdin");
        stdin
            .write_all(script.as_bytes())
            .expect("write the script");
        drop(stdin);
        assert!(
            sh.wait().expect("wait for sh").success(),
            "sh wrote {path:?}"
        );
    }

    /// A stand-in for echo in `dir`: a shell script that prints `lines`, then sleeps.
    fn fake_echo(dir: &Path, lines: &str) -> PathBuf {
        let exe = dir.join("echo");
        write_script(
            &exe,
            &format!("#!/bin/sh\nprintf '{lines}'\nexec sleep 60\n"),
        );
        exe
    }

    #[test]
    fn reads_both_addresses_in_either_order() {
        let dir = RunDir::create("child_both", false).expect("a directory");
        let exe = fake_echo(
            &dir.path,
            "metrics on 127.0.0.1:9100\\nlistening on 127.0.0.1:7000\\n",
        );
        let mut echo = Echo::start(
            &exe,
            &dir.path.join("echo.log"),
            Duration::from_secs(20),
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(echo.addr.to_string(), "127.0.0.1:7000");
        assert_eq!(echo.metrics.to_string(), "127.0.0.1:9100");
        assert!(echo.process.still_running().is_ok());
        let pid = echo.process.pid();
        drop(echo);
        assert!(
            !duo_testkit::is_running(pid),
            "dropping the guard stops {pid}"
        );
    }

    #[test]
    fn a_stray_line_or_a_silent_exit_is_an_error() {
        let dir = RunDir::create("child_bad", false).expect("a directory");
        let log = dir.path.join("echo.log");
        let stray = fake_echo(&dir.path, "listening on 127.0.0.1:7000\\nhello\\n");
        let err =
            Echo::start(&stray, &log, Duration::from_secs(20), None).expect_err("a stray line");
        assert!(err.contains("\"hello\""), "{err}");
        write_script(&stray, "#!/bin/sh\nexit 2\n");
        let err = Echo::start(&stray, &log, Duration::from_secs(20), None).expect_err("an exit");
        assert!(err.contains("closed its stdout"), "{err}");
    }
}
