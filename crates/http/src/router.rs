//! [`Router`]: exact-path routes per method, and the 404 and 405 answers.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::parse::connect_target;
use crate::{Method, Request, Responder, Response, StatusCode};

/// A request handler: runs on the loop thread of the connection the request came on, so
/// it must be quick (render a page from figures at hand, never block on I/O or a lock held
/// for long): while it runs, no other connection of that loop is served. Hand slow work
/// to a worker pool and serve its latest result instead.
///
/// A handler that panics gets its client a 500 and the connection closed; the loop and
/// the other connections go on.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// A handler that answers later: it gets the request and a [`Responder`], and answers
/// through the responder from any thread, when it has the answer (a worker pool's
/// result, another server's reply). It runs on the connection's loop thread like a
/// [`Handler`], so it too must return quickly: hand the work and the responder to
/// another thread and return.
///
/// Meanwhile the connection waits: its later pipelined requests are neither read nor
/// run, so responses keep their order, and the server's response timeout
/// ([`HttpServerBuilder::response_timeout`](crate::HttpServerBuilder::response_timeout))
/// bounds the wait. A responder dropped without an answer answers `500`; one that
/// answers after the timeout is ignored.
pub type DeferredHandler = Arc<dyn Fn(&Request, Responder) + Send + Sync>;

/// How a route answers: at once ([`Handler`]) or later ([`DeferredHandler`]).
#[derive(Clone)]
pub enum Route {
    /// The handler returns the response.
    Now(Handler),
    /// The handler answers through a [`Responder`], perhaps from another thread.
    Deferred(DeferredHandler),
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Route::Now(_) => "Route::Now",
            Route::Deferred(_) => "Route::Deferred",
        })
    }
}

/// Where a request goes: its route, or the answer when it has none.
pub(crate) enum Dispatch<'a> {
    Route(&'a Route),
    /// 404 or 405.
    Miss(Response),
}

