//! Tests of `duo_net::codec`: [`LengthHeaderCodec`] and [`LineCodec`] over an
//! [`InputBuffer`], with proptests (random splits, round trips, limits) and edge cases.

use duo_buffer::{BufPool, InputBuffer, PoolConfig};
use duo_net::codec::{CodecError, Frame, LengthHeaderCodec, LineCodec};
use proptest::collection::vec;
use proptest::prelude::*;

/// Feeds `wire` into a fresh [`InputBuffer`] in pieces ending at `cuts` (sorted, deduplicated,
/// clamped to the wire), calling `decode_all` after each piece; returns the messages decoded
/// and the buffer, or the first error with the messages decoded before it.
fn feed_in_pieces(
    wire: &[u8],
    cuts: &[usize],
    mut decode_all: impl FnMut(&mut InputBuffer, &mut Vec<Vec<u8>>) -> Result<usize, CodecError>,
) -> (Result<(), CodecError>, Vec<Vec<u8>>, InputBuffer) {
    let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(wire.len())).collect();
    ends.push(wire.len());
    ends.sort_unstable();
    ends.dedup();
    let mut input = InputBuffer::new();
    let mut got = Vec::new();
    let mut start = 0;
    for end in ends {
        input.append(&wire[start..end]).expect("append");
        start = end;
        if let Err(e) = decode_all(&mut input, &mut got) {
            return (Err(e), got, input);
        }
    }
    (Ok(()), got, input)
}

fn length_decode_all(
    codec: LengthHeaderCodec,
) -> impl FnMut(&mut InputBuffer, &mut Vec<Vec<u8>>) -> Result<usize, CodecError> {
    move |input, got| codec.decode_all(input, |m| got.push(m.to_vec()))
}

fn line_decode_all(
    codec: LineCodec,
) -> impl FnMut(&mut InputBuffer, &mut Vec<Vec<u8>>) -> Result<usize, CodecError> {
    move |input, got| codec.decode_all(input, |m| got.push(m.to_vec()))
}

/// A private pool, so its counters see only this test's blocks.
fn private_pool() -> BufPool {
    BufPool::new(PoolConfig::default())
}

/// The content of one line: any bytes but `\n`, not ending in `\r` (a trailing `\r`
/// would be read as part of a `\r\n` line end), with `\r` made likely.
fn line_content(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(prop_oneof![3 => any::<u8>(), 1 => Just(b'\r')], 0..=max).prop_map(|mut l| {
        for b in &mut l {
            if *b == b'\n' {
                *b = b'n';
            }
        }
        while l.last() == Some(&b'\r') {
            l.pop();
        }
        l
    })
}

