//! [`StatusCode`]: a response's three-digit status.

use std::fmt;

/// A response status, 200 to 599 (the informational 1xx codes belong to the server: it
/// sends `100 Continue` itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusCode(u16);

impl StatusCode {
    /// 200 OK.
    pub const OK: StatusCode = StatusCode(200);
    /// 201 Created.
    pub const CREATED: StatusCode = StatusCode(201);
    /// 202 Accepted.
    pub const ACCEPTED: StatusCode = StatusCode(202);
    /// 204 No Content (sent without a body and without `Content-Length`).
    pub const NO_CONTENT: StatusCode = StatusCode(204);
    /// 301 Moved Permanently.
    pub const MOVED_PERMANENTLY: StatusCode = StatusCode(301);
    /// 302 Found.
    pub const FOUND: StatusCode = StatusCode(302);
    /// 303 See Other.
    pub const SEE_OTHER: StatusCode = StatusCode(303);
    /// 304 Not Modified (sent without a body and without `Content-Length`).
    pub const NOT_MODIFIED: StatusCode = StatusCode(304);
    /// 307 Temporary Redirect.
    pub const TEMPORARY_REDIRECT: StatusCode = StatusCode(307);
    /// 308 Permanent Redirect.
    pub const PERMANENT_REDIRECT: StatusCode = StatusCode(308);
    /// 400 Bad Request: a malformed request (the server closes the connection after it).
    pub const BAD_REQUEST: StatusCode = StatusCode(400);
    /// 401 Unauthorized.
    pub const UNAUTHORIZED: StatusCode = StatusCode(401);
    /// 403 Forbidden.
    pub const FORBIDDEN: StatusCode = StatusCode(403);
    /// 404 Not Found: no route has the request's path.
    pub const NOT_FOUND: StatusCode = StatusCode(404);
    /// 405 Method Not Allowed: a route has the path, not for this method (with `Allow`).
    pub const METHOD_NOT_ALLOWED: StatusCode = StatusCode(405);
    /// 408 Request Timeout: the head or body did not arrive in time.
    pub const REQUEST_TIMEOUT: StatusCode = StatusCode(408);
    /// 409 Conflict.
    pub const CONFLICT: StatusCode = StatusCode(409);
    /// 411 Length Required: the server wants a `Content-Length` (duo-http itself does not
    /// send it: it decodes chunked bodies).
    pub const LENGTH_REQUIRED: StatusCode = StatusCode(411);
    /// 413 Content Too Large: the body is longer than the server's limit.
    pub const CONTENT_TOO_LARGE: StatusCode = StatusCode(413);
    /// 415 Unsupported Media Type.
    pub const UNSUPPORTED_MEDIA_TYPE: StatusCode = StatusCode(415);
    /// 417 Expectation Failed: an `Expect` other than `100-continue`.
    pub const EXPECTATION_FAILED: StatusCode = StatusCode(417);
    /// 429 Too Many Requests.
    pub const TOO_MANY_REQUESTS: StatusCode = StatusCode(429);
    /// 431 Request Header Fields Too Large: the head is longer than the server's limit
    /// or has too many header fields.
    pub const REQUEST_HEADER_FIELDS_TOO_LARGE: StatusCode = StatusCode(431);
    /// 500 Internal Server Error: what a panicking handler's request gets.
    pub const INTERNAL_SERVER_ERROR: StatusCode = StatusCode(500);
    /// 501 Not Implemented: a method outside [`Method::ALL`](crate::Method::ALL), or a
    /// transfer coding other than chunked.
    pub const NOT_IMPLEMENTED: StatusCode = StatusCode(501);
    /// 503 Service Unavailable.
    pub const SERVICE_UNAVAILABLE: StatusCode = StatusCode(503);
    /// 505 HTTP Version Not Supported: anything but HTTP/1.0 and HTTP/1.1.
    pub const HTTP_VERSION_NOT_SUPPORTED: StatusCode = StatusCode(505);

    /// The status `code`, if it is in 200..=599.
    pub fn new(code: u16) -> Option<StatusCode> {
        (200..=599).contains(&code).then_some(StatusCode(code))
    }

    /// The number.
    pub fn as_u16(self) -> u16 {
        self.0
    }

    /// The reason phrase sent on the status line: the RFC 9110 name of the code, or an
    /// empty string for a code it does not name.
    pub fn reason(self) -> &'static str {
        match self.0 {
            200 => "OK",
            201 => "Created",
            202 => "Accepted",
            203 => "Non-Authoritative Information",
            204 => "No Content",
            205 => "Reset Content",
            206 => "Partial Content",
            300 => "Multiple Choices",
            301 => "Moved Permanently",
            302 => "Found",
            303 => "See Other",
            304 => "Not Modified",
            307 => "Temporary Redirect",
            308 => "Permanent Redirect",
            400 => "Bad Request",
            401 => "Unauthorized",
            402 => "Payment Required",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            406 => "Not Acceptable",
            407 => "Proxy Authentication Required",
            408 => "Request Timeout",
            409 => "Conflict",
            410 => "Gone",
            411 => "Length Required",
            412 => "Precondition Failed",
            413 => "Content Too Large",
            414 => "URI Too Long",
            415 => "Unsupported Media Type",
            416 => "Range Not Satisfiable",
            417 => "Expectation Failed",
            421 => "Misdirected Request",
            422 => "Unprocessable Content",
            426 => "Upgrade Required",
            428 => "Precondition Required",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            505 => "HTTP Version Not Supported",
            _ => "",
        }
    }

    /// 2xx.
    pub fn is_success(self) -> bool {
        (200..300).contains(&self.0)
    }

    /// 4xx.
    pub fn is_client_error(self) -> bool {
        (400..500).contains(&self.0)
    }

    /// 5xx.
    pub fn is_server_error(self) -> bool {
        (500..600).contains(&self.0)
    }

    /// Whether a response with this status carries a body (and `Content-Length`): all
    /// but 204 and 304.
    pub(crate) fn has_body(self) -> bool {
        self.0 != 204 && self.0 != 304
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_final_codes_are_accepted() {
        assert_eq!(StatusCode::new(200), Some(StatusCode::OK));
        assert_eq!(StatusCode::new(599).map(StatusCode::reason), Some(""));
        assert_eq!(StatusCode::new(101), None);
        assert_eq!(StatusCode::new(600), None);
        assert_eq!(StatusCode::NOT_FOUND.to_string(), "404 Not Found");
        assert!(!StatusCode::NO_CONTENT.has_body());
    }
}
