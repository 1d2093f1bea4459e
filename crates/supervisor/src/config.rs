//! What a supervisor runs and how: [`SupervisorConfig`], [`WorkerCommand`], and the
//! errors of a configuration it refuses.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The most workers a supervisor starts, whatever its descriptor budget: beyond this a
/// typo (`--processes 10000`) would be a fork bomb.
pub const MAX_WORKERS: usize = 512;

/// Descriptors a supervisor holds whatever its worker count: stdio (3), the event loop
/// (epoll, eventfd, timerfd), the signalfd, the stats memfd, and the ones a spawn holds for
/// a moment (the readiness pipe's write end, the stats descriptor's duplicate, `std`'s
/// exec-error pipe), with room to spare.
pub const BASE_FDS: u64 = 16;

/// Descriptors a supervisor holds per worker: the read end of its readiness pipe, for
/// the two generations that live side by side during a reload.
pub const FDS_PER_WORKER: u64 = 2;

/// The program a supervisor starts as a worker: a path, arguments, extra environment.
/// The worker protocol's variables and descriptors are added to it.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl WorkerCommand {
    /// Runs `program` (a path on disk: a reload starts it again from there, so a new
    /// binary installed at that path is picked up).
    pub fn new(program: impl AsRef<Path>) -> WorkerCommand {
        WorkerCommand {
            program: program.as_ref().to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// This program again ([`std::env::current_exe`]) with this process's arguments: a
    /// server binary that serves as a worker when it finds the worker protocol in its
    /// environment ([`Worker::inherit`](crate::Worker::inherit)) and supervises otherwise.
    ///
    /// # Errors
    ///
    /// The path of the running binary is unknown.
    pub fn this_program() -> std::io::Result<WorkerCommand> {
        Ok(WorkerCommand::new(std::env::current_exe()?).args(std::env::args_os().skip(1)))
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> WorkerCommand {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> WorkerCommand {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the worker (on top of the supervisor's own).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> WorkerCommand {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The program.
    pub fn program(&self) -> &Path {
        &self.program
    }

    pub(crate) fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

/// How a [`Supervisor`](crate::Supervisor) runs its workers. [`SupervisorConfig::new`]
/// gives the defaults; change the fields as needed.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Worker processes per generation (1..=[`MAX_WORKERS`], and within the descriptor
    /// budget: see [`ConfigError::TooManyWorkers`]).
    pub workers: usize,
    /// The worker program.
    pub command: WorkerCommand,
    /// How long a new generation may take to report ready before it is killed (the old one
    /// keeps serving); also how long a replacement of a dead worker may take before it is
    /// retired and replaced in turn. Default 10 s.
    pub ready_timeout: Duration,
    /// After the first stop signal, how long workers may take to drain and exit before
    /// they are killed with `SIGKILL`; likewise after the `SIGTERM` that retires a worker
    /// (its generation replaced by a reload, or failed). Default 6 s (a worker's default
    /// 4 s drain, and room).
    pub stop_timeout: Duration,
    /// Log one line of summed worker counters this often. Default none.
    pub stats_interval: Option<Duration>,
    /// The first delay before restarting a worker that died soon after it started; it
    /// doubles with each such death. Default 100 ms.
    pub backoff_min: Duration,
    /// The longest restart delay. Default 5 s.
    pub backoff_max: Duration,
    /// A worker that was ready and lived this long before dying is restarted at once, and
    /// the delay is reset (one that never became ready backs off, whatever its age).
    /// Default 2 s.
    pub stable_after: Duration,
}

impl SupervisorConfig {
    /// `workers` workers running `command`, everything else the default.
    pub fn new(workers: usize, command: WorkerCommand) -> SupervisorConfig {
        SupervisorConfig {
            workers,
            command,
            ready_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(6),
            stats_interval: None,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            stable_after: Duration::from_secs(2),
        }
    }

    /// The most workers an open-file limit of `fd_limit` and `listeners` listening sockets
    /// allow, [`MAX_WORKERS`] at most.
    pub fn max_workers(fd_limit: u64, listeners: usize) -> usize {
        let base = BASE_FDS + 2 * listeners as u64;
        let by_fds = fd_limit.saturating_sub(base) / FDS_PER_WORKER;
        usize::try_from(by_fds)
            .unwrap_or(usize::MAX)
            .min(MAX_WORKERS)
    }

    /// Checks the configuration against an open-file limit of `fd_limit` with
    /// `listeners` listening sockets.
    ///
    /// # Errors
    ///
    /// [`ConfigError::NoWorkers`], [`ConfigError::NoListeners`],
    /// [`ConfigError::TooManyWorkers`], [`ConfigError::BadBackoff`],
    /// [`ConfigError::ZeroTimeout`].
    pub fn validate(&self, fd_limit: u64, listeners: usize) -> Result<(), ConfigError> {
        if self.workers == 0 {
            return Err(ConfigError::NoWorkers);
        }
        if listeners == 0 {
            return Err(ConfigError::NoListeners);
        }
        let max = Self::max_workers(fd_limit, listeners);
        if self.workers > max {
            return Err(ConfigError::TooManyWorkers {
                workers: self.workers,
                max,
                fd_limit,
                per_worker: FDS_PER_WORKER,
                base: BASE_FDS + 2 * listeners as u64,
            });
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return Err(ConfigError::BadBackoff);
        }
        if self.ready_timeout.is_zero() || self.stop_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        Ok(())
    }
}

/// A configuration a supervisor refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Zero workers.
    #[error("at least one worker process is needed (got 0)")]
    NoWorkers,
    /// No listening socket to hand the workers.
    #[error("no listening socket to hand the workers")]
    NoListeners,
    /// More workers than the supervisor can hold descriptors for, or than [`MAX_WORKERS`].
    #[error(
        "{workers} worker processes are too many: at most {max} (the supervisor holds \
         {per_worker} descriptors per worker and {base} besides, within its open-file limit \
         of {fd_limit}, and starts at most {MAX_WORKERS})"
    )]
    TooManyWorkers {
        /// Workers asked for.
        workers: usize,
        /// The most allowed.
        max: usize,
        /// The supervisor's open-file limit.
        fd_limit: u64,
        /// Descriptors per worker.
        per_worker: u64,
        /// Descriptors besides.
        base: u64,
    },
    /// The restart delays are zero or inverted.
    #[error("the restart back-off must start above zero and not exceed its cap")]
    BadBackoff,
    /// The ready or the stop timeout is zero (no worker could ever be ready in time).
    #[error("the ready and stop timeouts must be above zero")]
    ZeroTimeout,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_program_is_the_running_binary_with_its_arguments() {
        let cmd = WorkerCommand::this_program().unwrap();
        assert_eq!(cmd.program(), std::env::current_exe().unwrap());
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        assert_eq!(cmd.args, args);
        assert!(cmd.env.is_empty());
    }

    #[test]
    fn bad_configurations_are_refused_with_reasons() {
        let cmd = WorkerCommand::new("/bin/true");
        assert_eq!(
            SupervisorConfig::new(0, cmd.clone()).validate(1024, 1),
            Err(ConfigError::NoWorkers)
        );
        assert_eq!(
            SupervisorConfig::new(1, cmd.clone()).validate(1024, 0),
            Err(ConfigError::NoListeners)
        );
        let e = SupervisorConfig::new(100, cmd.clone())
            .validate(64, 1)
            .unwrap_err();
        assert!(
            matches!(e, ConfigError::TooManyWorkers { max: 23, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("open-file limit of 64"), "{e}");
        let e = SupervisorConfig::new(MAX_WORKERS + 1, cmd.clone())
            .validate(1 << 20, 1)
            .unwrap_err();
        assert!(matches!(e, ConfigError::TooManyWorkers { .. }), "{e}");
        let mut zero = SupervisorConfig::new(1, cmd.clone());
        zero.ready_timeout = Duration::ZERO;
        assert_eq!(zero.validate(1024, 1), Err(ConfigError::ZeroTimeout));
        let mut backoff = SupervisorConfig::new(1, cmd.clone());
        backoff.backoff_max = Duration::from_millis(1);
        assert_eq!(backoff.validate(1024, 1), Err(ConfigError::BadBackoff));
        SupervisorConfig::new(4, cmd).validate(1024, 1).unwrap();
    }
}
