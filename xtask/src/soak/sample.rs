//! Samples of the servers under test: memory, descriptors, threads and, for echo, its
//! own count of open connections.

use std::path::{Path, PathBuf};

use crate::process::{open_fds, status_field, Server};

/// One server's figures at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Proc {
    pub(super) rss_kib: u64,
    pub(super) anon_kib: u64,
    pub(super) fds: u64,
    pub(super) threads: u64,
    /// Open connections, from the server's own statistics (echo only).
    pub(super) conns: Option<u64>,
}

/// What a sample is.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Mark {
    Baseline,
    /// Every second: charts and the warm-up peak only.
    Fine,
    /// Every `interval`: also in the table.
    Periodic,
    WarmUpEnd,
    LoadEnd,
    CoolDown,
}

impl Mark {
    /// The phase column of the report's table.
    pub(super) fn label(self) -> &'static str {
        match self {
            Mark::Baseline => "baseline",
            Mark::Fine | Mark::Periodic => "",
            Mark::WarmUpEnd => "end of warm-up",
            Mark::LoadEnd => "end of load",
            Mark::CoolDown => "after cool-down",
        }
    }
}

/// Every server sampled at one moment.
pub(super) struct Sample {
    /// Seconds since the load started (negative for the baseline).
    pub(super) t: f64,
    pub(super) mark: Mark,
    /// Per server, in [`Srv`] order; `None` if it could not be read (the server is gone).
    pub(super) procs: Vec<Option<Proc>>,
}

/// A server under test.
pub(super) struct Srv {
    pub(super) name: &'static str,
    pub(super) server: Server,
    pub(super) log: PathBuf,
    /// Why it is no longer running, once it is not.
    pub(super) gone: Option<String>,
}

impl Srv {
    pub(super) fn sample(&mut self) -> Option<Proc> {
        if self.gone.is_none() {
            if let Some(status) = self.server.exited() {
                self.gone = Some(format!("{} exited during the soak: {status}", self.name));
            }
        }
        if self.gone.is_some() {
            return None;
        }
        let pid = self.server.pid();
        let p = Proc {
            rss_kib: status_field(pid, "VmRSS").ok()?,
            anon_kib: status_field(pid, "RssAnon").ok()?,
            fds: open_fds(pid).ok()?,
            threads: status_field(pid, "Threads").ok()?,
            conns: if self.name == "echo" {
                echo_conns(&self.log)
            } else {
                None
            },
        };
        Some(p)
    }
}

/// The connection count of the last `stats:` line of echo's log.
pub(super) fn echo_conns(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find_map(|l| l.split_once("stats: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
}

/// Samples every server.
pub(super) fn take(samples: &mut Vec<Sample>, servers: &mut [Srv], mark: Mark, t: f64) {
    let procs = servers.iter_mut().map(Srv::sample).collect();
    samples.push(Sample { t, mark, procs });
}
