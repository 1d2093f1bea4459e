//! [`parse_request`]: bytes to a [`Request`], with `httparse` for the head, and the checks
//! that make a request acceptable (size limits, `Host`, `Content-Length`, transfer codings,
//! `Expect`). A chunked body is decoded by [`ChunkedRequest`] (`chunked.rs`).

use std::net::SocketAddr;

use crate::{ChunkedRequest, Headers, Limits, Method, Request, StatusCode, Version};

/// What [`parse_request`] found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Parsed {
    /// A whole request, and how many bytes of the buffer it took (the rest belongs to
    /// the next, pipelined request).
    Complete(Request, usize),
    /// The request is not all there yet; nothing is wrong so far.
    Partial(Partial),
    /// The head of a request whose body comes chunked, and the head's length: the body
    /// is decoded from the bytes after the head, as they arrive
    /// ([`ChunkedRequest::feed`]).
    Chunked(ChunkedRequest, usize),
}

/// How far an incomplete request has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial {
    /// The head's length once it is complete (the body is still arriving); `None` while
    /// the head itself is incomplete.
    pub head_len: Option<usize>,
    /// The head is complete and asks for `100 Continue` before it sends its body.
    pub expects_continue: bool,
    /// The whole request's length once the head is complete: the same buffer with fewer
    /// bytes than this is still `Partial`, so a caller that appends to it need not parse
    /// again before it holds that many. `None` while the head is incomplete.
    pub request_len: Option<usize>,
}

/// Why a request is refused: the status to answer (a 4xx, or 501/505) and a short reason
/// for the response body and the log. The server closes the connection after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {reason}")]
pub struct ParseError {
    status: StatusCode,
    reason: &'static str,
}

impl ParseError {
    pub(crate) fn new(status: StatusCode, reason: &'static str) -> ParseError {
        ParseError { status, reason }
    }

