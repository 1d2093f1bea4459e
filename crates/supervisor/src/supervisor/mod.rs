//! The supervisor: one event loop that starts, watches, restarts, reloads and stops the
//! worker processes.
//!
//! # State
//!
//! Everything lives in one `State`, a loop-local of the supervisor's `EventLoop`; the
//! signalfd handler, the readiness pipes and the timers reach it with `with_local`.
//!
//! ```text
//! generation:  pending ──all N ready──▶ serving ──next one serving──▶ retired (SIGTERM;
//!                                                                  SIGKILL at stop_timeout)
//!                 │ a worker exits before ready (a reload's: before it serves, which is
//!                 │ 200 ms after its last worker was ready), or ready_timeout
//!                 ▼
//!              retired (SIGTERM: its ready workers may serve already, so they drain;
//!              SIGKILL at stop_timeout); the serving one goes on (none: run fails)
//!
//! worker:      started ──byte on its pipe──▶ ready ──SIGTERM (retire or stop)──▶ retiring
//!                 └──────────────── SIGCHLD, reaped by pid ◀──────────────────────┘
//! ```
//!
//! - A worker of the serving generation that dies unasked is replaced: a restart timer
//!   (the back-off delay) tops the serving generation up to N. A death of a pending or
//!   retiring worker is not restarted. A replacement not ready within `ready_timeout` is
//!   retired and replaced in turn (`stop.rs`).
//! - Every worker sent `SIGTERM` (retired, or stopped) gets `SIGKILL` if it still runs at
//!   `stop_timeout`: one that ignores `SIGTERM` would otherwise serve on for good.
//! - A worker's readiness byte may still sit in its pipe when its `SIGCHLD` is handled
//!   (ready, then dead at once): the pipe is read first, so it counts as having started.
//! - Files: this one holds the state machine (generations, workers, stopping);
//!   `upgrade.rs` the re-execution in place and what the new image adopts; `probe.rs` the
//!   check of the new binary that comes first; `stats.rs` the shared stats rows and the
//!   summed log line; `child.rs` a worker's readiness pipe and how its exit is described;
//!   `job.rs` job control (Ctrl-Z, `fg`) and deadlines that do not count the time
//!   stopped; `error.rs` why `run` failed.
//! - Stop: every worker gets `SIGTERM` once; the next stop signal sends `SIGINT`; at
//!   `stop_timeout` the rest get `SIGKILL`; the loop quits when the last one is reaped.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_reactor::{EventLoop, FnHandler, Interest, Signal, TimerId, Token};
use duo_sys::SharedCounters;

use crate::backoff::Backoff;
use crate::config::SupervisorConfig;
use crate::protocol::{
    ADOPT_VAR, BACKOFF_VAR, GENERATION_VAR, LAST_STARTED_VAR, LISTEN_FDS_VAR, READY_FD_VAR,
    RETIRING_VAR, ROW_LEN, SLOT_VAR, STATS_FD_VAR, STATS_SEEN_VAR, STATS_TOTALS_VAR, STATS_VAR,
    WORKER_GENERATION_VAR, WORKER_VAR,
};
use crate::table::WorkerTable;

mod child;
mod error;
mod generation;
mod job;
mod probe;
mod stats;
mod stop;
mod upgrade;

pub use error::SupervisorError;
pub use probe::is_upgrade_check;
use stats::StatsLog;

pub(crate) use child::READY;
use child::{describe, read_byte, read_ready};
use upgrade::Carried;
use upgrade::{is_child, parse_pids, relocate, take_ready_pipe, take_var};

/// Generations of a full set of workers the stats region has rows for: a serving one, a
/// starting one, and six still draining.
const ROW_GENERATIONS: usize = 8;

/// The signals the supervisor handles (the last four: job control, see `job.rs`).
const SIGNALS: [Signal; 9] = [
    Signal::INT,
    Signal::TERM,
    Signal::HUP,
    Signal::USR2,
    Signal::CHLD,
    Signal::TSTP,
    Signal::TTIN,
    Signal::TTOU,
    Signal::CONT,
];

/// Blocks the signals the supervisor handles in the calling thread, so that a thread
/// spawned from it afterwards (which inherits the mask) never takes one by its default
/// action (`SIGUSR2`'s is to terminate). [`Supervisor::run`] blocks them anyway; call this
/// first to start threads before it.
#[cfg(feature = "metrics")]
pub(crate) fn block_handled_signals() -> io::Result<()> {
    duo_sys::block_signals(&SIGNALS)
}

