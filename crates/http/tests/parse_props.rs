//! Properties of the request parser: whatever the bytes, it never panics and either
//! parses, asks for more, or refuses with a client error (or 501/505, the two refusals
//! RFC 9110 gives as server errors); and a valid request parses the same however it is
//! cut, its body sent with a length or chunked (however chunked, with or without
//! extensions and trailer fields).

use std::net::SocketAddr;

use duo_http::{parse_request, Limits, Method, ParseError, Parsed};
use proptest::prelude::*;

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4242))
}

/// The outcome of parsing `buf` is one of the allowed ones.
fn check_any(buf: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
    match parse_request(buf, limits, peer()) {
        Ok(Parsed::Complete(req, used)) => {
            prop_assert!(used <= buf.len());
            prop_assert!(req.body().len() <= limits.max_body);
            // The target's form is the method's (RFC 9112 section 3.2): CONNECT's is
            // `host:port`, `*` is OPTIONS' alone, every other is a path.
            let path = req.path();
            match req.method() {
                Method::Connect => prop_assert!(!path.starts_with('/') && path.contains(':')),
                Method::Options => prop_assert!(path.starts_with('/') || path == "*"),
                _ => prop_assert!(path.starts_with('/'), "{path}"),
            }
        }
        Ok(Parsed::Partial(p)) => {
            prop_assert!(buf.len() <= limits.max_head || p.head_len.is_some());
        }
        Ok(Parsed::Chunked(mut body, used)) => {
            prop_assert!(used <= buf.len());
            match body.feed(&buf[used..]) {
                Ok(n) => {
                    prop_assert!(n <= buf.len() - used);
                    prop_assert!(body.body_len() <= limits.max_body);
                    prop_assert_eq!(body.is_complete(), body.into_request().is_some());
                }
                Err(e) => refusal(&e)?,
            }
        }
        Err(e) => refusal(&e)?,
        Ok(other) => {
            return Err(TestCaseError::fail(format!(
                "an outcome this test does not know: {other:?}"
            )))
        }
    }
    Ok(())
}

/// A refusal is a client error, or 501/505.
fn refusal(e: &ParseError) -> Result<(), TestCaseError> {
    let code = e.status().as_u16();
    prop_assert!(
        e.status().is_client_error() || code == 501 || code == 505,
        "refused with {code}"
    );
    Ok(())
}

/// `body` chunked: cut into chunks of `sizes` (cycled; the rest in one), sizes in hex of
/// mixed case with leading zeros where `zeros`, an extension on each line where `ext`,
/// trailer fields where `trailers`.
fn chunk(body: &[u8], sizes: &[usize], zeros: bool, ext: bool, trailers: bool) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut rest = body;
    let mut turn = sizes.iter().cycle();
    let line = |wire: &mut Vec<u8>, n: usize| {
        let hex = if n % 2 == 0 {
            format!("{n:x}")
        } else {
            format!("{n:X}")
        };
        let zeros = if zeros { "00" } else { "" };
        let ext = if ext { " ; name=\"v a\";flag" } else { "" };
        wire.extend_from_slice(format!("{zeros}{hex}{ext}\r\n").as_bytes());
    };
    while !rest.is_empty() {
        let n = turn.next().map_or(rest.len(), |&n| n.clamp(1, rest.len()));
        line(&mut wire, n);
        wire.extend_from_slice(&rest[..n]);
        wire.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    line(&mut wire, 0);
    if trailers {
        wire.extend_from_slice(b"Checksum: abc\r\nX-T: 1\r\n");
    }
    wire.extend_from_slice(b"\r\n");
    wire
}

