//! Process-wide limits and memory: the open-file limit (`RLIMIT_NOFILE`), which servers
//! and load generators holding many sockets need to read and raise, and giving free heap
//! back to the system.

use std::io;

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
