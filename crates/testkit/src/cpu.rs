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
    let hz = HZ.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().ok()?;
        let hz = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .ok()?;
        (out.status.success() && hz > 0).then_some(hz)
    });
    hz.ok_or_else(|| io::Error::other("`getconf CLK_TCK` gave no clock tick rate"))
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
}
