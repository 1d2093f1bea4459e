//! Review round 7 of duo-sys's error paths, against the real kernel (each bug's test
//! failed before its fix; the guards passed before too).
//!
//! 1. `pass_fds` raised its process-wide floor for source duplicates (one above every
//!    target asked for) *before* it knew the call would succeed. A call whose targets lay
//!    at or beyond the open-file limit failed, as it must (`EINVAL` from
//!    `F_DUPFD_CLOEXEC`), but left the floor there: every later `pass_fds` of the process,
//!    even to descriptor 3, failed the same way, so a supervisor could never start a
//!    worker again.
//! 2. `take_fds_from_env` computed the announced numbers as `first + i` unchecked: a
//!    `first` near `RawFd::MAX` with a count of 2 or more from the environment overflowed
//!    (a panic in a debug build, wrapped-around negative numbers in a release one).
//!
//! Every test takes [`SERIAL`]: the descriptor counts and the process-wide floor of
//! `pass_fds` would be upset by a concurrent test.

use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use duo_sys::{fd_limit, kill_process, pass_fds, pipe, take_fds_from_env, TimerFd};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long any wait of these tests may take.
const LIMIT: Duration = Duration::from_secs(8);

/// The number of descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Waits for `child` (bounded); on timeout kills it by its PID and fails.
fn wait_bounded(mut child: Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = kill_process(child.id());
            let _ = child.wait();
            panic!("child {} did not end within {LIMIT:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Everything written to the non-blocking pipe `r` until its last writer is gone; bounded.
fn read_to_end(r: OwnedFd) -> Vec<u8> {
    let mut file = std::fs::File::from(r);
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + LIMIT;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the pipe's writers never closed");
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Bug 1. A `pass_fds` call whose targets cannot exist (at the open-file limit) fails
/// and leaks nothing; a later call to ordinary targets still works, and its child gets
/// the descriptor.
#[test]
fn a_failed_pass_fds_does_not_break_later_ones() {
    let _g = serial();
    let (r, w) = pipe().unwrap();
    let (soft, _) = fd_limit().unwrap();
    let beyond = RawFd::try_from(soft).unwrap_or(RawFd::MAX - 16);
    let before = open_fds();
    let mut doomed = Command::new("true");
    let e = pass_fds(&mut doomed, &[w.as_fd()], beyond).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    drop(doomed);
    assert_eq!(open_fds(), before, "a failed pass_fds leaked descriptors");

    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "printf ok >&3"]).stdin(Stdio::null());
    pass_fds(&mut cmd, &[w.as_fd()], 3).expect("a pass_fds after a failed one must still work");
    let child = cmd.spawn().unwrap();
    drop(cmd);
    drop(w);
    let status = wait_bounded(child);
    assert!(status.success(), "{status}");
    assert_eq!(read_to_end(r), b"ok");
}

/// The variable a child of [`a_count_past_the_largest_descriptor_is_an_error`] reads.
const COUNT_VAR: &str = "DUO_REVIEW7_COUNT";
/// Set (to the case) only in that child.
const CHILD_VAR: &str = "DUO_REVIEW7_CHILD";

/// The child side of [`a_count_past_the_largest_descriptor_is_an_error`]: runs only in
/// the child that test starts (the count must be in the environment the process started
/// with), and is a no-op anywhere else.
#[test]
fn child_side_of_take_fds_from_env() {
    if std::env::var_os(CHILD_VAR).is_none() {
        return;
    }
    let got = std::panic::catch_unwind(|| take_fds_from_env(COUNT_VAR, RawFd::MAX - 1));
    match got {
        Ok(Ok(fds)) => println!("RESULT taken {:?}", fds.map(|v| v.len())),
        Ok(Err(e)) => println!("RESULT error {e}"),
        Err(_) => println!("RESULT panicked"),
    }
}

/// Bug 2. Descriptors announced from `RawFd::MAX - 1` on, 3 of them: numbers that do
/// not exist. An error, not a panic (nor negative numbers).
#[test]
fn a_count_past_the_largest_descriptor_is_an_error() {
    let _g = serial();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_side_of_take_fds_from_env",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, "1")
        .env(COUNT_VAR, "3")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Its output is a few lines, well within the pipe's buffer: wait first (bounded),
    // then read.
    let status = wait_bounded(child);
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    assert!(status.success(), "{status}: {out}");
    // (The harness prints the test's name on the same line, before it.)
    let line = out
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no result from the child: {out}"));
    assert!(
        line.starts_with("error") && line.contains(COUNT_VAR),
        "{line}"
    );
}

/// Found fine, kept as a guard: the largest delay a `Duration` holds arms the timer
/// (the kernel saturates it) rather than failing, and it does not fire.
#[test]
fn a_huge_timer_delay_is_accepted_and_does_not_fire() {
    let _g = serial();
    let timer = TimerFd::new().unwrap();
    timer.arm_after(Duration::MAX).unwrap();
    timer
        .arm_at(Instant::now() + Duration::from_secs(100 * 365 * 86_400))
        .unwrap();
    assert_eq!(timer.read().unwrap(), 0);
    timer.disarm().unwrap();
}

/// Found fine, kept as a guard: a source that sits at its own target number, and one
/// descriptor passed to two targets, arrive where they were asked for.
#[test]
fn a_source_at_its_own_target_and_a_source_passed_twice_arrive() {
    use std::os::fd::AsRawFd;
    let _g = serial();
    let (r, w) = pipe().unwrap();
    let at = w.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("printf a >&{at}; printf b >&{}", at + 1))
        .stdin(Stdio::null());
    pass_fds(&mut cmd, &[w.as_fd(), w.as_fd()], at).unwrap();
    let child = cmd.spawn().unwrap();
    drop(cmd);
    drop(w);
    let status = wait_bounded(child);
    assert!(status.success(), "{status}");
    assert_eq!(read_to_end(r), b"ab");
}

/// glibc keeps signals 32 and 33 (below `SIGRTMIN()`) for itself: `sigaddset` refuses
/// them (`EINVAL`), so a `Signal` made of them failed later, far from its making.
/// `from_raw` refuses them; the real-time signals from `SIGRTMIN()` on stay.
#[test]
fn the_signals_glibc_keeps_for_itself_are_not_signals() {
    for reserved in 32..libc::SIGRTMIN() {
        assert_eq!(duo_sys::Signal::from_raw(reserved), None, "{reserved}");
    }
    for ok in [1, 31, libc::SIGRTMIN(), libc::SIGRTMAX()] {
        assert!(duo_sys::Signal::from_raw(ok).is_some(), "{ok}");
    }
}
