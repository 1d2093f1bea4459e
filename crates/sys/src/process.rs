//! Process-wide facts and limits: the open-file limit (`RLIMIT_NOFILE`), which servers
//! and load generators holding many sockets need to read and raise, and the CPU time a
//! process has used (from `/proc/PID/stat`, counted in clock ticks).

use std::io;
use std::time::Duration;

use crate::{context, cvt};

/// The open-file limit of this process: `(soft, hard)`.
pub fn fd_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` through the pointer, which points at `lim`.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })
        .map_err(context("getrlimit(RLIMIT_NOFILE)"))?;
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Sets the soft open-file limit to `soft` (at most the hard limit; an unprivileged
/// process cannot go above it). Returns the new soft limit.
pub fn set_fd_limit(soft: u64) -> io::Result<u64> {
    let (_, hard) = fd_limit()?;
    let lim = libc::rlimit {
        rlim_cur: soft.min(hard),
        rlim_max: hard,
    };
    // SAFETY: `setrlimit` only reads the `rlimit` the pointer points at.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })
        .map_err(context("setrlimit(RLIMIT_NOFILE)"))?;
    Ok(lim.rlim_cur)
}

/// Raises the soft open-file limit as far as the hard limit allows; returns the new
/// soft limit. Benchmarks and servers that hold many connections call it at start.
pub fn raise_fd_limit() -> io::Result<u64> {
    let (_, hard) = fd_limit()?;
    set_fd_limit(hard)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`): the unit of the `utime` and `stime`
/// fields of `/proc/PID/stat`.
pub fn clock_ticks_per_second() -> io::Result<u64> {
    // SAFETY: `sysconf` takes a plain integer name and touches no memory of ours.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n <= 0 {
        return Err(context("sysconf(_SC_CLK_TCK)")(io::Error::last_os_error()));
    }
    Ok(n as u64)
}

/// CPU time process `pid` has used so far, user plus system (`utime + stime` of
/// `/proc/PID/stat`, in clock ticks of [`clock_ticks_per_second`], usually 10 ms), summed
/// over all its threads.
///
/// # Errors
///
/// `NotFound` if there is no such process; `InvalidData` if the file cannot be parsed.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)?;
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, format!("malformed {path}"));
    // The command name (field 2) is in parentheses and may contain spaces or ')': split
    // after the last ')'. Then the state is field 3, utime field 14 and stime field 15.
    let (_, rest) = stat.rsplit_once(')').ok_or_else(malformed)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(malformed)
    };
    let total = ticks(11)? + ticks(12)?;
    let hz = clock_ticks_per_second()?;
    Ok(Duration::from_secs_f64(total as f64 / hz as f64))
}

/// Asks the C allocator to give free heap memory back to the system (`malloc_trim(0)` on
/// glibc, which also releases free pages inside its per-thread arenas); returns whether
/// any memory was released. A no-op returning `false` where the allocator has no such call.
///
/// Freed memory is normally kept by the allocator for reuse; after a burst (a pool that
/// has just returned its blocks, say) this makes the process's RSS reflect what it uses.
/// It walks the whole heap, so call it rarely.
pub fn release_free_heap() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: `malloc_trim` takes a plain integer and only manipulates the allocator's
        // own free lists; it is thread-safe (it takes each arena's lock).
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}
