//! [`ChunkedRequest`]: a request whose body comes chunked (`Transfer-Encoding: chunked`,
//! RFC 9112 section 7.1), decoded as the bytes arrive.
//!
//! The head is parsed once ([`parse_request`](crate::parse_request) returns
//! [`Parsed::Chunked`](crate::Parsed::Chunked)); the body is then decoded from the bytes
//! that follow, chunk by chunk, and the connection drops what it decoded from its input.
//! So the input holds a read's worth at most, however the body is cut, and nothing is
//! parsed twice: a body sent one byte per chunk costs time in proportion to its length.
//!
//! Chunk sizes and line ends are read with `httparse`, plus the checks that keep every
//! reader of the same bytes agreeing on where the body ends (a request smuggled past a
//! proxy hides in the difference): a size line has at least one hex digit and ends in
//! CRLF, no control character stands in it (a bare LF in an extension would end the line
//! for some parsers and not for others), and each chunk's data is followed by CRLF.
//! Extensions and trailer fields are read and dropped, within limits.

use std::net::SocketAddr;

use crate::parse::{bare_lf, Head, ParseError};
use crate::{Limits, Request, StatusCode};

/// What the decoder expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A chunk-size line.
    Size,
    /// This many bytes of a chunk's data.
    Data(usize),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
    /// The body is complete.
    Done,
}

/// A request whose head is in and whose body comes chunked: [`feed`](Self::feed) it the
/// bytes after the head as they arrive, until it [`is_complete`](Self::is_complete), then
/// take the [`Request`] with its decoded body ([`into_request`](Self::into_request)).
///
/// Limits: the decoded body as [`Limits::max_body`] (413 as soon as a chunk's size says
/// it would pass it, before its data comes); the trailer section as `max_head` and
/// `max_headers` (431); the chunk extensions of one body together
/// [`MAX_EXTENSIONS`](Self::MAX_EXTENSIONS) bytes (400). Anything malformed: 400. The
/// connection closes after any of these.
///
/// ```
/// use duo_http::{parse_request, Limits, Parsed};
///
/// let peer = "127.0.0.1:5000".parse()?;
/// let head = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
/// let Ok(Parsed::Chunked(mut body, used)) = parse_request(head, &Limits::default(), peer)
/// else {
///     panic!("a chunked request");
/// };
/// assert_eq!(used, head.len());
/// // The body, in two pieces as the network might bring it, then the next request.
/// assert_eq!(body.feed(b"5\r\nhel")?, 6);
/// assert!(!body.is_complete());
/// let rest = b"lo\r\n0\r\n\r\nGET /next";
/// assert_eq!(body.feed(rest)?, rest.len() - b"GET /next".len());
/// assert_eq!(body.into_request().unwrap().body(), b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedRequest {
    head: Head,
    peer: SocketAddr,
    limits: Limits,
    expects_continue: bool,
    body: Vec<u8>,
    state: State,
    /// Bytes of chunk extensions so far (with the blanks around them).
    extensions: usize,
    /// Bytes of the incomplete size line (or trailer section) at the front already
    /// searched for its end: a line that arrives a byte at a time is searched once, not
    /// once per byte.
    searched: usize,
}

impl ChunkedRequest {
    /// Most bytes of chunk extensions (everything on a size line after its digits, but
    /// the line end) in one body: 16 KiB. They are dropped, so without a bound a client
    /// could send them forever without the body growing.
    pub const MAX_EXTENSIONS: usize = 16 << 10;

    /// Longest chunk size in hex digits (leading zeros count): 16, `httparse`'s bound.
    const MAX_SIZE_DIGITS: usize = 16;

    pub(crate) fn new(
        head: Head,
        peer: SocketAddr,
        limits: Limits,
        expects_continue: bool,
    ) -> ChunkedRequest {
        ChunkedRequest {
            head,
            peer,
            limits,
            expects_continue,
            body: Vec::new(),
            state: State::Size,
            extensions: 0,
            searched: 0,
        }
    }