    /// The status to answer.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What was wrong, in a few words.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

/// Parses the request at the start of `buf` under `limits`; `peer` becomes the request's
/// [`peer_addr`](Request::peer_addr). This is what the server runs on each connection's
/// input; it is public for tests and fuzzing. It never panics, whatever the bytes.
///
/// Accepted: HTTP/1.0 and 1.1 requests with a method of [`Method::ALL`], a target in
/// origin form (`/path?query`), absolute form (`http://host/path`, whose path and query
/// are kept, and whose authority, without userinfo, becomes the `Host` field's value;
/// with neither path nor query its path is `/`, or `*` for `OPTIONS`),
/// `*` (`OPTIONS` only) or authority form (`host:port`, which `CONNECT` must have and no
/// other method may: the request's path is then `host:port`); HTTP/1.1 requests must have exactly one `Host`, and a `Host`
/// must be a valid `host[:port]` (or empty). A body comes with `Content-Length` (one
/// value, or identical repeats) or, in HTTP/1.1, chunked (`Transfer-Encoding: chunked`):
/// then the head alone is parsed here and the body decoded as it arrives
/// ([`Parsed::Chunked`]).
///
/// # Errors
///
/// The head is longer than `limits.max_head` or has more than `limits.max_headers` fields
/// (431; whatever is wrong past the first `max_head` bytes, the answer is 431, as it is
/// for any prefix of the head longer than that); the body is longer than
/// `limits.max_body` (413, as soon as the head is in); a `Transfer-Encoding` other than
/// `chunked` alone (400 where `chunked` is not the last coding or comes twice, 501 for
/// another coding before it), or with `Content-Length` as well, or in HTTP/1.0 (400: a
/// request a proxy might frame otherwise is refused, never guessed at);
/// an `Expect` other than `100-continue` (417); an unknown method (501); a well-formed
/// version (`HTTP/d.d`) other than 1.0 and 1.1 (505); anything else malformed (400),
/// among it a missing, repeated or invalid `Host`, a target with a fragment (`#`), an
/// absolute-form target with userinfo,
/// a `CONNECT` without an authority-form target or with a port outside 1 to 65535, and a
/// bare CR before the request line.
///
/// ```
/// use duo_http::{parse_request, Limits, Parsed, StatusCode};
///
/// let peer = "127.0.0.1:5000".parse()?;
/// let bytes = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /next";
/// let Ok(Parsed::Complete(req, used)) = parse_request(bytes, &Limits::default(), peer) else {
///     panic!("a whole request");
/// };
/// assert_eq!((req.path(), &bytes[used..]), ("/healthz", &b"GET /next"[..]));
///
/// let err = parse_request(b"GET / HTTP/1.1\r\n\x01\r\n\r\n", &Limits::default(), peer);
/// assert_eq!(err.unwrap_err().status(), StatusCode::BAD_REQUEST);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn parse_request(buf: &[u8], limits: &Limits, peer: SocketAddr) -> Result<Parsed, ParseError> {
    let mut fields = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut raw = httparse::Request::new(&mut fields);
    let wait = || {
        if buf.len() > limits.max_head {
            return Err(ParseError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
            ));
        }
        Ok(Parsed::Partial(Partial {
            head_len: None,
            expects_continue: false,
            request_len: None,
        }))
    };
    // The head is read no further than one byte past `max_head`: a head that long is
    // refused (431) whatever comes after, so the refusal does not depend on how much of
    // it has arrived (a server that parsed a prefix and one that got it whole agree).
    let within = &buf[..buf.len().min(limits.max_head.saturating_add(1))];
    let head_len = match raw.parse(within) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return wait(),
        // A version not yet whole (`HTTP/2`, say) waits for the rest of its line: whether
        // it is another version (505) or a malformed one (400) depends on what follows.
        Err(httparse::Error::Version) if version_of(within) == VersionVerdict::Undecided => {
            return wait()
        }
        Err(e) => return Err(head_error(e, within)),
    };
    if head_len > limits.max_head {
        return Err(ParseError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head too large",
        ));
    }
    // `httparse` takes a bare LF for a line end (RFC 9112 allows it); a reader in front
    // of us that does not would frame the request otherwise: refused. (Empty lines before
    // the request are skipped, whether they end with CRLF or LF.)
    let blank = empty_lines(buf);
    if bare_lf(&buf[blank.min(head_len)..head_len]) {
        return Err(ParseError::new(
            StatusCode::BAD_REQUEST,
            "request head line not ended by CRLF",
        ));
    }
    let head = check_head(&raw)?;
    let body = body_length(&head.headers, head.version, limits)?;
    let expects_continue = expectation(&head.headers, head.version)?;
    let Some(body_len) = body else {
        let chunked = ChunkedRequest::new(head, peer, *limits, expects_continue);
        return Ok(Parsed::Chunked(chunked, head_len));
    };
    let end = head_len
        .checked_add(body_len)
        .filter(|&end| end <= buf.len());
    let Some(end) = end else {
        return Ok(Parsed::Partial(Partial {
            head_len: Some(head_len),
            expects_continue: expects_continue && body_len > 0,
            request_len: Some(head_len.saturating_add(body_len)),
        }));
    };
    let request = head.into_request(buf[head_len..end].to_vec(), peer);
    Ok(Parsed::Complete(request, end))
}

/// The length of the empty lines (CRLF, or a bare LF) at the start of `buf`, which come
/// before a request line and are skipped (RFC 9112 section 2.2). A bare CR does not end
/// one: it is left for the parser, which refuses it (or waits for its LF).
pub(crate) fn empty_lines(buf: &[u8]) -> usize {
    let mut n = 0;
    loop {
        match &buf[n..] {
            [b'\n', ..] => n += 1,
            [b'\r', b'\n', ..] => n += 2,
            _ => return n,
        }
    }
}

/// Whether `bytes` hold an LF not preceded by CR.
pub(crate) fn bare_lf(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
}

/// The checked parts of a complete head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    method: Method,
    target: String,
    version: Version,
    headers: Headers,
}

impl Head {
    /// The request of this head, with `body`, from `peer`.
    pub(crate) fn into_request(self, body: Vec<u8>, peer: SocketAddr) -> Request {
        Request::from_parts(
            self.method,
            self.target,
            self.version,
            self.headers,
            body,
            peer,
        )
    }
}

