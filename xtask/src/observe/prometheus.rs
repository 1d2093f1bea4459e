//! A Prometheus server of the run's own: found on the host, configured to scrape one
//! target every second, with its data in the run's directory, listening on a free
//! loopback port.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::child::Running;
use super::http;

/// Where the Debian package puts the binary, tried when `prometheus` is not on `PATH`.
const DEBIAN_PATH: &str = "/usr/bin/prometheus";
/// The job name of the scraped target (`up{job="echo"}`).
pub(super) const JOB: &str = "echo";
/// Attempts at starting Prometheus on a free port (another process may take the port
/// between our probe and Prometheus' bind).
const ATTEMPTS: usize = 3;

/// The `prometheus` binary: the first on `PATH`, else [`DEBIAN_PATH`]; an error that says
/// how to install it if there is none.
pub(super) fn find() -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("prometheus"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from(DEBIAN_PATH)])
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            "no `prometheus` on PATH nor at /usr/bin/prometheus: install the Debian package \
             (`apt-get install -y prometheus`, as root; `.ci/run` does that when it is missing)"
                .to_owned()
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The first line of `prometheus --version` ("prometheus, version 2.42.0+ds (...)").
pub(super) fn version(exe: &Path) -> Result<String, String> {
    let out = Command::new(exe)
        .arg("--version")
        .output()
        .map_err(|e| format!("{} --version: {e}", exe.display()))?;
    // Older releases print the version on stderr.
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(str::to_owned)
        .filter(|l| out.status.success() && !l.is_empty())
        .ok_or_else(|| format!("{} --version: {}", exe.display(), out.status))
}

/// The configuration: every second, `target`'s `/metrics` as job [`JOB`].
pub(super) fn config(target: SocketAddr) -> String {
    format!(
        "# Written by `cargo xtask observe`.\n\
         global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: {JOB}\n    metrics_path: /metrics\n    \
         static_configs:\n      - targets: ['{target}']\n"
    )
}

/// A running Prometheus server (stopped by its PID when dropped).
#[derive(Debug)]
pub(super) struct Prometheus {
    process: Running,
    /// Its HTTP API.
    pub(super) addr: SocketAddr,
    /// How long it took to answer `/-/ready`.
    pub(super) startup: Duration,
}

impl Prometheus {
    /// Writes `dir/prometheus.yml` to scrape `target`, starts `exe` with its data in
    /// `dir/data` and its log in `dir/prometheus.log`, and waits (at most `limit`) until it
    /// says it is ready.
    pub(super) fn start(
        exe: &Path,
        dir: &Path,
        target: SocketAddr,
        limit: Duration,
    ) -> Result<Prometheus, String> {
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config(target))
            .map_err(|e| format!("{}: {e}", config_file.display()))?;
        let log = dir.join("prometheus.log");
        let mut last_error = String::new();
        for _ in 0..ATTEMPTS {
            let addr = free_port()?;
            let mut cmd = Command::new(exe);
            cmd.arg(format!("--config.file={}", config_file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"));
            let started = Instant::now();
            let process = Running::spawn("prometheus", &mut cmd, &log, false)?;
            let mut prometheus = Prometheus {
                process,
                addr,
                startup: Duration::ZERO,
            };
            match prometheus.wait_ready(started + limit, &log) {
                Ok(()) => {
                    prometheus.startup = started.elapsed();
                    return Ok(prometheus);
                }
                Err(e) => last_error = e,
            }
            // Only a port taken under our feet is worth another attempt.
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            if !log_text.contains("address already in use") {
                break;
            }
        }
        Err(last_error)
    }

    pub(super) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// An error if Prometheus has exited.
    pub(super) fn still_running(&mut self) -> Result<(), String> {
        self.process.still_running()
    }

    /// Polls `/-/ready` until it answers 200 or `deadline` passes; an error (with the end
    /// of the log) if Prometheus exits or stays unready.
    fn wait_ready(&mut self, deadline: Instant, log: &Path) -> Result<(), String> {
        loop {
            if let Some(status) = self.process.exited() {
                return Err(format!(
                    "prometheus exited before it was ready: {status}; the end of {}:\n{}",
                    log.display(),
                    tail(log, 15)
                ));
            }
            let last = match http::get(self.addr, "/-/ready") {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => format!("HTTP {}: {}", r.status, r.body.trim()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "prometheus at {} not ready in time ({last}); the end of {}:\n{}",
                    self.addr,
                    log.display(),
                    tail(log, 15)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A loopback address with a port that was free a moment ago.
fn free_port() -> Result<SocketAddr, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

/// The last `n` lines of the file at `path` (empty if it cannot be read).
pub(super) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::config;

    #[test]
    fn config_scrapes_the_target_every_second() {
        let text = config("127.0.0.1:9".parse().expect("an address"));
        assert!(text.contains("scrape_interval: 1s"));
        assert!(text.contains("job_name: echo"));
        assert!(text.contains("targets: ['127.0.0.1:9']"));
    }
}
