//! Worker processes for duo servers, nginx's master/worker model in small: a supervisor
//! that owns the listening sockets and runs N copies of a worker program on them.
//!
//! Loops use the cores of one process; worker processes go further: each has its own
//! open-file limit and heap, a crashed one is restarted without taking the others down,
//! and a new binary or configuration is rolled out without refusing or resetting a single
//! connection, because the listening sockets stay open in the supervisor the whole time
//! and the kernel keeps queueing connections on them while workers come and go.
//!
//! # Lifecycle
//!
//! - **Start.** [`Supervisor::run`] starts generation 1: N workers, each handed the
//!   listening sockets, a readiness pipe and a row of shared counters (the
//!   [worker protocol](protocol)). Once every one has written its "ready" byte, `on_ready`
//!   runs (a server prints `listening on ADDR` there). A worker that exits before it is
//!   ready, or a generation not ready within [`SupervisorConfig::ready_timeout`], fails
//!   the start.
//! - **Crash.** A worker that dies is restarted (its exit status or signal is logged).
//!   One that dies within [`SupervisorConfig::stable_after`] of its start, or before it
//!   was ever ready (however long its start-up took), is restarted
//!   only after a delay that doubles from [`SupervisorConfig::backoff_min`] up to
//!   [`SupervisorConfig::backoff_max`], so a worker that cannot start is never a fork bomb.
//!   The delay reached goes on across a reload and an upgrade (the new image takes it
//!   over): only a worker that lived sets it back to the minimum.
//!   A replacement not ready within [`SupervisorConfig::ready_timeout`] is retired
//!   (`SIGTERM`, `SIGKILL` at the stop timeout) and replaced in turn, with the back-off.
//! - **`SIGINT`/`SIGTERM`.** `SIGTERM` to every worker (each stops accepting and drains);
//!   when all have exited, `run` returns `Ok`. A second signal sends `SIGINT` (workers
//!   quit at once); after [`SupervisorConfig::stop_timeout`] the stragglers get `SIGKILL`.
//! - **`SIGHUP`: reload.** A new generation is started from the program's path on disk
//!   (so a new binary there is picked up); once all of it is ready (and still up 200 ms
//!   after the last one was: a worker that reports ready and dies at once fails the
//!   reload instead of replacing a healthy generation), the old generation
//!   gets `SIGTERM` and drains (`SIGKILL` for a worker of it still running at
//!   [`SupervisorConfig::stop_timeout`]: one that ignores `SIGTERM`, or hangs). If the new one does not become ready in time (or one of
//!   it dies first), it is retired the same way (`SIGTERM`: a worker of it that was ready
//!   may have served already, and drains; `SIGKILL` at the stop timeout) and the old one
//!   keeps serving. Workers run in process groups of their own, so a terminal's Ctrl-C
//!   reaches them once, through the supervisor (under systemd, `KillMode=mixed` does the
//!   same: with `control-group` each worker would get `SIGTERM` twice, and quit at once).
//! - **`SIGUSR2`: upgrade.** The supervisor first checks the binary on disk, as `nginx -t`:
//!   it runs it as a child with [`protocol::UPGRADE_CHECK_VAR`]`=1` and no descriptor
//!   beyond stdio, where [`Supervisor::new`] checks the configuration and exits 0 without
//!   serving ([`is_upgrade_check`]). Any other end (a status, a signal, still running at
//!   [`SupervisorConfig::ready_timeout`]: killed) refuses the upgrade with an error in the
//!   log, and this image serves on with its workers. A binary that passed executes in
//!   place of the supervisor (same PID), handed the listening sockets by the systemd
//!   protocol and its workers' PIDs (see [`protocol`]); the new image adopts them as the
//!   old generation and reloads. A replacement worker still starting comes across with
//!   its readiness pipe (by name: the new image opens it again through `/proc`, so an
//!   older binary that knows nothing of it inherits no descriptor): the new image waits
//!   for it to report ready, within a new [`SupervisorConfig::ready_timeout`], as for any
//!   replacement (a pipe it lets go without the byte counts as ready if the worker is
//!   still up 200 ms later: its byte met `EPIPE` in the moments nobody read the pipe, and
//!   it serves; one that closed it by dying never was ready). If the `exec` fails,
//!   the old image logs it and goes on. (A binary that passes the check and fails later
//!   is not caught.) A program hands its
//!   own state to the next image with [`Supervisor::carry_across_upgrade`] (a variable)
//!   and [`Supervisor::carry_fd_across_upgrade`] (a descriptor: the metrics endpoint's
//!   listening socket, say).
//! - **`SIGTSTP`/`SIGCONT`: job control.** As a shell does for a job: Ctrl-Z (`SIGTSTP`,
//!   also `SIGTTIN`/`SIGTTOU`) stops every worker (`SIGSTOP`), then the supervisor; once
//!   continued (`fg`, `bg`: `SIGCONT`), it continues them. A stopped worker is not taken
//!   for a dead one, and time stopped does not count towards
//!   [`SupervisorConfig::ready_timeout`] or [`SupervisorConfig::stop_timeout`].
//! - **Stats.** Every [`SupervisorConfig::stats_interval`] one log line sums the counters
//!   the workers publish ([`StatsSlot::publish`]): connections open now, and what every
//!   worker counted since the supervisor started (totals that do not go down when a
//!   worker dies or a generation retires) or since the previous line (the rates). An
//!   upgrade hands the totals to the new image, which goes on from them: what the workers
//!   count during the `exec` goes into its first line.
//! - **Metrics.** A worker that serves a metrics endpoint on `127.0.0.1` publishes its
//!   port ([`StatsSlot::publish_metrics_port`]); [`Supervisor::worker_table`] lists those
//!   endpoints, so that the supervisor can serve one `/metrics` for all its workers
//!   (`duo_metrics::MetricsEndpoint::aggregate`).
//!
//! Around it, for a server program: [`bind_listener`] binds the socket the workers share,
//! [`WorkerCommand::this_program`] runs the program itself again as a worker, and
//! [`worker_connection_limit`] says how many connections one worker may hold.
//!
//! Workers get `SIGTERM` if the supervisor dies (`PR_SET_PDEATHSIG`), so none outlives it
//! for long. Between supervisor and workers there is nothing but signals, descriptors,
//! exit statuses, a pipe for readiness and the shared counters.
//!
//! # Example
//!
//! ```no_run
//! use std::io::Write as _;
//! use duo_supervisor::{Supervisor, SupervisorConfig, Worker, WorkerCommand};
//!
//! if let Some(mut worker) = Worker::inherit()? {
//!     let _listeners = worker.take_listeners();
//!     // ... start serving on these, then:
//!     worker.notify_ready()?;
//!     // ... until SIGTERM.
//!     return Ok(());
//! }
//! let listener = duo_supervisor::bind_listener("127.0.0.1:0".parse()?)?;
//! let addr = listener.local_addr()?;
//! let cfg = SupervisorConfig::new(4, WorkerCommand::this_program()?);
//! Supervisor::new(cfg, vec![listener])?.run(move || {
//!     let mut out = std::io::stdout().lock();
//!     writeln!(out, "listening on {addr}").and_then(|()| out.flush())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
// The doc examples are what users copy first: one that warns (an ignored `Result`, an
// unused value) fails its test.
#![doc(test(attr(deny(warnings))))]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

mod backoff;
mod config;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod protocol;
mod serving;
mod supervisor;
mod table;
mod worker;

pub use config::{
    ConfigError, SupervisorConfig, WorkerCommand, BASE_FDS, FDS_PER_WORKER, MAX_WORKERS,
};
pub use serving::{
    bind_listener, inherit_at_start, inherited_or_bound, supervise_this_program,
    worker_connection_limit, Inherited, LISTEN_BACKLOG,
};
pub use supervisor::{is_upgrade_check, Supervisor, SupervisorError};
pub use table::{WorkerEndpoint, WorkerTable};
pub use worker::{
    ignore_supervisor_signals, StatsSlot, Worker, WorkerError, WorkerStats, WORKER_SIGNALS,
};