/// After the stop deadline's `SIGKILL`s, how long the supervisor waits for the reaping
/// before it gives up and returns anyway.
const AFTER_KILL: Duration = Duration::from_secs(2);

/// A supervisor of worker processes, nginx's master process in small.
///
/// It owns the listening sockets (bound once by the caller, or inherited through socket
/// activation) and never closes them while it runs, so a connection is never refused
/// for want of a listener, and workers hand over to each other through the sockets'
/// shared accept queue. See the [crate docs](crate) for signals and the lifecycle.
///
/// Create it, then [`run`](Supervisor::run) it, on the main thread before any other
/// thread starts (the signals it handles must be blocked in every thread).
#[derive(Debug)]
pub struct Supervisor {
    cfg: SupervisorConfig,
    listeners: Vec<TcpListener>,
    adopted: Vec<u32>,
    /// The readiness pipes of the adopted workers that were still starting.
    adopted_pipes: BTreeMap<u32, OwnedFd>,
    /// Workers of older generations the previous image was still draining.
    adopted_retiring: Vec<u32>,
    adopted_generation: u64,
    /// This image was executed by an upgrade (`SIGUSR2`) of a previous one.
    upgraded: bool,
    /// The newest generation the previous image started.
    adopted_last_started: u64,
    /// The restart back-off's delay the previous image had reached (an upgrade).
    adopted_backoff: Option<Duration>,
    /// The summed stats line's totals the previous image counted (an upgrade).
    adopted_totals: crate::worker::WorkerStats,
    /// The adopted workers' own totals that `adopted_totals` includes, by PID.
    adopted_seen: std::collections::HashMap<u32, crate::worker::WorkerStats>,
    /// What the image an upgrade executes gets from the program around the supervisor.
    carried: Carried,
    /// The stats region of the previous image, handed over by an upgrade.
    inherited_stats: Option<SharedCounters>,
    exe: PathBuf,
    args: Vec<OsString>,
    table: WorkerTable,
}

