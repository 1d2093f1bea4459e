//! The host's limits on how many loopback connections one run can hold, read before the
//! run: which one binds, and the largest feasible number of connections if one does.
//!
//! A loopback connection is two sockets on this host (the load generator's end and the
//! server's), so every per-connection figure below counts both.

use std::fmt::Write as _;
use std::fs;

/// Descriptors a process keeps for other things than connections (stdio, epoll, timers,
/// the listening socket, `/proc` reads): the share of each process is its hard limit
/// less this ...
const SPARE_FDS: u64 = 64;
/// ... less this much more, about 5 %: 19 000 per process under a hard limit of 20 000.
const FD_MARGIN: u64 = 936;
/// File handles kept free system-wide for everything else on the host.
const FILE_HANDLE_SLACK: u64 = 10_000;
/// Memory a connection costs, both ends, kernel and user space, for the feasibility check:
/// measured here (15 000 idle connections) about 9 KiB of slab (socket, inode, dentry,
/// file, epoll item, for each of the two sockets) and under 1 KiB in the two processes;
/// rounded up.
pub(crate) const BYTES_PER_CONN_ESTIMATE: u64 = 12 * 1024;
/// Part of the available memory a run may plan to use.
const MEMORY_SHARE: f64 = 0.8;
/// Connections `loadgen idle` opens from one source address unless told (`--per-source`).
const LOADGEN_PER_SOURCE: u64 = 10_000;
/// Processes the load generator accepts at most (`loadgen idle --procs`).
const MAX_LOADGEN_PROCS: u64 = 1000;

/// One limit: its name, its value, and the connections it allows (`None`: it does not
/// bound the number of connections, it is shown for information).
#[derive(Debug, Clone)]
pub(crate) struct Limit {
    pub(crate) name: &'static str,
    pub(crate) value: String,
    pub(crate) allows: Option<u64>,
    pub(crate) why: String,
}

/// What was read from the host.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    pub(crate) file_max: u64,
    pub(crate) nr_open: u64,
    pub(crate) files_in_use: u64,
    pub(crate) port_range: (u64, u64),
    pub(crate) somaxconn: u64,
    pub(crate) fd_hard: u64,
    pub(crate) mem_available_kib: u64,
    /// `(count, max)` of the connection-tracking table, when the module is loaded.
    pub(crate) conntrack: Option<(u64, u64)>,
}

impl Host {
    /// Reads the limits; an error names the file that could not be read.
    pub(crate) fn read() -> Result<Host, String> {
        let range = read_numbers("/proc/sys/net/ipv4/ip_local_port_range")?;
        let file_nr = read_numbers("/proc/sys/fs/file-nr")?;
        let conntrack = match (
            read_number("/proc/sys/net/netfilter/nf_conntrack_count"),
            read_number("/proc/sys/net/netfilter/nf_conntrack_max"),
        ) {
            (Ok(count), Ok(max)) => Some((count, max)),
            _ => None,
        };
        Ok(Host {
            file_max: read_number("/proc/sys/fs/file-max")?,
            nr_open: read_number("/proc/sys/fs/nr_open")?,
            files_in_use: file_nr.first().copied().unwrap_or(0),
            port_range: (
                range.first().copied().unwrap_or(32768),
                range.get(1).copied().unwrap_or(60999),
            ),
            somaxconn: read_number("/proc/sys/net/core/somaxconn")?,
            fd_hard: duo_sys::fd_limit()
                .map(|(_, hard)| hard)
                .map_err(|e| format!("RLIMIT_NOFILE: {e}"))?,
            mem_available_kib: meminfo_kib("MemAvailable")?,
            conntrack,
        })
    }

    /// Connections one process may hold: its hard open-file limit less the spare
    /// descriptors and a margin.
    pub(crate) fn conns_per_process(&self) -> u64 {
        let spare = SPARE_FDS + FD_MARGIN.min(self.fd_hard / 20);
        self.fd_hard.saturating_sub(spare).max(1)
    }

    /// The local ports of `net.ipv4.ip_local_port_range`.
    pub(crate) fn local_ports(&self) -> u64 {
        (self.port_range.1.saturating_sub(self.port_range.0) + 1).max(1)
    }

    /// Connections the load generator should open from one source address: each is
    /// bound to its source address (port 0) before connecting, so no more than the local
    /// ports, and no more than half of them, where the kernel's search for a free port
    /// slows down sharply; `loadgen`'s default where the range is wide enough.
    pub(crate) fn conns_per_source(&self) -> u64 {
        LOADGEN_PER_SOURCE.min(self.local_ports() / 2).max(1)
    }