/// The refusal of `httparse`'s error `e` on the head at the start of `buf`.
fn head_error(e: httparse::Error, buf: &[u8]) -> ParseError {
    match e {
        httparse::Error::TooManyHeaders => ParseError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many header fields",
        ),
        // `httparse` says `Version` for whatever follows the target that is not
        // `HTTP/1.0` or `HTTP/1.1`: only a well-formed other version is unsupported.
        httparse::Error::Version if version_of(buf) == VersionVerdict::Other => ParseError::new(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "only HTTP/1.0 and HTTP/1.1 are supported",
        ),
        httparse::Error::Version => {
            ParseError::new(StatusCode::BAD_REQUEST, "malformed request line")
        }
        httparse::Error::Token => {
            ParseError::new(StatusCode::BAD_REQUEST, "malformed request line")
        }
        httparse::Error::HeaderName | httparse::Error::HeaderValue => {
            ParseError::new(StatusCode::BAD_REQUEST, "malformed header field")
        }
        _ => ParseError::new(StatusCode::BAD_REQUEST, "malformed request"),
    }
}

/// What the version of the request line at the start of `buf` is, once `httparse` has
/// refused it (or while the line is incomplete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VersionVerdict {
    /// A well-formed `HTTP/d.d` (RFC 9112 section 2.3) that is not 1.0 or 1.1: 505.
    Other,
    /// Not a version, or a line that is not `method SP target SP version`: 400.
    Malformed,
    /// The line is not ended and what there is of it may still become either.
    Undecided,
}

/// Reads the version of the request line at the start of `buf` (see [`VersionVerdict`]). An
/// unfinished line is judged only once nothing that follows could change the verdict, so
/// the answer never depends on how much of the line has arrived.
fn version_of(buf: &[u8]) -> VersionVerdict {
    const FORM: &[u8; 8] = b"HTTP/0.0";
    let line = &buf[empty_lines(buf)..];
    let (line, ended) = match line.iter().position(|&b| b == b'\n') {
        Some(lf) => (line[..lf].strip_suffix(b"\r").unwrap_or(&line[..lf]), true),
        // (A CR at the end may be the start of the line's CRLF.)
        None => (line.strip_suffix(b"\r").unwrap_or(line), false),
    };
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let version = match parts.as_slice() {
        [_, _, version] => version,
        [_] | [_, _] if !ended => return VersionVerdict::Undecided,
        _ => return VersionVerdict::Malformed,
    };
    let fits = version.len() <= FORM.len()
        && version.iter().zip(FORM).all(|(&b, &f)| {
            if f == b'0' {
                b.is_ascii_digit()
            } else {
                b == f
            }
        });
    match (fits, ended) {
        (false, _) => VersionVerdict::Malformed,
        (true, false) => VersionVerdict::Undecided,
        (true, true) if version.len() == FORM.len() => VersionVerdict::Other,
        (true, true) => VersionVerdict::Malformed,
    }
}

