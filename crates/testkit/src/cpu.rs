//! CPU time of a process (user plus system), read from `/proc/PID/stat`: what the load
//! generator and `cargo xtask bench` charge a server under test for its work, and what
//! tests use to tell a busy spin from an idle wait.

use std::io;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// CPU time process `pid` has used so far, user plus system (`utime + stime` of
/// `/proc/PID/stat`, in clock ticks of [`clock_ticks_per_second`], usually 10 ms), summed
/// over all its threads.
///
/// # Errors
///
/// `NotFound` if there is no such process; `InvalidData` if the file cannot be parsed.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    stat_cpu_time(&format!("/proc/{pid}/stat"))
}

/// CPU time the thread of this process named `name` (its `comm`, at most 15 bytes) has
/// used so far, user plus system: what tells a thread that spins from one that sleeps.
///
/// # Errors
///
/// `NotFound` if no thread of this process has that name; `InvalidData` if its stat
/// file cannot be parsed.
pub fn thread_cpu_time(name: &str) -> io::Result<Duration> {
    for entry in std::fs::read_dir("/proc/self/task")? {
        let dir = entry?.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread has ended meanwhile
        };
        if comm.trim_end() == name {
            return stat_cpu_time(&dir.join("stat").to_string_lossy());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no thread named {name}"),
    ))
}

/// How many times [`tree_cpu_time`] reads a tree again when the root reaped a child while
/// it was being read.
const TREE_ATTEMPTS: usize = 5;

/// CPU time process `pid` and every process below it (its children, theirs, ...) have used
/// so far, user plus system, summed over all their threads: what a server of several
/// processes (a supervisor and its workers) costs. For each process `utime + stime` of
/// `/proc/PID/stat`, and also `cutime + cstime`: children that ended and were reaped, so
/// that a worker that exits (a crash, a restart) keeps its share instead of vanishing
/// from the sum. Children are found through `/proc/PID/task/TID/children` of every thread.
///
/// A child the root reaps while the tree is read would count twice or not at all: the
/// root's reaped-children time is read before and after the others, and the tree read
/// again (a few times at most) if it changed. A grandchild reaped meanwhile by its own
/// parent is not guarded so.
///
/// # Errors
///
/// As [`cpu_time`], for `pid` itself; a descendant that is gone when read is skipped.
pub fn tree_cpu_time(pid: u32) -> io::Result<Duration> {
    let hz = clock_ticks_per_second()?;
    let root_path = format!("/proc/{pid}/stat");
    let read_root = || -> io::Result<(u64, u64)> {
        let stat = std::fs::read_to_string(&root_path)?;
        stat_tree_ticks(&stat).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("malformed {root_path}"))
        })
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (own, reaped) = read_root()?;
        let mut ticks = own + reaped;
        let mut seen = std::collections::BTreeSet::from([pid]);
        let mut todo = task_children(pid);
        while let Some(child) = todo.pop() {
            if !seen.insert(child) {
                continue;
            }
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok();
            if let Some((own, reaped)) = stat.as_deref().and_then(stat_tree_ticks) {
                ticks += own + reaped;
            }
            todo.extend(task_children(child));
        }
        let (_, reaped_after) = read_root()?;
        if reaped_after == reaped || attempt >= TREE_ATTEMPTS {
            return Ok(Duration::from_secs_f64(ticks as f64 / hz as f64));
        }
    }
}

/// The children of every thread of process `pid` (a child belongs to the thread that
/// started it); empty if `pid` is gone.
fn task_children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// `utime + stime` of the stat file at `path`, as a duration.
fn stat_cpu_time(path: &str) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(path)?;
    let ticks = stat_ticks(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("malformed {path}")))?;
    let hz = clock_ticks_per_second()?;
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// The unit of the times in `/proc/PID/stat` (`USER_HZ`, 100 on common systems), as
/// `getconf CLK_TCK` reports it (asked once per process: `std` alone, no `libc`).
///
/// # Errors
///
/// `getconf` could not be run or printed no positive number.
pub fn clock_ticks_per_second() -> io::Result<u64> {
    static HZ: OnceLock<Option<u64>> = OnceLock::new();
    HZ.get_or_init(|| getconf("CLK_TCK"))
        .ok_or_else(|| io::Error::other("`getconf CLK_TCK` gave no clock tick rate"))
}

/// The size of a memory page in bytes (the unit of `/proc/sys/net/ipv4/tcp_mem` and of
/// the `mem` field of `/proc/net/sockstat`: 4 KiB on x86-64, up to 64 KiB on arm64), as
/// `getconf PAGESIZE` reports it (asked once per process).
///
/// # Errors
///
/// `getconf` could not be run or printed no positive number.
pub fn page_size() -> io::Result<u64> {
    static PAGE: OnceLock<Option<u64>> = OnceLock::new();
    PAGE.get_or_init(|| getconf("PAGESIZE"))
        .ok_or_else(|| io::Error::other("`getconf PAGESIZE` gave no page size"))
}

/// The positive number `getconf NAME` prints, if it does.
fn getconf(name: &str) -> Option<u64> {
    let out = Command::new("getconf").arg(name).output().ok()?;
    let n = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<u64>()
        .ok()?;
    (out.status.success() && n > 0).then_some(n)
}

/// `utime + stime` (fields 14 and 15) of the text of a `/proc/PID/stat` file, in clock
/// ticks; `None` if it is malformed.
fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces or ')': split
    // after the last ')'. Then the state is field 3, utime field 14 and stime field 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(ticks(11)? + ticks(12)?)
}

/// `(utime + stime, cutime + cstime)` (fields 14 and 15, 16 and 17) of the text of a
/// `/proc/PID/stat` file, in clock ticks; `None` if it is malformed.
fn stat_tree_ticks(stat: &str) -> Option<(u64, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?, ticks(13)? + ticks(14)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_skips_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0";
        assert_eq!(stat_ticks(stat), Some(12));
        assert_eq!(stat_ticks("42 (x) S 1"), None);
        assert_eq!(stat_ticks("no parenthesis"), None);
    }

    #[test]
    fn stat_tree_ticks_splits_own_and_reaped_children_time() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 3 2 20 0 1 0";
        assert_eq!(stat_tree_ticks(stat), Some((12, 5)));
        assert_eq!(
            stat_tree_ticks("42 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13"),
            None
        );
    }

    #[test]
    fn a_tree_costs_at_least_its_root() {
        let me = std::process::id();
        let own = cpu_time(me).unwrap();
        assert!(tree_cpu_time(me).unwrap() >= own);
        assert!(tree_cpu_time(u32::MAX).is_err());
    }
}