impl Supervisor {
    /// A supervisor for `listeners` (at least one) with `cfg`.
    ///
    /// Reads (and removes) the variables an upgrading supervisor leaves for its new
    /// image ([`ADOPT_VAR`], [`GENERATION_VAR`]); the workers they name are adopted if
    /// they are children of this process. Moves the listeners to descriptors `3..3+n` when
    /// those are free (an upgrade needs them there).
    ///
    /// In the check an upgrade runs first ([`is_upgrade_check`]) it exits the process
    /// with status 0 once the configuration and what the supervisor needs are checked.
    ///
    /// # Errors
    ///
    /// The configuration is refused ([`ConfigError`](crate::ConfigError), the open-file
    /// limit counted), or the path of the running binary is unknown (or, in the check,
    /// what it needs fails).
    pub fn new(
        cfg: SupervisorConfig,
        listeners: Vec<TcpListener>,
    ) -> Result<Supervisor, SupervisorError> {
        let (fd_limit, _) = duo_sys::fd_limit().map_err(|source| SupervisorError::Io {
            what: "reading the open-file limit",
            source,
        })?;
        cfg.validate(fd_limit, listeners.len())?;
        let exe = std::env::current_exe().map_err(|source| SupervisorError::Io {
            what: "finding the supervisor's own binary",
            source,
        })?;
        probe::exit_if_checking(&cfg, &exe)?;
        let args = std::env::args_os().skip(1).collect();
        let inherited_stats = match duo_sys::take_fd_from_env(STATS_VAR) {
            Ok(Some(fd)) => SharedCounters::open(fd)
                .map_err(|e| log::warn!("the previous image's stats region: {e}"))
                .ok(),
            Ok(None) => None,
            Err(e) => {
                log::warn!("the previous image's stats region: {e}");
                None
            }
        };
        // Set by an upgrading image whatever it hands over (also with no worker to adopt:
        // all of them dead and waiting out their back-off).
        let generation_var = take_var(GENERATION_VAR);
        let upgraded = generation_var.is_some();
        let adopted_generation = generation_var.and_then(|g| g.parse().ok()).unwrap_or(0);
        let adopted_last_started = take_var(LAST_STARTED_VAR)
            .and_then(|g| g.parse().ok())
            .unwrap_or(0)
            .max(adopted_generation);
        let adopted_backoff = take_var(BACKOFF_VAR)
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis);
        let adopted_totals = take_var(STATS_TOTALS_VAR)
            .and_then(|t| stats::parse_totals(&t))
            .unwrap_or_default();
        let adopted_seen = take_var(STATS_SEEN_VAR)
            .map(|s| stats::parse_seen(&s))
            .unwrap_or_default();
        let listed = |var: &str| -> Vec<u32> {
            take_var(var)
                .map(|list| parse_pids(&list))
                .unwrap_or_default()
        };
        let children_in = |pids: Vec<u32>| -> Vec<u32> {
            pids.into_iter()
                .filter(|pid| {
                    let ours = is_child(*pid);
                    if !ours {
                        log::warn!("not adopting pid {pid}: not a child of this process");
                    }
                    ours
                })
                .collect()
        };
        let serving = listed(ADOPT_VAR);
        // Taken for every PID listed (a variable, or a descriptor an older image handed
        // over, left behind would be inherited by the workers), kept for the children.
        let mut adopted_pipes: BTreeMap<u32, OwnedFd> = serving
            .iter()
            .filter_map(|pid| take_ready_pipe(*pid).map(|fd| (*pid, fd)))
            .collect();
        let adopted = children_in(serving);
        adopted_pipes.retain(|pid, _| adopted.contains(pid));
        let adopted_retiring = children_in(listed(RETIRING_VAR));
        Ok(Supervisor {
            cfg,
            listeners: relocate(listeners),
            adopted,
            adopted_pipes,
            adopted_retiring,
            adopted_generation,
            adopted_last_started,
            adopted_backoff,
            adopted_totals,
            adopted_seen,
            upgraded,
            carried: Carried::default(),
            inherited_stats,
            exe,
            args,
            table: WorkerTable::default(),
        })
    }

    /// Sets `key=value` in the environment of the image an upgrade (`SIGUSR2`) executes,
    /// beside the supervisor's own variables: how a part of the program started around
    /// the supervisor (its metrics endpoint, say) hands something to its next image. The
    /// next image should take the variable out of its environment before [`run`]
    /// (`std::env::remove_var`), or its workers inherit it.
    ///
    /// [`run`]: Supervisor::run
    pub fn carry_across_upgrade(&mut self, key: &str, value: &str) {
        self.carried.set_env(key, value);
    }

    /// Hands `fd` to the image an upgrade (`SIGUSR2`) executes: it is kept open across
    /// the `exec` (only across that one: it stays close-on-exec otherwise, so no worker
    /// inherits it) and the variable `key` holds its number, where the next image takes it
    /// with [`duo_sys::take_fd_from_env`] (before [`run`]). How a listening socket of the
    /// program's own (its metrics endpoint's, say) survives an upgrade without being
    /// bound again. The supervisor keeps `fd` open until it ends.
    ///
    /// [`run`]: Supervisor::run
    pub fn carry_fd_across_upgrade(&mut self, key: &str, fd: OwnedFd) {
        self.carried.set_fd(key, fd);
    }

    /// The workers' rows, for an endpoint that aggregates their metrics: filled once
    /// [`run`](Supervisor::run) has started, readable from any thread of this process.
    pub fn worker_table(&self) -> WorkerTable {
        self.table.clone()
    }

    /// Whether this process is a supervisor that re-executed itself (`SIGUSR2`), whatever
    /// workers it adopted (none if all were waiting out a back-off): then
    /// [`run`](Supervisor::run) does not call its `on_ready` (the first image already
    /// announced itself).
    pub fn is_upgrade(&self) -> bool {
        self.upgraded
    }

    /// Runs the workers until a stop signal has been handled and every worker has exited.
    /// `on_ready` runs once, when the first generation has reported ready (not after an
    /// upgrade: see [`is_upgrade`](Supervisor::is_upgrade)); a server prints its
    /// `listening on` line there. If it fails (nobody reads stdout, so nobody learns
    /// where the server is), the supervisor stops as on `SIGTERM` (its workers drain) and
    /// then returns that error.
    ///
    /// # Errors
    ///
    /// The set-up failed (event loop, signalfd, stats region), the first generation
    /// did not become ready (a worker exited first, or the ready timeout passed), or
    /// `on_ready` failed ([`SupervisorError::Io`]).
    pub fn run(
        self,
        on_ready: impl FnOnce() -> io::Result<()> + Send + 'static,
    ) -> Result<(), SupervisorError> {
        let mut lp = EventLoop::new()?;
        // Serving, starting and draining generations at once (reloads while earlier
        // generations still drain); beyond that, workers go uncounted and unseen by the
        // metrics endpoint (see `spawn`). A row is 64 bytes.
        let rows = self.cfg.workers * ROW_GENERATIONS;
        let upgrade = self.is_upgrade();
        // After an upgrade the previous image's region goes on (the adopted workers write
        // into it), if it has the size this configuration needs.
        let stats = Arc::new(match self.inherited_stats {
            Some(region) if region.slots().len() == rows * ROW_LEN => region,
            _ => SharedCounters::create("duo-supervisor-stats", rows * ROW_LEN).map_err(
                |source| SupervisorError::Io {
                    what: "creating the shared stats region",
                    source,
                },
            )?,
        });
        self.table.set(stats.clone());
        lp.watch_signals(&SIGNALS, |lp, sig| {
            lp.with_local(|lp, st: &mut State| st.on_signal(lp, sig));
        })
        .map_err(|source| SupervisorError::Io {
            what: "watching signals",
            source,
        })?;
        let mut backoff = Backoff::new(
            self.cfg.backoff_min,
            self.cfg.backoff_max,
            self.cfg.stable_after,
        );
        backoff.resume(self.adopted_backoff);
        let mut state = State {
            backoff,
            cfg: self.cfg,
            listeners: self.listeners,
            exe: self.exe,
            args: self.args,
            stats,
            free_rows: (0..rows).rev().collect(),
            workers: BTreeMap::new(),
            generation: self.adopted_generation,
            last_started: self.adopted_last_started,
            carried: self.carried,
            probe: None,
            pending: None,
            restart_timer: None,
            stopping: false,
            failure: None,
            on_ready: (!upgrade).then(|| Box::new(on_ready) as OnReady),
            unannounced: None,
            stats_log: StatsLog::new([], crate::worker::WorkerStats::default()),
            paused: Duration::ZERO,
        };
        state.adopt(
            &mut lp,
            self.adopted,
            self.adopted_retiring,
            self.adopted_pipes,
        );
        // The adopted workers' totals were counted by the image before, into the totals
        // it handed over, up to those it handed over with them (what they counted since,
        // during the `exec`, goes into the next line).
        let mut seen = state.live_stats();
        for (pid, stats) in &mut seen {
            if let Some(handed) = self.adopted_seen.get(pid) {
                *stats = *handed;
            }
        }
        state.stats_log = StatsLog::new(seen, self.adopted_totals);
        if let Some(every) = state.cfg.stats_interval {
            lp.run_every(every, |lp| {
                lp.with_local(|_, st: &mut State| st.log_stats());
            });
        }
        lp.insert_local(state);
        lp.with_local(|lp, st: &mut State| {
            // Children of a previous image may have ended during the exec.
            st.reap(lp);
            st.deadline_for_adopted_retiring(lp);
            // Those still starting had their ready deadline in the previous image.
            for pid in st.pids_where(|w| !w.ready && !w.retiring) {
                st.ready_deadline_for_replacement(lp, pid);
            }
            st.start_generation(lp);
        });
        let ran = lp.run();
        let state = lp.remove_local::<State>();
        ran.map_err(|source| SupervisorError::Io {
            what: "running the supervisor's loop",
            source,
        })?;
        match state.map(|s| (s.failure, s.unannounced)) {
            Some((Some(why), _)) => Err(SupervisorError::NotReady(why)),
            Some((None, Some(source))) => Err(SupervisorError::Io {
                what: "announcing the server (on_ready)",
                source,
            }),
            _ => Ok(()),
        }
    }
}

