//! Review round 6 of duo-http: `CONNECT` refused, `CONNECT` ports, and the `Allow` lists
//! of routes no request can reach, against the real server over loopback. (Written by a
//! review helper: each test failed before its fix.)

mod util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use duo_http::{HttpServerThread, Method, Request, Responder, Response, Router, StatusCode};
use util::{start, test_builder, Client};

/// The test routes plus `GET /count` (counts its calls), `CONNECT tunnel.test:443`
/// (refused by its handler: 403), `CONNECT deferred.test:443` (refused later, from
/// another thread: 502) and `CONNECT` routes keyed by out-of-range ports (200: they must
/// never be reached).
fn server() -> (HttpServerThread, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    let mut builder = test_builder()
        .route(Method::Get, "/count", move |_| {
            count.fetch_add(1, Ordering::SeqCst);
            Response::text(StatusCode::OK, "counted")
        })
        .route(Method::Connect, "tunnel.test:443", |_| {
            Response::text(StatusCode::FORBIDDEN, "no tunnels here\n")
        })
        .route_deferred(
            Method::Connect,
            "deferred.test:443",
            |_: &Request, r: Responder| {
                std::thread::spawn(move || {
                    r.respond(Response::text(StatusCode::new(502).unwrap(), "upstream\n"))
                });
            },
        );
    for target in BAD_PORTS {
        builder = builder.route(Method::Connect, target, |_| {
            Response::text(StatusCode::OK, "reached")
        });
    }
    (start(builder), hits)
}

/// Authority-form targets whose port is no TCP port (RFC 9112 section 3.2.3: CONNECT
/// names the host and port to open a tunnel to): beyond 65535, or 0.
const BAD_PORTS: [&str; 6] = [
    "bad.test:99999",
    "bad.test:65536",
    "bad.test:0",
    "bad.test:00000",
    "[::1]:70000",
    "bad.test:184467440737095516160",
];

/// RFC 9110 section 9.3.6: a client may send tunnel bytes right after its `CONNECT`
/// without waiting for the answer (optimistic tunnelling). A refused `CONNECT` (no route,
/// or a route's 4xx/5xx, at once or deferred) used to keep the connection open and parse
/// those bytes as requests: a request smuggled in the tunnel ran. The refusal now says
/// `Connection: close` and the connection ends; what followed never runs.
#[test]
fn a_refused_connect_closes_and_its_tunnel_bytes_never_run() {
    let (server, hits) = server();
    let tunnel = "GET /count HTTP/1.1\r\nHost: t\r\n\r\n";
    for (target, status) in [
        ("elsewhere.test:443", 404),
        ("tunnel.test:443", 403),
        ("deferred.test:443", 502),
    ] {
        for version in ["HTTP/1.1", "HTTP/1.0"] {
            let mut c = Client::connect(server.local_addr());
            let keep = if version == "HTTP/1.0" {
                "Connection: keep-alive\r\n"
            } else {
                ""
            };
            c.send(
                format!("CONNECT {target} {version}\r\nHost: {target}\r\n{keep}\r\n{tunnel}")
                    .as_bytes(),
            );
            let r = c.read_reply(false);
            assert_eq!(r.status, status, "CONNECT {target} {version}: {r:?}");
            assert_eq!(r.header("connection"), Some("close"), "{target}: {r:?}");
            assert!(r.header("content-length").is_some(), "framed: {r:?}");
            c.expect_eof();
        }
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a tunnelled request ran");
    server.stop().unwrap();
}

/// A `CONNECT` port must be a TCP port, 1 to 65535: `host:99999` or `host:0` used to be
/// taken as authority form and routed (200 from the route keyed by it). It is a 400 now,
/// saying why, and the connection closes.
#[test]
fn a_connect_port_out_of_range_is_a_400() {
    let (server, _) = server();
    for target in BAD_PORTS.into_iter().chain(["bad.test:", "bad.test:abc"]) {
        let mut c = Client::connect(server.local_addr());
        c.send(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes());
        let r = c.read_reply(false);
        assert_eq!(r.status, 400, "CONNECT {target}: {r:?}");
        assert!(r.text().contains("host:port"), "{target}: {}", r.text());
        c.expect_eof();
    }
    // The bounds themselves are ports.
    for target in ["edge.test:1", "edge.test:65535", "[::1]:65535"] {
        let mut c = Client::connect(server.local_addr());
        c.send(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes());
        let r = c.read_reply(false);
        assert_eq!(r.status, 404, "CONNECT {target}: {r:?}");
    }
    server.stop().unwrap();
}

/// `CONNECT` routes are keyed by `host:port`, every other method's by a path (or `*`
/// for `OPTIONS`): a route keyed otherwise (`CONNECT /tunnel`, `GET h:443`) can never
/// be reached, since the parser refuses such requests with 400. Such routes used to be
/// listed anyway: `PUT /tunnel` got 405 with `Allow: CONNECT` (and `CONNECT /tunnel` is
/// a 400), `CONNECT h:443` got 405 with `Allow: GET, HEAD`, and `OPTIONS *` listed
/// `CONNECT` for a server that tunnels nowhere. An `Allow` lists only what a request can
/// reach; a path with no reachable route is a 404.
#[test]
fn allow_lists_only_reachable_routes() {
    let router = Router::new()
        .route(Method::Connect, "/tunnel", |_: &Request| {
            Response::new(StatusCode::OK)
        })
        .route(Method::Get, "g.test:443", |_: &Request| {
            Response::new(StatusCode::OK)
        })
        .route(Method::Get, "/x", |_: &Request| {
            Response::new(StatusCode::OK)
        })
        .route(Method::Post, "/tunnel2", |_: &Request| {
            Response::new(StatusCode::OK)
        })
        .route(Method::Connect, "/tunnel2", |_: &Request| {
            Response::new(StatusCode::OK)
        });
    let put = router.respond(&Request::new(Method::Put, "/tunnel"));
    assert_eq!(put.status(), StatusCode::NOT_FOUND, "{put:?}");
    let put = router.respond(&Request::new(Method::Put, "/tunnel2"));
    assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(put.header_value("allow"), Some("POST"), "{put:?}");
    let connect = router.respond(&Request::new(Method::Connect, "g.test:443"));
    assert_eq!(connect.status(), StatusCode::NOT_FOUND, "{connect:?}");
    let options = router.respond(&Request::new(Method::Options, "*"));
    assert_eq!(
        options.header_value("allow"),
        Some("GET, HEAD, POST, OPTIONS"),
        "{options:?}"
    );
    // A reachable CONNECT route is listed, for the server as a whole and for its key.
    let router = router.route(Method::Connect, "t.test:443", |_: &Request| {
        Response::new(StatusCode::OK)
    });
    let options = router.respond(&Request::new(Method::Options, "*"));
    assert_eq!(
        options.header_value("allow"),
        Some("GET, HEAD, POST, CONNECT, OPTIONS")
    );

    // Over the wire, the same.
    let server = start(test_builder().router(router));
    let mut c = Client::connect(server.local_addr());
    c.send(b"PUT /tunnel HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    let r = c.read_reply(false);
    assert_eq!((r.status, r.header("allow")), (404, None), "{r:?}");
    c.send(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_reply(false);
    assert_eq!(
        r.header("allow"),
        Some("GET, HEAD, POST, CONNECT, OPTIONS"),
        "{r:?}"
    );
    server.stop().unwrap();
}
