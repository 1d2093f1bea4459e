//! The properties the fuzz targets check, one public function per target, each taking the
//! raw fuzz input and panicking on a violation.
//!
//! The echo packet decoder and the bank command parser come from the libraries of the two
//! apps (`echo::framed`, `bank::protocol`), the codecs from `duo_net::codec`.
//!
//! Every target reads its input through [`Plan`]: a few leading bytes choose the parameters
//! (maximum frame or line size, how to split the stream), the rest is the byte stream.

mod http;

pub use http::http_request;

use bank::protocol;
use duo_net::codec::{CodecError, Frame, LengthHeaderCodec, LineCodec};
use duo_net::InputBuffer;
use echo::framed;

/// How one fuzz input is read.
///
/// ```text
/// byte 0..2  u16 LE: the codec's maximum (0xffff means usize::MAX)
/// byte 2     low nibble: n, the number of piece sizes; high nibble: a small parameter
/// n bytes    piece sizes (0 counts as 1), cycled to split the stream
/// rest       the byte stream
/// ```
///
/// An input shorter than 3 bytes is all stream, with a maximum of 16 and byte-by-byte
/// pieces.
#[derive(Debug)]
pub struct Plan<'a> {
    /// The maximum frame or line size.
    pub max: usize,
    /// A parameter in `0..16`, meaning depends on the target.
    pub param: u8,
    /// Sizes of the pieces the split feeding appends, cycled; never empty.
    pub pieces: Vec<usize>,
    /// The byte stream.
    pub wire: &'a [u8],
}

impl<'a> Plan<'a> {
    /// Reads `data` as described on the type.
    pub fn new(data: &'a [u8]) -> Plan<'a> {
        let [m0, m1, shape, rest @ ..] = data else {
            return Plan {
                max: 16,
                param: 0,
                pieces: vec![1],
                wire: data,
            };
        };
        let max = match u16::from_le_bytes([*m0, *m1]) {
            u16::MAX => usize::MAX,
            m => usize::from(m),
        };
        let n = usize::from(shape & 0x0f).min(rest.len());
        let (sizes, wire) = rest.split_at(n);
        let mut pieces: Vec<usize> = sizes.iter().map(|&s| usize::from(s).max(1)).collect();
        if pieces.is_empty() {
            pieces.push(1);
        }
        Plan {
            max,
            param: shape >> 4,
            pieces,
            wire,
        }
    }
}

/// What feeding a stream to a decoder produced.
#[derive(Debug)]
pub struct Fed<T, E> {
    /// The messages decoded, in order.
    pub out: Vec<T>,
    /// The error that stopped decoding, if any.
    pub err: Option<E>,
    /// The bytes left in the buffer at the end (or when the error stopped it).
    pub left: Vec<u8>,
}

/// Appends `wire` to a fresh [`InputBuffer`] in pieces of the given sizes (cycled; all of
/// it at once if `pieces` is `None`), calling `step` after each piece; stops at the first
/// error.
pub fn feed<T, E>(
    wire: &[u8],
    pieces: Option<&[usize]>,
    mut step: impl FnMut(&mut InputBuffer, &mut Vec<T>) -> Result<(), E>,
) -> Fed<T, E> {
    let mut input = InputBuffer::new();
    let mut out = Vec::new();
    let mut rest = wire;
    let mut sizes = pieces.unwrap_or(&[usize::MAX]).iter().copied().cycle();
    loop {
        let n = sizes.next().unwrap_or(usize::MAX).min(rest.len());
        input.append(&rest[..n]).expect("append");
        rest = &rest[n..];
        if let Err(e) = step(&mut input, &mut out) {
            return Fed {
                out,
                err: Some(e),
                left: input.peek().to_vec(),
            };
        }
        if rest.is_empty() {
            return Fed {
                out,
                err: None,
                left: input.peek().to_vec(),
            };
        }
    }
}

/// Feeding in one piece and in `pieces` must agree: same messages, same error; without an
/// error the same bytes left over; with one, the split feeding stopped on the same
/// offending bytes (what it holds is a non-empty prefix of what the one-shot feeding holds).
pub fn assert_split_agrees<T, E>(one: &Fed<T, E>, split: &Fed<T, E>)
where
    T: PartialEq + std::fmt::Debug,
    E: PartialEq + std::fmt::Debug,
{
    assert_eq!(
        one.out, split.out,
        "messages differ between one-shot and split feeding"
    );
    assert_eq!(
        one.err, split.err,
        "errors differ between one-shot and split feeding"
    );
    if one.err.is_none() {
        assert_eq!(one.left, split.left, "leftovers differ");
    } else {
        assert!(!split.left.is_empty(), "an error with nothing buffered");
        assert!(
            one.left.starts_with(&split.left),
            "split feeding stopped elsewhere: {:?} vs {:?}",
            split.left,
            one.left
        );
    }
}

/// Prefixes of `wire` worth checking: a few cuts near the start and the end (all of them
/// for a short one).
fn some_cuts(len: usize) -> impl Iterator<Item = usize> {
    (0..len.min(12)).chain(len.saturating_sub(12).max(12)..len)
}

/// `encoded`, the encoding of `payload` as one frame, decodes to exactly that frame, and
/// none of its proper prefixes decodes to anything yet.
fn assert_decodes_whole(
    decode: impl for<'a> Fn(&'a [u8]) -> Result<Option<Frame<'a>>, CodecError>,
    payload: &[u8],
    encoded: &[u8],
) {
    assert_eq!(
        decode(encoded),
        Ok(Some(Frame {
            payload,
            consumed: encoded.len()
        }))
    );
    for cut in some_cuts(encoded.len()) {
        assert_eq!(decode(&encoded[..cut]), Ok(None), "prefix {cut}");
    }
}