    /// Decodes what it can of `buf`, the bytes that follow what it took before; returns
    /// how many it took. Past the body's end it takes nothing (what follows belongs to
    /// the next request); a chunk's data it takes as far as it goes; a size line, the CRLF
    /// after a chunk or the trailer section only once whole (call again with them and
    /// more).
    ///
    /// # Errors
    ///
    /// The body is malformed (400), too long (413), or its trailer section is (431); see
    /// the type's docs. Feeding on after an error is not meaningful.
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, ParseError> {
        let mut used = 0;
        loop {
            let rest = &buf[used..];
            match self.state {
                State::Done => break,
                State::Size => {
                    let Some((len, size)) = self.size_line(rest)? else {
                        break;
                    };
                    used += len;
                    self.state = match size {
                        0 => State::Trailers,
                        n => State::Data(n),
                    };
                }
                State::Data(left) => {
                    if rest.is_empty() {
                        break;
                    }
                    let take = left.min(rest.len());
                    self.body.extend_from_slice(&rest[..take]);
                    used += take;
                    self.state = match left - take {
                        0 => State::DataEnd,
                        more => State::Data(more),
                    };
                }
                State::DataEnd => {
                    if !b"\r\n".starts_with(&rest[..rest.len().min(2)]) {
                        return Err(bad("chunk data not followed by CRLF"));
                    }
                    if rest.len() < 2 {
                        break;
                    }
                    used += 2;
                    self.state = State::Size;
                }
                State::Trailers => {
                    let Some(len) = self.trailer_section(rest)? else {
                        break;
                    };
                    used += len;
                    self.state = State::Done;
                }
            }
        }
        Ok(used)
    }

    /// Whether the whole body is in (the last chunk and the trailer section).
    pub fn is_complete(&self) -> bool {
        self.state == State::Done
    }

    /// The head asked for `100 Continue` before the body (an HTTP/1.1 request with
    /// `Expect: 100-continue`).
    pub fn expects_continue(&self) -> bool {
        self.expects_continue
    }

    /// Bytes of the body decoded so far.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// The request with its decoded body, once [complete](Self::is_complete); `None`
    /// before. Its header fields are the head's (`Transfer-Encoding: chunked` among
    /// them); trailer fields are not added.
    pub fn into_request(self) -> Option<Request> {
        self.is_complete()
            .then(|| self.head.into_request(self.body, self.peer))
    }

    /// The chunk-size line at the start of `rest`: its length and the size, or `None`
    /// while it is incomplete.
    fn size_line(&mut self, rest: &[u8]) -> Result<Option<(usize, usize)>, ParseError> {
        let digits = rest.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let room = Self::MAX_EXTENSIONS - self.extensions;
        let from = self.searched.min(rest.len());
        let Some(lf) = rest[from..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| from + i)
        else {
            self.searched = rest.len();
            if digits > Self::MAX_SIZE_DIGITS {
                return Err(bad("chunk size too long"));
            }
            if rest.len() > Self::MAX_SIZE_DIGITS + room + 1 {
                return Err(bad("chunk extensions too long"));
            }
            return Ok(None);
        };
        self.searched = 0;
        let line = &rest[..=lf];
        let Some(text) = line.strip_suffix(b"\r\n") else {
            return Err(bad("chunk size line not ended by CRLF"));
        };
        if digits == 0 {
            return Err(bad("malformed chunk size"));
        }
        if text.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(bad("control character in a chunk size line"));
        }
        // Blanks after the size only before an extension (RFC 9112: BWS ";").
        let after = &text[digits..];
        if !after.is_empty() && !after.trim_ascii_start().starts_with(b";") {
            return Err(bad("malformed chunk size"));
        }
        let size = match httparse::parse_chunk_size(line) {
            Ok(httparse::Status::Complete((n, size))) if n == line.len() => size,
            _ => return Err(bad("malformed chunk size")),
        };
        self.extensions += text.len() - digits;
        if self.extensions > Self::MAX_EXTENSIONS {
            return Err(bad("chunk extensions too long"));
        }
        let room = self.limits.max_body - self.body.len().min(self.limits.max_body);
        if size > room as u64 {
            return Err(ParseError::new(
                StatusCode::CONTENT_TOO_LARGE,
                "request body too large",
            ));
        }
        Ok(Some((line.len(), size as usize)))
    }

    /// [`trailers`](Self::trailers), parsed again only when it may say something new: the
    /// section arriving a byte at a time is parsed once per line (a line end can complete
    /// it or a malformed field; past `max_head` it is refused), not once per byte.
    fn trailer_section(&mut self, rest: &[u8]) -> Result<Option<usize>, ParseError> {
        let from = self.searched;
        if from > 0
            && rest.len() >= from
            && rest.len() <= self.limits.max_head
            && !rest[from..].contains(&b'\n')
        {
            self.searched = rest.len();
            return Ok(None);
        }
        let found = self.trailers(rest)?;
        self.searched = if found.is_some() { 0 } else { rest.len() };
        Ok(found)
    }

    /// The trailer section at the start of `rest` (fields, then an empty line): its
    /// length, or `None` while it is incomplete. The fields are checked and dropped.
    fn trailers(&self, rest: &[u8]) -> Result<Option<usize>, ParseError> {
        let too_large =
            |reason| ParseError::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, reason);
        let mut fields = vec![httparse::EMPTY_HEADER; self.limits.max_headers];
        // Read no further than one byte past `max_head`, as a head (see `parse_request`):
        // a section that long is refused (431) whatever follows, however it was cut.
        let rest = &rest[..rest.len().min(self.limits.max_head.saturating_add(1))];
        match httparse::parse_headers(rest, &mut fields) {
            Ok(httparse::Status::Complete((len, _))) if len > self.limits.max_head => {
                Err(too_large("trailer section too large"))
            }
            // `httparse` takes a bare LF for a line end; here, as on every other line of
            // the body, only CRLF ends one (a reader that wants CRLF would still be in the
            // trailer section, and take what follows for trailer lines).
            Ok(httparse::Status::Complete((len, _))) if bare_lf(&rest[..len]) => {
                Err(bad("trailer line not ended by CRLF"))
            }
            Ok(httparse::Status::Complete((len, _))) => Ok(Some(len)),
            Ok(httparse::Status::Partial) if rest.len() > self.limits.max_head => {
                Err(too_large("trailer section too large"))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(httparse::Error::TooManyHeaders) => Err(too_large("too many trailer fields")),
            Err(_) => Err(bad("malformed trailer field")),
        }
    }
}

