//! Review round 11 of the worker processes (`duo-supervisor`):
//!
//! - `duo_sys::terminate_by` with a signal whose default action does not end the process
//!   (`SIGCHLD` above all) is refused before anything is touched: giving `SIGCHLD` its
//!   default disposition (`SIG_DFL`, ignore) discards an instance already pending, which a
//!   supervisor's signalfd had yet to read (a worker never reaped).
//! - An upgrade (`SIGUSR2`) to a binary that does not take readiness pipes (an older one,
//!   modelled by a script that passes the check) hands it none: the pipe of a replacement
//!   still starting used to be left open without close-on-exec in that image, which knows
//!   nothing of it, so every worker it started would inherit it.
//! - (`echo reload --pid P` said "sent" whether or not a reload followed: its `--wait`
//!   is tested in `apps/echo/tests/review_round11_reload.rs`, which has the `echo` binary.)
//!
//! The `demo` example runs from a copy in a directory of its own, which a test replaces on
//! disk (by a rename). Every wait has a deadline; the supervisor is killed by its guard if
//! a test fails (its workers then get their parent-death signal).

#[allow(dead_code)]
mod common;

use std::io::ErrorKind;

use common::{kill_one_and_wait_for_its_replacement, mode_file, replace, start_copy, Dir};
use duo_sys::{terminate_by, Signal};
use duo_testkit::{children, wait_until, LIMIT};

/// Refused, with `InvalidInput`, for every signal whose default action is not to end the
/// process (the stop signals are left out here: on the code before the fix they would
/// stop this test process).
#[test]
fn terminate_by_refuses_a_signal_that_would_not_end_the_process() {
    let urg = Signal::from_raw(23).unwrap();
    let winch = Signal::from_raw(28).unwrap();
    for sig in [Signal::CHLD, urg, winch, Signal::CONT] {
        let e = terminate_by(sig);
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{sig}: {e}");
        assert!(e.to_string().contains("refused"), "{sig}: {e}");
    }
}

/// The pipes among `pid`'s descriptors beyond stdio (`pipe:[INODE]`).
fn pipes_of(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let n: i32 = e.file_name().to_str()?.parse().ok()?;
            let link = std::fs::read_link(e.path()).ok()?.display().to_string();
            (n > 2 && link.starts_with("pipe:")).then_some(link)
        })
        .collect()
}

/// A replacement worker still starting (it never reports ready) when the supervisor
/// upgrades to a binary that knows nothing of readiness pipes: a script that passes the
/// check and, executed in place, lists its descriptors. None of them is the replacement's
/// readiness pipe (the listeners and the stats region it may know; that pipe it cannot).
#[test]
fn an_upgrade_to_a_binary_that_takes_no_readiness_pipe_hands_it_none() {
    let dir = Dir::new("r11-oldbin");
    let mode = mode_file(&dir, "echo");
    let mode_var = mode.display().to_string();
    let (mut server, copy) = start_copy(
        &dir,
        &[
            ("DEMO_MODE_FILE", &mode_var),
            ("DEMO_READY_TIMEOUT_MS", "30000"),
            ("DEMO_STABLE_AFTER_MS", "10"),
        ],
    );
    let pid = server.pid();
    let workers = children(pid);
    // The replacement never gets ready.
    mode_file(&dir, "silent");
    let (victim, replacement) = kill_one_and_wait_for_its_replacement(&server, "Silent");
    let other = *workers.iter().find(|w| **w != victim).unwrap();
    // Its readiness pipe: the one pipe it holds that the other worker does not (both hold
    // what the supervisor itself inherited, such as a jobserver's).
    let theirs = pipes_of(other);
    let only: std::collections::BTreeSet<String> = pipes_of(replacement)
        .into_iter()
        .filter(|p| !theirs.contains(p))
        .collect();
    assert_eq!(only.len(), 1, "{only:?}");
    let pipe = only.first().unwrap();
    let seen = dir.join("seen");
    let script = format!(
        "#!/bin/sh\n[ \"$DUO_UPGRADE_CHECK\" = 1 ] && exit 0\n\
         for fd in /proc/$$/fd/*; do echo \"${{fd##*/}} $(readlink $fd)\"; done > {s}.tmp\n\
         mv {s}.tmp {s}\nexit 0\n",
        s = seen.display()
    );
    replace(&copy, script.as_bytes());
    server.signal("USR2");
    wait_until("the script ran in place of the supervisor", || {
        seen.exists()
    });
    let fds = std::fs::read_to_string(&seen).unwrap();
    assert!(
        !fds.lines().any(|l| l.ends_with(&format!(" {pipe}"))),
        "worker {replacement}'s readiness pipe ({pipe}) handed to an image that cannot know \
         it:\n{fds}\nlog:\n{}",
        server.stderr()
    );
    let _ = server.stderr_to_end(LIMIT);
}