// ---- LengthHeaderCodec ----

/// `LengthHeaderCodec`: decode agrees with the header on any bytes; one-shot and split
/// `decode_all` agree; re-encoding the frames rebuilds the consumed bytes; encoding any
/// payload decodes back to it (or is refused exactly when too large).
pub fn length_header(data: &[u8]) {
    let plan = Plan::new(data);
    let codec = LengthHeaderCodec::new(plan.max);
    let max = codec.max_frame();
    assert!(max <= u32::MAX as usize);
    let wire = plan.wire;

    // decode on raw bytes.
    match codec.decode(wire) {
        Ok(Some(Frame { payload, consumed })) => {
            let len = u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
            assert!(len <= max);
            assert_eq!(consumed, 4 + len);
            assert_eq!(payload, &wire[4..consumed]);
        }
        Ok(None) => {
            if let Some(h) = wire.first_chunk::<4>() {
                let len = u32::from_be_bytes(*h) as usize;
                assert!(len <= max && 4 + len > wire.len());
            }
        }
        Err(e) => {
            let len = u32::from_be_bytes(*wire.first_chunk::<4>().expect("error without a header"));
            assert_eq!(
                e,
                CodecError::FrameTooLarge {
                    len: u64::from(len),
                    max
                }
            );
            assert!(len as usize > max);
        }
    }

    // decode_all, one-shot vs split.
    let step = |input: &mut InputBuffer, out: &mut Vec<Vec<u8>>| {
        codec.decode_all(input, |m| out.push(m.to_vec())).map(drop)
    };
    let one = feed(wire, None, step);
    let split = feed(wire, Some(&plan.pieces), step);
    assert_split_agrees(&one, &split);

    // Decoded frames, re-encoded, are exactly the consumed bytes.
    let mut rebuilt = Vec::new();
    for f in &one.out {
        codec
            .encode(f, &mut rebuilt)
            .expect("a decoded frame re-encodes");
    }
    rebuilt.extend_from_slice(&one.left);
    assert_eq!(rebuilt, wire);

    // encode the stream as one payload.
    let mut encoded = b"x".to_vec();
    match codec.encode(wire, &mut encoded) {
        Ok(()) => {
            let encoded = &encoded[1..];
            assert!(wire.len() <= max);
            assert_eq!(encoded.len(), 4 + wire.len());
            assert_decodes_whole(|b| codec.decode(b), wire, encoded);
        }
        Err(e) => {
            assert_eq!(
                e,
                CodecError::FrameTooLarge {
                    len: wire.len() as u64,
                    max
                }
            );
            assert_eq!(encoded, b"x", "nothing appended on error");
        }
    }
}

// ---- LineCodec ----

