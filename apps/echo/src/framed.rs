//! The packet protocol of `echo --framed`: an 8-byte header (type, length), then the payload.
//!
//! Every packet is an 8-byte header followed by its payload:
//!
//! ```text
//! +----------------+----------------+==================+
//! | type: u32 (BE) | length: u32 BE |  length bytes    |
//! +----------------+----------------+==================+
//! ```
//!
//! The client sends [`DATA_SEND`] packets; the server answers each with a [`DATA_ECHO`]
//! packet carrying the same payload. Any other type, or a length above [`MAX_PAYLOAD`], is
//! a protocol violation: the server closes the connection. Both checks happen as soon as
//! the 8 header bytes are buffered, so a hostile peer can never make the server wait for
//! (or buffer) the payload it claims.
//!
//! Decoding is in place: [`decode`] borrows the payload from the connection's input
//! buffer and [`echo_frames`] hands the reply out as two slices (a fresh header and the
//! borrowed payload), so the payload is never copied on its way back.

use duo_net::InputBuffer;

/// Size of the packet header: type and length, both `u32` big-endian.
pub const HEADER_LEN: usize = 8;
/// Type of a packet from the client to be echoed (`PT_DATA_SEND`).
pub const DATA_SEND: u32 = 1;
/// Type of the server's answer to a [`DATA_SEND`] (`PT_DATA_ECHO`).
pub const DATA_ECHO: u32 = 2;
/// Largest payload accepted: 1 MiB (a payload of exactly this size is fine).
pub const MAX_PAYLOAD: usize = 1 << 20;

/// A packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Packet type ([`DATA_SEND`], [`DATA_ECHO`]).
    pub kind: u32,
    /// Payload length in bytes.
    pub len: u32,
}

impl Header {
    /// The header at the front of `bytes`, if 8 bytes are there.
    pub fn parse(bytes: &[u8]) -> Option<Header> {
        let h = bytes.first_chunk::<HEADER_LEN>()?;
        Some(Header {
            kind: u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
            len: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        })
    }

    /// The header's wire form.
    pub fn encode(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(&self.kind.to_be_bytes());
        out[4..].copy_from_slice(&self.len.to_be_bytes());
        out
    }
}