/// Bytes that look like the start of a request more often than random ones do.
fn requestish() -> impl Strategy<Value = Vec<u8>> {
    let line = prop::sample::select(vec![
        "GET / HTTP/1.1\r\n",
        "POST /echo HTTP/1.1\r\n",
        "HEAD /x?y HTTP/1.0\r\n",
        "OPTIONS * HTTP/1.1\r\n",
        "GET http://h/p HTTP/1.1\r\n",
        "CONNECT h:443 HTTP/1.1\r\n",
    ]);
    let field = prop::sample::select(vec![
        "Host: h\r\n",
        "Content-Length: 3\r\n",
        "Content-Length: 3, 3\r\n",
        "Content-Length: 99999999999999999999\r\n",
        "Transfer-Encoding: chunked\r\n",
        "Expect: 100-continue\r\n",
        "Connection: close\r\n",
        "\r\n",
        "abc",
    ]);
    (
        line,
        prop::collection::vec(field, 0..8),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(line, fields, tail)| {
            let mut buf = line.as_bytes().to_vec();
            for f in fields {
                buf.extend_from_slice(f.as_bytes());
            }
            buf.extend_from_slice(&tail);
            buf
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..2048)) {
        check_any(&buf, &Limits::default())?;
        let tight = Limits { max_head: 64, max_headers: 2, max_body: 4 };
        check_any(&buf, &tight)?;
    }

    #[test]
    fn request_like_bytes_never_panic(buf in requestish()) {
        check_any(&buf, &Limits::default())?;
        let tight = Limits { max_head: 48, max_headers: 3, max_body: 2 };
        check_any(&buf, &tight)?;
    }

    /// Every proper prefix of a valid request is `Partial`; the whole is `Complete` and
    /// takes exactly its own bytes, whatever follows.
    #[test]
    fn a_valid_request_parses_however_it_is_cut(
        path in "/[a-z0-9/._-]{0,20}",
        query in proptest::option::of("[a-z0-9=&]{0,10}"),
        body in prop::collection::vec(any::<u8>(), 0..100),
        next in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let target = match &query {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        let mut req = format!(
            "POST {target} HTTP/1.1\r\nHost: h\r\nX-Any: v\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        let limits = Limits::default();
        for cut in 0..req.len() {
            let parsed = parse_request(&req[..cut], &limits, peer());
            prop_assert!(matches!(parsed, Ok(Parsed::Partial(_))), "cut at {}: {:?}", cut, parsed);
        }
        let mut buf = req.clone();
        buf.extend_from_slice(&next);
        let Ok(Parsed::Complete(r, used)) = parse_request(&buf, &limits, peer()) else {
            return Err(TestCaseError::fail("the whole request did not parse"));
        };
        prop_assert_eq!(used, req.len());
        prop_assert_eq!(r.method(), Method::Post);
        prop_assert_eq!(r.path(), path.as_str());
        prop_assert_eq!(r.query(), query.as_deref());
        prop_assert_eq!(r.body(), &body[..]);
        prop_assert_eq!(r.header("x-any"), Some("v"));
        prop_assert_eq!(r.peer_addr(), peer());
    }

    /// A chunked body, however chunked and however the network cuts it, decodes to the
    /// body sent; the decoder takes exactly its own bytes, never the next request's.
    #[test]
    fn a_chunked_body_decodes_however_it_is_cut(
        body in prop::collection::vec(any::<u8>(), 0..600),
        sizes in prop::collection::vec(1usize..200, 0..6),
        (zeros, ext, trailers) in (any::<bool>(), any::<bool>(), any::<bool>()),
        cuts in prop::collection::vec(1usize..64, 1..40),
        next in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let mut wire = b"PUT /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let head_len = wire.len();
        let encoded = chunk(&body, &sizes, zeros, ext, trailers);
        wire.extend_from_slice(&encoded);
        wire.extend_from_slice(&next);
        let limits = Limits::default();
        let Ok(Parsed::Chunked(mut decoder, used)) = parse_request(&wire, &limits, peer()) else {
            return Err(TestCaseError::fail("a chunked head"));
        };
        prop_assert_eq!(used, head_len);
        // As a connection does: what the decoder leaves waits for the next bytes.
        let (mut buffered, mut at, mut taken) = (Vec::new(), head_len, 0);
        for cut in cuts.iter().cycle() {
            if decoder.is_complete() || at == wire.len() {
                break;
            }
            let end = (at + cut).min(wire.len());
            buffered.extend_from_slice(&wire[at..end]);
            at = end;
            let n = decoder.feed(&buffered).map_err(|e| TestCaseError::fail(e.to_string()))?;
            buffered.drain(..n);
            taken += n;
        }
        prop_assert!(decoder.is_complete());
        prop_assert_eq!(taken, encoded.len());
        let r = decoder.into_request().expect("complete");
        prop_assert_eq!(r.body(), &body[..]);
        prop_assert_eq!(r.path(), "/up");
    }
}
