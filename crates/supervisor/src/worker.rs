//! The worker side of the [protocol](crate::protocol): inherit the listening sockets,
//! say "ready", publish counters.

use std::io::{self, Write};
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use duo_sys::{ActivationError, SharedCounters};

use crate::protocol::{
    COL_ACCEPTED, COL_BYTES_IN, COL_BYTES_OUT, COL_MESSAGES, COL_METRICS_PORT, COL_OPEN, COL_PID,
    LISTEN_FDS_VAR, READY_FD_VAR, ROW_LEN, SLOT_VAR, STATS_FD_VAR, WORKER_GENERATION_VAR,
    WORKER_VAR,
};

/// Why a worker could not take what its supervisor handed it.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A descriptor or variable of the protocol is missing or wrong.
    #[error("worker protocol: {0}")]
    Inherit(#[from] ActivationError),
    /// A variable the protocol requires is not set.
    #[error("worker protocol: {0} is not set")]
    Missing(&'static str),
    /// A variable holds something other than a number.
    #[error("worker protocol: {var}={value:?} is not a number")]
    NotANumber {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// The stats region could not be mapped, or the slot is outside it.
    #[error("worker protocol: stats region: {0}")]
    Stats(io::Error),
}

/// What one worker publishes; the supervisor sums them over its workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Connections open now.
    pub open: u64,
    /// Connections accepted in total.
    pub accepted: u64,
    /// Bytes received in total.
    pub bytes_in: u64,
    /// Bytes sent in total.
    pub bytes_out: u64,
    /// Messages handled in total.
    pub messages: u64,
}

impl WorkerStats {
    /// Adds `other` to `self`, column by column (saturating).
    pub fn add(&mut self, other: &WorkerStats) {
        self.open = self.open.saturating_add(other.open);
        self.accepted = self.accepted.saturating_add(other.accepted);
        self.bytes_in = self.bytes_in.saturating_add(other.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(other.bytes_out);
        self.messages = self.messages.saturating_add(other.messages);
    }
}

/// A worker's row of the shared stats region; cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct StatsSlot {
    region: Arc<SharedCounters>,
    row: usize,
}

impl StatsSlot {
    /// A view of row `row` of `region`; `None` if the row is outside it.
    pub(crate) fn new(region: Arc<SharedCounters>, row: usize) -> Option<StatsSlot> {
        let end = row.checked_add(1)?.checked_mul(ROW_LEN)?;
        (end <= region.slots().len()).then_some(StatsSlot { region, row })
    }

    fn cells(&self) -> &[std::sync::atomic::AtomicU64] {
        &self.region.slots()[self.row * ROW_LEN..(self.row + 1) * ROW_LEN]
    }

    /// Publishes `stats` (each counter stored atomically; a reader may see a mix of two
    /// publications, which is fine for monitoring).
    pub fn publish(&self, stats: &WorkerStats) {
        let cells = self.cells();
        cells[COL_OPEN].store(stats.open, Ordering::Relaxed);
        cells[COL_ACCEPTED].store(stats.accepted, Ordering::Relaxed);
        cells[COL_BYTES_IN].store(stats.bytes_in, Ordering::Relaxed);
        cells[COL_BYTES_OUT].store(stats.bytes_out, Ordering::Relaxed);
        cells[COL_MESSAGES].store(stats.messages, Ordering::Relaxed);
        cells[COL_PID].store(u64::from(std::process::id()), Ordering::Relaxed);
    }

    /// Publishes the port of this worker's metrics endpoint, which must listen on
    /// `127.0.0.1`: the supervisor's aggregating endpoint scrapes it from there (see
    /// [`WorkerTable`](crate::WorkerTable)). Port 0 withdraws it.
    pub fn publish_metrics_port(&self, port: u16) {
        let cells = self.cells();
        cells[COL_METRICS_PORT].store(u64::from(port), Ordering::Relaxed);
        cells[COL_PID].store(u64::from(std::process::id()), Ordering::Relaxed);
    }

    /// What the row holds now, and the PID that wrote it (0: nobody yet).
    pub fn read(&self) -> (u32, WorkerStats) {
        read_row(self.cells())
    }
}

/// A row's PID and counters.
pub(crate) fn read_row(cells: &[std::sync::atomic::AtomicU64]) -> (u32, WorkerStats) {
    let get = |c: usize| cells[c].load(Ordering::Relaxed);
    let pid = u32::try_from(get(COL_PID)).unwrap_or(0);
    let stats = WorkerStats {
        open: get(COL_OPEN),
        accepted: get(COL_ACCEPTED),
        bytes_in: get(COL_BYTES_IN),
        bytes_out: get(COL_BYTES_OUT),
        messages: get(COL_MESSAGES),
    };
    (pid, stats)
}

/// This process as a worker of a duo supervisor: what [`Worker::inherit`] took over.
#[derive(Debug)]
pub struct Worker {
    listeners: Vec<TcpListener>,
    ready: Option<std::fs::File>,
    stats: Option<StatsSlot>,
    generation: u64,
}

impl Worker {
    /// Takes over what the supervisor handed this process, if it is a worker
    /// (`DUO_WORKER=1`); `Ok(None)` if it is not. Removes the protocol's variables from
    /// the environment and sets the descriptors close-on-exec. Call it early in `main`,
    /// before other threads start.
    ///
    /// # Errors
    ///
    /// `DUO_WORKER` is set but a variable is missing or malformed, or a descriptor is not
    /// what it should be (a listener that is not a listening TCP socket, say).
    pub fn inherit() -> Result<Option<Worker>, WorkerError> {
        if std::env::var_os(WORKER_VAR).is_none() {
            return Ok(None);
        }
        std::env::remove_var(WORKER_VAR);
        let fds = duo_sys::take_fds_from_env(LISTEN_FDS_VAR, duo_sys::LISTEN_FDS_START)?
            .ok_or(WorkerError::Missing(LISTEN_FDS_VAR))?;
        let listeners = fds
            .into_iter()
            .map(|fd| {
                duo_sys::check_listening_tcp(std::os::fd::AsFd::as_fd(&fd))?;
                Ok(TcpListener::from(fd))
            })
            .collect::<Result<Vec<_>, ActivationError>>()?;
        let ready = duo_sys::take_fd_from_env(READY_FD_VAR)?.map(std::fs::File::from);
        let slot = number(SLOT_VAR)?;
        let generation = number(WORKER_GENERATION_VAR)?.unwrap_or(0);
        let stats = match (duo_sys::take_fd_from_env(STATS_FD_VAR)?, slot) {
            (Some(fd), Some(slot)) => {
                let region = SharedCounters::open(fd).map_err(WorkerError::Stats)?;
                let row = usize::try_from(slot).unwrap_or(usize::MAX);
                let slot = StatsSlot::new(Arc::new(region), row).ok_or_else(|| {
                    WorkerError::Stats(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("slot {row} is outside the region"),
                    ))
                })?;
                Some(slot)
            }
            _ => None,
        };
        Ok(Some(Worker {
            listeners,
            ready,
            stats,
            generation,
        }))
    }

    /// Takes the listening sockets (in the supervisor's order); later calls return none.
    pub fn take_listeners(&mut self) -> Vec<TcpListener> {
        std::mem::take(&mut self.listeners)
    }

    /// The worker's generation (1 for the first, +1 per reload).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The worker's stats row, if the supervisor gave one.
    pub fn stats(&self) -> Option<StatsSlot> {
        self.stats.clone()
    }

    /// Tells the supervisor this worker is serving (one byte on the readiness pipe, which
    /// is then closed). Call it once the listeners are being accepted from. Later calls do
    /// nothing.
    ///
    /// # Errors
    ///
    /// Writing to the pipe failed. A pipe nobody reads any more (`EPIPE`: the supervisor
    /// upgraded itself while this worker started, and its pipe did not come across, so the
    /// new image adopted it as serving) is not an error; `SIGPIPE` must be ignored (as
    /// `duo_net::process::prepare_server` does), or that write ends the process. (An
    /// upgrade names the pipe of a worker still starting to the new image, which opens it
    /// again through this worker's `/proc/PID/fd` and reads it; nobody reads it in the
    /// moments between the `exec` and that `open`, nor ever under a binary that does not
    /// know the name: then this worker has let the pipe go, and the new image, finding it
    /// no longer held, adopts it as serving; one that opened it just before sees it close
    /// without the byte, and counts this worker ready all the same if it is still up
    /// 200 ms later.)
    pub fn notify_ready(&mut self) -> io::Result<()> {
        match self.ready.take() {
            Some(mut pipe) => match pipe.write_all(&[crate::supervisor::READY]) {
                // Nobody reads the pipe any more: the supervisor upgraded itself while this
                // worker was starting and the pipe did not come across (the new image
                // adopted it as serving, and the pipe's read end closed with the old
                // image). A supervisor that died would have
                // sent SIGTERM (`PR_SET_PDEATHSIG`).
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    log::info!(
                        "worker {}: the supervisor no longer waits for readiness (upgraded)",
                        std::process::id()
                    );
                    Ok(())
                }
                other => other,
            },
            None => Ok(()),
        }
    }
}