/// A protocol violation by the peer; the connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A packet type the server does not accept (anything but [`DATA_SEND`]).
    UnknownType(u32),
    /// A length above [`MAX_PAYLOAD`].
    TooLong(u32),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::UnknownType(t) => write!(f, "unknown packet type {t}"),
            FrameError::TooLong(n) => {
                write!(f, "packet length {n} exceeds the maximum of {MAX_PAYLOAD}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// One complete [`DATA_SEND`] packet, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The payload.
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Bytes the packet occupies in the input, header included: consume this many.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// Decodes the packet at the front of `bytes`: `Ok(None)` while the header or the payload
/// is incomplete; an error as soon as a complete header is invalid.
pub fn decode(bytes: &[u8]) -> Result<Option<Frame<'_>>, FrameError> {
    let Some(header) = Header::parse(bytes) else {
        return Ok(None);
    };
    if header.kind != DATA_SEND {
        return Err(FrameError::UnknownType(header.kind));
    }
    if header.len as usize > MAX_PAYLOAD {
        return Err(FrameError::TooLong(header.len));
    }
    let end = HEADER_LEN + header.len as usize;
    Ok(bytes.get(HEADER_LEN..end).map(|payload| Frame { payload }))
}

/// Answers every complete packet at the front of `input` and consumes it; what is left is
/// an incomplete packet, kept for the next call.
///
/// Each answer goes to `reply` as two parts, the [`DATA_ECHO`] header and the payload
/// borrowed from `input`, ready for a vectored send. If `reply` returns false (the
/// connection no longer sends), the rest of the input is dropped and decoding stops.
/// Returns the number of packets answered, or the first protocol violation (the packets
/// before it were answered and consumed; the offending bytes stay in `input`).
pub fn echo_frames(
    input: &mut InputBuffer,
    mut reply: impl FnMut(&[&[u8]]) -> bool,
) -> Result<usize, FrameError> {
    let mut answered = 0;
    loop {
        let consumed = match decode(input.peek())? {
            None => return Ok(answered),
            Some(frame) => {
                let header = Header {
                    kind: DATA_ECHO,
                    len: frame.payload.len() as u32,
                }
                .encode();
                if !reply(&[&header, frame.payload]) {
                    input.consume_all();
                    return Ok(answered);
                }
                frame.wire_len()
            }
        };
        input.consume(consumed);
        answered += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packet(kind: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Header {
            kind,
            len: payload.len() as u32,
        }
        .encode()
        .to_vec();
        out.extend_from_slice(payload);
        out
    }

    /// Replies as (type, payload).
    type Replies = Vec<(u32, Vec<u8>)>;

    /// Feeds `wire` to `echo_frames` in chunks of the given sizes (cycled), collecting
    /// the replies as (type, payload).
    fn feed(wire: &[u8], chunks: &[usize]) -> (Replies, Result<usize, FrameError>, InputBuffer) {
        let mut input = InputBuffer::new();
        let mut replies = Vec::new();
        let mut total = 0;
        let mut rest = wire;
        let mut sizes = chunks.iter().copied().cycle();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
            input.append(&rest[..n]).expect("append");
            rest = &rest[n..];
            let r = echo_frames(&mut input, |parts| {
                let joined = parts.concat();
                let h = Header::parse(&joined).expect("reply has a header");
                assert_eq!(h.len as usize, joined.len() - HEADER_LEN);
                replies.push((h.kind, joined[HEADER_LEN..].to_vec()));
                true
            });
            match r {
                Ok(n) => total += n,
                Err(e) => return (replies, Err(e), input),
            }
        }
        (replies, Ok(total), input)
    }

    #[test]
    fn header_round_trips() {
        let h = Header {
            kind: 0x0102_0304,
            len: 0xa0b0_c0d0,
        };
        assert_eq!(
            h.encode(),
            [1, 2, 3, 4, 0xa0, 0xb0, 0xc0, 0xd0],
            "big-endian type then length"
        );
        assert_eq!(Header::parse(&h.encode()), Some(h));
        assert_eq!(Header::parse(&h.encode()[..7]), None);
    }

    #[test]
    fn empty_payload_is_a_packet() {
        let wire = packet(DATA_SEND, b"");
        assert_eq!(decode(&wire), Ok(Some(Frame { payload: b"" })));
    }

    #[test]
    fn exactly_max_payload_is_accepted_and_one_more_is_not() {
        let mut header = Header {
            kind: DATA_SEND,
            len: MAX_PAYLOAD as u32,
        }
        .encode()
        .to_vec();
        assert_eq!(decode(&header), Ok(None), "waits for the 1 MiB payload");
        header[4..].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_be_bytes());
        assert_eq!(
            decode(&header),
            Err(FrameError::TooLong(MAX_PAYLOAD as u32 + 1))
        );
    }

    #[test]
    fn an_echo_packet_from_the_client_is_refused() {
        assert_eq!(
            decode(&packet(DATA_ECHO, b"x")),
            Err(FrameError::UnknownType(DATA_ECHO))
        );
    }

    #[test]
    fn a_refused_reply_drops_the_input() {
        let mut wire = packet(DATA_SEND, b"one");
        wire.extend(packet(DATA_SEND, b"two"));
        let mut input = InputBuffer::new();
        input.append(&wire).unwrap();
        assert_eq!(echo_frames(&mut input, |_| false), Ok(0));
        assert!(input.is_empty());
    }

    proptest! {
        /// Any sequence of valid packets, split anywhere, comes back as the same payloads
        /// in order, each as a DATA_ECHO; nothing is left over.
        #[test]
        fn split_packets_are_echoed_in_order(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..600), 0..24),
            chunks in prop::collection::vec(1usize..700, 1..16),
        ) {
            let wire: Vec<u8> = payloads.iter().flat_map(|p| packet(DATA_SEND, p)).collect();
            let (replies, result, input) = feed(&wire, &chunks);
            prop_assert_eq!(result, Ok(payloads.len()));
            prop_assert!(input.is_empty());
            let expected: Replies =
                payloads.into_iter().map(|p| (DATA_ECHO, p)).collect();
            prop_assert_eq!(replies, expected);
        }

        /// A prefix of a valid packet never decodes and never errors.
        #[test]
        fn a_partial_packet_waits(
            payload in prop::collection::vec(any::<u8>(), 0..300),
            cut in any::<prop::sample::Index>(),
        ) {
            let wire = packet(DATA_SEND, &payload);
            let cut = cut.index(wire.len());
            prop_assert_eq!(decode(&wire[..cut]), Ok(None));
            prop_assert_eq!(decode(&wire), Ok(Some(Frame { payload: &payload })));
        }

        /// An invalid header after some valid packets: the valid ones are answered, the
        /// error names the header, whatever the split.
        #[test]
        fn a_bad_header_is_reported_after_the_good_packets(
            good in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..100), 0..8),
            kind in any::<u32>(),
            len in any::<u32>(),
            chunks in prop::collection::vec(1usize..64, 1..8),
        ) {
            prop_assume!(kind != DATA_SEND || len as usize > MAX_PAYLOAD);
            let mut wire: Vec<u8> = good.iter().flat_map(|p| packet(DATA_SEND, p)).collect();
            wire.extend_from_slice(&Header { kind, len }.encode());
            let (replies, result, input) = feed(&wire, &chunks);
            let expected = if kind != DATA_SEND {
                FrameError::UnknownType(kind)
            } else {
                FrameError::TooLong(len)
            };
            prop_assert_eq!(result, Err(expected));
            prop_assert_eq!(replies.len(), good.len());
            prop_assert_eq!(input.peek(), &Header { kind, len }.encode()[..]);
        }

        /// Arbitrary bytes never panic the decoder, and what it accepts is consistent
        /// with the header.
        #[test]
        fn arbitrary_bytes_decode_consistently(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            match decode(&bytes) {
                Ok(Some(frame)) => {
                    let h = Header::parse(&bytes).unwrap();
                    prop_assert_eq!(h.kind, DATA_SEND);
                    prop_assert_eq!(frame.wire_len(), HEADER_LEN + h.len as usize);
                    prop_assert!(frame.wire_len() <= bytes.len());
                }
                Ok(None) => {
                    if let Some(h) = Header::parse(&bytes) {
                        prop_assert_eq!(h.kind, DATA_SEND);
                        prop_assert!(HEADER_LEN + h.len as usize > bytes.len());
                    }
                }
                Err(_) => prop_assert!(bytes.len() >= HEADER_LEN),
            }
        }
    }

    // The properties of the `echo_framed` fuzz target (fuzz/src/lib.rs) on arbitrary,
    // mostly malformed streams.

    /// A stream of packets whose headers often lie: mostly `DATA_SEND` with a small
    /// length, sometimes another type or a huge length, each followed by a payload of a
    /// possibly different length; sometimes raw bytes.
    fn messy_stream() -> impl Strategy<Value = Vec<u8>> {
        let kind = prop_oneof![8 => Just(DATA_SEND), 1 => any::<u32>()];
        let len = prop_oneof![8 => 0u32..40, 1 => any::<u32>()];
        let chunk = prop_oneof![
            4 => (kind, len, prop::collection::vec(any::<u8>(), 0..40)).prop_map(
                |(kind, len, payload)| {
                    let mut c = Header { kind, len }.encode().to_vec();
                    c.extend(payload);
                    c
                }
            ),
            1 => prop::collection::vec(any::<u8>(), 0..10),
        ];
        prop::collection::vec(chunk, 0..10).prop_map(|chunks| chunks.concat())
    }

    proptest! {
        /// Any 8 bytes parse to a header that encodes back to them, and any header
        /// round-trips.
        #[test]
        fn any_header_round_trips(bytes in any::<[u8; 8]>(), kind in any::<u32>(), len in any::<u32>()) {
            let h = Header::parse(&bytes).unwrap();
            prop_assert_eq!(h.encode(), bytes);
            let h = Header { kind, len };
            prop_assert_eq!(Header::parse(&h.encode()), Some(h));
        }

        /// On any stream, `echo_frames` fed in one piece and in random pieces answers the
        /// same packets with the same error; the leftover is the same (after an error the
        /// split feeding holds a prefix of the same offending bytes); and the answered
        /// packets, turned back into requests, plus the leftover are the stream.
        #[test]
        fn any_stream_echoes_the_same_split_or_not(
            wire in messy_stream(),
            chunks in prop::collection::vec(1usize..48, 1..8),
        ) {
            let (one, one_result, one_left) = feed(&wire, &[usize::MAX]);
            let (split, split_result, split_left) = feed(&wire, &chunks);
            prop_assert_eq!(&one, &split);
            let one_left = one_left.peek().to_vec();
            let split_left = split_left.peek().to_vec();
            match (one_result, split_result) {
                (Ok(_), Ok(_)) => prop_assert_eq!(&one_left, &split_left),
                (Err(a), Err(b)) => {
                    prop_assert_eq!(a, b);
                    prop_assert!(!split_left.is_empty());
                    prop_assert!(one_left.starts_with(&split_left));
                }
                (a, b) => prop_assert!(false, "one-shot {:?} vs split {:?}", a, b),
            }
            prop_assert!(one.iter().all(|(kind, _)| *kind == DATA_ECHO));
            let mut rebuilt: Vec<u8> =
                one.iter().flat_map(|(_, payload)| packet(DATA_SEND, payload)).collect();
            rebuilt.extend_from_slice(&one_left);
            prop_assert_eq!(rebuilt, wire);
        }

        /// A reply refused after `n` answers stops decoding and drops the rest of the
        /// input, whatever follows.
        #[test]
        fn a_refused_reply_drops_the_rest(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..8),
            n in any::<prop::sample::Index>(),
            tail in messy_stream(),
        ) {
            let n = n.index(payloads.len());
            let mut wire: Vec<u8> = payloads.iter().flat_map(|p| packet(DATA_SEND, p)).collect();
            wire.extend(tail);
            let mut input = InputBuffer::new();
            input.append(&wire).unwrap();
            let mut calls = 0;
            let answered = echo_frames(&mut input, |_| {
                calls += 1;
                calls <= n
            });
            prop_assert_eq!(answered, Ok(n));
            prop_assert_eq!(calls, n + 1);
            prop_assert!(input.is_empty());
        }
    }
}
