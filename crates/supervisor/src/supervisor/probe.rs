//! The check of the binary an upgrade (`SIGUSR2`) is about to execute in place, as
//! `nginx -t` before nginx's binary upgrade: an `exec` replaces the supervisor's image for
//! good (same PID), so a binary that exits at once (a script `exit 3`, a build that
//! crashes at start or rejects its arguments) would take the supervisor down, and its
//! workers with it (their parent-death `SIGTERM`).
//!
//! - The supervisor's side ([`State::check_then_upgrade`]): the binary on disk runs as a
//!   child with the supervisor's arguments and [`UPGRADE_CHECK_VAR`]`=1`, stdin and stdout
//!   on `/dev/null`, the supervisor's stderr, no other descriptor (so never a listening
//!   socket: it cannot take a connection), none of the upgrade's variables, signals
//!   unblocked. Its end is reaped with the workers' (`SIGCHLD`): exit status 0 and the
//!   upgrade goes on ([`State::upgrade`]); any other end, or still running at
//!   [`SupervisorConfig::ready_timeout`] (then `SIGKILL` to its PID), refuses the upgrade
//!   with an error naming the status, the signal or the timeout, and this image serves on
//!   with its workers, as after a failed reload. A stop signal meanwhile kills the check.
//! - The check's side ([`exit_if_checking`], in [`Supervisor::new`]): after the
//!   configuration is validated, what else the supervisor needs to start is tried (the
//!   worker program, an event loop, the stats region); then the process exits 0 without
//!   serving. [`bind_listener`](crate::bind_listener) binds nothing in a check: the
//!   serving image holds the address.
//!
//! The limit: a binary that passes the check and fails later (in the `exec`ed image's
//! start with the inherited sockets, or while serving) is not caught.
//!
//! [`Supervisor::new`]: super::Supervisor::new

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

use duo_reactor::{EventLoop, Signal, TimerId};
use duo_sys::SharedCounters;

use super::child::describe;
use super::{State, SupervisorError, ROW_GENERATIONS};
use crate::config::SupervisorConfig;
use crate::protocol::{
    ADOPT_VAR, GENERATION_VAR, LAST_STARTED_VAR, LISTEN_FDS_VAR, READY_FD_VAR, RETIRING_VAR,
    ROW_LEN, SLOT_VAR, STATS_FD_VAR, STATS_SEEN_VAR, STATS_TOTALS_VAR, STATS_VAR,
    UPGRADE_CHECK_VAR, WORKER_GENERATION_VAR, WORKER_VAR,
};

/// Variables the check must not get: the upgrade's hand-over, systemd's socket activation
/// and the worker protocol (each would make the program take a path that serves or adopts).
const WITHHELD: [&str; 16] = [
    ADOPT_VAR,
    RETIRING_VAR,
    GENERATION_VAR,
    LAST_STARTED_VAR,
    STATS_VAR,
    STATS_TOTALS_VAR,
    STATS_SEEN_VAR,
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    WORKER_VAR,
    LISTEN_FDS_VAR,
    READY_FD_VAR,
    STATS_FD_VAR,
    SLOT_VAR,
    WORKER_GENERATION_VAR,
];

/// A check under way.
#[derive(Debug)]
pub(super) struct Probe {
    pid: u32,
    timer: TimerId,
    started: Instant,
}

/// Whether this process is the check an upgrade runs before it executes the new binary
/// ([`UPGRADE_CHECK_VAR`] is `1`): then [`Supervisor::new`](crate::Supervisor::new) exits
/// 0 once the configuration is checked, and [`bind_listener`](crate::bind_listener) binds
/// nothing. A program that does more before `Supervisor::new` than parse and check its
/// configuration (open a database, write a file) should skip that here.
pub fn is_upgrade_check() -> bool {
    std::env::var_os(UPGRADE_CHECK_VAR).is_some_and(|v| v == "1")
}

/// The check's side, called by `Supervisor::new` with the configuration validated: if
/// this process is an upgrade's check, tries what else the supervisor needs to start and
/// exits 0 (an error is returned, for the program to exit non-zero as it does when it
/// cannot start). Returns `Ok` at once otherwise.
pub(super) fn exit_if_checking(cfg: &SupervisorConfig, exe: &Path) -> Result<(), SupervisorError> {
    if !is_upgrade_check() {
        return Ok(());
    }
    let program = cfg.command.program();
    // A bare name is looked up in `PATH` at each start: only a path is checked here.
    if program.components().count() > 1 {
        let executable = std::fs::metadata(program)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .map_err(|source| SupervisorError::Io {
                what: "the upgrade check: the worker program",
                source,
            })?;
        if !executable {
            return Err(SupervisorError::Io {
                what: "the upgrade check: the worker program",
                source: std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{} is not an executable file", program.display()),
                ),
            });
        }
    }
    drop(EventLoop::new()?);
    let rows = cfg.workers * ROW_GENERATIONS;
    SharedCounters::create("duo-supervisor-check", rows * ROW_LEN).map_err(|source| {
        SupervisorError::Io {
            what: "the upgrade check: creating the shared stats region",
            source,
        }
    })?;
    log::info!(
        "upgrade check: {} accepts its configuration ({} workers of {}); exiting without \
         serving",
        exe.display(),
        cfg.workers,
        program.display()
    );
    std::process::exit(0)
}

