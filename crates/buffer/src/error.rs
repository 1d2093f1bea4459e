//! [`BufferError`]: what the input and output buffers can fail with.

use std::io;

use crate::PoolError;

/// An error from [`InputBuffer`](crate::InputBuffer) (or a codec built on it).
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// The system call failed (other than `WouldBlock`, which is an outcome, not an error).
    #[error("buffer I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The buffer already holds its maximum number of bytes; consume some before reading more.
    #[error("input buffer full ({limit} bytes)")]
    Full {
        /// The buffer's maximum length.
        limit: usize,
    },
    /// A line exceeded the allowed length before its terminator was found.
    #[error("line longer than {limit} bytes")]
    LineTooLong {
        /// The maximum line length that was asked for.
        limit: usize,
    },
    /// The pool could not provide a block.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

impl From<BufferError> for io::Error {
    /// `Io` is unwrapped; `Full` and `LineTooLong` become `InvalidData` (the peer sent more
    /// than allowed); `Pool` becomes `OutOfMemory`. The original error is kept as the source.
    fn from(err: BufferError) -> io::Error {
        match err {
            BufferError::Io(e) => e,
            e @ (BufferError::Full { .. } | BufferError::LineTooLong { .. }) => {
                io::Error::new(io::ErrorKind::InvalidData, e)
            }
            e @ BufferError::Pool(_) => io::Error::new(io::ErrorKind::OutOfMemory, e),
        }
    }
}
