//! The bytes a connection's requests are parsed from ([`Source`]): its input buffer, or
//! the [`Backlog`] of what it read while it could not answer (see `conn.rs`).

use duo_net::InputBuffer;

/// The bytes a request is parsed from: the connection's input buffer, or its backlog.
pub(crate) trait Source {
    fn peek(&self) -> &[u8];
    fn consume(&mut self, n: usize);
    fn consume_all(&mut self);
    fn len(&self) -> usize {
        self.peek().len()
    }
    fn is_empty(&self) -> bool {
        self.peek().is_empty()
    }
}

impl Source for InputBuffer {
    fn peek(&self) -> &[u8] {
        InputBuffer::peek(self)
    }
    fn consume(&mut self, n: usize) {
        InputBuffer::consume(self, n);
    }
    fn consume_all(&mut self) {
        InputBuffer::consume_all(self);
    }
}

/// Requests read from the socket but not answered yet, while the connection was
/// `Blocked` (and what came after them): see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    buf: Vec<u8>,
    /// Bytes at the front already consumed.
    start: usize,
}

impl Backlog {
    /// Appends `bytes` (and drops the consumed front first when it is most of the
    /// buffer, so appending costs amortised O(bytes)).
    pub(crate) fn append(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }
}

impl Source for Backlog {
    fn peek(&self) -> &[u8] {
        &self.buf[self.start..]
    }
    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.consume_all();
        }
    }
    fn consume_all(&mut self) {
        // Frees the memory: a backlog is the exception, not worth keeping allocated.
        *self = Backlog::default();
    }
}

#[cfg(test)]
mod tests {
    use super::{Backlog, Source};

    #[test]
    fn backlog_keeps_order_compacts_and_frees() {
        let mut b = Backlog::default();
        assert!(b.is_empty());
        b.append(b"abcdef");
        b.consume(4);
        assert_eq!(b.peek(), b"ef");
        // Most of it consumed: the front goes before appending.
        b.append(b"gh");
        assert_eq!((b.peek(), b.start), (&b"efgh"[..], 0));
        b.consume(1);
        b.append(b"i");
        assert_eq!(b.peek(), b"fghi");
        // Consumed whole: the memory is freed.
        b.consume(10);
        assert!(b.is_empty());
        assert_eq!(b.buf.capacity(), 0);
        b.append(b"xy");
        b.consume_all();
        assert_eq!((b.len(), b.buf.capacity()), (0, 0));
    }
}