/// Watches `ready_r`, worker `pid`'s readiness pipe, on `lp`; `None` if it cannot be (logged).
fn watch_ready_pipe(lp: &mut EventLoop, pid: u32, ready_r: OwnedFd) -> Option<Token> {
    let on_read = FnHandler::new()
        .on_read(move |lp, ch| read_ready(lp, ch.fd(), pid))
        .on_close(move |lp, _| {
            lp.with_local(|lp, st: &mut State| st.ready_pipe_closed(lp, pid));
        });
    match lp.add_channel(ready_r, Interest::READABLE, on_read) {
        Ok(token) => Some(token),
        Err(e) => {
            log::error!("watching worker {pid}'s readiness pipe: {}", e.error);
            None
        }
    }
}

/// One worker process.
#[derive(Debug)]
struct WorkerProc {
    generation: u64,
    started: Instant,
    ready: bool,
    /// Sent `SIGTERM` as part of an old generation or a stop: its exit is expected.
    retiring: bool,
    /// Its row of the stats region (none for an adopted worker that had not published
    /// yet, whose row cannot be told).
    row: Option<usize>,
    /// The readiness pipe's channel, until the byte or EOF arrives.
    ready_token: Option<Token>,
    /// Adopted still starting, its pipe opened again through `/proc` (`upgrade.rs`).
    reopened_pipe: bool,
}

