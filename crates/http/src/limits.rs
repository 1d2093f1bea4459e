//! [`Limits`]: how big a request may be, and the server's timeouts ([`defaults`]).

/// The defaults of the size limits and timeouts.
pub mod defaults {
    use std::time::Duration;

    /// Longest request head (request line and header fields, with their line ends):
    /// 8 KiB. Longer → 431.
    pub const MAX_HEAD: usize = 8 << 10;
    /// Most header fields in a request: 64. More → 431.
    pub const MAX_HEADERS: usize = 64;
    /// Longest request body: 1 MiB. A longer `Content-Length` → 413, before the body is
    /// read.
    pub const MAX_BODY: usize = 1 << 20;
    /// Time for a request head to arrive: 10 s, from the connection's start for its first
    /// request and from the first byte for later ones. Exceeded → 408 and close.
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// Time for a request body to arrive once its head is in: 30 s. Exceeded → 408 and
    /// close.
    pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
    /// How long a kept-alive connection may wait for its next request: 60 s. Then it is
    /// closed without a response.
    pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(60);
    /// How long a deferred handler
    /// ([`route_deferred`](crate::HttpServerBuilder::route_deferred)) may take to answer:
    /// 30 s, from the request. Exceeded → 503 and close.
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
    /// After a response that closes the connection, how long the server waits for the
    /// peer to close its side (reading and dropping what it still sends, so that an
    /// unread request does not turn the close into a reset that destroys the response):
    /// 2 s.
    pub const LINGER: Duration = Duration::from_secs(2);
    /// Longest any timeout may be: one day. A longer one (say `Duration::MAX`, for "no
    /// timeout") is taken as this, so that deadlines never overflow.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
    /// Output a connection may have queued (its client not reading it yet) before the
    /// server stops answering its pipelined requests, and reading them, until the client
    /// has read it all: 1 MiB.
    pub const MAX_PENDING_OUTPUT: usize = 1 << 20;
    /// What a connection's queued output may reach beyond
    /// [`MAX_PENDING_OUTPUT`] (or the server's
    /// [`max_pending_output`](crate::HttpServerBuilder::max_pending_output)) before it is
    /// closed: 64 MiB. The server never queues that much by itself (at most the bound
    /// plus one response); this is a backstop. A single response larger than this, sent
    /// while earlier ones are still queued, closes its connection.
    pub const OUTPUT_BACKSTOP: usize = 64 << 20;
}

/// The size limits a request is parsed under ([`parse_request`](crate::parse_request),
/// and the server's [`max_head_bytes`](crate::HttpServerBuilder::max_head_bytes) and
/// siblings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Longest head in bytes (default [`defaults::MAX_HEAD`]).
    pub max_head: usize,
    /// Most header fields (default [`defaults::MAX_HEADERS`]).
    pub max_headers: usize,
    /// Longest body in bytes (default [`defaults::MAX_BODY`]).
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head: defaults::MAX_HEAD,
            max_headers: defaults::MAX_HEADERS,
            max_body: defaults::MAX_BODY,
        }
    }
}