impl State {
    /// `SIGUSR2`: runs the check of the binary on disk; the upgrade itself follows if it
    /// passes ([`probe_exited`](State::probe_exited)).
    pub(super) fn check_then_upgrade(&mut self, lp: &mut EventLoop) {
        if let Some(p) = &self.probe {
            log::warn!(
                "SIGUSR2: the new binary is being checked already (process {}); ignored",
                p.pid
            );
            return;
        }
        if !self.may_upgrade() {
            return;
        }
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.args)
            .env(UPGRADE_CHECK_VAR, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for var in WITHHELD {
            cmd.env_remove(var);
        }
        let spawned = duo_sys::inherit_only_stdio(&mut cmd)
            .and_then(|()| duo_sys::unblock_signals_in_child(&mut cmd))
            .and_then(|()| {
                duo_sys::set_parent_death_signal(&mut cmd, Signal::TERM);
                // Reaped by PID with the workers (`reap_any`); the `Child` is not needed.
                cmd.spawn()
            });
        let pid = match spawned {
            Ok(child) => child.id(),
            Err(e) => {
                self.upgrade_refused(&format!(
                    "cannot run {} to check it: {e}",
                    self.exe.display()
                ));
                return;
            }
        };
        let limit = self.cfg.ready_timeout;
        log::info!(
            "SIGUSR2: checking {} first (process {pid}, {UPGRADE_CHECK_VAR}=1, within {limit:?})",
            self.exe.display()
        );
        let timer = self.after_running(lp, limit, move |_, st| st.probe_timeout(pid));
        self.probe = Some(Probe {
            pid,
            timer,
            started: Instant::now(),
        });
    }

    /// Child `pid` ended with `status`: if it was the check, the upgrade goes on (status 0)
    /// or is refused, and `true` is returned.
    pub(super) fn probe_exited(
        &mut self,
        lp: &mut EventLoop,
        pid: u32,
        status: ExitStatus,
    ) -> bool {
        let Some(p) = self.probe.take_if(|p| p.pid == pid) else {
            return false;
        };
        lp.cancel(p.timer);
        if !status.success() {
            self.upgrade_refused(&format!(
                "the check of {} (process {pid}) ended with {} (it must exit 0; its log is \
                 above)",
                self.exe.display(),
                describe(status)
            ));
            return true;
        }
        log::info!(
            "SIGUSR2: {} passed its check (process {pid}) in {:.1?}",
            self.exe.display(),
            p.started.elapsed()
        );
        // A stop or a reload may have begun meanwhile: then `may_upgrade` says so.
        if self.may_upgrade() {
            self.upgrade(lp);
        }
        true
    }

    /// The check `pid` is still running at the ready timeout: killed, the upgrade refused.
    fn probe_timeout(&mut self, pid: u32) {
        if self.probe.take_if(|p| p.pid == pid).is_none() {
            return;
        }
        if let Err(e) = duo_sys::kill_process(pid) {
            log::warn!("killing the check {pid}: {e}");
        }
        // Its end is reaped later, as a process that is no worker.
        self.upgrade_refused(&format!(
            "the check of {} (process {pid}) did not end within {:?}; killed it",
            self.exe.display(),
            self.cfg.ready_timeout
        ));
    }

    /// A stop: a check under way is killed, and no upgrade follows.
    pub(super) fn abandon_probe(&mut self, lp: &mut EventLoop) {
        if let Some(p) = self.probe.take() {
            lp.cancel(p.timer);
            log::warn!(
                "the upgrade is abandoned: killing its check (process {})",
                p.pid
            );
            if let Err(e) = duo_sys::kill_process(p.pid) {
                log::warn!("killing the check {}: {e}", p.pid);
            }
        }
    }

    fn upgrade_refused(&self, why: &str) {
        log::error!(
            "SIGUSR2: upgrade refused: {why}; this image keeps running, generation {} \
             serving",
            self.generation
        );
    }
}
