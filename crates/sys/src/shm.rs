//! Counters in memory shared between processes: a sealed `memfd` mapped `MAP_SHARED`,
//! seen as a slice of [`AtomicU64`]. A supervisor creates it and hands the descriptor to
//! its workers; each worker writes its own row, the supervisor reads them all.
//!
//! # Why the view is sound
//!
//! - **Size.** The file is created at its final size and then sealed against growing and
//!   shrinking (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`), so no process holding the
//!   descriptor can truncate it under a mapping (which would turn a read into `SIGBUS`).
//!   [`SharedCounters::open`] refuses a descriptor without those seals and maps exactly the
//!   size `fstat` reports, which must be a non-zero multiple of 8 bytes.
//! - **Alignment.** `mmap` returns a page-aligned address, more than the 8 bytes an
//!   `AtomicU64` needs.
//! - **Lifetime.** The mapping lives until the [`SharedCounters`] is dropped; the slice
//!   borrows it, so it cannot outlive the mapping.
//! - **Concurrency.** Every access from Rust goes through atomics. Other processes mapping
//!   the same file are outside Rust's memory model, but at worst they write garbage values
//!   into the counters (the memory stays valid, and any bit pattern is a valid `u64`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use crate::{context, cvt};

/// The seals a counters file must carry.
const SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// The most counters one region may hold (8 MiB): a bound on what a bogus size asks for.
pub const MAX_COUNTERS: usize = 1 << 20;

/// A region of `u64` counters shared between processes through a sealed `memfd`.
///
/// ```
/// use std::sync::atomic::Ordering;
/// use duo_sys::SharedCounters;
///
/// let counters = SharedCounters::create("stats", 16)?;
/// counters.slots()[3].fetch_add(1, Ordering::Relaxed);
/// // Another process (here: the same one) maps the same file through a duplicate.
/// let other = SharedCounters::open(counters.fd().try_clone_to_owned()?)?;
/// assert_eq!(other.slots()[3].load(Ordering::Relaxed), 1);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct SharedCounters {
    fd: OwnedFd,
    ptr: NonNull<AtomicU64>,
    len: usize,
}

// SAFETY: the region is only ever accessed as `AtomicU64`s, which are `Sync`; the pointer
// is to a process-wide mapping, valid on every thread, owned by this value.
unsafe impl Send for SharedCounters {}
// SAFETY: as above: `&SharedCounters` only hands out `&[AtomicU64]`.
unsafe impl Sync for SharedCounters {}

impl SharedCounters {
    /// Creates a region of `len` zeroed counters (`memfd_create(MFD_CLOEXEC |
    /// MFD_ALLOW_SEALING)`, `ftruncate`, sealed, `mmap(MAP_SHARED)`). `name` shows in
    /// `/proc/PID/fd` (as `memfd:NAME`).
    ///
    /// # Errors
    ///
    /// `len` is 0 or above [`MAX_COUNTERS`], `name` contains a NUL byte, or a system call
    /// failed.
    pub fn create(name: &str, len: usize) -> io::Result<SharedCounters> {
        if len == 0 || len > MAX_COUNTERS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("shared counters: {len} counters (1..={MAX_COUNTERS})"),
            ));
        }
        let cname = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in memfd name"))?;
        // SAFETY: `cname` is a valid C string that outlives the call.
        let fd = cvt(unsafe {
            libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        })
        .map_err(context("memfd_create"))?;
        // SAFETY: the call succeeded, so `fd` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // At most 8 MiB: no overflow.
        let bytes = len * 8;
        // SAFETY: `ftruncate` on a descriptor we own sets the file size (zero-filled).
        cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), bytes as libc::off_t) })
            .map_err(context("ftruncate(memfd)"))?;
        // SAFETY: `F_ADD_SEALS` on a memfd we own created with MFD_ALLOW_SEALING.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) })
            .map_err(context("fcntl(F_ADD_SEALS)"))?;
        SharedCounters::open(fd)
    }

    /// Maps a counters file received from another process (made by [`create`](Self::create)).
    ///
    /// # Errors
    ///
    /// The descriptor is not a sealed memfd (`InvalidInput`: it could be truncated under
    /// the mapping), its size is not a non-zero multiple of 8 up to [`MAX_COUNTERS`]
    /// counters, or a system call failed.
    pub fn open(fd: OwnedFd) -> io::Result<SharedCounters> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        // SAFETY: `F_GET_SEALS` only reads the seals of a descriptor we own; it fails
        // (EINVAL) on files that are not memfds.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals == -1 || seals & SEALS != SEALS {
            return Err(invalid(format!(
                "descriptor {} is not a sealed memfd",
                fd.as_raw_fd()
            )));
        }
        // SAFETY: `stat` is plain data; all-zero is a valid value that `fstat` overwrites.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fstat` writes one `stat` through a valid pointer.
        cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }).map_err(context("fstat"))?;
        let bytes = usize::try_from(st.st_size).unwrap_or(0);
        if bytes == 0 || bytes % 8 != 0 || bytes / 8 > MAX_COUNTERS {
            return Err(invalid(format!(
                "shared counters of {bytes} bytes (a non-zero multiple of 8 is needed)"
            )));
        }
        // SAFETY: a new shared mapping of `bytes` bytes of a file that is exactly that
        // large and sealed against shrinking; no address hint, so nothing is replaced.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(context("mmap")(io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast::<AtomicU64>())
            .ok_or_else(|| invalid("mmap returned null".into()))?;
        Ok(SharedCounters {
            fd,
            ptr,
            len: bytes / 8,
        })
    }

    /// The counters.
    pub fn slots(&self) -> &[AtomicU64] {
        // SAFETY: `ptr` is the page-aligned start of a live mapping of `len * 8` bytes
        // (module docs: size, alignment, lifetime), only accessed through atomics; the
        // slice borrows `self`, which unmaps only on drop.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The memfd, to hand to another process (it is close-on-exec: pass it explicitly).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for SharedCounters {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `open`; no slice of it can be alive,
        // since they all borrow `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len * 8);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[test]
    fn two_mappings_see_the_same_counters() {
        let a = SharedCounters::create("test", 4).unwrap();
        let b = SharedCounters::open(a.fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(b.slots().len(), 4);
        a.slots()[2].store(42, Ordering::Relaxed);
        assert_eq!(b.slots()[2].load(Ordering::Relaxed), 42);
        drop(a);
        b.slots()[0].fetch_add(1, Ordering::Relaxed);
        assert_eq!(b.slots()[0].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn bad_sizes_and_unsealed_files_are_refused() {
        assert!(SharedCounters::create("x", 0).is_err());
        assert!(SharedCounters::create("x", MAX_COUNTERS + 1).is_err());
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let e = SharedCounters::open(file.into()).unwrap_err();
        assert!(e.to_string().contains("sealed memfd"), "{e}");
    }

    #[test]
    fn a_sealed_region_cannot_be_shrunk() {
        let a = SharedCounters::create("x", 2).unwrap();
        let f = std::fs::File::from(a.fd().try_clone_to_owned().unwrap());
        assert!(f.set_len(0).is_err(), "sealed against shrinking");
        assert_eq!(a.slots().len(), 2);
    }
}
