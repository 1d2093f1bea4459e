//! Upgrading in place (`SIGUSR2`, once the new binary passed its check: `probe.rs`): the
//! supervisor executes its own binary again, same PID, handing over its listening sockets
//! (systemd's protocol), its workers and its stats region; and the new image's side: which
//! handed-over workers are really its children.

use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::process::Command;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use duo_reactor::EventLoop;

use super::{State, WorkerProc};
use crate::protocol::{
    ADOPT_VAR, BACKOFF_VAR, GENERATION_VAR, LAST_STARTED_VAR, READY_PIPE_VAR_PREFIX, RETIRING_VAR,
    ROW_LEN, STATS_SEEN_VAR, STATS_TOTALS_VAR, STATS_VAR,
};
use crate::worker::read_row;

/// How long an adopted worker that let its reopened readiness pipe go must stay up before
/// it counts as ready: a worker that dies closes its pipe just before its `SIGCHLD`.
const LET_GO_SETTLE: Duration = Duration::from_millis(200);

/// What the program around the supervisor hands to the image an upgrade executes, beside
/// the supervisor's own state ([`Supervisor::carry_across_upgrade`],
/// [`Supervisor::carry_fd_across_upgrade`]).
///
/// [`Supervisor::carry_across_upgrade`]: super::Supervisor::carry_across_upgrade
/// [`Supervisor::carry_fd_across_upgrade`]: super::Supervisor::carry_fd_across_upgrade
#[derive(Debug, Default)]
pub(super) struct Carried {
    /// Variables for that image.
    env: Vec<(String, String)>,
    /// Descriptors for it, each with the variable that names it.
    fds: Vec<(String, OwnedFd)>,
}

impl Carried {
    /// Sets `key=value`, replacing an earlier value of `key`.
    pub(super) fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Hands over `fd` as `key`, replacing an earlier descriptor of `key`.
    pub(super) fn set_fd(&mut self, key: &str, fd: OwnedFd) {
        self.fds.retain(|(k, _)| k != key);
        self.fds.push((key.to_owned(), fd));
    }

    /// Puts the variables in `cmd`'s environment and makes each descriptor inheritable
    /// across the `exec`, with its number in its variable (one that cannot be made
    /// inheritable is left out, with a warning).
    fn apply(&self, cmd: &mut Command) {
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        for (key, fd) in &self.fds {
            match duo_sys::set_inherit_on_exec(fd.as_fd(), true) {
                Ok(()) => {
                    cmd.env(key, fd.as_raw_fd().to_string());
                }
                Err(e) => log::warn!("SIGUSR2: {key} will not be handed over: {e}"),
            }
        }
    }

    /// Makes the descriptors close-on-exec again, after a failed `exec`.
    fn restore_cloexec(&self) {
        for (key, fd) in &self.fds {
            if let Err(e) = duo_sys::set_inherit_on_exec(fd.as_fd(), false) {
                log::error!("restoring close-on-exec on {key}: {e}");
            }
        }
    }
}

impl State {
    /// Whether an upgrade may go on now (if not, the reason is logged): not while
    /// stopping or while a generation starts, nor with the listeners elsewhere than at
    /// descriptors 3.. (where the next image takes them).
    pub(super) fn may_upgrade(&self) -> bool {
        if self.stopping || self.pending.is_some() {
            log::warn!("SIGUSR2: not now (stopping, or a generation is starting); ignored");
            return false;
        }
        let misplaced = self
            .listeners
            .iter()
            .enumerate()
            .any(|(i, l)| l.as_raw_fd() != duo_sys::LISTEN_FDS_START + i as RawFd);
        if misplaced {
            log::error!(
                "SIGUSR2: cannot upgrade: the listening sockets are not at descriptors 3.. \
                 (they were taken when the supervisor started)"
            );
        }
        !misplaced
    }