proptest! {
    // No regression files: the cases that matter are written out as unit tests below.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A stream of frames fed in random pieces decodes to the same frames, in order.
    #[test]
    fn length_random_splits_decode_same_frames(
        frames in vec(vec(any::<u8>(), 0..300), 0..20),
        cuts in vec(0usize..7000, 0..40),
        slack in 0usize..3,
    ) {
        let max = frames.iter().map(Vec::len).max().unwrap_or(0) + slack;
        let codec = LengthHeaderCodec::new(max);
        let mut wire = Vec::new();
        for f in &frames {
            codec.encode(f, &mut wire).unwrap();
        }
        let (result, got, input) = feed_in_pieces(&wire, &cuts, length_decode_all(codec));
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(got, frames);
        prop_assert!(input.is_empty());
        prop_assert_eq!(input.capacity(), 0, "an emptied buffer gives its block back");
    }

    /// Same with single bytes: every split point is exercised.
    #[test]
    fn length_byte_by_byte(frames in vec(vec(any::<u8>(), 0..40), 0..6)) {
        let codec = LengthHeaderCodec::new(40);
        let mut wire = Vec::new();
        for f in &frames {
            codec.encode(f, &mut wire).unwrap();
        }
        let cuts: Vec<usize> = (0..wire.len()).collect();
        let (result, got, _) = feed_in_pieces(&wire, &cuts, length_decode_all(codec));
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(got, frames);
    }

    /// encode then decode gives the payload back and consumes exactly the encoding.
    #[test]
    fn length_round_trip(payload in vec(any::<u8>(), 0..2000), trailing in vec(any::<u8>(), 0..8)) {
        let codec = LengthHeaderCodec::new(2000);
        let mut wire = Vec::new();
        codec.encode(&payload, &mut wire).unwrap();
        prop_assert_eq!(wire.len(), 4 + payload.len());
        prop_assert_eq!(&wire[..4], &(payload.len() as u32).to_be_bytes()[..]);
        prop_assert_eq!(codec.header(payload.len()), Ok((payload.len() as u32).to_be_bytes()));
        wire.extend_from_slice(&trailing);
        let frame = codec.decode(&wire).unwrap().unwrap();
        prop_assert_eq!(frame, Frame { payload: &payload[..], consumed: 4 + payload.len() });
        // Every strict prefix of the frame is incomplete, not an error.
        for cut in 0..4 + payload.len() {
            prop_assert_eq!(codec.decode(&wire[..cut]), Ok(None));
        }
    }

    /// A header announcing more than the maximum fails with only the header buffered:
    /// no waiting for the claimed bytes, no block of the claimed size.
    #[test]
    fn length_oversized_rejected_at_header(
        max in 0usize..(1 << 20),
        excess in 1u64..=u64::from(u32::MAX),
        good in vec(vec(any::<u8>(), 0..64), 0..4),
    ) {
        let claimed = (max as u64 + excess).min(u64::from(u32::MAX));
        prop_assume!(claimed > max as u64);
        let codec = LengthHeaderCodec::new(max);
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for g in good.iter().filter(|g| g.len() <= max) {
            codec.encode(g, &mut wire).unwrap();
            expected.push(g.clone());
        }
        wire.extend_from_slice(&(claimed as u32).to_be_bytes());
        let pool = private_pool();
        let mut input = InputBuffer::with_pool(pool, InputBuffer::DEFAULT_MAX_LEN);
        input.append(&wire).unwrap();
        let mut got = Vec::new();
        let result = codec.decode_all(&mut input, |m| got.push(m.to_vec()));
        prop_assert_eq!(result, Err(CodecError::FrameTooLarge { len: claimed, max }));
        // The frames before the bad header were delivered and consumed; the header stays.
        prop_assert_eq!(got, expected);
        prop_assert_eq!(input.peek(), &(claimed as u32).to_be_bytes()[..]);
        prop_assert!(input.capacity() <= 4096, "capacity {}", input.capacity());
        prop_assert!(pool.stats().allocated_bytes <= 4096, "{:?}", pool.stats());
        // The encoder refuses the same size.
        prop_assert_eq!(
            codec.header(claimed as usize),
            Err(CodecError::FrameTooLarge { len: claimed, max })
        );
    }

    /// A stream of lines with `\n` or `\r\n` ends, fed in random pieces, decodes to the
    /// same lines (ends stripped, lone `\r` kept, empty lines kept).
    #[test]
    fn line_random_splits_decode_same_lines(
        lines in vec((line_content(80), any::<bool>()), 0..25),
        cuts in vec(0usize..2500, 0..40),
        slack in 0usize..3,
    ) {
        let max = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + slack;
        let codec = LineCodec::new(max);
        let mut wire = Vec::new();
        for (line, crlf) in &lines {
            wire.extend_from_slice(line);
            wire.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
        }
        let (result, got, input) = feed_in_pieces(&wire, &cuts, line_decode_all(codec));
        prop_assert_eq!(result, Ok(()));
        let expected: Vec<Vec<u8>> = lines.into_iter().map(|(l, _)| l).collect();
        prop_assert_eq!(got, expected);
        prop_assert!(input.is_empty());
    }

    /// Lines encoded by the codec, fed byte by byte, decode to themselves.
    #[test]
    fn line_encoded_byte_by_byte(lines in vec(line_content(12), 0..8)) {
        let codec = LineCodec::new(12);
        let mut wire = Vec::new();
        for l in &lines {
            codec.encode(l, &mut wire).unwrap();
        }
        let cuts: Vec<usize> = (0..wire.len()).collect();
        let (result, got, _) = feed_in_pieces(&wire, &cuts, line_decode_all(codec));
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(got, lines);
    }

    /// encode then decode gives the line back, consuming exactly the encoding.
    #[test]
    fn line_round_trip(line in line_content(200), trailing in vec(any::<u8>(), 0..8)) {
        let codec = LineCodec::new(200);
        let mut wire = Vec::new();
        codec.encode(&line, &mut wire).unwrap();
        prop_assert_eq!(wire.len(), line.len() + 1);
        wire.extend_from_slice(&trailing);
        let frame = codec.decode(&wire).unwrap().unwrap();
        prop_assert_eq!(frame, Frame { payload: &line[..], consumed: line.len() + 1 });
    }

    /// A line longer than the maximum with no line end fails exactly when the documented
    /// rule says: once the bytes buffered, minus a trailing `\r`, exceed the maximum.
    #[test]
    fn line_too_long_fails_at_documented_point(
        max in 0usize..64,
        body in vec(prop_oneof![4 => any::<u8>(), 1 => Just(b'\r')], 70..140),
    ) {
        let body: Vec<u8> = body.into_iter().map(|b| if b == b'\n' { b'x' } else { b }).collect();
        let codec = LineCodec::new(max);
        let mut input = InputBuffer::new();
        let mut failed_at = None;
        for (i, &b) in body.iter().enumerate() {
            input.append(&[b]).unwrap();
            match codec.decode_all(&mut input, |_| panic!("no line end was sent")) {
                Ok(n) => prop_assert_eq!(n, 0),
                Err(e) => {
                    prop_assert_eq!(e, CodecError::LineTooLong { max });
                    failed_at = Some(i + 1);
                    break;
                }
            }
        }
        let expected = if body[max] == b'\r' { max + 2 } else { max + 1 };
        prop_assert_eq!(failed_at, Some(expected));
    }

    /// `LineCodec::decode` follows the same rule as `InputBuffer::next_line` on any input.
    #[test]
    fn line_decode_agrees_with_next_line(
        max in 0usize..8,
        data in vec(prop_oneof![Just(b'a'), Just(b'\r'), Just(b'\n')], 0..16),
    ) {
        let codec = LineCodec::new(max);
        let mut input = InputBuffer::new();
        input.append(&data).unwrap();
        let ours = codec.decode(input.peek());
        let theirs = input.next_line(max);
        match (ours, theirs) {
            (Ok(None), Ok(None)) => {}
            (Ok(Some(frame)), Ok(Some(line))) => {
                prop_assert_eq!(frame.payload, &data[..line.len]);
                prop_assert_eq!(frame.consumed, line.consumed);
            }
            (Err(CodecError::LineTooLong { max: m }), Err(_)) => prop_assert_eq!(m, max),
            (ours, theirs) => prop_assert!(false, "codec {:?} vs next_line {:?}", ours, theirs),
        }
    }

    /// encode refuses exactly the lines that could not decode to themselves.
    #[test]
    fn line_encode_refuses_line_ends(line in vec(prop_oneof![Just(b'a'), Just(b'\r'), Just(b'\n')], 0..10)) {
        let codec = LineCodec::new(100);
        let mut out = b"prefix".to_vec();
        let result = codec.encode(&line, &mut out);
        if line.contains(&b'\n') || line.last() == Some(&b'\r') {
            prop_assert_eq!(result, Err(CodecError::EmbeddedNewline));
            prop_assert_eq!(&out[..], b"prefix", "nothing appended on error");
        } else {
            prop_assert_eq!(result, Ok(()));
            let frame = codec.decode(&out[6..]).unwrap().unwrap();
            prop_assert_eq!(frame.payload, &line[..]);
        }
    }
}

