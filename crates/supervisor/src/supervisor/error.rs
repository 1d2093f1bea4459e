//! Why a supervisor could not run.

use std::io;

use duo_reactor::LoopError;

use crate::config::ConfigError;

/// Why [`Supervisor::run`](crate::Supervisor::run) failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The event loop could not be created.
    #[error(transparent)]
    Loop(#[from] LoopError),
    /// A system call of the set-up failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The first generation of workers did not all report ready.
    #[error("the workers did not start: {0}")]
    NotReady(String),
}