    /// Executes the binary again in place, handing everything over; returns only if that
    /// failed (logged). Its check ran first (`probe.rs`), and [`State::may_upgrade`] holds.
    ///
    /// A serving worker still starting (a replacement) is handed over with its readiness
    /// pipe's name ([`READY_PIPE_VAR_PREFIX`]): the new image opens that pipe again, waits
    /// for its byte and gives it its ready deadline again, rather than count it ready.
    pub(super) fn upgrade(&mut self, lp: &mut EventLoop) {
        let serving = self.pids_where(|w| w.generation == self.generation && !w.retiring);
        let list: Vec<String> = serving.iter().map(u32::to_string).collect();
        let draining: Vec<String> = self
            .pids_where(|w| w.retiring)
            .iter()
            .map(u32::to_string)
            .collect();
        log::info!(
            "SIGUSR2: upgrading: executing {} again, handing over workers {serving:?}",
            self.exe.display()
        );
        let (totals, seen) = self.stats_to_hand_over();
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.args(&self.args)
            .env("LISTEN_FDS", self.listeners.len().to_string())
            .env("LISTEN_PID", std::process::id().to_string())
            .env_remove("LISTEN_FDNAMES")
            .env(ADOPT_VAR, list.join(","))
            .env(RETIRING_VAR, draining.join(","))
            .env(GENERATION_VAR, self.generation.to_string())
            .env(LAST_STARTED_VAR, self.last_started.to_string())
            .env(STATS_VAR, self.stats.fd().as_raw_fd().to_string())
            .env(STATS_TOTALS_VAR, totals)
            .env(STATS_SEEN_VAR, seen)
            .env(
                BACKOFF_VAR,
                self.backoff
                    .current()
                    .map_or(String::new(), |d| d.as_millis().to_string()),
            );
        if let Err(e) = duo_sys::set_inherit_on_exec(self.stats.fd(), true) {
            log::warn!("SIGUSR2: the stats region will not be handed over: {e}");
            cmd.env_remove(STATS_VAR);
        }
        self.carried.apply(&mut cmd);
        let starting = self.ready_pipes(lp, &serving);
        for (pid, name) in &starting {
            cmd.env(format!("{READY_PIPE_VAR_PREFIX}{pid}"), name);
        }
        for l in &self.listeners {
            if let Err(e) = duo_sys::set_inherit_on_exec(l.as_fd(), true) {
                log::error!("SIGUSR2: cannot upgrade: {e}");
                self.restore_cloexec();
                return;
            }
        }
        // (`SIGPIPE` stays ignored if the `exec` fails: std's resets it before `execve`.)
        let err = duo_sys::exec_in_place(&mut cmd);
        self.restore_cloexec();
        log::error!(
            "SIGUSR2: executing {} failed: {err}; this image keeps running",
            self.exe.display()
        );
    }

    /// The readiness pipes of those of `pids` still starting, by name: `(pid,
    /// "pipe:[INODE]")`. The pipes themselves stay close-on-exec: the new image opens the
    /// one the worker holds through `/proc/PID/fd` ([`take_ready_pipe`]), and an image
    /// that knows nothing of them (an older binary) gets no descriptor it would leak into
    /// every worker it starts. One that cannot be named is left out (its worker is then
    /// adopted as ready, as it always was before).
    fn ready_pipes(&mut self, lp: &mut EventLoop, pids: &[u32]) -> Vec<(u32, String)> {
        let mut pipes = Vec::new();
        for pid in pids {
            let Some(token) = self
                .workers
                .get(pid)
                .filter(|w| !w.ready)
                .and_then(|w| w.ready_token)
            else {
                continue;
            };
            match lp.with_channel(token, |_, ch, _| duo_sys::fd_name(ch.fd())) {
                Some(Ok(name)) => pipes.push((*pid, name)),
                Some(Err(e)) => {
                    log::warn!("SIGUSR2: worker {pid}'s readiness pipe stays behind: {e}")
                }
                None => {}
            }
        }
        pipes
    }

    /// The new image's side: takes over the previous image's `serving` workers (of the
    /// serving generation) and its `retiring` ones (still draining), each with the stats
    /// row that holds its PID. Every other row is cleared and free. A serving one with a
    /// readiness pipe in `pipes` was still starting: it is not ready until its byte comes.
    pub(super) fn adopt(
        &mut self,
        lp: &mut EventLoop,
        serving: Vec<u32>,
        retiring: Vec<u32>,
        mut pipes: BTreeMap<u32, OwnedFd>,
    ) {
        let rows = self.stats.slots().len() / ROW_LEN;
        let mut owner: BTreeMap<u32, usize> = BTreeMap::new();
        for row in 0..rows {
            let (pid, _) = read_row(self.row_cells(row));
            if serving.contains(&pid) || retiring.contains(&pid) {
                owner.insert(pid, row);
            } else {
                self.clear_row(row);
            }
        }
        self.free_rows.retain(|r| !owner.values().any(|o| o == r));
        let adopted = serving.into_iter().map(|pid| (pid, false));
        for (pid, draining) in adopted.chain(retiring.into_iter().map(|pid| (pid, true))) {
            let row = owner.get(&pid).copied();
            let generation = if draining {
                // Its row says its generation (the supervisor writes it there at the start).
                row.map(|row| self.row_generation(row))
                    .filter(|g| *g > 0)
                    .unwrap_or_else(|| self.generation.saturating_sub(1))
            } else {
                self.generation
            };
            let ready_token = if draining {
                None
            } else {
                pipes
                    .remove(&pid)
                    .and_then(|fd| super::watch_ready_pipe(lp, pid, fd))
            };
            let starting = if ready_token.is_some() {
                ", still starting"
            } else {
                ""
            };
            match (row, draining) {
                (_, true) => {
                    log::info!("adopting worker {pid} (generation {generation}), still draining")
                }
                (Some(row), false) => log::info!(
                    "adopting worker {pid} (generation {generation}, stats row {row}){starting}"
                ),
                (None, false) => log::info!(
                    "adopting worker {pid} (generation {generation}, no stats row){starting}"
                ),
            }
            self.workers.insert(
                pid,
                WorkerProc {
                    generation,
                    started: Instant::now(),
                    ready: ready_token.is_none(),
                    retiring: draining,
                    row,
                    reopened_pipe: ready_token.is_some(),
                    ready_token,
                },
            );
        }
    }

