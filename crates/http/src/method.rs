//! [`Method`]: the request methods of HTTP/1.1 (RFC 9110, section 9).

use std::fmt;
use std::str::FromStr;

/// A request method. Methods are case-sensitive tokens: `get` is not [`Method::Get`].
///
/// A request with a method outside this list is answered `501 Not Implemented` by the
/// server before any route is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// `GET`: also serves `HEAD` requests on routes without a `HEAD` handler of their own.
    Get,
    /// `HEAD`: as `GET`, without the response body.
    Head,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
    /// `CONNECT`: its target must be in authority form (`host:port`, RFC 9112 section
    /// 3.2.3; any other form is refused with 400), and is routed as the path
    /// (`route(Method::Connect, "host:443", ..)`); the port must be 1 to 65535. Any answer
    /// closes the connection: a 2xx one is sent without its body, as the server makes no
    /// tunnel, and a refusal closes too, so that tunnel bytes a client sent behind its
    /// request without waiting for the answer are never read as requests.
    Connect,
    /// `OPTIONS`.
    Options,
    /// `TRACE`.
    Trace,
    /// `PATCH` (RFC 5789).
    Patch,
}

impl Method {
    /// Every method, in the order an `Allow` header lists them.
    pub const ALL: [Method; 9] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Connect,
        Method::Options,
        Method::Trace,
        Method::Patch,
    ];

    /// The method's token as it appears on the request line (`"GET"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
        }
    }

    /// The method a request-line token names, if it is one of [`Method::ALL`] (exact
    /// case).
    pub fn from_token(token: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == token)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`Method`] from a string that names none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown HTTP method {0:?}")]
pub struct UnknownMethod(pub String);

impl FromStr for Method {
    type Err = UnknownMethod;

    fn from_str(s: &str) -> Result<Method, UnknownMethod> {
        Method::from_token(s).ok_or_else(|| UnknownMethod(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_case_sensitive() {
        for m in Method::ALL {
            assert_eq!(m.as_str().parse::<Method>(), Ok(m));
        }
        assert_eq!(Method::from_token("get"), None);
        assert!("BREW".parse::<Method>().is_err());
    }
}
