//! A small HTTP/1.1 server on `duo-net`: a few routes served from a duo event loop,
//! without another runtime. duo serves its own `/metrics`, `/healthz` and `/debug/loops`
//! with it.
//!
//! - [`HttpServer`]: started on the application's loop ([`HttpServerBuilder::start`]) or
//!   on a loop thread of its own ([`HttpServerBuilder::spawn`] → [`HttpServerThread`]).
//! - [`Router`]: exact-path routes per [`Method`]; 404, 405 with `Allow`, `HEAD` from
//!   `GET`.
//! - [`Request`] (method, path, query, [`Headers`], body, [`Version`], peer address) and
//!   [`Response`] (a [`StatusCode`], header fields, a body).
//! - [`parse_request`]: the request parser (on `httparse`) with its [`Limits`].
//!
//! Handlers are plain functions, `Fn(&Request) -> Response`, run on the connection's
//! loop thread: they must be quick (see [`Handler`]). One whose answer takes I/O or time
//! is routed as deferred ([`Router::route_deferred`]): it gets a [`Responder`] and
//! answers through it later, from any thread, while the loop serves on.
//!
//! Request bodies come with `Content-Length` or chunked ([`ChunkedRequest`]: decoded as
//! they arrive; a handler gets the whole body either way).
//!
//! HTTPS: [`HttpServerBuilder::tls`] (duo-net's TLS, rustls).
//!
//! What it does not do: HTTP/2, upgrades, streaming request or response bodies (a
//! handler sees a whole request, a response is one buffer), compression, path parameters
//! or percent-decoding.
//!
//! # Example
//!
//! ```no_run
//! use duo_http::{HttpServer, Method, Response, StatusCode};
//!
//! let server = HttpServer::builder("status", "127.0.0.1:9100".parse()?)
//!     .route(Method::Get, "/healthz", |_req| Response::text(StatusCode::OK, "ok\n"))
//!     .spawn()?;
//! println!("serving on http://{}", server.local_addr());
//! // ... the application runs; dropping `server` (or `server.stop()`) ends it.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # How the crate is built
//!
//! | module | what it is |
//! |---|---|
//! | `method.rs`, `status.rs` | [`Method`], [`StatusCode`] |
//! | `request.rs`, `response.rs` | [`Request`] with [`Headers`] and [`Version`]; [`Response`] and how it is written |
//! | `limits.rs` | [`Limits`] and every default ([`defaults`]) |
//! | `parse.rs` | [`parse_request`]: bytes to a request, or the 4xx/5xx that refuses it |
//! | `chunked.rs` | [`ChunkedRequest`]: a chunked body, decoded as it arrives |
//! | `router.rs` | [`Router`], [`Route`], [`Handler`] and [`DeferredHandler`] |
//! | `responder.rs` | [`Responder`]: a deferred answer, from any thread to the connection's loop |
//! | `backlog.rs` | what a connection read and has not answered yet |
//! | `conn.rs` | one connection on its loop: phases, the one timer per connection, pipelining within an output bound, closing |
//! | `server.rs` | [`HttpServer`], [`HttpServerBuilder`], [`HttpServerThread`] |
// The doc examples are what users copy first: one that warns (an ignored `Result`, an
// unused value) fails its test.
#![doc(test(attr(deny(warnings))))]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

mod backlog;
mod chunked;
mod conn;
mod limits;
mod method;
mod parse;
mod request;
mod responder;
mod response;
mod router;
mod server;
mod status;

pub use chunked::ChunkedRequest;
pub use limits::{defaults, Limits};
pub use method::{Method, UnknownMethod};
pub use parse::{parse_request, ParseError, Parsed, Partial};
pub use request::{Headers, Request, Version};
pub use responder::Responder;
pub use response::{Response, TEXT_PLAIN};
pub use router::{DeferredHandler, Handler, Route, Router};
pub use server::{HttpServer, HttpServerBuilder, HttpServerThread};
pub use status::StatusCode;
