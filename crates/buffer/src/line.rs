//! [`Line`]: where the next line of an [`InputBuffer`](crate::InputBuffer) ends.

/// A complete line at the front of an [`InputBuffer`](crate::InputBuffer), found by
/// [`InputBuffer::next_line`](crate::InputBuffer::next_line).
///
/// The line's text is `&buf.peek()[..line.len]`; afterwards `buf.consume(line.consumed)`
/// removes it with its terminator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// Length of the line without its terminator (`\n` or `\r\n`).
    pub len: usize,
    /// Bytes to consume to remove the line, terminator included.
    pub consumed: usize,
}