// ---- LengthHeaderCodec edge cases ----

#[test]
fn length_empty_frame() {
    let codec = LengthHeaderCodec::new(0);
    let mut wire = Vec::new();
    codec.encode(b"", &mut wire).unwrap();
    assert_eq!(wire, [0, 0, 0, 0]);
    assert_eq!(
        codec.decode(&wire),
        Ok(Some(Frame {
            payload: b"",
            consumed: 4
        }))
    );
    assert_eq!(
        codec.decode(&[0, 0, 0, 1, 7]),
        Err(CodecError::FrameTooLarge { len: 1, max: 0 })
    );
}

#[test]
fn length_incomplete_header_and_payload() {
    let codec = LengthHeaderCodec::new(10);
    assert_eq!(codec.decode(b""), Ok(None));
    assert_eq!(codec.decode(&[0]), Ok(None));
    assert_eq!(codec.decode(&[0, 0, 0]), Ok(None));
    assert_eq!(codec.decode(&[0, 0, 0, 3]), Ok(None));
    assert_eq!(codec.decode(&[0, 0, 0, 3, b'a', b'b']), Ok(None));
    assert_eq!(
        codec.decode(&[0, 0, 0, 3, b'a', b'b', b'c', 0xff]),
        Ok(Some(Frame {
            payload: b"abc",
            consumed: 7
        }))
    );
}

