//! `exec_in_place` puts `SIGPIPE` back when the `exec` fails (`std`'s `exec` sets it to
//! its default action for the new image and leaves it so). A test binary of its own: the
//! disposition is process-wide, and another test writing to a closed pipe during the
//! failed `exec`'s moment at the default action would die of it.

use std::io;
use std::process::Command;

use duo_sys::{exec_in_place, ignore_sigpipe};

/// Whether SIGPIPE is ignored in this process now.
fn sigpipe_ignored() -> bool {
    // SAFETY: `sigaction` is plain data, for which all zeroes is a valid value.
    let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only reads SIGPIPE's disposition into `now`, ours.
    let read = unsafe { libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut now) };
    assert_eq!(read, 0);
    now.sa_sigaction == libc::SIG_IGN
}

#[test]
fn a_failed_exec_in_place_keeps_sigpipe_ignored() {
    ignore_sigpipe().unwrap();
    assert!(sigpipe_ignored());
    let err = exec_in_place(&mut Command::new("/nonexistent/duo-sys-exec-test"));
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    assert!(
        sigpipe_ignored(),
        "std's exec left SIGPIPE at its default action"
    );
}
