//! [`Request`]: one parsed request, with its [`Headers`] and [`Version`].

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use crate::Method;

/// The protocol version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// HTTP/1.0: the connection closes after the response unless the request asks for
    /// `Connection: keep-alive` (and not `close` as well).
    Http10,
    /// HTTP/1.1: the connection stays open unless the request says `Connection: close`.
    Http11,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        })
    }
}

/// A request's header fields, in the order received. Names are compared without regard
/// to case and kept in lower case; values are bytes as sent (HTTP allows non-UTF-8
/// octets), without surrounding whitespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    fields: Vec<(String, Vec<u8>)>,
}

impl Headers {
    /// No fields.
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Adds a field after the others (a name may repeat).
    pub fn append(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.fields.push((name.to_ascii_lowercase(), value.into()));
    }

    /// Sets field `name` to `value`: the first such field takes it and the others go, or
    /// it is added after the others.
    pub(crate) fn set(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        let value = value.into();
        let mut found = false;
        self.fields.retain_mut(|(n, v)| {
            if !n.eq_ignore_ascii_case(name) {
                return true;
            }
            if found {
                return false;
            }
            found = true;
            v.clone_from(&value);
            true
        });
        if !found {
            self.append(name, value);
        }
    }

    /// The first value of `name` as text; `None` if there is none or it is not UTF-8 (see
    /// [`get_bytes`](Headers::get_bytes)).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of `name`, as bytes.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Whether a field `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get_bytes(name).is_some()
    }

    /// Whether a comma-separated field `name` (such as `Connection`) lists `token`, in
    /// any of its values, without regard to case.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name).any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    }

    /// Every field as (lower-case name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there is no field.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// One request: what a [`Handler`](crate::Handler) gets.
///
/// The server builds it from the bytes it read ([`parse_request`](crate::parse_request));
/// [`Request::new`] and its `with_` methods build one by hand, for testing a handler or a
/// [`Router`](crate::Router) without a socket:
///
/// ```
/// use duo_http::{Method, Request, Version};
///
/// let req = Request::new(Method::Get, "/metrics?name=up").with_header("Accept", "text/plain");
/// assert_eq!(req.path(), "/metrics");
/// assert_eq!(req.query(), Some("name=up"));
/// assert_eq!(req.headers().get("accept"), Some("text/plain"));
/// assert_eq!(req.version(), Version::Http11);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    method: Method,
    /// The request target as sent (origin form: path and query), or `*`.
    target: String,
    /// Where the path ends in `target` (at `?` or the end).
    path_end: usize,
    version: Version,
    headers: Headers,
    body: Vec<u8>,
    peer: SocketAddr,
}

impl Request {
    /// A request for `target` (a path with an optional `?query`), HTTP/1.1, no header, no
    /// body, from `0.0.0.0:0`.
    pub fn new(method: Method, target: &str) -> Request {
        Request {
            method,
            target: target.to_owned(),
            path_end: target.find('?').unwrap_or(target.len()),
            version: Version::Http11,
            headers: Headers::new(),
            body: Vec::new(),
            peer: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        }
    }

    pub(crate) fn from_parts(
        method: Method,
        target: String,
        version: Version,
        headers: Headers,
        body: Vec<u8>,
        peer: SocketAddr,
    ) -> Request {
        let mut req = Request::new(method, "");
        req.path_end = target.find('?').unwrap_or(target.len());
        req.target = target;
        req.version = version;
        req.headers = headers;
        req.body = body;
        req.peer = peer;
        req
    }

    /// Adds a header field.
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Request {
        self.headers.append(name, value);
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Sets the protocol version.
    pub fn with_version(mut self, version: Version) -> Request {
        self.version = version;
        self
    }

    /// Sets the peer's address.
    pub fn with_peer_addr(mut self, peer: SocketAddr) -> Request {
        self.peer = peer;
        self
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The path, as sent: not percent-decoded, without the query (`/a%20b` for
    /// `GET /a%20b?x=1`). A request in absolute form (`GET http://host/path`) has the
    /// path of its URI; `OPTIONS *` has `*` (so has `OPTIONS http://host`, without path or
    /// query), and `CONNECT host:443` has `host:443`.
    pub fn path(&self) -> &str {
        &self.target[..self.path_end]
    }

    /// The query string after `?`, as sent (not decoded); `None` without a `?`.
    pub fn query(&self) -> Option<&str> {
        self.target.get(self.path_end + 1..)
    }

    /// The request target: path and query as sent.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The protocol version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The header fields.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The first value of header `name` as text (see [`Headers::get`]).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The body (empty without `Content-Length`).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The address of the peer that sent the request.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the connection may carry another request after this one's response:
    /// never with `Connection: close` (whatever else the field lists, RFC 9112 section
    /// 9.3); else HTTP/1.1 always, HTTP/1.0 only with `Connection: keep-alive`.
    pub fn keep_alive(&self) -> bool {
        if self.headers.has_token("connection", "close") {
            return false;
        }
        match self.version {
            Version::Http11 => true,
            Version::Http10 => self.headers.has_token("connection", "keep-alive"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_query_and_keep_alive() {
        let r = Request::new(Method::Get, "/a?");
        assert_eq!((r.path(), r.query()), ("/a", Some("")));
        let r = Request::new(Method::Get, "/a");
        assert_eq!((r.path(), r.query()), ("/a", None));
        assert!(r.keep_alive());
        let r = r.with_header("Connection", "Upgrade, CLOSE");
        assert!(!r.keep_alive());
        let r = Request::new(Method::Get, "/").with_version(Version::Http10);
        assert!(!r.keep_alive());
        let r = r.with_header("connection", "keep-alive");
        assert!(r.keep_alive());
        assert!(!r.with_header("Connection", "Close").keep_alive());
    }

    #[test]
    fn header_lookup_ignores_case_and_skips_non_utf8_text() {
        let r = Request::new(Method::Get, "/")
            .with_header("X-A", "1")
            .with_header("x-a", "2")
            .with_header("X-Bin", vec![0xff]);
        assert_eq!(r.header("x-A"), Some("1"));
        assert_eq!(r.headers().get_all("X-A").count(), 2);
        assert_eq!(r.header("x-bin"), None);
        assert_eq!(r.headers().get_bytes("x-bin"), Some(&[0xff][..]));
    }
}