    /// The readiness pipe of adopted worker `pid`, opened again through `/proc`, closed
    /// without the byte. The worker's byte met `EPIPE` (written between the `exec` and
    /// that `open`, when nobody read the pipe) and it let the pipe go just after the
    /// `open`: it takes itself for ready (its `notify_ready` returned `Ok`) and serves, so
    /// it counts as ready here too, rather than be retired, healthy, at its ready deadline.
    /// Not at once: a worker that dies closes the pipe just before its `SIGCHLD` comes, and
    /// one that closed it by dying never was ready (counted ready, its age since the
    /// adoption would count as a life, and past `stable_after` reset the back-off). So it
    /// counts ready [`LET_GO_SETTLE`] later, if it is still there and still starting.
    pub(super) fn reopened_pipe_let_go(&mut self, lp: &mut EventLoop, pid: u32) {
        let starting = move |st: &State| {
            st.workers
                .get(&pid)
                .is_some_and(|w| w.reopened_pipe && !w.ready && !w.retiring)
        };
        if !starting(self) {
            return;
        }
        self.after_running(lp, LET_GO_SETTLE, move |lp, st| {
            if starting(st) {
                log::info!(
                    "worker {pid} let its readiness pipe go without a byte (its byte met \
                     EPIPE during the upgrade) and lives on: counted ready"
                );
                st.on_ready(lp, pid);
            }
        });
    }

    pub(super) fn restore_cloexec(&self) {
        let _ = duo_sys::set_inherit_on_exec(self.stats.fd(), false);
        self.carried.restore_cloexec();
        for l in &self.listeners {
            if let Err(e) = duo_sys::set_inherit_on_exec(l.as_fd(), false) {
                log::error!("restoring close-on-exec on a listener: {e}");
            }
        }
    }
}

/// The new image's side of [`State::ready_pipes`]: the readiness pipe of adopted worker
/// `pid`, if the previous image named one ([`READY_PIPE_VAR_PREFIX`], taken out of the
/// environment): `pipe:[INODE]`, opened again through `/proc/PID/fd` while the worker
/// holds its write end (`None` once it has let it go: it wrote its byte, which the
/// previous image did not read, or it is exiting, and is reaped then). A number is a
/// descriptor handed across the `exec` itself (an image from before the names), taken so
/// that no worker inherits it.
pub(super) fn take_ready_pipe(pid: u32) -> Option<OwnedFd> {
    let var = format!("{READY_PIPE_VAR_PREFIX}{pid}");
    let named = std::env::var(&var).ok().filter(|v| v.starts_with("pipe:"));
    let taken = match named {
        Some(name) => {
            std::env::remove_var(&var);
            duo_sys::open_pipe_held_by(pid, &name)
                .map_err(|e| e.to_string())
                .inspect(|fd| {
                    if fd.is_none() {
                        log::info!("worker {pid} no longer holds its readiness pipe {name}");
                    }
                })
        }
        None => duo_sys::take_fd_from_env(&var).map_err(|e| e.to_string()),
    };
    taken
        .map_err(|e| log::warn!("the readiness pipe of worker {pid}: {e}"))
        .ok()
        .flatten()
}

/// The value of `var`, removed from the environment.
pub(super) fn take_var(var: &str) -> Option<String> {
    let v = std::env::var(var).ok();
    std::env::remove_var(var);
    v
}

/// `"12,34"` -> `[12, 34]`; anything that is not a positive number is skipped.
pub(super) fn parse_pids(list: &str) -> Vec<u32> {
    list.split(',')
        .filter_map(|p| p.trim().parse().ok())
        .filter(|p| *p > 0)
        .collect()
}

/// Whether `pid` is a child of this process (its parent in `/proc/PID/stat`).
pub(super) fn is_child(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ')' ends it.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) == Some(std::process::id())
}

/// Moves listener `i` to descriptor `3 + i` where that number is free (an upgrade hands
/// them over there); leaves it where it is otherwise.
pub(super) fn relocate(listeners: Vec<TcpListener>) -> Vec<TcpListener> {
    listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let target = duo_sys::LISTEN_FDS_START + i as RawFd;
            if l.as_raw_fd() == target {
                return l;
            }
            match duo_sys::dup_at_least(l.as_fd(), target) {
                Ok(fd) if fd.as_raw_fd() == target => TcpListener::from(fd),
                _ => l,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_lists_skip_garbage() {
        assert_eq!(parse_pids("12, 34,x,,0,-5"), [12, 34]);
        assert!(parse_pids("").is_empty());
    }

    #[test]
    fn only_children_are_adoptable() {
        assert!(!is_child(std::process::id()));
        assert!(!is_child(1));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(is_child(child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
