//! The `http_request` target: duo-http's request parser ([`parse_request`] and
//! [`ChunkedRequest`]) driven the way the server's connection drives it (`serve` in
//! `crates/http/src/conn.rs`): empty lines before a request skipped, the head parsed from
//! the bytes buffered so far, a chunked body fed as it arrives, pipelined requests one
//! after the other, the first refusal ending the connection.

use std::net::SocketAddr;

use duo_http::{parse_request, ChunkedRequest, Limits, Parsed, Request, StatusCode};

use crate::Plan;

/// What one connection's bytes produced, in order.
#[derive(Debug, PartialEq)]
struct Served {
    /// The requests answered.
    requests: Vec<Request>,
    /// The refusal that closed the connection, if one did.
    refusal: Option<StatusCode>,
    /// Bytes still buffered at the end (no refusal): the start of a request, or of a
    /// chunked body's rest.
    left: usize,
    /// Whether the end came in the middle of a chunked body.
    in_body: bool,
}

/// The limits a fuzz input is parsed under: the plan's maximum for the head (at least 1:
/// with 0 every request is refused, and a lone CR waiting for its LF is refused 431 where
/// the whole buffer shows an empty line) and the body, 1 to 61 header fields from its
/// parameter.
fn limits(plan: &Plan<'_>) -> Limits {
    Limits {
        max_head: plan.max.max(1),
        max_headers: 1 + 4 * usize::from(plan.param),
        max_body: plan.max,
    }
}

/// The length of the empty lines (CRLF or a bare LF) at the start of `buf`, as the
/// server skips them before a request (RFC 9112 section 2.2); a bare CR is not one.
fn empty_lines(buf: &[u8]) -> usize {
    let mut n = 0;
    loop {
        match &buf[n..] {
            [b'\r', b'\n', ..] => n += 2,
            [b'\n', ..] => n += 1,
            _ => return n,
        }
    }
}

/// Runs `wire` through the parser as the server does, appended in pieces of the given
/// sizes (cycled; all at once for `None`), checking each outcome on the way.
fn serve(wire: &[u8], pieces: Option<&[usize]>, limits: &Limits) -> Served {
    let peer = SocketAddr::from(([127, 0, 0, 1], 4242));
    let mut buf: Vec<u8> = Vec::new();
    let mut served = Served {
        requests: Vec::new(),
        refusal: None,
        left: 0,
        in_body: false,
    };
    let mut chunked: Option<ChunkedRequest> = None;
    let mut rest = wire;
    let mut sizes = pieces.unwrap_or(&[usize::MAX]).iter().copied().cycle();
    loop {
        let n = sizes.next().unwrap_or(usize::MAX).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        // One turn of the server's loop over what is buffered.
        loop {
            if let Some(body) = &mut chunked {
                match body.feed(&buf) {
                    Ok(used) => {
                        assert!(used <= buf.len(), "chunked feed took more than it had");
                        buf.drain(..used);
                    }
                    Err(e) => {
                        served.refusal = Some(checked_refusal(e.status()));
                        return served;
                    }
                }
                assert!(body.body_len() <= limits.max_body, "body over the limit");
                if !body.is_complete() {
                    break; // (a size line or trailer is taken only once whole)
                }
                let req = chunked.take().and_then(ChunkedRequest::into_request);
                served.requests.push(checked_request(req.expect("complete"), limits));
                continue;
            }
            buf.drain(..empty_lines(&buf));
            if buf.is_empty() {
                break;
            }
            match parse_request(&buf, limits, peer) {
                Err(e) => {
                    served.refusal = Some(checked_refusal(e.status()));
                    return served;
                }
                Ok(Parsed::Partial(p)) => {
                    if p.head_len.is_none() {
                        assert!(buf.len() <= limits.max_head, "a head over the limit waits");
                    }
                    break;
                }
                Ok(Parsed::Complete(req, used)) => {
                    assert!(used > 0 && used <= buf.len(), "complete took {used}");
                    served.requests.push(checked_request(req, limits));
                    buf.drain(..used);
                }
                Ok(Parsed::Chunked(body, used)) => {
                    assert!(used > 0 && used <= buf.len(), "chunked head took {used}");
                    buf.drain(..used);
                    chunked = Some(body);
                }
                Ok(other) => panic!("an outcome the server does not know: {other:?}"),
            }
        }
        if rest.is_empty() {
            served.left = buf.len();
            served.in_body = chunked.is_some();
            return served;
        }
    }
}

/// A refusal is a client error, or 501 / 505 (the two refusals RFC 9110 makes server
/// errors).
fn checked_refusal(status: StatusCode) -> StatusCode {
    let code = status.as_u16();
    assert!(
        (400..500).contains(&code) || code == 501 || code == 505,
        "refused with {code}"
    );
    status
}

/// What the server hands a handler meets the parser's promises.
fn checked_request(req: Request, limits: &Limits) -> Request {
    assert!(req.body().len() <= limits.max_body, "body over the limit");
    assert!(
        req.path().starts_with('/') || req.path() == "*",
        "path {:?}",
        req.path()
    );
    for (name, value) in req.headers().iter() {
        assert!(!name.is_empty(), "an empty field name");
        assert!(
            !value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0),
            "field {name} carries a line break or NUL: {value:?}"
        );
    }
    req
}

/// `http_request`: whatever the bytes, parsing never panics, every request handed on
/// meets the parser's promises and every refusal is a 4xx (or 501/505); and the server
/// sees the same requests and the same refusal whether the bytes come at once or in
/// pieces. (A refusal's status may differ only where a head over the limit is seen
/// before the head is whole: split feeding says 431 as soon as the limit is passed, the
/// whole buffer may show a malformed line first.)
pub fn http_request(data: &[u8]) {
    let plan = Plan::new(data);
    let limits = limits(&plan);
    let whole = serve(plan.wire, None, &limits);
    let split = serve(plan.wire, Some(&plan.pieces), &limits);
    assert_eq!(
        whole.requests, split.requests,
        "requests differ between one-shot and split feeding"
    );
    match (whole.refusal, split.refusal) {
        (None, None) => {
            assert_eq!(
                (whole.left, whole.in_body),
                (split.left, split.in_body),
                "leftovers differ"
            );
        }
        (Some(a), Some(b)) => {
            let too_large = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
            assert!(
                a == b || a == too_large || b == too_large,
                "refusals differ: {a} at once, {b} split"
            );
        }
        (a, b) => panic!("one-shot refusal {a:?}, split refusal {b:?}"),
    }
}
