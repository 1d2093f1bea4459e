//! Message framing over a byte stream: [`LengthHeaderCodec`] and [`LineCodec`].
//!
//! Decoders work on a byte slice (the readable part of an `InputBuffer`) and never copy or
//! allocate: a decoded frame is a borrowed slice plus the number of bytes to consume. A
//! frame or line larger than the configured maximum is an error as soon as its header (or
//! the absence of a line end) proves it, so a hostile peer can never make the decoder
//! allocate or wait for the size it claims; the caller closes the connection.

mod length_header;
mod line;

pub use length_header::LengthHeaderCodec;
pub use line::LineCodec;

use duo_buffer::InputBuffer;

/// One decoded message, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The message without its framing (header or line end).
    pub payload: &'a [u8],
    /// Bytes the message occupied in the input, framing included: consume this many.
    pub consumed: usize,
}

/// A framing violation by the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A length header announced more than the maximum frame size.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The length the header announced (or the payload to encode).
        len: u64,
        /// The configured maximum.
        max: usize,
    },
    /// A line grew past the maximum length without a line end.
    #[error("line exceeds the maximum of {max} bytes")]
    LineTooLong {
        /// The configured maximum (line end not counted).
        max: usize,
    },
    /// A line to encode contains a line end itself.
    #[error("a line to send contains a line end")]
    EmbeddedNewline,
}

/// Decodes frames one by one from `input`, calling `f` on each and consuming it; stops
/// at the first incomplete frame. Returns the number of frames, or the first error (the
/// frames before it were delivered and consumed).
pub(crate) fn drain_frames(
    input: &mut InputBuffer,
    decode: impl Fn(&[u8]) -> Result<Option<Frame<'_>>, CodecError>,
    mut f: impl FnMut(&[u8]),
) -> Result<usize, CodecError> {
    let mut count = 0;
    loop {
        let consumed = match decode(input.peek())? {
            Some(frame) => {
                f(frame.payload);
                frame.consumed
            }
            None => return Ok(count),
        };
        input.consume(consumed);
        count += 1;
    }
}