#[test]
fn length_exactly_max_accepted_max_plus_one_rejected() {
    let max = 1 << 20;
    let codec = LengthHeaderCodec::new(max);
    assert_eq!(codec.max_frame(), max);

    let payload = vec![0x5a; max];
    let mut wire = Vec::new();
    codec.encode(&payload, &mut wire).unwrap();
    let mut input = InputBuffer::new();
    input.append(&wire).unwrap();
    let mut got = Vec::new();
    assert_eq!(codec.decode_all(&mut input, |m| got.push(m.len())), Ok(1));
    assert_eq!(got, [max]);
    assert!(input.is_empty());

    let too_big = vec![0; max + 1];
    let mut out = b"keep".to_vec();
    assert_eq!(
        codec.encode(&too_big, &mut out),
        Err(CodecError::FrameTooLarge {
            len: max as u64 + 1,
            max
        })
    );
    assert_eq!(out, b"keep", "nothing appended on error");
    let header = ((max + 1) as u32).to_be_bytes();
    assert_eq!(
        codec.decode(&header),
        Err(CodecError::FrameTooLarge {
            len: max as u64 + 1,
            max
        })
    );
}

#[test]
fn length_four_gib_header_fails_with_four_bytes_and_no_big_block() {
    let pool = private_pool();
    let codec = LengthHeaderCodec::new(1 << 20);
    let mut input = InputBuffer::with_pool(pool, InputBuffer::DEFAULT_MAX_LEN);
    input.append(&[0xff, 0xff, 0xff, 0xff]).unwrap();
    assert_eq!(input.len(), 4);
    let result = codec.decode_all(&mut input, |_| panic!("no frame"));
    assert_eq!(
        result,
        Err(CodecError::FrameTooLarge {
            len: u64::from(u32::MAX),
            max: 1 << 20
        })
    );
    assert_eq!(
        result.unwrap_err().to_string(),
        "frame of 4294967295 bytes exceeds the maximum of 1048576"
    );
    let stats = pool.stats();
    assert_eq!(stats.allocated_bytes, 4096, "{stats:?}");
    assert_eq!(stats.in_use_blocks(), 1);
    assert_eq!(input.capacity(), 4096);
}

