//! [`LineCodec`]: lines ending in `\n` or `\r\n`.

use duo_buffer::InputBuffer;

use super::{drain_frames, CodecError, Frame};

/// Text lines ending in `\n` or `\r\n`, of at most `max_line` bytes (line end not
/// counted). The payload of a decoded line excludes its line end.
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
}

impl LineCodec {
    /// A codec accepting lines of up to `max_line` bytes.
    pub fn new(max_line: usize) -> LineCodec {
        LineCodec { max_line }
    }

    /// The longest line accepted (line end not counted).
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Decodes the line at the start of `input`: `Ok(None)` if its end has not arrived
    /// (and it is not yet too long), an error once it is longer than the maximum.
    pub fn decode<'a>(&self, input: &'a [u8]) -> Result<Option<Frame<'a>>, CodecError> {
        // Content, an optional '\r' and the '\n': look no further than that.
        let window = &input[..input.len().min(self.max_line.saturating_add(2))];
        match window.iter().position(|&b| b == b'\n') {
            Some(nl) => {
                let content = &input[..nl];
                let content = content.strip_suffix(b"\r").unwrap_or(content);
                if content.len() > self.max_line {
                    return Err(CodecError::LineTooLong { max: self.max_line });
                }
                Ok(Some(Frame {
                    payload: content,
                    consumed: nl + 1,
                }))
            }
            None if window.len() >= self.max_line.saturating_add(2) => {
                Err(CodecError::LineTooLong { max: self.max_line })
            }
            None => Ok(None),
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

    /// Appends `line` and `\n` to `out`; a line longer than the maximum or containing
    /// `\n` is refused.
    pub fn encode(&self, line: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        if line.len() > self.max_line {
            return Err(CodecError::LineTooLong { max: self.max_line });
        }
        if line.contains(&b'\n') {
            return Err(CodecError::EmbeddedNewline);
        }
        out.extend_from_slice(line);
        out.push(b'\n');
        Ok(())
    }
}
