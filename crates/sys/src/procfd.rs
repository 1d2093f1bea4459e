//! Naming a pipe by its inode (`pipe:[INODE]`, as `/proc/PID/fd/N` shows it) and opening
//! it again through another process's `/proc/PID/fd`: how a supervisor's new image (an
//! upgrade's `exec`) finds the readiness pipe of a worker still starting without the
//! previous image keeping the pipe open across the `exec`, where an image that does not
//! know of it would leak it into every process it starts.
//!
//! Opening `/proc/PID/fd/N` where `N` is a pipe's end (either end) gives a new open file
//! of that pipe, in the mode asked for: so a read end of the pipe a worker writes into,
//! as long as that worker holds its write end. Permission is the one to read
//! `/proc/PID/fd` (the same user, a dumpable process: a child of this one is).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// What `/proc/self/fd/N` says `fd` is (`pipe:[INODE]` for a pipe, a path for a file).
///
/// # Errors
///
/// Reading the link failed (no `/proc`).
pub fn fd_name(fd: BorrowedFd<'_>) -> io::Result<String> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    Ok(link.display().to_string())
}

/// Opens for reading (non-blocking, close-on-exec) the pipe `name` (`pipe:[INODE]`, from
/// [`fd_name`]) that process `pid` holds, through its `/proc/PID/fd`; `Ok(None)` if `pid`
/// holds no such pipe (any more: it closed it, or it has exited).
///
/// Non-blocking: were the last writer to close it between the look-up and the `open`, a
/// blocking `open` of a pipe for reading would wait for a writer for good; this one
/// returns a read end that reports end-of-file.
///
/// # Errors
///
/// `name` is not a pipe's name, or listing or opening failed otherwise (`EACCES`: not
/// this user's process).
pub fn open_pipe_held_by(pid: u32, name: &str) -> io::Result<Option<OwnedFd>> {
    if !(name.starts_with("pipe:[") && name.ends_with(']')) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a pipe's name (pipe:[INODE])"),
        ));
    }
    let dir = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for entry in dir {
        let path = entry?.path();
        // A descriptor closed since the listing is skipped.
        let Ok(link) = std::fs::read_link(&path) else {
            continue;
        };
        if link.as_os_str() != name {
            continue;
        }
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path);
        return match opened {
            Ok(file) => Ok(Some(file.into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        };
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn a_pipe_named_by_its_inode_opens_again_for_reading() {
        let (r, w) = crate::pipe().unwrap();
        let name = fd_name(w.as_fd()).unwrap();
        assert_eq!(fd_name(r.as_fd()).unwrap(), name);
        let again = open_pipe_held_by(std::process::id(), &name)
            .unwrap()
            .expect("found");
        std::fs::File::from(w).write_all(b"x").unwrap();
        let mut byte = [0u8; 1];
        std::fs::File::from(again).read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
        drop(r);
        assert!(open_pipe_held_by(std::process::id(), &name)
            .unwrap()
            .is_none());
        assert!(open_pipe_held_by(std::process::id(), "/dev/null").is_err());
    }
}
