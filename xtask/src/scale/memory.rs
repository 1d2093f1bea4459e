//! Memory samples: a process tree's RSS and PSS (`/proc/PID/smaps_rollup`), and the
//! kernel's socket and slab memory (`/proc/net/sockstat`, `/proc/meminfo`).

use std::fs;

use super::limits::meminfo_kib;

/// The summed memory of a process and its descendants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TreeMem {
    /// Processes summed.
    pub(crate) procs: usize,
    /// Resident set size, KiB (pages shared between the processes counted in each).
    pub(crate) rss_kib: u64,
    /// Proportional set size, KiB (shared pages divided among their sharers: the sum is
    /// what the tree really costs).
    pub(crate) pss_kib: u64,
}

impl TreeMem {
    /// Samples `pid` and every process below it (workers of a supervisor, children of
    /// `loadgen --procs`).
    pub(crate) fn of(pid: u32) -> Result<TreeMem, String> {
        let mut mem = TreeMem::default();
        for p in tree(pid) {
            let (rss, pss) = match smaps_rollup(p) {
                Ok(m) => m,
                // A descendant that exited since the listing (a zombie answers ESRCH, a
                // reaped process has no directory) has no memory left to count.
                Err(e)
                    if p != pid
                        && (e.contains("No such process")
                            || !std::path::Path::new(&format!("/proc/{p}")).exists()) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            mem.procs += 1;
            mem.rss_kib += rss;
            mem.pss_kib += pss;
        }
        Ok(mem)
    }
}

/// `pid` and its descendants, from `/proc/PID/task/TID/children` (every thread's).
pub(crate) fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        if let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) {
            for task in tasks.flatten() {
                let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
                all.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        i += 1;
    }
    all
}

/// `(Rss, Pss)` of a process, KiB.
fn smaps_rollup(pid: u32) -> Result<(u64, u64), String> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .ok_or_else(|| format!("{path} has no {name}"))
    };
    Ok((field("Rss")?, field("Pss")?))
}

/// The kernel's memory for sockets, system-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KernelMem {
    /// TCP sockets in use (`/proc/net/sockstat` `TCP: inuse`).
    pub(crate) tcp_inuse: u64,
    /// Pages in TCP socket buffers (`TCP: mem`).
    pub(crate) tcp_mem_pages: u64,
    /// `Slab` of `/proc/meminfo`, KiB (sockets, inodes, dentries, files, epoll items).
    pub(crate) slab_kib: u64,
    /// `SUnreclaim`, KiB: the part of the slab that cannot be reclaimed.
    pub(crate) sunreclaim_kib: u64,
}

impl KernelMem {
    /// Samples it now.
    pub(crate) fn now() -> Result<KernelMem, String> {
        let sockstat = fs::read_to_string("/proc/net/sockstat")
            .map_err(|e| format!("/proc/net/sockstat: {e}"))?;
        let tcp = sockstat
            .lines()
            .find_map(|l| l.strip_prefix("TCP:"))
            .ok_or("/proc/net/sockstat has no TCP line")?;
        let words: Vec<&str> = tcp.split_whitespace().collect();
        let value = |key: &str| {
            words
                .windows(2)
                .find(|w| w[0] == key)
                .and_then(|w| w[1].parse::<u64>().ok())
                .ok_or_else(|| format!("/proc/net/sockstat TCP line has no {key}"))
        };
        Ok(KernelMem {
            tcp_inuse: value("inuse")?,
            tcp_mem_pages: value("mem")?,
            slab_kib: meminfo_kib("Slab")?,
            sunreclaim_kib: meminfo_kib("SUnreclaim")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_memory_and_the_kernels_are_readable() {
        let me = TreeMem::of(std::process::id()).unwrap();
        assert!(me.procs >= 1 && me.rss_kib > 0 && me.pss_kib > 0);
        let k = KernelMem::now().unwrap();
        assert!(k.slab_kib > 0);
    }
}
