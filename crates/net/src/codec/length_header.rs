//! [`LengthHeaderCodec`]: frames prefixed by their length as a big-endian `u32`.

use duo_buffer::InputBuffer;

use super::{drain_frames, CodecError, Frame};

/// Frames of the form `length: u32 big-endian` + `length` bytes of payload.
///
/// A payload of exactly `max_frame` bytes is accepted. A header announcing more is
/// [`CodecError::FrameTooLarge`] as soon as its 4 bytes are buffered: the decoder neither
/// waits for nor reserves room for the claimed size. To receive frames of up to
/// `max_frame` bytes, the connection's [`InputBuffer::max_len`] must be at least
/// `max_frame + 4` (the whole frame is decoded from one contiguous buffer).
///
/// ```
/// use duo_net::codec::LengthHeaderCodec;
///
/// let codec = LengthHeaderCodec::new(1024);
/// let mut wire = Vec::new();
/// codec.encode(b"hello", &mut wire)?;
/// codec.encode(b"", &mut wire)?;
/// let first = codec.decode(&wire)?.unwrap();
/// assert_eq!(first.payload, b"hello");
/// let second = codec.decode(&wire[first.consumed..])?.unwrap();
/// assert_eq!((second.payload, second.consumed), (&b""[..], 4));
/// // A header claiming 4 GiB is refused at once, without waiting for (or allocating) it.
/// assert!(codec.decode(&[0xff, 0xff, 0xff, 0xff]).is_err());
/// # Ok::<(), duo_net::codec::CodecError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct LengthHeaderCodec {
    max_frame: usize,
}

impl LengthHeaderCodec {
    /// Size of the length header.
    pub const HEADER_LEN: usize = 4;

    /// A codec accepting payloads of up to `max_frame` bytes (clamped to `u32::MAX`, the
    /// most a header can announce).
    pub fn new(max_frame: usize) -> LengthHeaderCodec {
        let limit = usize::try_from(u32::MAX)
            .unwrap_or(usize::MAX)
            .min(usize::MAX - Self::HEADER_LEN);
        LengthHeaderCodec {
            max_frame: max_frame.min(limit),
        }
    }

    /// The largest payload accepted.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Decodes the frame at the start of `input`: `Ok(None)` if it is not complete yet,
    /// an error as soon as its header is there and announces more than the maximum.
    pub fn decode<'a>(&self, input: &'a [u8]) -> Result<Option<Frame<'a>>, CodecError> {
        let Some(header) = input.first_chunk::<{ Self::HEADER_LEN }>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header) as usize;
        if len > self.max_frame {
            return Err(CodecError::FrameTooLarge {
                len: len as u64,
                max: self.max_frame,
            });
        }
        let end = Self::HEADER_LEN + len;
        Ok(input.get(Self::HEADER_LEN..end).map(|payload| Frame {
            payload,
            consumed: end,
        }))
    }

    /// Calls `f` on every complete frame in `input`, consuming each; returns how many.
    pub fn decode_all(
        &self,
        input: &mut InputBuffer,
        f: impl FnMut(&[u8]),
    ) -> Result<usize, CodecError> {
        drain_frames(input, |b| self.decode(b), f)
    }

    /// The header for a payload of `len` bytes; [`CodecError::FrameTooLarge`] if `len`
    /// exceeds the maximum.
    pub fn header(&self, len: usize) -> Result<[u8; 4], CodecError> {
        if len > self.max_frame {
            return Err(CodecError::FrameTooLarge {
                len: len as u64,
                max: self.max_frame,
            });
        }
        Ok((len as u32).to_be_bytes())
    }

    /// Appends the framed `payload` to `out`; [`CodecError::FrameTooLarge`] (and nothing
    /// appended) if it exceeds the maximum.
    pub fn encode(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        let header = self.header(payload.len())?;
        out.reserve(Self::HEADER_LEN + payload.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(payload);
        Ok(())
    }
}