    /// Every limit, with the connections it allows for `server_procs` server processes.
    pub(crate) fn limits(&self, server_procs: Option<u64>) -> Vec<Limit> {
        let per_proc = self.conns_per_process();
        let free_files = self
            .file_max
            .saturating_sub(self.files_in_use + FILE_HANDLE_SLACK);
        let ports = self.local_ports();
        let mem = (self.mem_available_kib as f64 * 1024.0 * MEMORY_SHARE) as u64;
        let mut limits = vec![
            Limit {
                name: "fs.file-max",
                value: format!("{} ({} in use)", self.file_max, self.files_in_use),
                allows: Some(free_files / 2),
                why: "two file handles per connection (both ends), system-wide".into(),
            },
            Limit {
                name: "RLIMIT_NOFILE",
                value: format!("hard {}", self.fd_hard),
                allows: Some(per_proc * MAX_LOADGEN_PROCS),
                why: format!(
                    "{per_proc} connections per process; up to {MAX_LOADGEN_PROCS} load \
                     generator processes"
                ),
            },
            Limit {
                name: "memory",
                value: format!("{} MiB available", self.mem_available_kib / 1024),
                allows: Some(mem / BYTES_PER_CONN_ESTIMATE),
                why: format!(
                    "{:.0} % of MemAvailable at about {} KiB per connection (both ends)",
                    MEMORY_SHARE * 100.0,
                    BYTES_PER_CONN_ESTIMATE / 1024
                ),
            },
            Limit {
                name: "fs.nr_open",
                value: self.nr_open.to_string(),
                allows: None,
                why: "the most RLIMIT_NOFILE can be raised to (not raised here)".into(),
            },
            Limit {
                name: "net.ipv4.ip_local_port_range",
                value: format!(
                    "{}-{} ({ports} ports)",
                    self.port_range.0, self.port_range.1
                ),
                allows: None,
                why: format!(
                    "per source address: loadgen opens {} from each of 127.0.0.2, .3, ...",
                    self.conns_per_source()
                ),
            },
            Limit {
                name: "net.core.somaxconn",
                value: self.somaxconn.to_string(),
                allows: None,
                why: "accept queue: bounds the connects in flight, not the total".into(),
            },
        ];
        if let Some(k) = server_procs {
            limits.push(Limit {
                name: "server processes",
                value: k.to_string(),
                allows: Some(k * per_proc),
                why: format!("{per_proc} connections per server process (--processes)"),
            });
        }
        if let Some((count, max)) = self.conntrack {
            // Loopback connections are tracked only if a firewall rule asks for it; a
            // count of zero means nothing is tracked now.
            limits.push(Limit {
                name: "net.netfilter.nf_conntrack_max",
                value: format!("{max} ({count} tracked)"),
                allows: (count > 0).then_some(max.saturating_sub(count)),
                why: if count > 0 {
                    "connections are being tracked: one entry per connection".into()
                } else {
                    "nothing is tracked now, so loopback connections are not".into()
                },
            });
        }
        limits
    }
}

/// The limits as a table, with the one that binds marked.
pub(crate) fn table(limits: &[Limit], conns: u64) -> String {
    let mut s = String::new();
    let binding = binding(limits);
    for l in limits {
        let allows = l
            .allows
            .map_or("-".to_owned(), |n| format!("{n} connections"));
        let mark = match (l.allows, binding) {
            (Some(n), _) if n < conns => "  <-- too few",
            (_, Some(b)) if std::ptr::eq(b, l) => "  <-- the tightest",
            _ => "",
        };
        let _ = writeln!(
            s,
            "  {:<30} {:<28} allows {:<20} {}{mark}",
            l.name, l.value, allows, l.why
        );
    }
    s
}

/// The limit that allows the fewest connections.
pub(crate) fn binding(limits: &[Limit]) -> Option<&Limit> {
    limits
        .iter()
        .filter(|l| l.allows.is_some())
        .min_by_key(|l| l.allows)
}

/// An integer from a one-value `/proc/sys` file.
fn read_number(path: &str) -> Result<u64, String> {
    read_numbers(path)?
        .first()
        .copied()
        .ok_or_else(|| format!("{path}: no number"))
}

/// The whitespace-separated integers of a `/proc` file.
fn read_numbers(path: &str) -> Result<Vec<u64>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    Ok(text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect())
}

/// A field of `/proc/meminfo`, KiB.
pub(crate) fn meminfo_kib(field: &str) -> Result<u64, String> {
    let text = fs::read_to_string("/proc/meminfo").map_err(|e| format!("/proc/meminfo: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("/proc/meminfo has no {field}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            file_max: 2_466_116,
            nr_open: 1_048_576,
            files_in_use: 400,
            port_range: (32768, 60999),
            somaxconn: 4096,
            fd_hard: 20_000,
            mem_available_kib: 24 * 1024 * 1024,
            conntrack: Some((0, 262_144)),
        }
    }

    #[test]
    fn a_process_holds_about_19000_under_a_limit_of_20000() {
        assert_eq!(host().conns_per_process(), 19_000);
    }

    #[test]
    fn file_max_binds_first_on_this_kind_of_host() {
        let h = host();
        let limits = h.limits(None);
        let b = binding(&limits).unwrap();
        assert_eq!(b.name, "fs.file-max");
        assert_eq!(b.allows, Some((2_466_116 - 400 - FILE_HANDLE_SLACK) / 2));
        // Two server processes hold 38 000 at most.
        let limits = h.limits(Some(2));
        assert_eq!(binding(&limits).unwrap().allows, Some(38_000));
        assert!(table(&limits, 50_000).contains("too few"));
    }

    #[test]
    fn conntrack_binds_only_when_it_tracks() {
        let mut h = host();
        h.conntrack = Some((10, 262_144));
        let limits = h.limits(None);
        assert_eq!(
            binding(&limits).unwrap().name,
            "net.netfilter.nf_conntrack_max"
        );
    }
}
