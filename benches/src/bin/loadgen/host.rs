//! Facts about processes on this host: the open-file limit, a server's resident memory.

use std::fs;

/// Descriptors kept free for things other than connections (stdio, epoll instances, the
/// files `/proc` is read through).
pub(crate) const SPARE_FDS: u64 = 64;

/// How many connections the open-file limit allows, after trying to raise it.
#[derive(Debug, Clone)]
pub(crate) struct FdBudget {
    /// The soft limit after the attempt to raise it.
    pub(crate) soft: u64,
    /// The hard limit.
    pub(crate) hard: u64,
    /// Connections that fit under `soft`.
    pub(crate) max_conns: u64,
    /// Why the soft limit could not be raised, if it could not.
    pub(crate) raise_error: Option<String>,
}

/// Raises the soft open-file limit to the hard limit (through `duo_sys`, the one crate that
/// talks to libc) and says how many connections fit.
pub(crate) fn fd_budget() -> FdBudget {
    let raise_error = duo_sys::raise_fd_limit().err().map(|e| e.to_string());
    let (soft, hard) = duo_sys::fd_limit().unwrap_or((1024, 1024));
    FdBudget {
        soft,
        hard,
        max_conns: soft.saturating_sub(SPARE_FDS),
        raise_error,
    }
}

/// The resident set size of process `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub(crate) fn rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS line in {path}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_rss_is_readable() {
        assert!(super::rss_kib(std::process::id()).unwrap() > 0);
    }
}