/// Routes requests to handlers by exact path and method.
///
/// - a path no route has → `404 Not Found`;
/// - a path routed for other methods → `405 Method Not Allowed` with `Allow` listing them
///   (routes no request can reach are left out: a `CONNECT` route keyed by a path rather
///   than `host:port`, another method's keyed by `host:port`; a path with none left is a
///   404);
/// - `HEAD` on a path routed for `GET` (without a `HEAD` route of its own) → the `GET`
///   handler, whose body the server does not send (its length it does). A `HEAD` route
///   of its own that answers without generating the body says the `GET`'s length with
///   [`Response::head_content_length`], or goes without `Content-Length`;
/// - `OPTIONS *` (the server as a whole, RFC 9110 section 9.3.7), unless routed itself →
///   `200 OK` with no content and `Allow` listing every method some route serves (with
///   `HEAD` for `GET`) and `OPTIONS`.
///
/// Paths are compared as sent, byte for byte (not percent-decoded; `/a` and `/a/` are
/// two paths); the query string plays no part.
///
/// A route answers at once ([`route`](Router::route)) or later, through a [`Responder`]
/// ([`route_deferred`](Router::route_deferred)).
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
/// let options = router.respond(&Request::new(Method::Options, "*"));
/// assert_eq!(options.status(), StatusCode::OK);
/// assert_eq!(options.header_value("allow"), Some("GET, HEAD, OPTIONS"));
/// ```
#[derive(Clone, Default)]
pub struct Router {
    routes: HashMap<String, Vec<(Method, Route)>>,
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
        self.insert(method, path, Route::Now(Arc::new(handler)));
        self
    }

    /// Routes `method` requests for `path` to `handler`, which answers later through
    /// its [`Responder`] (see [`DeferredHandler`]), replacing an earlier handler of the
    /// same method and path.
    ///
    /// ```
    /// use duo_http::{Method, Request, Responder, Response, Router, StatusCode};
    ///
    /// let router = Router::new().route_deferred(Method::Get, "/slow", |req: &Request, r: Responder| {
    ///     let path = req.path().to_owned();
    ///     std::thread::spawn(move || r.respond(Response::text(StatusCode::OK, path)));
    /// });
    /// // Off a loop thread, `respond` waits for the answer.
    /// assert_eq!(router.respond(&Request::new(Method::Get, "/slow")).body(), b"/slow");
    /// ```
    pub fn route_deferred(
        mut self,
        method: Method,
        path: &str,
        handler: impl Fn(&Request, Responder) + Send + Sync + 'static,
    ) -> Router {
        self.insert(method, path, Route::Deferred(Arc::new(handler)));
        self
    }

    /// As [`route`](Router::route), with a handler that is already shared.
    pub fn add(&mut self, method: Method, path: &str, handler: Handler) {
        self.insert(method, path, Route::Now(handler));
    }

    /// As [`route_deferred`](Router::route_deferred), with a handler that is already
    /// shared.
    pub fn add_deferred(&mut self, method: Method, path: &str, handler: DeferredHandler) {
        self.insert(method, path, Route::Deferred(handler));
    }

    fn insert(&mut self, method: Method, path: &str, route: Route) {
        let methods = self.routes.entry(path.to_owned()).or_default();
        methods.retain(|(m, _)| *m != method);
        methods.push((method, route));
    }

    /// The route for `method` on `path`, if any (`GET`'s for `HEAD` without a `HEAD`
    /// route).
    pub fn handler(&self, method: Method, path: &str) -> Option<&Route> {
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
    ///
    /// A [deferred](Router::route_deferred) route's handler runs with a responder not
    /// tied to a connection ([`Responder::channel`]), and this waits until it answers
    /// (a `500` if it drops the responder): for tests and for callers off the loops,
    /// never on the loop thread the answer needs.
    pub fn respond(&self, req: &Request) -> Response {
        match self.dispatch(req) {
            Dispatch::Route(Route::Now(h)) => h(req),
            Dispatch::Route(Route::Deferred(h)) => {
                let (responder, answer) = Responder::channel();
                h(req, responder);
                answer.recv().unwrap_or_else(|_| Responder::unanswered())
            }
            Dispatch::Miss(resp) => resp,
        }
    }

    /// The route of `req`, or the 404 or 405 that answers it.
    pub(crate) fn dispatch(&self, req: &Request) -> Dispatch<'_> {
        if let Some(route) = self.handler(req.method(), req.path()) {
            return Dispatch::Route(route);
        }
        if req.method() == Method::Options && req.path() == "*" {
            let all = self.routes.iter().flat_map(|(path, methods)| {
                let path = path.as_str();
                methods
                    .iter()
                    .map(|(m, _)| *m)
                    .filter(move |&m| reachable(m, path))
            });
            let allow = allow(all.chain([Method::Options]));
            return Dispatch::Miss(Response::new(StatusCode::OK).header("Allow", &allow));
        }
        let path = req.path();
        let methods = self.routes.get(path).into_iter().flatten();
        let methods = methods.map(|(m, _)| *m).filter(|&m| reachable(m, path));
        Dispatch::Miss(if methods.clone().next().is_none() {
            Response::text(StatusCode::NOT_FOUND, "not found\n")
        } else {
            Response::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
                .header("Allow", &allow(methods))
        })
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

/// Whether a `method` request can have `path` as its path (RFC 9112 section 3.2): a
/// `CONNECT` request's is `host:port` (a port 1 to 65535), an `OPTIONS` request's a path
/// (`/...`) or `*`, any other's a path. The parser refuses every other pairing, so a route
/// keyed otherwise (`CONNECT /tunnel`, `GET host:443`) is never reached, and no `Allow`
/// lists it.
fn reachable(method: Method, path: &str) -> bool {
    match method {
        Method::Connect => connect_target(path).is_ok(),
        Method::Options => path.starts_with('/') || path == "*",
        _ => path.starts_with('/'),
    }
}

/// The `Allow` value of `methods` (with `HEAD` where `GET` is), in [`Method::ALL`]'s
/// order.
fn allow(methods: impl Iterator<Item = Method> + Clone) -> String {
    let has = |m: Method| methods.clone().any(|rm| rm == m);
    Method::ALL
        .into_iter()
        .filter(|&m| has(m) || (m == Method::Head && has(Method::Get)))
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ")
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

    #[test]
    fn deferred_routes_answer_through_their_responder() {
        let r = Router::new()
            .route_deferred(Method::Get, "/d", |req: &Request, resp: Responder| {
                let path = req.path().to_owned();
                std::thread::spawn(move || resp.respond(Response::text(StatusCode::OK, path)));
            })
            .route_deferred(Method::Post, "/d", |_: &Request, resp: Responder| {
                drop(resp)
            });
        assert!(matches!(
            r.handler(Method::Head, "/d"),
            Some(Route::Deferred(_))
        ));
        assert_eq!(r.respond(&Request::new(Method::Head, "/d")).body(), b"/d");
        let dropped = r.respond(&Request::new(Method::Post, "/d"));
        assert_eq!(dropped.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let put = r.respond(&Request::new(Method::Put, "/d"));
        assert_eq!(put.header_value("Allow"), Some("GET, HEAD, POST"));
    }
}