/// `LineCodec`: decode follows the documented rules on any bytes and agrees with
/// `InputBuffer::next_line`; one-shot and split `decode_all` agree; encoding any line
/// decodes back to it (or is refused exactly when it could not).
pub fn line(data: &[u8]) {
    let plan = Plan::new(data);
    // Small maxima find the interesting cases; keep usize::MAX for overflow checks.
    let max = if plan.max == usize::MAX {
        usize::MAX
    } else {
        plan.max % 512
    };
    let codec = LineCodec::new(max);
    let wire = plan.wire;
    let too_long = CodecError::LineTooLong { max };

    // decode on raw bytes, against the documented rule.
    let decoded = codec.decode(wire);
    match decoded {
        Ok(Some(Frame { payload, consumed })) => {
            assert!(consumed >= 1 && consumed <= wire.len());
            assert_eq!(wire[consumed - 1], b'\n');
            assert!(!wire[..consumed - 1].contains(&b'\n'));
            let content = &wire[..consumed - 1];
            assert_eq!(payload, content.strip_suffix(b"\r").unwrap_or(content));
            assert!(payload.len() <= max);
        }
        Ok(None) => {
            let window = &wire[..wire.len().min(max.saturating_add(2))];
            assert!(!window.contains(&b'\n'));
            assert!(wire.len() - usize::from(wire.last() == Some(&b'\r')) <= max);
        }
        Err(e) => {
            assert_eq!(e, too_long);
            let content = match wire.iter().position(|&b| b == b'\n') {
                Some(nl) => &wire[..nl],
                None => wire,
            };
            // Too long whether or not the line end has arrived.
            assert!(content.strip_suffix(b"\r").unwrap_or(content).len() > max);
        }
    }

    // Same answer as InputBuffer::next_line.
    let mut input = InputBuffer::new();
    input.append(wire).expect("append");
    match (decoded, input.next_line(max)) {
        (Ok(None), Ok(None)) | (Err(_), Err(_)) => {}
        (Ok(Some(frame)), Ok(Some(line))) => {
            assert_eq!(frame.payload.len(), line.len);
            assert_eq!(frame.consumed, line.consumed);
        }
        (ours, theirs) => panic!("codec {ours:?} vs next_line {theirs:?}"),
    }

    // decode_all, one-shot vs split.
    let step = |input: &mut InputBuffer, out: &mut Vec<Vec<u8>>| {
        codec.decode_all(input, |m| out.push(m.to_vec())).map(drop)
    };
    let one = feed(wire, None, step);
    let split = feed(wire, Some(&plan.pieces), step);
    assert_split_agrees(&one, &split);
    let consumed: usize = wire.len() - one.left.len();
    let lines = wire[..consumed].split(|&b| b == b'\n').count() - 1;
    assert_eq!(one.out.len(), lines, "one message per line end consumed");

    // encode the stream as one line.
    let mut encoded = b"x".to_vec();
    let expected = if wire.len() > max {
        Err(too_long)
    } else if wire.contains(&b'\n') || wire.last() == Some(&b'\r') {
        Err(CodecError::EmbeddedNewline)
    } else {
        Ok(())
    };
    assert_eq!(codec.encode(wire, &mut encoded), expected);
    if expected.is_ok() {
        let encoded = &encoded[1..];
        assert_eq!(encoded.len(), wire.len() + 1);
        assert_decodes_whole(|b| codec.decode(b), wire, encoded);
    } else {
        assert_eq!(encoded, b"x", "nothing appended on error");
    }
}

// ---- echo --framed packet header ----