/// A generation that is starting and not yet all ready.
#[derive(Debug)]
struct Pending {
    generation: u64,
    timer: TimerId,
    /// How many of its workers have reported ready.
    ready: usize,
}

/// What [`Supervisor::run`] calls once the first generation is ready.
type OnReady = Box<dyn FnOnce() -> io::Result<()> + Send>;

/// The supervisor's state, a loop-local of its event loop.
struct State {
    cfg: SupervisorConfig,
    listeners: Vec<TcpListener>,
    exe: PathBuf,
    args: Vec<OsString>,
    stats: Arc<SharedCounters>,
    free_rows: Vec<usize>,
    workers: BTreeMap<u32, WorkerProc>,
    /// The serving generation (0 before the first is ready).
    generation: u64,
    /// The newest generation started.
    last_started: u64,
    /// What the image an upgrade executes gets from the program around the supervisor.
    carried: Carried,
    /// The check of the binary an upgrade is to execute, while it runs (`probe.rs`).
    probe: Option<probe::Probe>,
    pending: Option<Pending>,
    restart_timer: Option<TimerId>,
    backoff: Backoff,
    /// A stop is in progress (a further stop signal means "quit now").
    stopping: bool,
    /// Why the first generation failed; `run` returns it.
    failure: Option<String>,
    on_ready: Option<OnReady>,
    /// Why `on_ready` failed: the supervisor stopped for it.
    unannounced: Option<io::Error>,
    /// The counters behind the summed stats line (`stats.rs`).
    stats_log: StatsLog,
    /// How long the supervisor has been stopped by job control in all (`job.rs`): its
    /// deadlines do not count that time.
    paused: Duration,
}

impl State {
    fn on_signal(&mut self, lp: &mut EventLoop, sig: Signal) {
        match sig {
            Signal::CHLD => self.reap(lp),
            Signal::HUP => self.reload(lp),
            Signal::USR2 => self.check_then_upgrade(lp),
            Signal::TSTP | Signal::TTIN | Signal::TTOU => self.job_stop(lp, sig),
            Signal::CONT => self.continue_workers(),
            _ => self.stop(lp, sig),
        }
    }

    /// Reaps every child that has ended.
    fn reap(&mut self, lp: &mut EventLoop) {
        loop {
            match duo_sys::reap_any() {
                Ok(Some((pid, status))) => self.on_exit(lp, pid, status),
                Ok(None) => return,
                Err(e) => {
                    log::error!("reaping workers: {e}");
                    return;
                }
            }
        }
    }

    // ---- generations ----

    /// Starts the next generation: `workers` processes that must all report ready.
    fn start_generation(&mut self, lp: &mut EventLoop) {
        // Numbers are never reused, so a log line names one generation (a failed reload
        // keeps its number).
        let generation = self.last_started + 1;
        self.last_started = generation;
        log::info!(
            "starting generation {generation}: {} workers of {}",
            self.cfg.workers,
            self.cfg.command.program().display()
        );
        // Time stopped by job control (Ctrl-Z) does not count: a stopped worker cannot
        // get ready.
        let timer = self.after_running(lp, self.cfg.ready_timeout, move |lp, st| {
            st.ready_timeout(lp, generation);
        });
        self.pending = Some(Pending {
            generation,
            timer,
            ready: 0,
        });
        for _ in 0..self.cfg.workers {
            if let Err(e) = self.spawn(lp, generation) {
                self.abort_pending(lp, &format!("cannot start a worker: {e}"));
                return;
            }
        }
    }

