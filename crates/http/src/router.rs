//! [`Router`]: exact-path routes per method, and the 404 and 405 answers.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::{Method, Request, Response, StatusCode};

/// A request handler: runs on the loop thread of the connection the request came on, so
/// it must be quick (render a page from figures at hand, never block on I/O or a lock held
/// for long): while it runs, no other connection of that loop is served. Hand slow work
/// to a worker pool and serve its latest result instead.
///
/// A handler that panics gets its client a 500 and the connection closed; the loop and
/// the other connections go on.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Routes requests to handlers by exact path and method.
///
/// - a path no route has → `404 Not Found`;
/// - a path routed for other methods → `405 Method Not Allowed` with `Allow` listing them;
/// - `HEAD` on a path routed for `GET` (without a `HEAD` route of its own) → the `GET`
///   handler, whose body the server does not send.
///
/// Paths are compared as sent, byte for byte (not percent-decoded; `/a` and `/a/` are
/// two paths); the query string plays no part.
///
/// ```
/// use duo_http::{Method, Request, Response, Router, StatusCode};
///
/// let router = Router::new().route(Method::Get, "/healthz", |_req: &Request| {
///     Response::text(StatusCode::OK, "ok\n")
/// });
/// let get = router.respond(&Request::new(Method::Get, "/healthz?verbose"));
/// assert_eq!(get.body(), b"ok\n");
/// assert_eq!(router.respond(&Request::new(Method::Head, "/healthz")).status(), StatusCode::OK);
/// let post = router.respond(&Request::new(Method::Post, "/healthz"));
/// assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
/// assert_eq!(post.header_value("allow"), Some("GET, HEAD"));
/// assert_eq!(router.respond(&Request::new(Method::Get, "/nope")).status(), StatusCode::NOT_FOUND);
/// ```
#[derive(Clone, Default)]
pub struct Router {
    routes: HashMap<String, Vec<(Method, Handler)>>,
}

impl Router {
    /// No routes: every request gets 404.
    pub fn new() -> Router {
        Router::default()
    }

    /// Routes `method` requests for `path` to `handler`, replacing an earlier handler of
    /// the same method and path.
    pub fn route(
        mut self,
        method: Method,
        path: &str,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Router {
        self.add(method, path, Arc::new(handler));
        self
    }

    /// As [`route`](Router::route), with a handler that is already shared.
    pub fn add(&mut self, method: Method, path: &str, handler: Handler) {
        let methods = self.routes.entry(path.to_owned()).or_default();
        methods.retain(|(m, _)| *m != method);
        methods.push((method, handler));
    }

    /// The handler for `method` on `path`, if any (`GET`'s for `HEAD` without a `HEAD`
    /// route).
    pub fn handler(&self, method: Method, path: &str) -> Option<&Handler> {
        let methods = self.routes.get(path)?;
        let find = |m: Method| methods.iter().find(|(rm, _)| *rm == m).map(|(_, h)| h);
        find(method).or_else(|| {
            (method == Method::Head)
                .then(|| find(Method::Get))
                .flatten()
        })
    }

    /// The answer to `req`: its handler's response, or 404, or 405. (The body of a `HEAD`
    /// request's response is left to the server to drop.)
    pub fn respond(&self, req: &Request) -> Response {
        if let Some(h) = self.handler(req.method(), req.path()) {
            return h(req);
        }
        match self.routes.get(req.path()) {
            None => Response::text(StatusCode::NOT_FOUND, "not found\n"),
            Some(methods) => {
                let allow = Method::ALL
                    .into_iter()
                    .filter(|m| {
                        methods.iter().any(|(rm, _)| rm == m)
                            || (*m == Method::Head
                                && methods.iter().any(|(rm, _)| *rm == Method::Get))
                    })
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                Response::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
                    .header("Allow", &allow)
            }
        }
    }

    /// Number of (method, path) routes.
    pub fn len(&self) -> usize {
        self.routes.values().map(Vec::len).sum()
    }

    /// Whether there is no route.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut routes: Vec<String> = self
            .routes
            .iter()
            .flat_map(|(p, ms)| ms.iter().map(move |(m, _)| format!("{m} {p}")))
            .collect();
        routes.sort();
        f.debug_struct("Router").field("routes", &routes).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &'static str) -> impl Fn(&Request) -> Response + Send + Sync {
        move |_| Response::text(StatusCode::OK, body)
    }

    #[test]
    fn replace_and_explicit_head() {
        let r = Router::new()
            .route(Method::Get, "/a", ok("1"))
            .route(Method::Get, "/a", ok("2"))
            .route(Method::Head, "/a", ok("h"))
            .route(Method::Post, "/b", ok("b"));
        assert_eq!(r.len(), 3);
        assert_eq!(r.respond(&Request::new(Method::Get, "/a")).body(), b"2");
        assert_eq!(r.respond(&Request::new(Method::Head, "/a")).body(), b"h");
        let head_b = r.respond(&Request::new(Method::Head, "/b"));
        assert_eq!(head_b.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(head_b.header_value("Allow"), Some("POST"));
        assert_eq!(
            r.respond(&Request::new(Method::Get, "/a/")).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            format!("{r:?}"),
            r#"Router { routes: ["GET /a", "HEAD /a", "POST /b"] }"#
        );
    }
}
