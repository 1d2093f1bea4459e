//! [`LineCodec`]: lines ending in `\n` or `\r\n`.

use duo_buffer::InputBuffer;

use super::{drain_frames, CodecError, Frame};

/// Text lines ending in `\n` or `\r\n`, of at most `max_line` bytes (line end not
/// counted). The payload of a decoded line excludes its line end.
///
/// # Decoding rules
///
/// - A line ends at the first `\n`; one `\r` right before it belongs to the line end and
///   is stripped. Any other `\r` (a lone `\r` inside the line, or the first of `\r\r\n`)
///   is part of the payload. An empty line (`\n` or `\r\n` alone) is an empty payload.
/// - A line of exactly `max_line` bytes is accepted; `max_line + 1` bytes is
///   [`CodecError::LineTooLong`].
/// - Without a `\n`, the decoder fails as soon as the buffered bytes prove the line too
///   long: once `max_line + 1` bytes are buffered, unless the last of them is `\r` (it may
///   be the first half of a `\r\n`), in which case once `max_line + 2` are. In other words
///   it fails when the bytes buffered, minus a trailing `\r`, exceed `max_line` (the rule of
///   [`InputBuffer::next_line`]). It never looks further than `max_line + 2` bytes.
///
/// On a connection, set the input limit ([`InputBuffer::max_len`], the builders'
/// `max_input`) to at least
/// `max_line + 2`: a line of exactly `max_line` bytes ended by `\r\n` is whole only then
/// (with `max_line + 1`, its `\r` fills the buffer before the `\n` comes, and the
/// connection closes as `InputTooLarge` instead of decoding it).
///
/// # Encoding rules
///
/// [`encode`](LineCodec::encode) appends `\n` (`\r\n` for a codec made with
/// [`crlf`](LineCodec::crlf), for protocols that require it, as muduo's text examples,
/// memcached or Redis do). It refuses a line longer than `max_line`
/// ([`CodecError::LineTooLong`]), and one containing `\n` ([`CodecError::EmbeddedNewline`]);
/// with `\n` alone also one ending in `\r`: that `\r` would merge with the `\n` into a
/// `\r\n` line end and be lost, so the line would not decode to itself. (With `\r\n` it
/// may: `a\r` + `\r\n` decodes to `a\r`.) Every encoded line decodes to itself.
///
/// ```
/// use duo_net::codec::LineCodec;
///
/// let codec = LineCodec::new(16);
/// let line = codec.decode(b"PING\r\nrest")?.unwrap();
/// assert_eq!((line.payload, line.consumed), (&b"PING"[..], 6));
/// assert_eq!(codec.decode(b"no end yet")?, None);
/// assert!(codec.decode(b"a line far longer than sixteen bytes").is_err());
/// # Ok::<(), duo_net::codec::CodecError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct LineCodec {
    max_line: usize,
    /// `encode` ends lines with `\r\n` rather than `\n`.
    crlf: bool,
}

impl LineCodec {
    /// A codec accepting lines of up to `max_line` bytes.
    pub fn new(max_line: usize) -> LineCodec {
        LineCodec {
            max_line,
            crlf: false,
        }
    }

    /// The same codec, [`encode`](LineCodec::encode) ending lines with `\r\n` (decoding
    /// takes either line end, as before).
    ///
    /// ```
    /// use duo_net::codec::LineCodec;
    ///
    /// let codec = LineCodec::new(16).crlf();
    /// let mut out = Vec::new();
    /// codec.encode(b"sub news", &mut out)?;
    /// assert_eq!(out, b"sub news\r\n");
    /// # Ok::<(), duo_net::codec::CodecError>(())
    /// ```
    #[must_use]
    pub fn crlf(self) -> LineCodec {
        LineCodec { crlf: true, ..self }
    }

    /// The longest line accepted (line end not counted).
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Decodes the line at the start of `input`: `Ok(None)` if its end has not arrived
    /// (and it is not yet known to be too long), an error once it is known to be longer
    /// than the maximum (see the type's documentation for the exact rule).
    pub fn decode<'a>(&self, input: &'a [u8]) -> Result<Option<Frame<'a>>, CodecError> {
        // Content, an optional '\r' and the '\n': look no further than that.
        let window = &input[..input.len().min(self.max_line.saturating_add(2))];
        let too_long = CodecError::LineTooLong { max: self.max_line };
        match window.iter().position(|&b| b == b'\n') {
            Some(nl) => {
                let content = &input[..nl];
                let content = content.strip_suffix(b"\r").unwrap_or(content);
                if content.len() > self.max_line {
                    return Err(too_long);
                }
                Ok(Some(Frame {
                    payload: content,
                    consumed: nl + 1,
                }))
            }
            None => {
                // A trailing '\r' may be the first half of the line end.
                let pending = window.len() - usize::from(window.last() == Some(&b'\r'));
                if pending > self.max_line {
                    Err(too_long)
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// Calls `f` on every complete line in `input`, consuming each; returns how many.
    pub fn decode_all(
        &self,
        input: &mut InputBuffer,
        f: impl FnMut(&[u8]),
    ) -> Result<usize, CodecError> {
        drain_frames(input, |b| self.decode(b), f)
    }

    /// Appends `line` and its line end (`\n`, or `\r\n` after [`crlf`](LineCodec::crlf))
    /// to `out`. A line longer than the maximum is refused with
    /// [`CodecError::LineTooLong`]; one containing `\n`, or ending in `\r` when the line
    /// end is `\n` alone (it would become part of the line end), with
    /// [`CodecError::EmbeddedNewline`]. Nothing is appended on error.
    pub fn encode(&self, line: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        if line.len() > self.max_line {
            return Err(CodecError::LineTooLong { max: self.max_line });
        }
        if line.contains(&b'\n') || (!self.crlf && line.last() == Some(&b'\r')) {
            return Err(CodecError::EmbeddedNewline);
        }
        let end: &[u8] = if self.crlf { b"\r\n" } else { b"\n" };
        out.reserve(line.len() + end.len());
        out.extend_from_slice(line);
        out.extend_from_slice(end);
        Ok(())
    }
}