    fn reload(&mut self, lp: &mut EventLoop) {
        if self.stopping {
            log::info!("SIGHUP while stopping: ignored");
        } else if let Some(p) = &self.pending {
            log::warn!(
                "SIGHUP: generation {} is still starting; ignored",
                p.generation
            );
        } else {
            log::info!("SIGHUP: reloading (new workers, then the old ones drain)");
            self.start_generation(lp);
        }
    }

    // ---- workers ----

    fn pids_where(&self, f: impl Fn(&WorkerProc) -> bool) -> Vec<u32> {
        self.workers
            .iter()
            .filter(|(_, w)| f(w))
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// Starts one worker of `generation`.
    fn spawn(&mut self, lp: &mut EventLoop, generation: u64) -> io::Result<u32> {
        // Rows run out only when generations pile up (reloads while older ones still
        // drain): such a worker serves all the same, left out of the stats line.
        let row = self.free_rows.pop();
        if row.is_none() {
            log::warn!("no free stats row: a worker of generation {generation} goes uncounted");
        }
        let spawned = self.spawn_in_row(lp, generation, row);
        if let (Err(_), Some(row)) = (&spawned, row) {
            self.free_rows.push(row);
        }
        spawned
    }

    fn spawn_in_row(
        &mut self,
        lp: &mut EventLoop,
        generation: u64,
        row: Option<usize>,
    ) -> io::Result<u32> {
        if let Some(row) = row {
            self.clear_row(row);
            self.set_row_generation(row, generation);
        }
        let (ready_r, ready_w) = duo_sys::pipe()?;
        let n = self.listeners.len();
        let mut fds: Vec<BorrowedFd<'_>> = self.listeners.iter().map(AsFd::as_fd).collect();
        fds.push(ready_w.as_fd());
        fds.push(self.stats.fd());
        let first = duo_sys::LISTEN_FDS_START;
        let mut cmd = self.cfg.command.command();
        // A process group of its own: a signal to the supervisor's group (a terminal's
        // Ctrl-C) reaches a worker once, forwarded, not also directly (two stop signals
        // mean "quit at once"). It still dies with the supervisor (`PR_SET_PDEATHSIG`),
        // and writes to a `stty tostop` terminal without being stopped.
        duo_sys::in_process_group_of_its_own(&mut cmd);
        cmd.stdin(Stdio::null())
            .env(WORKER_VAR, "1")
            .env(LISTEN_FDS_VAR, n.to_string())
            .env(READY_FD_VAR, (first + n as RawFd).to_string())
            .env(STATS_FD_VAR, (first + n as RawFd + 1).to_string())
            .env(WORKER_GENERATION_VAR, generation.to_string())
            .env_remove(ADOPT_VAR)
            .env_remove(RETIRING_VAR)
            .env_remove(GENERATION_VAR)
            .env_remove(BACKOFF_VAR)
            .env_remove(STATS_VAR);
        match row {
            Some(row) => cmd.env(SLOT_VAR, row.to_string()),
            None => cmd.env_remove(SLOT_VAR),
        };
        duo_sys::pass_fds(&mut cmd, &fds, first)?;
        duo_sys::set_parent_death_signal(&mut cmd, Signal::TERM);
        duo_sys::unblock_signals_in_child(&mut cmd)?;
        // Reaped by pid with `reap_any`; the `Child` is not needed (dropping it neither
        // waits nor kills).
        let pid = cmd.spawn()?.id();
        if let Some(row) = row {
            // The row is this worker's from now on, before it publishes anything itself:
            // an upgrade in between must find it by its PID (or it would free the row and
            // hand it to another worker while this one still writes into it).
            self.set_row_pid(row, pid);
        }
        drop(cmd);
        drop(ready_w);
        let token = watch_ready_pipe(lp, pid, ready_r);
        match row {
            Some(row) => log::info!("started worker {pid} (generation {generation}, slot {row})"),
            None => log::info!("started worker {pid} (generation {generation}, uncounted)"),
        }
        self.workers.insert(
            pid,
            WorkerProc {
                generation,
                started: Instant::now(),
                ready: false,
                retiring: false,
                row,
                ready_token: token,
                reopened_pipe: false,
            },
        );
        Ok(pid)
    }

    fn ready_pipe_closed(&mut self, lp: &mut EventLoop, pid: u32) {
        if let Some(token) = self
            .workers
            .get_mut(&pid)
            .and_then(|w| w.ready_token.take())
        {
            lp.remove_channel(token);
            self.reopened_pipe_let_go(lp, pid);
        }
    }

    fn on_exit(&mut self, lp: &mut EventLoop, pid: u32, status: ExitStatus) {
        if self.probe_exited(lp, pid, status) {
            return;
        }
        // A byte written just before the exit is still in the pipe: read it first, so "ready
        // then exited" is told apart from "exited before it was ready".
        if let Some(token) = self.workers.get(&pid).and_then(|w| w.ready_token) {
            let byte = lp.with_channel(token, |_, ch, _| read_byte(ch.fd()));
            if byte == Some(Some(true)) {
                self.on_ready(lp, pid);
            }
            if let Some(w) = self.workers.get_mut(&pid) {
                w.ready_token = None;
            }
            lp.remove_channel(token);
        }
        let Some(w) = self.workers.remove(&pid) else {
            log::info!(
                "reaped process {pid} ({}), not a current worker",
                describe(status)
            );
            return;
        };
        if let Some(row) = w.row {
            self.retire_row_stats(pid, row);
            self.clear_row(row);
            self.free_rows.push(row);
        }
        let uptime = w.started.elapsed();
        let how = describe(status);
        if self.stopping || w.retiring {
            log::info!("worker {pid} (generation {}) exited: {how}", w.generation);
            if self.stopping && self.workers.is_empty() {
                log::info!("all workers have exited");
                lp.quit();
            }
            return;
        }
        log::warn!(
            "worker {pid} (generation {}) died after {uptime:.1?}: {how}",
            w.generation
        );
        // A reload fails if a worker of the new generation dies before that generation
        // serves, ready or not: retiring the serving one for it would take the service
        // down. (The first generation counts a worker that was ready: it serves, and the
        // back-off restarts the rest.)
        let reload = self.generation != 0;
        if self.pending.as_ref().map(|p| p.generation) == Some(w.generation) && (!w.ready || reload)
        {
            let when = if w.ready {
                "before its generation served"
            } else {
                "before it was ready"
            };
            self.abort_pending(lp, &format!("worker {pid} exited {when}: {how}"));
            return;
        }
        // One restart at a time fills every missing place: a death while one is pending
        // does not lengthen the back-off again.
        if w.generation == self.generation && self.restart_timer.is_none() {
            // One that never became ready died young however long it took (a slow
            // start-up that fails): its age must not reset the back-off.
            let lived = if w.ready { uptime } else { Duration::ZERO };
            let delay = self.backoff.after_death(lived);
            self.schedule_restart(lp, delay);
        }
    }

    /// A restart after the back-off, as for a worker that died young, unless one is
    /// pending already: that one fills every missing place, and the back-off advances
    /// once per wait (not also for a place it fills anyway).
    fn restart_young(&mut self, lp: &mut EventLoop) {
        if self.restart_timer.is_none() && !self.stopping {
            let delay = self.backoff.after_death(Duration::ZERO);
            self.schedule_restart(lp, delay);
        }
    }

    fn schedule_restart(&mut self, lp: &mut EventLoop, delay: Duration) {
        if self.restart_timer.is_some() || self.stopping {
            return;
        }
        if !delay.is_zero() {
            log::warn!("restarting in {delay:?} (workers keep dying young)");
        }
        self.restart_timer = Some(lp.run_after(delay, |lp| {
            lp.with_local(|lp, st: &mut State| {
                st.restart_timer = None;
                st.fill_generation(lp);
            });
        }));
    }

    /// Starts workers until the serving generation has its full count again.
    fn fill_generation(&mut self, lp: &mut EventLoop) {
        if self.stopping {
            return;
        }
        let generation = self.generation;
        let live = self
            .workers
            .values()
            .filter(|w| w.generation == generation && !w.retiring)
            .count();
        for _ in live..self.cfg.workers {
            match self.spawn(lp, generation) {
                Ok(pid) => self.ready_deadline_for_replacement(lp, pid),
                Err(e) => {
                    log::error!("cannot restart a worker: {e}");
                    self.restart_young(lp);
                    return;
                }
            }
        }
    }

    /// Sends `sig` to `pids` and marks them retiring.
    fn retire(&mut self, pids: &[u32], sig: Signal) {
        for pid in pids {
            if let Some(w) = self.workers.get_mut(pid) {
                w.retiring = true;
            }
            if let Err(e) = duo_sys::signal_process(*pid, sig) {
                log::warn!("{sig} to worker {pid}: {e}");
            }
        }
    }
}
