//! Errors of the reactor layer.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;

use crate::Handler;

/// Why an [`EventLoop`](crate::EventLoop) could not be created.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// This thread already has a loop: one loop per thread.
    #[error("this thread already runs an EventLoop (one loop per thread)")]
    AlreadyExists,
    /// A system call failed while setting the loop up.
    #[error("cannot create the event loop: {0}")]
    Io(#[from] io::Error),
}

impl From<LoopError> for io::Error {
    fn from(e: LoopError) -> io::Error {
        match e {
            LoopError::AlreadyExists => io::Error::new(io::ErrorKind::AlreadyExists, e),
            LoopError::Io(e) => e,
        }
    }
}

/// The loop a [`LoopHandle`](crate::LoopHandle) refers to has been dropped, so the
/// function or timer was not queued (it is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the event loop is gone")]
pub struct LoopClosed;

impl From<LoopClosed> for io::Error {
    fn from(e: LoopClosed) -> io::Error {
        io::Error::new(io::ErrorKind::NotConnected, e)
    }
}

/// A channel could not be registered; the descriptor and handler are handed back.
pub struct InsertError {
    /// Why registration failed.
    pub error: io::Error,
    /// The descriptor that was to be registered.
    pub fd: OwnedFd,
    /// The handler that was to be registered.
    pub handler: Box<dyn Handler>,
}

impl fmt::Debug for InsertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InsertError")
            .field("error", &self.error)
            .field("fd", &self.fd)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for InsertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot register channel: {}", self.error)
    }
}

impl std::error::Error for InsertError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<InsertError> for io::Error {
    fn from(e: InsertError) -> io::Error {
        e.error
    }
}
