//! The network layer of duo: TCP servers and clients on `duo-reactor`, muduo style.
//!
//! - [`TcpServer`]: an acceptor on the main loop hands each connection to one of
//!   `io_threads` sub loops (round robin); callbacks run on that loop.
//!   Idle timeout, connection limit, backpressure (high/low water marks), edge or level
//!   triggering, graceful shutdown.
//! - [`TcpConnection`]: the `Send + Sync + Clone` handle to one connection: thread-safe
//!   [`send`](TcpConnection::send), [`shutdown`](TcpConnection::shutdown),
//!   [`force_close`](TcpConnection::force_close), per-connection context. Inside callbacks,
//!   [`ConnCtx`] gives direct, allocation-free access on the loop thread.
//! - [`TcpClient`]: connects (non-blocking, with retry and backoff) and serves the
//!   connection with the same callbacks; a server callback can start one on its own loop
//!   and relay between the two at once ([`TcpConnection::with_ctx`],
//!   [`Backpressure::Notify`]).
//! - [`ServerConnections`]: every open connection of a server, for a broadcast that sends
//!   one shared buffer to all of them ([`ServerConnections::broadcast`]), bounded per
//!   reader by an [`OutputLimit`].
//! - [`UdpSocket`]: a UDP socket on a loop ([`udp`]): `on_datagram(ctx, payload, from)`,
//!   sends from any thread, `recvmmsg`/`sendmmsg` batches, pooled receive buffers,
//!   truncated datagrams detected, a bounded send queue.
//! - [`tls`] (feature `tls`, on by default): TLS through rustls on the same connections
//!   ([`ServerBuilder::tls`], [`ClientBuilder::tls`]), callbacks seeing plaintext.
//! - [`Endpoint`]: where a server listens or a client connects, TCP or Unix-domain
//!   (`127.0.0.1:7000`, `unix:/run/app.sock`, `unix:@name`): the same server, client and
//!   connection API over both, with the stale-socket-file policy at bind, the file removed
//!   at stop, and the peer's [`PeerCredentials`] on Unix-domain connections (example at
//!   [`TcpServer::builder`]).
//! - [`codec`]: framing helpers (length header, lines) that parse in place.
//! - [`ThreadPool`]: a bounded worker pool for blocking work (database, disk) that must
//!   never run on an I/O thread; re-exported from `duo-workers`.
//! - [`process`]: what a server binary does before it serves and when told to stop
//!   (signals, `SIGPIPE`, the descriptor limit, the `listening on` line, a rate-limited
//!   panic hook).
//!
//! # How the crate is built
//!
//! | module | what it is |
//! |---|---|
//! | `conn/` | the connection: the handle ([`TcpConnection`], any thread), [`ConnCtx`] (inside callbacks), the loop-side state machine (`conn/machine.rs`: two enums, `ReadSide` and `WriteSide`, and one close function that takes a [`CloseReason`]), the callbacks and [`ServerConnections`] |
//! | `config.rs` | `ConnConfig`: every connection setting and its default ([`defaults`]), with the builder methods written once for servers and clients |
//! | `per_loop.rs` | the net layer's state of one loop: idle wheels and buffer-trim timers |
//! | `server/` | builder, accepting, the running server and its shutdown |
//! | `client/` | the client and its connect attempts |
//! | `endpoint.rs` | [`Endpoint`]: TCP and Unix-domain addresses, parsed and displayed |
//! | `close_reason.rs`, `stats.rs` | why connections close, and the counters ([`ServerStats`], [`LoopStats`], [`CloseCounts`]) |
//! | `guard.rs` | the one place that catches a panic from application code |
//! | `udp/` | [`UdpSocket`]: the handle, its builder, the loop side (`udp/looped.rs`: handler, send queue, [`UdpCtx`]) and [`UdpStats`]; uses no other module of this crate |
//! | `tls.rs`, `conn/tls.rs` | feature `tls`: the public helpers (PEM files to rustls configurations), and the rustls session inside a connection (ciphertext in from the socket, plaintext out to the input buffer; plaintext sends encrypted into the output buffer) |
//!
//! Dependencies between these modules run one way (a tidy test rejects a cycle):
//! servers and clients use connections, connections use the per-loop state and the
//! settings, never the reverse.
//!
//! # Example: an echo server
//!
//! (`examples/echo.rs` is this, with its command line.)
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use duo_net::process::{self, STOP_SIGNALS};
//! use duo_net::{EventLoop, TcpServer};
//!
//! // Before any thread starts: the stop signals are then read by the main loop only.
//! process::prepare_server(&STOP_SIGNALS)?;
//! let mut main_loop = EventLoop::new()?;
//! let server = TcpServer::builder("echo", "127.0.0.1:7000".parse::<duo_net::Endpoint>()?)
//!     .io_threads(2)
//!     .on_message(|conn, input| {
//!         conn.send(input.peek());
//!         input.consume_all();
//!     })
//!     .start(&mut main_loop)?;
//! // Serves until Ctrl-C or SIGTERM; then lets what is queued drain (3 s at most), stops
//! // the I/O threads and returns (or returns the loop's error).
//! process::run_until_stopped(&mut main_loop, server, Duration::from_secs(3))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! This crate is safe Rust; every system call goes through [`duo_sys`].
// The doc examples are what users copy first: one that warns (an ignored `Result`, an
// unused value) fails its test.
#![doc(test(attr(deny(warnings))))]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

// Dependencies between the modules run one way (`xtask/tests/tidy.rs` rejects a `use`
// cycle): `close_reason`, `guard`, `codec`, `config`, `stats` use none of the others;
// `per_loop` the loop's services; `conn` the connection, on top of them; `server` and
// `client` on top of `conn`; `process` (set-up for server binaries) on top of `server`.
mod client;
mod close_reason;
pub mod codec;
mod config;
mod conn;
mod endpoint;
mod guard;
mod per_loop;
pub mod process;
mod server;
mod stats;
// UDP: its own module beside TCP (uses the reactor and sys layers only).
#[cfg(feature = "tls")]
pub mod tls;
pub mod udp;

pub use client::{ClientBuilder, ConnectFailure, TcpClient};
pub use close_reason::{CloseReason, TlsFailure};
pub use config::{defaults, Backpressure, OutputLimit};
#[cfg(feature = "tls")]
pub use conn::TlsInfo;
pub use conn::{
    ConnCtx, ConnName, ConnState, ConnectionClosed, ContextError, CtxUnavailable,
    ServerConnections, TcpConnection,
};
pub use duo_sys::PeerCredentials;
pub use duo_workers::{Job, SubmitError, ThreadPool};
pub use endpoint::{resolve_inet, Endpoint, ParseEndpointError, ResolveEndpointError};
pub use server::{AcceptMode, ServerBuilder, ServerHandle, TcpServer, WhenFull};
pub use stats::{CloseCounts, LoopStats, ServerStats};
pub use udp::{UdpBuilder, UdpCtx, UdpSendError, UdpSocket, UdpStats};

pub use duo_buffer::{BufPool, InputBuffer, PoolConfig};
pub use duo_reactor::{log_limited, report_suppressed, LogLimiter};
pub use duo_reactor::{
    loops, EventLoop, HealthConfig, LoopHandle, LoopMetrics, LoopSharing, ParseLoopSharingError,
    Signal,
};