fn check_head(raw: &httparse::Request<'_, '_>) -> Result<Head, ParseError> {
    let bad = |reason| ParseError::new(StatusCode::BAD_REQUEST, reason);
    // A complete parse fills the request line.
    let (Some(method), Some(target), Some(version)) = (raw.method, raw.path, raw.version) else {
        return Err(bad("malformed request line"));
    };
    let method = Method::from_token(method)
        .ok_or_else(|| ParseError::new(StatusCode::NOT_IMPLEMENTED, "unknown method"))?;
    let version = match version {
        0 => Version::Http10,
        1 => Version::Http11,
        _ => {
            return Err(ParseError::new(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "only HTTP/1.0 and HTTP/1.1 are supported",
            ))
        }
    };
    // RFC 9112 section 3.2: no form of target has a fragment (a client keeps it to
    // itself), and an invalid request line is refused, not corrected (section 3).
    if target.contains('#') {
        return Err(bad("fragment in the request target"));
    }
    // The authority of an absolute-form target. RFC 9112 section 3.2: CONNECT's target is
    // authority-form (`host:port`, section 3.2.3) and only CONNECT's; `*` is OPTIONS'
    // (section 3.2.4); any other method has origin or absolute form.
    let (target, authority) = match target {
        t if method == Method::Connect => {
            connect_target(t)?;
            (t.to_owned(), None)
        }
        t if t.starts_with('/') => (t.to_owned(), None),
        "*" if method == Method::Options => ("*".to_owned(), None),
        t => {
            let (path, authority) =
                absolute_form(t).ok_or_else(|| bad("malformed request target"))?;
            // An empty path and no query: `/`, but for `OPTIONS` the server as a whole,
            // as `*` (RFC 9112 section 3.2.4, RFC 9110 section 7.1).
            let path = match path.is_empty() {
                true if method == Method::Options => "*".to_owned(),
                true => "/".to_owned(),
                false => path,
            };
            (path, Some(authority))
        }
    };
    let mut headers = Headers::new();
    for f in raw.headers.iter() {
        headers.append(f.name, f.value.trim_ascii());
    }
    let hosts = headers.get_all("host").count();
    if hosts > 1 || (version == Version::Http11 && hosts == 0) {
        return Err(bad("an HTTP/1.1 request needs exactly one Host field"));
    }
    // RFC 9112 section 3.2: a Host that is not `uri-host [":" port]` is refused; with an
    // absolute-form target, Host is ignored and the target's authority is the host
    // (section 3.2.2), so a handler sees the host the request was routed for.
    if !headers.get_all("host").all(valid_host) {
        return Err(bad("invalid Host field"));
    }
    if let Some(authority) = authority {
        headers.set("host", authority);
    }
    Ok(Head {
        method,
        target,
        version,
        headers,
    })
}

/// The path and query of an absolute-form target, and its authority
/// (`http://host:port/path?q` → `/path?q` and `host:port`; neither path nor query → an
/// empty path, which the caller takes for `/`, or `*` for `OPTIONS`). `None` for
/// another scheme, or an authority that is empty, not a valid host (see [`valid_host`])
/// or has userinfo (`user@host`: RFC 9110 section 4.2.4 says to treat it as an error).
fn absolute_form(target: &str) -> Option<(String, &str)> {
    let scheme_end = target.find("://")?;
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let rest = &target[scheme_end + 3..];
    let path_start = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..path_start];
    if authority.is_empty() || !valid_host(authority.as_bytes()) {
        return None;
    }
    let path = match &rest[path_start..] {
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_owned(),
    };
    Some((path, authority))
}

/// Whether `target` is in authority form (RFC 9112 section 3.2.3): `uri-host ":" port`,
/// with a host and a port (no userinfo, path or query).
fn authority_form(target: &str) -> bool {
    target.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
    }) && valid_host(target.as_bytes())
}

/// Checks a `CONNECT` target: authority form (see [`authority_form`]), with a port a
/// tunnel can be opened to, 1 to 65535 (leading zeros allowed).
pub(crate) fn connect_target(target: &str) -> Result<(), ParseError> {
    let bad = |reason| Err(ParseError::new(StatusCode::BAD_REQUEST, reason));
    if !authority_form(target) {
        return bad("CONNECT needs an authority-form target (host:port)");
    }
    let port = target.rsplit_once(':').map_or("", |(_, port)| port);
    if !matches!(port.parse::<u16>(), Ok(1..)) {
        return bad("CONNECT target port out of range (host:port, port 1 to 65535)");
    }
    Ok(())
}

/// Whether `value` is a valid `Host` field value: empty, or `uri-host [":" port]` of
/// RFC 3986 (an IP literal in brackets, with an RFC 6874 zone if any, or a reg-name or
/// IPv4 address: unreserved characters, sub-delims and percent-encodings), the port
/// digits.
fn valid_host(value: &[u8]) -> bool {
    let sub_delim = |b: u8| b"!$&'()*+,;=".contains(&b);
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    let (host, port) = match value {
        [b'[', inner @ ..] => {
            let Some(close) = inner.iter().position(|&b| b == b']') else {
                return false;
            };
            let (literal, after) = (&inner[..close], &inner[close + 1..]);
            let literal_ok = !literal.is_empty()
                && literal
                    .iter()
                    .all(|&b| unreserved(b) || sub_delim(b) || b":%".contains(&b));
            match after {
                [] => return literal_ok,
                [b':', port @ ..] => (literal_ok, port),
                _ => return false,
            }
        }
        _ => {
            let (name, port) = match value.iter().position(|&b| b == b':') {
                Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
                None => (value, None),
            };
            let mut ok = true;
            let mut i = 0;
            while ok && i < name.len() {
                let b = name[i];
                if b == b'%' {
                    ok = name
                        .get(i + 1..i + 3)
                        .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
                    i += 3;
                } else {
                    ok = unreserved(b) || sub_delim(b);
                    i += 1;
                }
            }
            match port {
                None => return ok,
                Some(port) => (ok, port),
            }
        }
    };
    host && port.iter().all(u8::is_ascii_digit)
}

