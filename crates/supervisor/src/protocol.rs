//! The worker protocol: what a supervisor hands a worker process, and where.
//!
//! A worker is started with these environment variables and descriptors (all of them
//! without close-on-exec, every other descriptor of the supervisor is close-on-exec):
//!
//! | Variable | Value |
//! |---|---|
//! | `DUO_WORKER` | `1`: this process is a worker (the app takes its worker path) |
//! | `DUO_LISTEN_FDS` | `n`: the listening sockets are descriptors `3..3+n`, in order |
//! | `DUO_READY_FD` | the write end of a pipe (`3+n`): one byte on it means "I am listening" |
//! | `DUO_STATS_FD` | a sealed memfd of `u64` counters (`4+n`), shared with the supervisor |
//! | `DUO_WORKER_SLOT` | the worker's row in that region ([`ROW_LEN`] counters from `slot * ROW_LEN`) |
//! | `DUO_WORKER_GENERATION` | the generation (1 for the first, +1 per reload) |
//!
//! A worker's row holds its PID, its counters, its generation and, if it serves one, the
//! port of its metrics endpoint on `127.0.0.1` ([`StatsSlot::publish_metrics_port`](crate::StatsSlot::publish_metrics_port)):
//! that is how a supervisor's aggregating `/metrics` finds the workers
//! ([`WorkerTable`](crate::WorkerTable)), without any message between them.
//!
//! The worker reads them with [`Worker::inherit`](crate::Worker::inherit), which removes
//! them from its environment. From the supervisor it gets signals only: `SIGTERM` means
//! "stop accepting, drain, exit" (a second signal: quit at once); `SIGTERM` also comes if
//! the supervisor dies (`PR_SET_PDEATHSIG`). Its exit status tells the supervisor how it
//! ended. Nothing else goes between them: no RPC.
//!
//! A supervisor that upgrades itself (`SIGUSR2`) executes its own binary again with the
//! systemd protocol for its listening sockets (`LISTEN_FDS`, `LISTEN_PID` = its own PID,
//! which `exec` keeps) and these:
//!
//! | Variable | Value |
//! |---|---|
//! | [`ADOPT_VAR`] | the PIDs of the serving workers, comma-separated: the new image adopts them |
//! | [`GENERATION_VAR`] | their generation |
//! | [`LAST_STARTED_VAR`] | the newest generation started (a reload that failed included): numbers are not reused |
//! | [`RETIRING_VAR`] | the PIDs of older workers still draining: the new image adopts them as retiring (reaped, and killed if still running at `stop_timeout` from the adoption) |
//! | [`STATS_VAR`] | the descriptor of the stats region, kept open across the `exec`: the adopted workers go on publishing into it |
//! | [`STATS_TOTALS_VAR`] | the summed stats line's totals so far (`accepted,bytes_in,bytes_out,messages`): the new image's totals go on from them |
//! | [`STATS_SEEN_VAR`] | the adopted workers' own totals that [`STATS_TOTALS_VAR`] includes (`PID:accepted:bytes_in:bytes_out:messages`, comma-separated): what they count during the `exec` is not lost |
//! | [`READY_PIPE_VAR_PREFIX`]`PID` | the name (`pipe:[INODE]`) of the readiness pipe of adopted worker `PID`, still starting: the new image opens it again through `/proc/PID/fd` |
//! | [`BACKOFF_VAR`] | the restart back-off's delay so far, in milliseconds (empty: none): the new image's back-off goes on from it |
//!
//! Before that `exec` the supervisor checks the binary: it runs it as a child with its own
//! arguments, [`UPGRADE_CHECK_VAR`]`=1`, stdin and stdout on `/dev/null`, its stderr, and
//! no other descriptor (nothing to accept connections on). The program takes its usual
//! path to [`Supervisor::new`](crate::Supervisor::new), which checks the configuration
//! and exits 0 without serving; [`bind_listener`](crate::bind_listener) binds nothing
//! there. Any other end (another status, a signal, still running at the ready timeout,
//! when it is killed) refuses the upgrade: the old image serves on.

