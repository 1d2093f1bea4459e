//! [`Response`]: what a handler returns, and how the server writes it.

use std::fmt::Write as _;

use crate::{Method, StatusCode};

/// Header fields the server writes itself; a handler's values for them are dropped.
const RESERVED: [&str; 3] = ["content-length", "connection", "transfer-encoding"];

/// The content type of [`Response::text`].
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// A response: status, header fields, body.
///
/// The server adds `Content-Length` (except to 204 and 304, which have no body, to a 2xx
/// answer to `CONNECT`, which it sends without its body and closes the connection after:
/// a client takes what follows for a tunnel, and the server makes none, and to an answer
/// to `HEAD` with neither a body nor a [length for
/// `HEAD`](Response::head_content_length)) and, when
/// it closes the connection after the response, `Connection: close`. A 205 goes without
/// its body, with `Content-Length: 0` (RFC 9110 section 15.3.6). A handler's own
/// `Content-Length`, `Connection` or `Transfer-Encoding` fields are dropped (logged). A
/// field whose name is not an HTTP token or whose value holds a control character other
/// than HTAB (CR, LF, NUL...) is dropped too, so a handler cannot split the response.
///
/// ```
/// use duo_http::{Response, StatusCode};
///
/// let r = Response::text(StatusCode::OK, "ok\n").header("Cache-Control", "no-store");
/// assert_eq!(r.status(), StatusCode::OK);
/// assert_eq!(r.header_value("content-type"), Some("text/plain; charset=utf-8"));
/// assert_eq!(r.body(), b"ok\n");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: StatusCode,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The length a `GET` would have had, for the answer to `HEAD` only.
    head_length: Option<u64>,
}

impl Response {
    /// A response with `status`, no field and an empty body.
    pub fn new(status: StatusCode) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            head_length: None,
        }
    }

    /// A plain-text response (`text/plain; charset=utf-8`).
    pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
        Response::with_body(status, TEXT_PLAIN, body.into())
    }

    /// A response with a body of the given content type (`application/json`, or
    /// Prometheus' `text/plain; version=0.0.4; charset=utf-8`).
    pub fn with_body(status: StatusCode, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status)
            .content_type(content_type)
            .body_bytes(body)
    }

    /// Adds a header field (a name may repeat). Dropped, with a warning in the log, if
    /// the name is not a token, the value holds a control character other than HTAB, or
    /// the server sets the field itself (see the type's documentation).
    pub fn header(mut self, name: &str, value: &str) -> Response {
        if let Some(why) = refuse_field(name, value) {
            // Rate-limited: a handler may build its headers from what a peer sent.
            duo_net::log_limited!(log::Level::Warn, "response header {name:?} dropped: {why}");
        } else {
            self.headers.push((name.to_owned(), value.to_owned()));
        }
        self
    }

    /// Sets `Content-Type`, replacing any earlier one.
    pub fn content_type(mut self, value: &str) -> Response {
        self.headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
        self.header("Content-Type", value)
    }

    /// Replaces the body.
    pub fn body_bytes(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// Says, in the answer to a `HEAD` request, the length of the body a `GET` would
    /// have had (its `Content-Length`), for a `HEAD` route that answers without
    /// generating the body. Only the answer to `HEAD` uses it: any other sends the body
    /// it has, with that body's length.
    ///
    /// The answer to `HEAD` carries this length if given, else the length of the body
    /// the handler gave (as for a `GET` route answering `HEAD`), and no `Content-Length`
    /// at all when there is neither: RFC 9110 section 8.6 lets a server leave it out,
    /// but not send one other than the `GET`'s, and an empty body a `HEAD` route did
    /// not generate says nothing about that.
    ///
    /// ```
    /// use duo_http::{Response, StatusCode};
    ///
    /// let size = 1 << 20; // from the file's metadata, say
    /// let r = Response::new(StatusCode::OK).head_content_length(size);
    /// assert_eq!(r.head_length(), Some(size));
    /// assert!(r.body().is_empty());
    /// ```
    pub fn head_content_length(mut self, len: u64) -> Response {
        self.head_length = Some(len);
        self
    }

    /// The length given by [`head_content_length`](Response::head_content_length).
    pub fn head_length(&self) -> Option<u64> {
        self.head_length
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The header fields, in order, as given.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The first value of field `name` (any case).
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Writes the status line and the head of the answer to a `method` request into
    /// `out`; returns the body to send after it: none to `HEAD` (whose head keeps the
    /// length), and neither length nor body in a 2xx answer to `CONNECT` (a client takes
    /// what follows its head for the tunnel; the caller closes the connection after it).
    pub(crate) fn encode_head(&self, out: &mut Vec<u8>, method: Method, conn: ConnField) -> &[u8] {
        let mut head = String::with_capacity(128);
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\n",
            self.status.as_u16(),
            self.status.reason()
        );
        if !self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("date"))
        {
            head.push_str("Date: ");
            push_http_date(&mut head);
            head.push_str("\r\n");
        }
        for (n, v) in &self.headers {
            let _ = write!(head, "{n}: {v}\r\n");
        }
        let has_body = self.status.has_body() && !self.opens_tunnel(method);
        // RFC 9110 section 15.3.6: a 205 has no content, whatever the handler gave it,
        // and says so with its length.
        let body: &[u8] = if self.status.as_u16() == 205 {
            &[]
        } else {
            &self.body
        };
        // To `HEAD`, the length a `GET` would have sent, or none when that is not
        // known (RFC 9110 section 8.6): an empty body may be one a `HEAD` route did not
        // generate.
        let length = match (method, self.head_length) {
            (Method::Head, Some(declared)) => Some(declared),
            (Method::Head, None) if body.is_empty() && self.status.as_u16() != 205 => None,
            _ => Some(body.len() as u64),
        };
        if let (true, Some(length)) = (has_body, length) {
            let _ = write!(head, "Content-Length: {length}\r\n");
        }
        match conn {
            ConnField::Close => head.push_str("Connection: close\r\n"),
            ConnField::KeepAlive => head.push_str("Connection: keep-alive\r\n"),
            ConnField::None => {}
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
        if has_body && method != Method::Head {
            body
        } else {
            &[]
        }
    }

    /// Whether this is a successful answer to a `method` request that is `CONNECT`: a
    /// client takes every byte after its head for the tunnel (RFC 9112 section 6.3), and
    /// the server makes none, so the connection ends after the head.
    pub(crate) fn opens_tunnel(&self, method: Method) -> bool {
        method == Method::Connect && self.status.is_success()
    }
}