/// The number in `var` (removed), if set.
fn number(var: &'static str) -> Result<Option<u64>, WorkerError> {
    let Some(value) = std::env::var_os(var) else {
        return Ok(None);
    };
    std::env::remove_var(var);
    let text = value.to_string_lossy();
    text.parse().map(Some).map_err(|_| WorkerError::NotANumber {
        var,
        value: text.into_owned(),
    })
}

/// The signals a worker blocks at its start, before any thread exists (every thread
/// inherits the mask): the stop signals (`SIGINT`, `SIGTERM`), which its main loop
/// handles, and the supervisor's own (`SIGHUP` reloads, `SIGUSR2` upgrades). Those reach a
/// worker only by mistake (`pkill -HUP PROGRAM` signals every process of that name), and
/// their default action would kill it and reset its connections: a worker's main loop
/// logs and ignores them ([`ignore_supervisor_signals`]).
pub const WORKER_SIGNALS: [duo_reactor::Signal; 4] = [
    duo_reactor::Signal::INT,
    duo_reactor::Signal::TERM,
    duo_reactor::Signal::HUP,
    duo_reactor::Signal::USR2,
];

/// Has `lp` (a worker's main loop) log and ignore `SIGHUP` and `SIGUSR2`, blocked by
/// [`WORKER_SIGNALS`]: the supervisor's signals, sent to a worker by mistake.
///
/// # Errors
///
/// The loop could not watch the signals (a signalfd could not be made).
pub fn ignore_supervisor_signals(lp: &mut duo_reactor::EventLoop) -> io::Result<()> {
    lp.watch_signals(
        &[duo_reactor::Signal::HUP, duo_reactor::Signal::USR2],
        |_, sig| {
            log::warn!(
                "worker {}: {sig} is for its supervisor (PID {}); ignored",
                std::process::id(),
                std::os::unix::process::parent_id()
            );
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_publishes_into_its_own_row() {
        let region = Arc::new(SharedCounters::create("t", 3 * ROW_LEN).unwrap());
        assert!(StatsSlot::new(region.clone(), 3).is_none(), "outside");
        let slot = StatsSlot::new(region.clone(), 1).unwrap();
        let stats = WorkerStats {
            open: 2,
            accepted: 5,
            bytes_in: 10,
            bytes_out: 11,
            messages: 3,
        };
        slot.publish(&stats);
        assert_eq!(slot.read(), (std::process::id(), stats));
        let (pid, other) = read_row(&region.slots()[..ROW_LEN]);
        assert_eq!((pid, other), (0, WorkerStats::default()));
        let mut sum = stats;
        sum.add(&stats);
        assert_eq!(sum.accepted, 10);
    }
}