/// Set to `1` in a worker's environment.
pub const WORKER_VAR: &str = "DUO_WORKER";
/// The number of listening sockets, from descriptor 3 on.
pub const LISTEN_FDS_VAR: &str = "DUO_LISTEN_FDS";
/// The descriptor number of the readiness pipe's write end.
pub const READY_FD_VAR: &str = "DUO_READY_FD";
/// The descriptor number of the shared stats memfd.
pub const STATS_FD_VAR: &str = "DUO_STATS_FD";
/// The worker's row in the stats region.
pub const SLOT_VAR: &str = "DUO_WORKER_SLOT";
/// The worker's generation.
pub const WORKER_GENERATION_VAR: &str = "DUO_WORKER_GENERATION";
/// The PIDs an upgraded supervisor adopts.
pub const ADOPT_VAR: &str = "DUO_SUPERVISOR_ADOPT";
/// The PIDs of draining workers an upgraded supervisor adopts as retiring.
pub const RETIRING_VAR: &str = "DUO_SUPERVISOR_RETIRING";
/// The generation of the adopted workers.
pub const GENERATION_VAR: &str = "DUO_SUPERVISOR_GENERATION";
/// The newest generation the previous image started (a failed reload's included): the
/// new image numbers its generations after it, so that no number is used twice.
pub const LAST_STARTED_VAR: &str = "DUO_SUPERVISOR_LAST_STARTED";
/// The stats region an upgraded supervisor goes on using.
pub const STATS_VAR: &str = "DUO_SUPERVISOR_STATS_FD";
/// The totals of the summed stats line so far, which an upgraded supervisor goes on from.
pub const STATS_TOTALS_VAR: &str = "DUO_SUPERVISOR_STATS_TOTALS";
/// The handed-over workers' own totals those of [`STATS_TOTALS_VAR`] include
/// (`PID:accepted:bytes_in:bytes_out:messages`, comma-separated): the new image counts
/// from there, so what they count during the `exec` is not lost.
pub const STATS_SEEN_VAR: &str = "DUO_SUPERVISOR_STATS_SEEN";
/// The restart back-off's delay so far, in milliseconds (empty: none, no worker died
/// young since one lived long): an upgraded supervisor goes on from it, so that a worker
/// that keeps dying is not restarted at full pace again after every upgrade.
pub const BACKOFF_VAR: &str = "DUO_SUPERVISOR_BACKOFF_MS";
/// Followed by a PID: the name (`pipe:[INODE]`, as `/proc/PID/fd` shows it) of the
/// readiness pipe of that adopted worker, still starting when the previous image upgraded.
/// The new image opens that pipe again through the worker's `/proc/PID/fd` (the worker
/// holds its write end until it has written its byte) and waits for the byte, as the old
/// one did; no pipe is kept open across the `exec`, so an image that does not know this
/// variable (an older binary) inherits nothing it would leak into its workers. (An image
/// from before the names handed the descriptor itself, its number as the value: the new
/// image takes that too.)
pub const READY_PIPE_VAR_PREFIX: &str = "DUO_SUPERVISOR_READY_PIPE_";

/// Set to `1` in the environment of the check an upgrade runs before it executes the new
/// binary: the program checks its configuration and exits 0 without serving
/// ([`is_upgrade_check`](crate::is_upgrade_check)).
pub const UPGRADE_CHECK_VAR: &str = "DUO_UPGRADE_CHECK";

/// Counters per worker row of the stats region.
pub const ROW_LEN: usize = 8;
/// Row column: the worker's PID (0: row unused).
pub(crate) const COL_PID: usize = 0;
/// Row column: connections open now.
pub(crate) const COL_OPEN: usize = 1;
/// Row column: connections accepted in total.
pub(crate) const COL_ACCEPTED: usize = 2;
/// Row column: bytes received in total.
pub(crate) const COL_BYTES_IN: usize = 3;
/// Row column: bytes sent in total.
pub(crate) const COL_BYTES_OUT: usize = 4;
/// Row column: messages handled in total.
pub(crate) const COL_MESSAGES: usize = 5;
/// Row column: the port of the worker's metrics endpoint on `127.0.0.1` (0: none).
pub(crate) const COL_METRICS_PORT: usize = 6;
/// Row column: the worker's generation.
pub(crate) const COL_GENERATION: usize = 7;
