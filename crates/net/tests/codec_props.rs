//! The fuzz targets' properties of `duo_net::codec` (`fuzz/src/lib.rs`: `length_header`,
//! `line`) as proptests, so `cargo test` checks them on stable. `codec.rs` covers streams
//! of valid frames and lines; these feed arbitrary (mostly malformed) streams:
//!
//! - `decode` never panics and its answer agrees with the header (or the line rules);
//! - `decode_all` fed in one piece and in random pieces gives the same frames, the same
//!   error and the same leftover (with an error: the split feeding stopped on the same
//!   offending bytes);
//! - the frames decoded, re-encoded, are exactly the bytes consumed;
//! - encoding any payload either decodes back to it or is refused for the documented
//!   reason, appending nothing.

use duo_buffer::InputBuffer;
use duo_net::codec::{CodecError, Frame, LengthHeaderCodec, LineCodec};
use proptest::collection::vec;
use proptest::prelude::*;

/// Messages decoded, the error that stopped decoding, and the bytes left buffered.
type Fed = (Vec<Vec<u8>>, Option<CodecError>, Vec<u8>);

/// Appends `wire` to a fresh buffer in pieces of the given sizes (cycled; all at once if
/// `pieces` is empty), calling `decode_all` after each; stops at the first error.
fn feed(
    wire: &[u8],
    pieces: &[usize],
    decode_all: impl Fn(&mut InputBuffer, &mut dyn FnMut(&[u8])) -> Result<usize, CodecError>,
) -> Fed {
    let mut input = InputBuffer::new();
    let mut got = Vec::new();
    let mut rest = wire;
    let mut sizes = pieces.iter().copied().cycle();
    loop {
        let n = sizes.next().unwrap_or(usize::MAX).max(1).min(rest.len());
        input.append(&rest[..n]).expect("append");
        rest = &rest[n..];
        if let Err(e) = decode_all(&mut input, &mut |m| got.push(m.to_vec())) {
            return (got, Some(e), input.peek().to_vec());
        }
        if rest.is_empty() {
            return (got, None, input.peek().to_vec());
        }
    }
}

/// One-shot and split feeding agree (see the module documentation).
fn assert_split_agrees(one: &Fed, split: &Fed) -> Result<(), TestCaseError> {
    prop_assert_eq!(&one.0, &split.0, "messages");
    prop_assert_eq!(one.1, split.1, "errors");
    if one.1.is_none() {
        prop_assert_eq!(&one.2, &split.2, "leftovers");
    } else {
        prop_assert!(!split.2.is_empty());
        prop_assert!(one.2.starts_with(&split.2), "{:?} vs {:?}", split.2, one.2);
    }
    Ok(())
}

/// A stream of length-prefixed chunks whose headers often lie: each chunk is a header
/// announcing a small length (sometimes a huge one) followed by a payload of a possibly
/// different length; sometimes raw bytes.
fn messy_length_stream() -> impl Strategy<Value = Vec<u8>> {
    let claimed = prop_oneof![8 => 0u32..48, 1 => any::<u32>()];
    let chunk = prop_oneof![
        4 => (claimed, vec(any::<u8>(), 0..48)).prop_map(|(len, payload)| {
            let mut c = len.to_be_bytes().to_vec();
            c.extend(payload);
            c
        }),
        1 => vec(any::<u8>(), 0..6),
    ];
    vec(chunk, 0..10).prop_map(|chunks| chunks.concat())
}