#[test]
fn length_max_is_clamped_to_u32() {
    let codec = LengthHeaderCodec::new(usize::MAX);
    assert_eq!(codec.max_frame(), u32::MAX as usize);
    // A 4 GiB - 1 header is legal here: the decoder waits, holding just the header.
    let mut input = InputBuffer::with_pool(private_pool(), InputBuffer::DEFAULT_MAX_LEN);
    input.append(&[0xff; 4]).unwrap();
    assert_eq!(
        codec.decode_all(&mut input, |_| panic!("incomplete")),
        Ok(0)
    );
    assert_eq!(input.len(), 4);
    assert_eq!(input.capacity(), 4096);
    assert_eq!(codec.header(u32::MAX as usize), Ok([0xff; 4]));
    assert_eq!(
        codec.header(u32::MAX as usize + 1),
        Err(CodecError::FrameTooLarge {
            len: u64::from(u32::MAX) + 1,
            max: u32::MAX as usize
        })
    );
}

#[test]
fn length_decode_all_stops_at_partial_frame_and_resumes() {
    let codec = LengthHeaderCodec::new(16);
    let mut wire = Vec::new();
    for m in [&b"one"[..], b"", b"three"] {
        codec.encode(m, &mut wire).unwrap();
    }
    let mut input = InputBuffer::new();
    input.append(&wire[..wire.len() - 2]).unwrap();
    let mut got: Vec<Vec<u8>> = Vec::new();
    assert_eq!(
        codec.decode_all(&mut input, |m| got.push(m.to_vec())),
        Ok(2)
    );
    assert_eq!(got, [b"one".to_vec(), Vec::new()]);
    assert_eq!(input.len(), 4 + 3, "the partial frame stays");
    input.append(&wire[wire.len() - 2..]).unwrap();
    assert_eq!(
        codec.decode_all(&mut input, |m| got.push(m.to_vec())),
        Ok(1)
    );
    assert_eq!(got.last().unwrap(), b"three");
    assert_eq!(input.capacity(), 0);
}

// ---- LineCodec edge cases ----

fn decode_lines(codec: LineCodec, wire: &[u8]) -> (Result<usize, CodecError>, Vec<Vec<u8>>) {
    let mut input = InputBuffer::new();
    input.append(wire).unwrap();
    let mut got = Vec::new();
    let result = codec.decode_all(&mut input, |m| got.push(m.to_vec()));
    (result, got)
}

#[test]
fn line_ends_and_carriage_returns() {
    let codec = LineCodec::new(16);
    let (result, got) = decode_lines(codec, b"a\r\nb\nc\rd\n\r\r\n\rx\r\n");
    assert_eq!(result, Ok(5));
    assert_eq!(
        got,
        [
            b"a".to_vec(),
            b"b".to_vec(),
            b"c\rd".to_vec(),
            b"\r".to_vec(),
            b"\rx".to_vec()
        ]
    );
}

#[test]
fn line_empty_lines() {
    let codec = LineCodec::new(4);
    let (result, got) = decode_lines(codec, b"\n\r\n\n\r\n");
    assert_eq!(result, Ok(4));
    assert_eq!(got, vec![Vec::<u8>::new(); 4]);
    assert_eq!(
        codec.decode(b"\r\nz"),
        Ok(Some(Frame {
            payload: b"",
            consumed: 2
        }))
    );
}

#[test]
fn line_incomplete_is_none() {
    let codec = LineCodec::new(8);
    assert_eq!(codec.decode(b""), Ok(None));
    assert_eq!(codec.decode(b"abc"), Ok(None));
    assert_eq!(codec.decode(b"abc\r"), Ok(None));
    assert_eq!(codec.decode(b"\r"), Ok(None));
}

