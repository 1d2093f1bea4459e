//! A worker child as the supervisor sees it from outside: its readiness pipe and how it
//! ended.

use std::io::{self, IoSliceMut};
use std::os::fd::BorrowedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use duo_reactor::EventLoop;

use super::State;

/// The readiness pipe of worker `pid` is readable: a byte means ready, EOF means it closed
/// the pipe (the exit is handled on `SIGCHLD`).
pub(super) fn read_ready(lp: &mut EventLoop, fd: BorrowedFd<'_>, pid: u32) {
    match read_byte(fd) {
        Some(true) => {
            lp.with_local(|lp, st: &mut State| {
                st.on_ready(lp, pid);
                st.ready_pipe_closed(lp, pid);
            });
        }
        Some(false) => {
            lp.with_local(|lp, st: &mut State| st.ready_pipe_closed(lp, pid));
        }
        None => {}
    }
}

/// One read of a readiness pipe: `Some(true)` the ready byte ([`READY`]), `Some(false)`
/// EOF, an error or anything else (std's report of a failed `exec` starts with a zero
/// byte, should its pipe ever land on this number), `None` nothing yet.
pub(super) fn read_byte(fd: BorrowedFd<'_>) -> Option<bool> {
    let mut buf = [0u8; 1];
    match duo_sys::readv(fd, &mut [IoSliceMut::new(&mut buf)]) {
        Ok(0) => Some(false),
        Ok(_) => Some(buf[0] == READY),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(_) => Some(false),
    }
}

/// The byte a worker writes on its readiness pipe ([`Worker::notify_ready`](crate::Worker::notify_ready)).
pub(crate) const READY: u8 = b'R';

/// "exit status 3", "killed by signal 9".
pub(super) fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_well() {
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(describe(ExitStatus::from_raw(9)), "killed by signal 9");
    }
}