fn bad(reason: &'static str) -> ParseError {
    ParseError::new(StatusCode::BAD_REQUEST, reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_request, Parsed};

    fn start(limits: Limits) -> ChunkedRequest {
        let head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        match parse_request(head, &limits, peer) {
            Ok(Parsed::Chunked(body, used)) if used == head.len() => body,
            other => panic!("{other:?}"),
        }
    }

    /// Feeds `wire` whole; the status of the refusal.
    fn refused(wire: &[u8], limits: Limits) -> u16 {
        start(limits).feed(wire).unwrap_err().status().as_u16()
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let mut b = start(Limits::default());
        let wire =
            b"3;a=1 ; b=\"x y\"\r\nabc\r\nA\r\n0123456789\r\n0;last\r\nT: 1\r\nU: 2\r\n\r\nNEXT";
        assert_eq!(b.feed(wire), Ok(wire.len() - 4));
        assert!(b.is_complete());
        assert_eq!(b.feed(b"NEXT"), Ok(0), "nothing past the body");
        let req = b.into_request().unwrap();
        assert_eq!(req.body(), b"abc0123456789");
        assert!(req.headers().contains("transfer-encoding"));
    }

    /// Feeds `wire` a byte at a time, as a connection does (what was not used is fed
    /// again with the next byte); the result of the last feed and the bytes used in all.
    fn fed_bytewise(b: &mut ChunkedRequest, wire: &[u8]) -> (Result<usize, ParseError>, usize) {
        let (mut used, mut last) = (0, Ok(0));
        for end in 1..=wire.len() {
            last = b.feed(&wire[used..end]);
            match &last {
                Ok(n) => used += n,
                Err(_) => break,
            }
        }
        (last, used)
    }

    /// A trailer section sent a byte at a time is parsed once per line, not once per
    /// byte, with the same outcome as sent whole: complete at its empty line, refused
    /// at the end of a malformed line or past the limit.
    #[test]
    fn a_trailer_section_sent_a_byte_at_a_time_ends_as_sent_whole() {
        let wire = b"2\r\nab\r\n0\r\nX-One: 1\r\nX-Two: 2\r\n\r\n";
        let mut b = start(Limits::default());
        let (last, used) = fed_bytewise(&mut b, wire);
        assert_eq!((last.is_ok(), used), (true, wire.len()));
        assert!(b.is_complete());
        let bad_field = b"0\r\nX\x01: 1\r\n\r\n";
        let mut b = start(Limits::default());
        let (last, _) = fed_bytewise(&mut b, bad_field);
        assert_eq!(last, Err(bad("malformed trailer field")));
        let limits = Limits {
            max_head: 64,
            ..Limits::default()
        };
        let long = [&b"0\r\nX-Long: "[..], &[b'a'; 80], b"\r\n\r\n"].concat();
        let mut b = start(limits);
        let (last, _) = fed_bytewise(&mut b, &long);
        assert_eq!(last.unwrap_err().status().as_u16(), 431);
    }

    #[test]
    fn waits_for_whole_lines_and_takes_data_as_it_comes() {
        let mut b = start(Limits::default());
        assert_eq!(b.feed(b"1"), Ok(0));
        assert_eq!(b.feed(b"10\r"), Ok(0));
        assert_eq!(b.feed(b"10\r\nabc"), Ok(7));
        assert_eq!(b.body_len(), 3);
        let mut b = start(Limits::default());
        assert_eq!(b.feed(b"2\r\nab"), Ok(5));
        assert_eq!(b.feed(b"\rX"), Err(bad("chunk data not followed by CRLF")));
        let mut b = start(Limits::default());
        assert_eq!(b.feed(b"2\r\nab"), Ok(5));
        assert_eq!(b.feed(b"\r"), Ok(0));
        assert_eq!(b.feed(b"\r\n0\r\n"), Ok(5));
        assert_eq!(b.feed(b"\r"), Ok(0));
        assert!(!b.is_complete() && b.clone().into_request().is_none());
        assert_eq!(b.feed(b"\r\n"), Ok(2));
        assert_eq!(b.into_request().unwrap().body(), b"ab");
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let limits = Limits::default();
        assert_eq!(
            refused(b"\r\n", limits),
            400,
            "no digits is not a last chunk"
        );
        assert_eq!(refused(b";x\r\n", limits), 400);
        assert_eq!(refused(b"g\r\n", limits), 400);
        assert_eq!(refused(b"5\n", limits), 400, "bare LF");
        assert_eq!(
            refused(b"5;a\nb\r\n", limits),
            400,
            "bare LF in an extension"
        );
        assert_eq!(refused(b"5;a\rb\r\n", limits), 400, "CR in an extension");
        assert_eq!(refused(b"5;\x00\r\n", limits), 400);
        assert_eq!(
            refused(b"2\r\nabX", limits),
            400,
            "data not followed by CRLF"
        );
        assert_eq!(refused(b"2\r\nab\nX", limits), 400);
        assert_eq!(refused(b"-1\r\n", limits), 400);
        assert_eq!(refused(b"0x5\r\n", limits), 400);
        assert_eq!(refused(b"10000000000000000\r\n", limits), 400, "overflow");
        assert_eq!(refused(b"00000000000000001\r\n", limits), 400, "17 digits");
        assert_eq!(
            refused(b"00000000000000001", limits),
            400,
            "17 digits, no line end yet"
        );
        assert_eq!(refused(b"0\r\nBad Field\r\n\r\n", limits), 400);
        assert_eq!(
            refused(b"5 \r\n", limits),
            400,
            "blanks without an extension"
        );
        assert_eq!(refused(b"5\t\r\n", limits), 400);
        for end in [
            &b"0\r\n\n"[..],
            b"0\r\nT: 1\n\n",
            b"0\r\nT: 1\r\n\n",
            b"0\r\nT: 1\n\r\n",
        ] {
            assert_eq!(refused(end, limits), 400, "bare LF: {end:?}");
        }
    }

    #[test]
    fn limits_hold() {
        let small = Limits {
            max_body: 10,
            max_head: 64,
            max_headers: 2,
        };
        assert_eq!(refused(b"b\r\n", small), 413, "refused before the data");
        assert_eq!(refused(b"6\r\nabcdef\r\n5\r\n", small), 413);
        let mut b = start(small);
        assert_eq!(
            b.feed(b"a\r\n0123456789\r\n0\r\n\r\n"),
            Ok(20),
            "exactly the limit"
        );
        assert_eq!(refused(b"0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", small), 431);
        let long = format!("0\r\nA: {}\r\n\r\n", "x".repeat(80));
        assert_eq!(refused(long.as_bytes(), small), 431);
        assert_eq!(
            refused(long.as_bytes().split_at(70).0, small),
            431,
            "before its end"
        );
        // Extensions: 16 KiB over all the lines of a body, also before a line ends.
        let ext = format!("1;{}\r\nx\r\n", "e".repeat(4000));
        let mut b = start(Limits::default());
        for _ in 0..4 {
            assert_eq!(b.feed(ext.as_bytes()), Ok(ext.len()));
        }
        assert_eq!(b.feed(ext.as_bytes()).unwrap_err().status().as_u16(), 400);
        let endless = format!("1;{}", "e".repeat(ChunkedRequest::MAX_EXTENSIONS + 20));
        assert_eq!(refused(endless.as_bytes(), Limits::default()), 400);
    }
}
