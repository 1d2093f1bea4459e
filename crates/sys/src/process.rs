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

/// How many times the calling thread has been switched off its CPU so far, voluntarily
/// (it blocked: `epoll_wait`, a lock, I/O) or not (preempted): `ru_nvcsw + ru_nivcsw` of
/// `getrusage(RUSAGE_THREAD)`. Two equal readings prove the thread kept its CPU in
/// between, so nothing else ran on its behalf: the reactor's spin detector uses that to
/// tell a loop that spins from one whose peer answers between two of its reads.
pub fn thread_context_switches() -> io::Result<u64> {
    // SAFETY: an all-zero `rusage` is a valid value of that plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `getrusage` writes one `rusage` through the pointer, which points at `usage`.
    cvt(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) })
        .map_err(context("getrusage(RUSAGE_THREAD)"))?;
    let switches = usage.ru_nvcsw.max(0) as u64 + usage.ru_nivcsw.max(0) as u64;
    Ok(switches)
}

/// Restricts the calling thread to the CPUs numbered in `cpus` (`sched_setaffinity` of
/// this thread): a test that must put two threads on one core, or a server pinning a
/// loop per core. An empty set or CPUs that do not exist are an `InvalidInput` error.
pub fn pin_thread(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: an all-zero `cpu_set_t` is the empty set, a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let capacity = 8 * std::mem::size_of::<libc::cpu_set_t>();
    if cpus.is_empty() || cpus.iter().any(|&c| c >= capacity) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("pin_thread: no CPU set can hold {cpus:?}"),
        ));
    }
    for &cpu in cpus {
        // SAFETY: `cpu` is below the set's capacity in bits (checked above).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `sched_setaffinity` reads `size_of::<cpu_set_t>()` bytes from the pointer,
    // which points at `set`; pid 0 is the calling thread.
    cvt(unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) })
        .map_err(context("sched_setaffinity"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::thread_context_switches;

    #[test]
    fn a_sleep_is_a_context_switch_of_this_thread() {
        let before = thread_context_switches().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(thread_context_switches().unwrap() > before);
    }

    #[test]
    fn a_thread_can_be_pinned_to_one_cpu_but_not_to_none() {
        std::thread::spawn(|| {
            super::pin_thread(&[0]).unwrap();
            assert!(super::pin_thread(&[]).is_err());
            assert!(super::pin_thread(&[1 << 20]).is_err());
        })
        .join()
        .unwrap();
    }
}