/// The echo packet decoder: the header round-trips; decode agrees with the header on any
/// bytes; one-shot and split `echo_frames` agree; the replies, turned back into requests,
/// are exactly the consumed bytes; a refused reply drops the input.
pub fn echo_framed(data: &[u8]) {
    use framed::{decode, echo_frames, FrameError, Header, DATA_ECHO, DATA_SEND, HEADER_LEN};
    let plan = Plan::new(data);
    let wire = plan.wire;

    // Header parse/encode round trip, both ways.
    if let Some(h) = Header::parse(wire) {
        assert_eq!(&h.encode()[..], &wire[..HEADER_LEN]);
        assert_eq!(Header::parse(&h.encode()), Some(h));
    } else {
        assert!(wire.len() < HEADER_LEN);
    }

    // decode on raw bytes.
    match decode(wire) {
        Ok(Some(frame)) => {
            let h = Header::parse(wire).expect("a frame has a header");
            assert_eq!(h.kind, DATA_SEND);
            assert_eq!(frame.payload.len(), h.len as usize);
            assert_eq!(frame.payload, &wire[HEADER_LEN..frame.wire_len()]);
        }
        Ok(None) => {
            if let Some(h) = Header::parse(wire) {
                assert_eq!(h.kind, DATA_SEND);
                assert!(h.len as usize <= framed::MAX_PAYLOAD);
                assert!(HEADER_LEN + h.len as usize > wire.len());
            }
        }
        Err(e) => {
            let h = Header::parse(wire).expect("an error needs a header");
            let expected = if h.kind != DATA_SEND {
                FrameError::UnknownType(h.kind)
            } else {
                assert!(h.len as usize > framed::MAX_PAYLOAD);
                FrameError::TooLong(h.len)
            };
            assert_eq!(e, expected);
        }
    }

    // echo_frames, one-shot vs split; each reply is a DATA_ECHO header + the payload.
    let step = |input: &mut InputBuffer, out: &mut Vec<Vec<u8>>| {
        echo_frames(input, |parts| {
            let [header, payload] = parts else {
                panic!("a reply is a header and a payload");
            };
            let h = Header::parse(header).expect("reply header");
            assert_eq!(header.len(), HEADER_LEN);
            assert_eq!(h.kind, DATA_ECHO);
            assert_eq!(h.len as usize, payload.len());
            out.push(payload.to_vec());
            true
        })
        .map(drop)
    };
    let one = feed(wire, None, step);
    let split = feed(wire, Some(&plan.pieces), step);
    assert_split_agrees(&one, &split);
    let mut rebuilt = Vec::new();
    for p in &one.out {
        let len = u32::try_from(p.len()).unwrap();
        rebuilt.extend_from_slice(
            &Header {
                kind: DATA_SEND,
                len,
            }
            .encode(),
        );
        rebuilt.extend_from_slice(p);
    }
    rebuilt.extend_from_slice(&one.left);
    assert_eq!(rebuilt, wire);

    // A reply refused after `param` replies drops the rest of the input.
    let stop_after = usize::from(plan.param);
    if one.out.len() > stop_after {
        let mut input = InputBuffer::new();
        input.append(wire).expect("append");
        let mut calls = 0;
        let answered = echo_frames(&mut input, |_| {
            calls += 1;
            calls <= stop_after
        });
        assert_eq!(answered, Ok(stop_after));
        assert!(input.is_empty());
    }

    // The stream as one packet's payload decodes back to itself.
    if wire.len() > framed::MAX_PAYLOAD {
        return;
    }
    let len = u32::try_from(wire.len()).unwrap();
    let mut packet = Header {
        kind: DATA_SEND,
        len,
    }
    .encode()
    .to_vec();
    packet.extend_from_slice(wire);
    let frame = decode(&packet).unwrap().expect("a whole packet");
    assert_eq!(frame.payload, wire);
    assert_eq!(frame.wire_len(), packet.len());
    for cut in some_cuts(packet.len()) {
        assert_eq!(decode(&packet[..cut]), Ok(None), "prefix {cut}");
    }
}

// ---- bank command parser ----

/// The canonical line of a command: its upper-case word and arguments separated by one
/// space. Parsing it gives the command back.
fn canonical(cmd: &protocol::Command) -> String {
    use protocol::Command as C;
    match cmd {
        C::Register { user, password } => format!("REGISTER {user} {password}"),
        C::Login { user, password } => format!("LOGIN {user} {password}"),
        C::Balance => "BALANCE".into(),
        C::Deposit { amount } => format!("DEPOSIT {amount}"),
        C::Withdraw { amount } => format!("WITHDRAW {amount}"),
        C::Transfer {
            to,
            amount,
            request_id,
        } => match request_id {
            Some(id) => format!("TRANSFER {to} {amount} {id}"),
            None => format!("TRANSFER {to} {amount}"),
        },
        C::History { limit } => format!("HISTORY {limit}"),
        C::Ping => "PING".into(),
        C::Quit => "QUIT".into(),
    }
}

/// What a parsed command promises about its fields.
fn assert_command_valid(cmd: &protocol::Command) {
    use protocol::{Command as C, *};
    let amount_ok = |a: &i64| (1..=MAX_AMOUNT).contains(a);
    let word_ok = |w: &str| !w.is_empty() && !w.contains([' ', '\t']);
    match cmd {
        C::Register { user, password } => {
            assert!(valid_user(user));
            assert!(valid_password(password));
            assert!(word_ok(password));
        }
        C::Login { user, password } => assert!(word_ok(user) && word_ok(password)),
        C::Deposit { amount } | C::Withdraw { amount } => assert!(amount_ok(amount)),
        C::Transfer {
            to,
            amount,
            request_id,
        } => {
            assert!(word_ok(to));
            assert!(amount_ok(amount));
            if let Some(id) = request_id {
                assert!(valid_request_id(id));
            }
        }
        C::History { limit } => assert!((1..=HISTORY_MAX).contains(limit)),
        C::Balance | C::Ping | C::Quit => {}
    }
}