/// Bytes with many `\r` and `\n`.
fn messy_line_stream() -> impl Strategy<Value = Vec<u8>> {
    // Mapped from plain bytes: a `prop_oneof!` per byte is slow to generate.
    vec(any::<u8>(), 0..200).prop_map(|mut bytes| {
        for b in &mut bytes {
            *b = match *b % 9 {
                0..=3 => b'a',
                4 | 5 => b'\r',
                6 | 7 => b'\n',
                _ => *b,
            };
        }
        bytes
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// `LengthHeaderCodec::decode` on arbitrary bytes agrees with the header.
    #[test]
    fn length_decode_agrees_with_header(max in 0usize..64, wire in messy_length_stream()) {
        let codec = LengthHeaderCodec::new(max);
        let header = wire.first_chunk::<4>().map(|h| u32::from_be_bytes(*h) as usize);
        match codec.decode(&wire) {
            Ok(Some(Frame { payload, consumed })) => {
                let len = header.unwrap();
                prop_assert!(len <= max);
                prop_assert_eq!(consumed, 4 + len);
                prop_assert_eq!(payload, &wire[4..consumed]);
            }
            Ok(None) => {
                if let Some(len) = header {
                    prop_assert!(len <= max && 4 + len > wire.len());
                }
            }
            Err(e) => {
                let len = header.unwrap();
                prop_assert!(len > max);
                prop_assert_eq!(e, CodecError::FrameTooLarge { len: len as u64, max });
            }
        }
    }

    /// `LengthHeaderCodec::decode_all` on arbitrary bytes: one-shot and split feeding
    /// agree, and the frames re-encoded plus the leftover are the input.
    #[test]
    fn length_split_feeding_agrees_on_any_stream(
        max in 0usize..64,
        wire in messy_length_stream(),
        pieces in vec(1usize..40, 1..8),
    ) {
        let codec = LengthHeaderCodec::new(max);
        let decode_all = |input: &mut InputBuffer, f: &mut dyn FnMut(&[u8])| codec.decode_all(input, f);
        let one = feed(&wire, &[], decode_all);
        let split = feed(&wire, &pieces, decode_all);
        assert_split_agrees(&one, &split)?;
        let mut rebuilt = Vec::new();
        for frame in &one.0 {
            codec.encode(frame, &mut rebuilt).unwrap();
        }
        rebuilt.extend_from_slice(&one.2);
        prop_assert_eq!(rebuilt, wire);
    }

    /// Encoding any payload with any maximum: decodes back to it (every strict prefix is
    /// incomplete), or is `FrameTooLarge` with nothing appended.
    #[test]
    fn length_encode_any_payload(max in 0usize..64, payload in vec(any::<u8>(), 0..80)) {
        let codec = LengthHeaderCodec::new(max);
        let mut out = b"x".to_vec();
        match codec.encode(&payload, &mut out) {
            Ok(()) => {
                prop_assert!(payload.len() <= max);
                let wire = &out[1..];
                prop_assert_eq!(
                    codec.decode(wire),
                    Ok(Some(Frame { payload: &payload[..], consumed: wire.len() }))
                );
                for cut in 0..wire.len() {
                    prop_assert_eq!(codec.decode(&wire[..cut]), Ok(None));
                }
            }
            Err(e) => {
                prop_assert_eq!(e, CodecError::FrameTooLarge { len: payload.len() as u64, max });
                prop_assert_eq!(&out[..], b"x");
            }
        }
    }

    /// `LineCodec::decode` on arbitrary bytes follows the documented rules.
    #[test]
    fn line_decode_follows_the_rules(max in 0usize..24, wire in messy_line_stream()) {
        let codec = LineCodec::new(max);
        let first_line = match wire.iter().position(|&b| b == b'\n') {
            Some(nl) => &wire[..nl],
            None => &wire[..],
        };
        let content = first_line.strip_suffix(b"\r").unwrap_or(first_line);
        match codec.decode(&wire) {
            Ok(Some(Frame { payload, consumed })) => {
                prop_assert_eq!(consumed, first_line.len() + 1);
                prop_assert_eq!(payload, content);
                prop_assert!(payload.len() <= max);
            }
            Ok(None) => {
                prop_assert!(!wire.contains(&b'\n'));
                prop_assert!(content.len() <= max);
            }
            Err(e) => {
                prop_assert_eq!(e, CodecError::LineTooLong { max });
                prop_assert!(content.len() > max);
            }
        }
    }

    /// `LineCodec::decode_all` on arbitrary bytes: one-shot and split feeding agree, and
    /// one line is delivered per line end consumed.
    #[test]
    fn line_split_feeding_agrees_on_any_stream(
        max in 0usize..24,
        wire in messy_line_stream(),
        pieces in vec(1usize..20, 1..8),
    ) {
        let codec = LineCodec::new(max);
        let decode_all = |input: &mut InputBuffer, f: &mut dyn FnMut(&[u8])| codec.decode_all(input, f);
        let one = feed(&wire, &[], decode_all);
        let split = feed(&wire, &pieces, decode_all);
        assert_split_agrees(&one, &split)?;
        let consumed = &wire[..wire.len() - one.2.len()];
        prop_assert_eq!(one.0.len(), consumed.iter().filter(|&&b| b == b'\n').count());
    }

    /// Encoding any line with any maximum and either line end: decodes back to it, or is
    /// refused for the documented reason with nothing appended.
    #[test]
    fn line_encode_any_line(max in 0usize..24, line in messy_line_stream(), crlf in any::<bool>()) {
        let codec = if crlf { LineCodec::new(max).crlf() } else { LineCodec::new(max) };
        let mut out = b"x".to_vec();
        let expected = if line.len() > max {
            Err(CodecError::LineTooLong { max })
        } else if line.contains(&b'\n') || (!crlf && line.last() == Some(&b'\r')) {
            Err(CodecError::EmbeddedNewline)
        } else {
            Ok(())
        };
        prop_assert_eq!(codec.encode(&line, &mut out), expected);
        if expected.is_ok() {
            let wire = &out[1..];
            prop_assert_eq!(
                codec.decode(wire),
                Ok(Some(Frame { payload: &line[..], consumed: wire.len() }))
            );
        } else {
            prop_assert_eq!(&out[..], b"x");
        }
    }
}

/// A `max` of `usize::MAX` neither overflows nor rejects anything.
#[test]
fn huge_maxima_on_any_bytes() {
    let length = LengthHeaderCodec::new(usize::MAX);
    let line = LineCodec::new(usize::MAX);
    for wire in [&b""[..], b"\xff\xff\xff\xff", b"\r", b"abc\r", b"abc\r\n"] {
        assert!(length.decode(wire).is_ok());
        assert!(line.decode(wire).is_ok());
    }
}