/// The body's length from `Content-Length` (0 without one), or `None` for a chunked body.
fn body_length(
    headers: &Headers,
    version: Version,
    limits: &Limits,
) -> Result<Option<usize>, ParseError> {
    let bad = |reason| ParseError::new(StatusCode::BAD_REQUEST, reason);
    if headers.contains("transfer-encoding") {
        if headers.contains("content-length") {
            return Err(bad("both Transfer-Encoding and Content-Length"));
        }
        if version == Version::Http10 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        return chunked_only(headers).map(|()| None);
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all("content-length") {
        for item in value.split(|&b| b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
                return Err(bad("malformed Content-Length"));
            }
            // Leading zeros aside, more than 19 digits cannot be a length we accept.
            let digits = item
                .iter()
                .position(|&b| b != b'0')
                .map_or(&item[..0], |i| &item[i..]);
            let n = if digits.len() > 19 {
                u64::MAX
            } else {
                digits
                    .iter()
                    .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'))
            };
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    match length {
        None => Ok(Some(0)),
        Some(n) if n > limits.max_body as u64 => Err(ParseError::new(
            StatusCode::CONTENT_TOO_LARGE,
            "request body too large",
        )),
        Some(n) => Ok(Some(n as usize)),
    }
}

/// Checks that the transfer codings (every `Transfer-Encoding` field, in order) are
/// `chunked` alone, the one this server decodes.
fn chunked_only(headers: &Headers) -> Result<(), ParseError> {
    let codings: Vec<&[u8]> = headers
        .get_all("transfer-encoding")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty())
        .collect();
    let is_chunked = |c: &[u8]| c.eq_ignore_ascii_case(b"chunked");
    match codings.as_slice() {
        [only] if is_chunked(only) => Ok(()),
        [] => Err(ParseError::new(
            StatusCode::BAD_REQUEST,
            "empty Transfer-Encoding",
        )),
        // RFC 9112 section 6.3: chunked must be the last coding, and applied once;
        // anything else cannot be framed, so it is refused and the connection closed.
        [.., last] if codings.iter().filter(|c| is_chunked(c)).count() > 1 || !is_chunked(last) => {
            Err(ParseError::new(
                StatusCode::BAD_REQUEST,
                "chunked is not the last and only framing",
            ))
        }
        _ => Err(ParseError::new(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported transfer coding",
        )),
    }
}

/// Whether the request expects `100 Continue`.
fn expectation(headers: &Headers, version: Version) -> Result<bool, ParseError> {
    let mut values = headers.get_all("expect").peekable();
    if values.peek().is_none() {
        return Ok(false);
    }
    if values.all(|v| v.eq_ignore_ascii_case(b"100-continue")) {
        // An HTTP/1.0 client cannot understand 100 Continue: ignore its expectation.
        return Ok(version == Version::Http11);
    }
    Err(ParseError::new(
        StatusCode::EXPECTATION_FAILED,
        "only Expect: 100-continue is supported",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
        parse_request(buf, &Limits::default(), peer())
    }

    fn status(buf: &[u8]) -> u16 {
        parse(buf).unwrap_err().status().as_u16()
    }

    #[test]
    fn complete_with_body_and_pipelined_rest() {
        let buf = b"POST /p?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET";
        let Ok(Parsed::Complete(r, n)) = parse(buf) else {
            panic!()
        };
        assert_eq!(
            (r.method(), r.path(), r.query()),
            (Method::Post, "/p", Some("q=1"))
        );
        assert_eq!((r.body(), &buf[n..]), (&b"abc"[..], &b"GET"[..]));
        assert_eq!(r.peer_addr(), peer());
    }

    #[test]
    fn partial_head_and_partial_body() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHo"),
            Ok(Parsed::Partial(Partial {
                head_len: None,
                expects_continue: false,
                request_len: None,
            }))
        );
        let head =
            b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            parse(head),
            Ok(Parsed::Partial(Partial {
                head_len: Some(head.len()),
                expects_continue: true,
                request_len: Some(head.len() + 5),
            }))
        );
    }

    #[test]
    fn refusals_have_their_status() {
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), 400); // no Host
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
        assert_eq!(status(b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n"), 501);
        assert_eq!(status(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505);
        assert_eq!(status(b"GET nope HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        let te = |codings: &str| {
            let req = format!("POST / HTTP/1.1\r\nHost: a\r\n{codings}\r\n");
            parse(req.as_bytes()).map_err(|e| e.status().as_u16())
        };
        assert!(matches!(
            te("Transfer-Encoding: Chunked\r\n"),
            Ok(Parsed::Chunked(_, _))
        ));
        assert!(matches!(
            te("Transfer-Encoding: chunked ,\r\n"),
            Ok(Parsed::Chunked(_, _))
        ));
        assert_eq!(te("Transfer-Encoding: gzip\r\n"), Err(400), "no framing");
        assert_eq!(te("Transfer-Encoding: gzip, chunked\r\n"), Err(501));
        assert_eq!(te("Transfer-Encoding: chunked, gzip\r\n"), Err(400));
        assert_eq!(te("Transfer-Encoding: chunked, chunked\r\n"), Err(400));
        let split = "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n";
        assert_eq!(te(split), Err(400));
        assert_eq!(te("Transfer-Encoding: \r\n"), Err(400));
        let old = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status(old), 400);
        // Bare LF line ends: refused wherever they are in the head.
        assert_eq!(status(b"GET / HTTP/1.1\nHost: a\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\n\n"), 400);
        assert!(parse(b"\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
        let both = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n";
        assert_eq!(status(both), 400);
        let two = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(status(two), 400);
        let neg = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(status(neg), 400);
        let big = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(status(big), 413);
        let expect = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n";
        assert_eq!(status(expect), 417);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), 400);
        assert_eq!(status(b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status(b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"), 505);
        assert_eq!(status(b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        for host in ["", "a.b:80", "[::1]", "[fe80::1%25eth0]:8", "%41b"] {
            assert!(valid_host(host.as_bytes()), "{host}");
        }
        for host in ["a b", "a:b", "[::1]:b", "a%4", "[]", "a@b", "a:1:2"] {
            assert!(!valid_host(host.as_bytes()), "{host}");
        }
    }

    #[test]
    fn head_limits() {
        let limits = Limits {
            max_head: 64,
            max_headers: 2,
            ..Limits::default()
        };
        let long = [b'a'; 100];
        let mut buf = b"GET /".to_vec();
        buf.extend_from_slice(&long);
        let err = parse_request(&buf, &limits, peer()).unwrap_err();
        assert_eq!(err.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let many = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        let err = parse_request(many, &limits, peer()).unwrap_err();
        assert_eq!(err.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn absolute_form_and_http10_without_host() {
        let Ok(Parsed::Complete(r, _)) = parse(b"GET http://h:1/x?y HTTP/1.1\r\nHost: h\r\n\r\n")
        else {
            panic!()
        };
        assert_eq!((r.path(), r.query()), ("/x", Some("y")));
        assert_eq!(r.header("host"), Some("h:1"));
        assert_eq!(absolute_form("http://h"), Some(("".into(), "h")));
        assert_eq!(absolute_form("http://h?a"), Some(("/?a".into(), "h")));
        assert_eq!(absolute_form("http:///x"), None);
        assert_eq!(absolute_form("http://u@h/x"), None);
        assert_eq!(absolute_form("ftp://h/x"), None);
        let Ok(Parsed::Complete(r, _)) = parse(b"GET / HTTP/1.0\r\n\r\n") else {
            panic!()
        };
        assert_eq!(r.version(), Version::Http10);
        assert!(!r.keep_alive());
    }
}