#[test]
fn line_exactly_max_accepted_max_plus_one_rejected() {
    let max = 8;
    let codec = LineCodec::new(max);
    assert_eq!(codec.max_line(), max);
    let exact = b"12345678";
    for end in [&b"\n"[..], b"\r\n"] {
        let wire = [&exact[..], end].concat();
        assert_eq!(
            codec.decode(&wire),
            Ok(Some(Frame {
                payload: exact,
                consumed: max + end.len()
            })),
            "{wire:?}"
        );
        let wire = [&b"123456789"[..], end].concat();
        assert_eq!(
            codec.decode(&wire),
            Err(CodecError::LineTooLong { max }),
            "{wire:?}"
        );
    }
    // Without a line end: max bytes wait, max + 1 fail...
    assert_eq!(codec.decode(exact), Ok(None));
    assert_eq!(
        codec.decode(b"123456789"),
        Err(CodecError::LineTooLong { max })
    );
    // ...unless the extra byte is '\r', which may start the line end.
    assert_eq!(codec.decode(b"12345678\r"), Ok(None));
    assert_eq!(
        codec.decode(b"12345678\rx"),
        Err(CodecError::LineTooLong { max })
    );
    assert_eq!(
        codec.decode(b"12345678\r\r"),
        Err(CodecError::LineTooLong { max })
    );
    assert_eq!(
        CodecError::LineTooLong { max }.to_string(),
        "line exceeds the maximum of 8 bytes"
    );
}

#[test]
fn line_max_zero_accepts_only_empty_lines() {
    let codec = LineCodec::new(0);
    assert_eq!(
        codec.decode(b"\n"),
        Ok(Some(Frame {
            payload: b"",
            consumed: 1
        }))
    );
    assert_eq!(
        codec.decode(b"\r\n"),
        Ok(Some(Frame {
            payload: b"",
            consumed: 2
        }))
    );
    assert_eq!(codec.decode(b"\r"), Ok(None));
    assert_eq!(codec.decode(b"a"), Err(CodecError::LineTooLong { max: 0 }));
    assert_eq!(
        codec.decode(b"\r\r"),
        Err(CodecError::LineTooLong { max: 0 })
    );
    let mut out = Vec::new();
    codec.encode(b"", &mut out).unwrap();
    assert_eq!(out, b"\n");
    assert_eq!(
        codec.encode(b"a", &mut out),
        Err(CodecError::LineTooLong { max: 0 })
    );
}

#[test]
fn line_huge_max_does_not_overflow() {
    let codec = LineCodec::new(usize::MAX);
    assert_eq!(codec.decode(b"no end"), Ok(None));
    assert_eq!(
        codec.decode(b"x\r\n"),
        Ok(Some(Frame {
            payload: b"x",
            consumed: 3
        }))
    );
}

#[test]
fn line_too_long_in_buffer_after_good_lines() {
    let codec = LineCodec::new(4);
    let (result, got) = decode_lines(codec, b"ok\nfine\ntoolong\n");
    assert_eq!(result, Err(CodecError::LineTooLong { max: 4 }));
    assert_eq!(got, [b"ok".to_vec(), b"fine".to_vec()]);
}

#[test]
fn line_long_garbage_is_not_scanned_past_the_limit() {
    // 4 MiB without a line end is refused by looking at max + 2 bytes only.
    let codec = LineCodec::new(100);
    let garbage = vec![b'g'; 4 << 20];
    assert_eq!(
        codec.decode(&garbage),
        Err(CodecError::LineTooLong { max: 100 })
    );
}

#[test]
fn line_encode_rules() {
    let codec = LineCodec::new(5);
    let mut out = Vec::new();
    codec.encode(b"12345", &mut out).unwrap();
    codec.encode(b"a\rb", &mut out).unwrap();
    codec.encode(b"", &mut out).unwrap();
    assert_eq!(out, b"12345\na\rb\n\n");
    let before = out.clone();
    assert_eq!(
        codec.encode(b"123456", &mut out),
        Err(CodecError::LineTooLong { max: 5 })
    );
    assert_eq!(
        codec.encode(b"a\nb", &mut out),
        Err(CodecError::EmbeddedNewline)
    );
    assert_eq!(
        codec.encode(b"\n", &mut out),
        Err(CodecError::EmbeddedNewline)
    );
    assert_eq!(
        codec.encode(b"ab\r", &mut out),
        Err(CodecError::EmbeddedNewline)
    );
    assert_eq!(out, before, "nothing appended on error");
    assert_eq!(
        CodecError::EmbeddedNewline.to_string(),
        "a line to send contains a line end"
    );
}
