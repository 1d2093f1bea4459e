//! [`ReadOutcome`]: what one read into an [`InputBuffer`](crate::InputBuffer) produced.

/// The result of one [`InputBuffer::read_from`](crate::InputBuffer::read_from) (one system
/// call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// `len > 0` bytes were appended to the buffer.
    Data {
        /// Bytes read.
        len: usize,
        /// The read returned fewer bytes than it was offered. On a TCP socket this proves the
        /// receive queue was empty at that moment, so under edge triggering the caller may
        /// skip the next read (which would only return `EAGAIN`), unless the same readiness
        /// event also reported the peer's half-close (`EPOLLRDHUP`): then the end of stream
        /// came with the data, no new edge will report it, and the caller must read on to
        /// see it.
        drained: bool,
    },
    /// Nothing to read now (`EAGAIN`/`EWOULDBLOCK` on a non-blocking descriptor).
    WouldBlock,
    /// End of stream: the peer closed its writing side.
    Eof,
}
