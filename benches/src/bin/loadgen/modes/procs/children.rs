//! The child processes of `idle --procs`: where they are registered (so that they can be
//! killed by PID from anywhere), what the parent reads from them, how they end.

use std::os::fd::AsFd;
use std::process::Child;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use duo_sys::{Epoll, Events, Interest, Signal, SignalFd};
use duo_testkit::loadgen_json::LoadgenJson;

use crate::host::rss_kib;

/// The children, for killing them by PID from anywhere (the watchdog, the signal thread,
/// a failing run). A child stays here until it has been reaped, so its PID cannot have
/// been reused by another process meanwhile.
pub(super) static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// Handles SIGINT, SIGTERM and SIGHUP on a thread of their own: the children are killed
/// by PID, then the process exits with 128 + the signal's number. Call it on the main
/// thread before any other thread starts, so that every thread has them blocked. Without
/// it (it failed) the default action applies and the children exit when their stdin ends.
pub(crate) fn watch_signals() {
    let signals = [Signal::INT, Signal::TERM, Signal::HUP];
    let fd = match SignalFd::new(&signals) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("loadgen idle: cannot watch signals ({e}); children exit with their stdin");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("loadgen-signals".into())
        .spawn(move || {
            let signal = match wait_signal(&fd) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("loadgen idle: waiting for signals failed: {e}");
                    return;
                }
            };
            eprintln!("loadgen idle: {signal}; killing the child processes");
            kill_children();
            std::process::exit(128 + signal.as_raw());
        });
    if let Err(e) = spawned {
        eprintln!("loadgen idle: cannot start the signal thread: {e}");
    }
}

/// Blocks until one of the signals of `fd` arrives.
fn wait_signal(fd: &SignalFd) -> std::io::Result<Signal> {
    let epoll = Epoll::new()?;
    epoll.add(fd.as_fd(), Interest::READABLE, 0)?;
    let mut events = Events::with_capacity(1);
    loop {
        epoll.wait(&mut events, None)?;
        if let Some(info) = fd.read()? {
            return Ok(info.signal);
        }
    }
}

/// Kills every child still running, by PID, and reaps it.
pub(crate) fn kill_children() {
    let mut children = CHILDREN.lock().unwrap_or_else(PoisonError::into_inner);
    for child in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
    children.clear();
}

/// Kills the children when the run ends early (an error returned, a panic).
pub(super) struct KillOnDrop;

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_children();
    }
}

/// What the children say on stdout: `(child, line)`, `None` at its end.
pub(super) type Lines = Receiver<(usize, Option<String>)>;

/// What the parent knows of its children.
pub(super) struct Children {
    lines: Lines,
    /// `held N` said.
    pub(super) held: Vec<Option<u64>>,
    /// Stdout ended.
    pub(super) ended: Vec<bool>,
    /// The `--json` reports.
    pub(super) reports: Vec<Option<LoadgenJson>>,
}

impl Children {
    pub(super) fn new(procs: usize, lines: Lines) -> Children {
        Children {
            lines,
            held: vec![None; procs],
            ended: vec![false; procs],
            reports: vec![None; procs],
        }
    }

    /// Takes the children's lines until `done` holds (checked after each) or `deadline`.
    /// A child that ends before saying `held` ends the wait too.
    pub(super) fn collect_until(&mut self, deadline: Instant, done: impl Fn(&Children) -> bool) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((i, Some(line))) => {
                    if let Some(n) = line.strip_prefix("held ") {
                        self.held[i] = Some(n.trim().parse().unwrap_or(0));
                    } else if let Some(r) = LoadgenJson::find_in(&line) {
                        self.reports[i] = Some(r);
                    }
                }
                Ok((i, None)) => {
                    self.ended[i] = true;
                    if self.held[i].is_none() {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => {
                    // Every child's stdout has ended: nothing more will come; the wait is
                    // still a wait (the hold goes on), not a spin.
                    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                    return;
                }
            }
            if done(self) {
                return;
            }
        }
    }
}

/// The summed VmRSS of the children still registered, KiB.
pub(super) fn children_rss_kib() -> u64 {
    let children = CHILDREN.lock().unwrap_or_else(PoisonError::into_inner);
    children.iter().filter_map(|c| rss_kib(c.id()).ok()).sum()
}

/// Waits for every child to exit until `deadline` (killing the rest then); returns each
/// one's exit code (`None`: killed or killed by a signal).
pub(super) fn reap(deadline: Instant) -> Vec<Option<i32>> {
    loop {
        let mut children = CHILDREN.lock().unwrap_or_else(PoisonError::into_inner);
        let all_done = children
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(Some(_))));
        if all_done || Instant::now() >= deadline {
            let codes = children
                .iter_mut()
                .map(|c| match c.try_wait() {
                    Ok(Some(status)) => status.code(),
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        None
                    }
                })
                .collect();
            children.clear();
            return codes;
        }
        drop(children);
        std::thread::sleep(Duration::from_millis(10));
    }
}
