//! A minimal HTTP/1.0 client over `std::net::TcpStream` for Prometheus' HTTP API: one
//! `GET` per connection, the whole response read until the server closes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// How long one request may take (connect, write, read).
const REQUEST_LIMIT: Duration = Duration::from_secs(5);
/// The largest response read (a query result of this run is far smaller).
const MAX_RESPONSE: u64 = 16 << 20;

/// A response: the status code and the body.
#[derive(Debug)]
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) body: String,
}

/// `GET target` (a path with its query string) from `addr`.
pub(super) fn get(addr: SocketAddr, target: &str) -> Result<Response, String> {
    let what = format!("GET http://{addr}{target}");
    let mut stream =
        TcpStream::connect_timeout(&addr, REQUEST_LIMIT).map_err(|e| format!("{what}: {e}"))?;
    stream
        .set_read_timeout(Some(REQUEST_LIMIT))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_LIMIT)))
        .map_err(|e| format!("{what}: {e}"))?;
    // HTTP/1.0: the server answers without chunked encoding and closes the connection.
    let request = format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{what}: sending: {e}"))?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(|e| format!("{what}: reading: {e}"))?;
    parse_response(&raw).map_err(|e| format!("{what}: {e}"))
}

/// Splits a whole HTTP/1.x response into its status code and body.
fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("a response without the end of its header: {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("a bad status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding") && value.trim() != "identity"
        })
    });
    if chunked {
        return Err("a chunked response to an HTTP/1.0 request".into());
    }
    Ok(Response {
        status,
        body: body.to_owned(),
    })
}

/// Runs the PromQL `query` through `/api/v1/query` at `addr` (now) and returns the `data`
/// of a successful answer (`resultType` and `result`).
pub(super) fn query(addr: SocketAddr, query: &str) -> Result<Value, String> {
    let target = format!("/api/v1/query?query={}", percent_encode(query));
    let response = get(addr, &target)?;
    let mut json: Value = serde_json::from_str(&response.body).map_err(|e| {
        format!(
            "query {query:?}: HTTP {}, not JSON ({e}): {:?}",
            response.status, response.body
        )
    })?;
    if response.status != 200 || json["status"] != "success" {
        return Err(format!(
            "query {query:?}: HTTP {}: {} {}",
            response.status, json["errorType"], json["error"]
        ));
    }
    Ok(json["data"].take())
}

/// `s` with every byte other than the unreserved ones of RFC 3986 as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{parse_response, percent_encode};

    #[test]
    fn encodes_a_query() {
        assert_eq!(
            percent_encode(r#"count({__name__=~"duo_.+"})"#),
            "count%28%7B__name__%3D~%22duo_.%2B%22%7D%29"
        );
    }

    #[test]
    fn parses_a_response() {
        let r = parse_response(b"HTTP/1.0 503 Service Unavailable\r\nA: b\r\n\r\nnot ready")
            .expect("a response");
        assert_eq!((r.status, r.body.as_str()), (503, "not ready"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"SMTP 200\r\n\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n").is_err()
        );
    }
}