/// Appends the time now as an HTTP date (IMF-fixdate, RFC 9110 section 5.6.7), the
/// `Date` every response carries (section 6.6.1). Formatted at most once a second per
/// thread: a response in the same second copies the last one.
fn push_http_date(out: &mut String) {
    thread_local! {
        /// The second last formatted and its text.
        static LAST: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != second || last.1.is_empty() {
            *last = (second, httpdate::fmt_http_date(now));
        }
        out.push_str(&last.1);
    });
}

/// The `Connection` field the server adds to a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnField {
    /// The connection closes after this response.
    Close,
    /// An HTTP/1.0 connection that asked to stay open, stays open.
    KeepAlive,
    /// HTTP/1.1 staying open: nothing to say.
    None,
}

/// Why a response header field cannot be sent, if it cannot.
fn refuse_field(name: &str, value: &str) -> Option<&'static str> {
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Some("the name is not an HTTP token");
    }
    // RFC 9110 section 5.5: no control character but HTAB. CR or LF would split the
    // response; any other makes it one a strict client (httparse) refuses whole.
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Some("the value holds a control character (CR, LF, NUL...)");
    }
    if RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
        return Some("the server sets this field itself");
    }
    None
}

/// `tchar` of RFC 9110, section 5.6.2.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoded response, its `Date` field (checked: the second line) left out.
    fn encode(r: &Response, method: Method, conn: ConnField) -> String {
        let mut out = Vec::new();
        let body = r.encode_head(&mut out, method, conn).to_vec();
        out.extend_from_slice(&body);
        let text = String::from_utf8(out).unwrap();
        let (status, rest) = text.split_once("\r\n").unwrap();
        let (date, rest) = rest.split_once("\r\n").unwrap();
        let date = date.strip_prefix("Date: ").expect("Date comes second");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date:?}");
        format!("{status}\r\n{rest}")
    }

    #[test]
    fn encodes_length_and_connection() {
        let r = Response::text(StatusCode::OK, "hi");
        assert_eq!(
            encode(&r, Method::Get, ConnField::Close),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\nhi"
        );
        assert!(encode(&r, Method::Head, ConnField::None).ends_with("Content-Length: 2\r\n\r\n"));
        assert_eq!(
            encode(&r, Method::Connect, ConnField::Close),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Connection: close\r\n\r\n"
        );
        let refused = Response::text(StatusCode::FORBIDDEN, "no");
        assert!(encode(&refused, Method::Connect, ConnField::None)
            .ends_with("Content-Length: 2\r\n\r\nno"));
        let r = Response::new(StatusCode::NO_CONTENT);
        assert_eq!(
            encode(&r, Method::Get, ConnField::None),
            "HTTP/1.1 204 No Content\r\n\r\n"
        );
    }

    #[test]
    fn unsafe_or_reserved_fields_are_dropped() {
        let r = Response::new(StatusCode::OK)
            .header("X-Ok", "1")
            .header("X-Split", "a\r\nSet-Cookie: b")
            .header("Bad Name", "1")
            .header("content-length", "5")
            .header("Connection", "keep-alive");
        assert_eq!(r.headers().collect::<Vec<_>>(), [("X-Ok", "1")]);
        let r = r.content_type("a/b").content_type("c/d");
        assert_eq!(r.header_value("CONTENT-TYPE"), Some("c/d"));
        assert_eq!(r.headers().count(), 2);
    }
}