/// Result of parsing one line, comparable across runs.
type Parsed = Result<Option<protocol::Command>, protocol::ProtoError>;

/// The bank parser: never panics; accepted commands are valid and their canonical line
/// parses back to them; the result depends on the words only (not on the spacing) and not
/// on the case of the command word; error replies are one line; the server's framing
/// (`LineCodec` at `MAX_LINE`, then `parse_line`) gives the same commands however the
/// stream is split.
pub fn bank_protocol(data: &[u8]) {
    use protocol::{err_line, parse_line, ErrorCode, MAX_LINE};
    let plan = Plan::new(data);
    let line = plan.wire;

    let parsed = parse_line(line);
    match &parsed {
        Ok(Some(cmd)) => {
            assert_command_valid(cmd);
            let canon = canonical(cmd);
            assert_eq!(
                parse_line(canon.as_bytes()).as_ref(),
                Ok(&Some(cmd.clone()))
            );
        }
        Ok(None) => assert!(line.iter().all(|&b| b == b' ' || b == b'\t')),
        Err(e) => {
            let reply = err_line(e.code, &e.message);
            assert!(reply.starts_with("ERR "));
            assert!(reply.ends_with('\n'));
            assert_eq!(reply.matches(['\n', '\r']).count(), 1, "{reply:?}");
            assert!(ErrorCode::parse(e.code.as_str()) == Some(e.code));
        }
    }

    if let Ok(text) = std::str::from_utf8(line) {
        let words: Vec<&str> = text.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
        // Spacing does not matter.
        assert_eq!(parse_line(words.join(" ").as_bytes()), parsed, "{text:?}");
        let tabbed = format!("\t {} \t", words.join(" \t "));
        assert_eq!(parse_line(tabbed.as_bytes()), parsed, "{text:?}");
        // The case of the command word does not matter (the unknown-command message
        // echoes the word, so compare codes there).
        if let Some((first, args)) = words.split_first() {
            let mut flipped = vec![flip_ascii_case(first)];
            flipped.extend(args.iter().map(|a| a.to_string()));
            let other = parse_line(flipped.join(" ").as_bytes());
            match (&parsed, &other) {
                (Err(a), Err(b)) => assert_eq!(a.code, b.code),
                _ => assert_eq!(&other, &parsed, "{text:?}"),
            }
        }
    } else {
        assert_eq!(parsed.map(|_| ()).unwrap_err().code, ErrorCode::BadRequest);
    }

    // The server's pipeline over the stream: one-shot vs split.
    let codec = LineCodec::new(MAX_LINE);
    let step = |input: &mut InputBuffer, out: &mut Vec<Parsed>| {
        codec
            .decode_all(input, |l| out.push(parse_line(l)))
            .map(drop)
    };
    let one = feed(line, None, step);
    let split = feed(line, Some(&plan.pieces), step);
    assert_split_agrees(&one, &split);
}

/// `s` with the case of every ASCII letter swapped.
fn flip_ascii_case(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_uppercase() {
                c.to_ascii_lowercase()
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! Runs every target on a few inputs, so `cargo test` here checks the harness itself.

    const SEEDS: &[&[u8]] = &[
        b"",
        b"a",
        b"\x10\x00\x03\x01\x02\x05hello\nworld\r\n\r\nrest",
        b"\x04\x00\x01\x01\x00\x00\x00\x01\x00\x00\x00\x02hi",
        b"\xff\xff\x00\xff\xff\xff\xff",
        b"\x08\x00\x12\x03\x00\x00\x00\x01\x00\x00\x00\x01A\x00\x00\x00\x01\x00\x00\x00\x00",
        b"\x00\x04\x02\x07\x01DEPOSIT 100\nregister alice secret123\r\nTRANSFER bob +5 id-1\n",
        b"\x00\x04\x00\t HiStOrY \t 3 ",
        b"\x00\x04\x00PING \xff",
        b"\x00\x04\x22\x07\x0dGET / HTTP/1.1\r\nHost: x\r\n\r\n\r\nPOST /a HTTP/1.1\r\nHost: y\r\nContent-Length: 3\r\n\r\nabc",
        b"\x00\x01\x32\x03\x05PUT /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\nGET *",
        b"\x20\x00\x11\x03GET / HTTP/1.1\r\nHost: x\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
    ];

    #[test]
    fn targets_accept_the_seeds() {
        for seed in SEEDS {
            super::length_header(seed);
            super::line(seed);
            super::echo_framed(seed);
            super::bank_protocol(seed);
            super::http_request(seed);
        }
    }
}
