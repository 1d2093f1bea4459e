//! A TCP relay (muduo's `examples/socks4a/tunnel.h`): every connection accepted on
//! `LISTEN_ADDR` is relayed, byte for byte and in both directions, to a connection of its
//! own to `BACKEND_ADDR`.
//!
//! ```text
//! cargo run -p duo-net --example tunnel 127.0.0.1:7001 127.0.0.1:7000
//! ```
//!
//! # What a relay needs
//!
//! - **One thread for both connections.** The inbound connection A (accepted by the
//!   server) starts a [`TcpClient`] to the backend on A's own loop, so the outbound
//!   connection B lives on the same thread. The client is kept in A's context; B's
//!   callbacks hold A's handle.
//! - **Immediate access.** A's message callback writes into B at once with
//!   [`TcpConnection::with_ctx`] (and B's into A): the bytes are written or buffered before
//!   the callback returns, and the high-water-mark callback, if crossed, has already run.
//!   Nothing is read from A before B is connected (A starts with reading stopped).
//! - **Backpressure on the source.** Both sides use [`Backpressure::Notify`]: when B's
//!   output crosses the high-water mark, *A* stops reading (through A's handle: A's own
//!   message callback is further up the stack, so `with_ctx` on A would say `Busy`, while
//!   [`TcpConnection::stop_reading`] takes effect at once); when B's output is written out,
//!   A resumes. The same holds the other way round. A slow reader on either side makes
//!   TCP flow control slow down the fast writer on the other; the relay holds about one
//!   high-water mark (plus one read) of data per direction.
//! - **Half-close.** When A's peer half-closes, B's write side is shut down once B's
//!   output is written (and the other way round); the other direction keeps flowing.
//!   A connection closes when both its directions are done, and then the other half-closes
//!   likewise. When one closes for any other reason (a reset, an error), the other stops
//!   reading, delivers what it still owes its peer, then closes (`close_after_flush`, cut
//!   short after a few seconds): what one side sent before its end was sent on purpose
//!   and reaches the other side, but nothing more can be relayed.
//! - **An unreachable backend** closes A with a log line once the client gives up. A
//!   client that resets while B is still connecting closes A at once, and B's connect
//!   with it (A, paused until B is up, watches for its peer's end:
//!   [`on_peer_half_close_while_paused`](duo_net::ServerBuilder::on_peer_half_close_while_paused)).
//!
//! `RUST_LOG=debug` shows each connection's "up" and "down (REASON)" lines. Ctrl-C stops
//! accepting and lets open relays finish for a few seconds.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use duo_net::process::{self, say, STOP_SIGNALS};
use duo_net::{
    Backpressure, CloseReason, ConnCtx, CtxUnavailable, EventLoop, InputBuffer, TcpClient,
    TcpConnection, TcpServer,
};

/// Output buffered for one peer above which the connection feeding it stops reading.
const HIGH_WATER: usize = 1 << 20;
/// Unused with [`Backpressure::Notify`] (the source resumes when the output is empty).
const LOW_WATER: usize = 256 << 10;
/// I/O threads; each relay (A and B) lives on one of them.
const IO_THREADS: usize = 2;
/// Connect attempts to the backend before A is closed, and the time each may take.
const CONNECT_ATTEMPTS: u32 = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a connection whose other side has gone may take to deliver what it still
/// owes its peer. Bounded, because that peer may be blocked writing to us while we no
/// longer read (it would see the end at once on a direct connection).
const FLUSH_GRACE: Duration = Duration::from_secs(5);
/// How long open relays may go on after SIGINT or SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A's context. B's callbacks hold A's handle, so A → client → callbacks → A is a cycle:
/// A's "down" callback takes the context, which breaks it.
struct Relay {
    /// Connects to the backend; dropped (after `disconnect`) when A closes.
    client: TcpClient,
    /// B, once connected.
    backend: Option<TcpConnection>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, backend) = match &args[..] {
        [listen, backend] => match (resolve(listen), resolve(backend)) {
            (Ok(l), Ok(b)) => (l, b),
            (Err(e), _) | (_, Err(e)) => return usage(&e),
        },
        _ => return usage("expected two addresses"),
    };
    match run(listen, backend) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(format!("tunnel: {e}"));
            ExitCode::FAILURE
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    say(format!("tunnel: {problem}\nusage: tunnel LISTEN_ADDR BACKEND_ADDR   (e.g. 127.0.0.1:7001 127.0.0.1:7000)"));
    ExitCode::from(2)
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))
}

fn run(listen: SocketAddr, backend: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    // Before any thread starts: the stop signals are read from the main loop only.
    process::prepare_server(&STOP_SIGNALS)?;
    let mut main_loop = EventLoop::new()?;
    let server = TcpServer::builder("tunnel", listen)
        .io_threads(IO_THREADS)
        .tcp_nodelay(true)
        .water_marks(HIGH_WATER, LOW_WATER)
        .backpressure(Backpressure::Notify)
        .on_connection(move |a| {
            if a.is_connected() {
                inbound_up(a, backend);
            } else {
                inbound_down(a);
            }
        })
        .on_message(|actx, input| match backend_of(actx.connection()) {
            Some(b) => forward(actx, input, &b),
            // Not reached: A reads only once B is up.
            None => actx.stop_reading(),
        })
        .on_high_water_mark(|actx, _| {
            if let Some(b) = backend_of(actx.connection()) {
                // Fired from inside B's message callback: B is busy, its handle is not.
                let _ = b.stop_reading();
            }
        })
        .on_write_complete(|actx| {
            if let Some(b) = backend_of(actx.connection()) {
                resume(actx, &b);
            }
        })
        .on_peer_half_close(|actx| match backend_of(actx.connection()) {
            Some(b) => half_close(actx, &b),
            None => actx.close_after_flush(),
        })
        // A's peer gone (a reset) while A waits, paused, for B: nobody is left to relay
        // to, so A closes (its "down" callback gives up the connect) rather than wait for
        // up to every connect attempt. A peer that only half-closed may still read the
        // answer: its request is relayed once B is up. (With B up, A is paused by
        // backpressure only, and what its peer sent before it went is relayed as usual.)
        .on_peer_half_close_while_paused(|actx| {
            if !actx.connection().is_connected() && backend_of(actx.connection()).is_none() {
                actx.force_close();
            }
        })
        // A graceful shutdown leaves relays running (until they end or the grace period
        // does) instead of half-closing A under a transfer.
        .on_shutdown(|_| {})
        .start(&mut main_loop)?;
    log::info!("relaying {} to {backend}", server.local_addr());
    // Ready once it prints `listening on`: a signal from then on stops the tunnel
    // gracefully.
    process::run_until_stopped(&mut main_loop, server, SHUTDOWN_GRACE)?;
    Ok(())
}

/// A is up (on its loop): connect B from the same loop, and hold A's input until B is up.
fn inbound_up(a: &TcpConnection, backend: SocketAddr) {
    let _ = a.stop_reading();
    // Named after A: its connection shows in the log as `tunnel#ID>backend-ADDR#1`.
    let client = TcpClient::builder(&format!("tunnel#{}>backend", a.id()), backend)
        .max_attempts(CONNECT_ATTEMPTS)
        .retry_backoff(Duration::from_millis(100), Duration::from_millis(400))
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .water_marks(HIGH_WATER, LOW_WATER)
        .backpressure(Backpressure::Notify)
        .on_connection({
            let a = a.clone();
            move |b| {
                if b.is_connected() {
                    backend_up(&a, b);
                } else {
                    other_side_closed(b, &a);
                }
            }
        })
        .on_message({
            let a = a.clone();
            move |bctx, input| forward(bctx, input, &a)
        })
        .on_high_water_mark({
            let a = a.clone();
            // Fired from inside A's message callback: A is busy, its handle is not.
            move |_, _| {
                let _ = a.stop_reading();
            }
        })
        .on_write_complete({
            let a = a.clone();
            move |bctx| resume(bctx, &a)
        })
        .on_peer_half_close({
            let a = a.clone();
            move |bctx| half_close(bctx, &a)
        })
        .on_connect_failed({
            let a = a.clone();
            move |failure| {
                if !failure.will_retry && !a.is_closed() {
                    log::info!(
                        "{}: backend {backend} unreachable after {} attempts ({}); closing",
                        a.name(),
                        failure.attempts,
                        failure.error
                    );
                    let _ = a.close_after_flush();
                }
            }
        })
        // The connect is queued: B cannot come up before the context below is set.
        .connect(a.loop_handle());
    a.set_context(Relay {
        client,
        backend: None,
    });
}

fn backend_up(a: &TcpConnection, b: &TcpConnection) {
    let known = a.with_context(|r: &mut Relay| r.backend = Some(b.clone()));
    if known.is_ok() {
        let _ = a.start_reading();
    } else {
        // A closed meanwhile (its context is gone).
        let _ = b.force_close();
    }
}

/// A closed: B ends too (below); the client goes with A's context.
fn inbound_down(a: &TcpConnection) {
    let Ok(relay) = a.take_context::<Relay>() else {
        return;
    };
    if let Some(b) = &relay.backend {
        other_side_closed(a, b);
    }
    // After `disconnect`, dropping the client lets B finish by itself (a plain drop would
    // cut it off and drop its output); it also cancels a connect still in progress.
    relay.client.disconnect();
}

/// `closed` is down: `other` delivers what it still owes its peer, then ends. After an
/// orderly end (both of `closed`'s directions done) `other` half-closes and closes once
/// its own peer is done, as in a direct connection; after a reset, an error or any other
/// close nothing more can be relayed, so `other` stops reading and closes.
///
/// Queued methods are right here (this callback has no `ConnCtx`): they run after every
/// byte already sent into `other` at once.
fn other_side_closed(closed: &TcpConnection, other: &TcpConnection) {
    if other.is_closed() {
        return;
    }
    match closed.close_reason() {
        Some(CloseReason::Peer) => {
            let _ = other.shutdown();
        }
        reason => {
            log::debug!(
                "{}: the other side closed ({}); closing",
                other.name(),
                reason.map_or_else(|| "?".to_owned(), |r| r.to_string())
            );
            let _ = other.close_after_flush();
            let _ = other.force_close_after(FLUSH_GRACE);
        }
    }
}

fn backend_of(a: &TcpConnection) -> Option<TcpConnection> {
    a.with_context(|r: &mut Relay| r.backend.clone())
        .ok()
        .flatten()
}

/// Moves what `from` received into `to`, at once (both are on this loop).
fn forward(from: &mut ConnCtx<'_>, input: &mut InputBuffer, to: &TcpConnection) {
    let sent = to.with_ctx(from.event_loop(), |to| to.send(input.peek()));
    input.consume_all();
    match sent {
        Ok(true) => {}
        // `to`'s peer is gone (a reset, say) but `to` is still open: it still holds what
        // that peer sent before it went, unread (paused by our backpressure, say), and
        // delivers it to `from` when it reads on. Nothing more can be relayed towards
        // `to`: stop reading `from`, and let `to`'s close end `from` (in
        // `other_side_closed`). Closing `from` now would close `to` and drop those bytes.
        Ok(false) if !to.is_closed() => {
            from.stop_reading();
            let _ = from.connection().force_close_after(FLUSH_GRACE);
        }
        // `to` is closed: nothing more can be relayed.
        Ok(false) | Err(CtxUnavailable::Closed) => {
            from.close_after_flush();
            let _ = from.connection().force_close_after(FLUSH_GRACE);
        }
        // Not reached: `to`'s callbacks never call into `from`'s message callback.
        Err(e) => {
            log::error!("{}: cannot relay: {e}", from.connection().name());
            from.force_close();
        }
    }
}

/// `drained`'s output is written: let its source read again.
fn resume(drained: &mut ConnCtx<'_>, source: &TcpConnection) {
    match source.with_ctx(drained.event_loop(), |s| s.start_reading()) {
        Ok(()) | Err(CtxUnavailable::Closed) => {}
        Err(_) => {
            let _ = source.start_reading();
        }
    }
}

/// `from`'s peer sent its last byte: `to` half-closes once its output is written.
fn half_close(from: &mut ConnCtx<'_>, to: &TcpConnection) {
    match to.with_ctx(from.event_loop(), |to| to.shutdown()) {
        Ok(()) => {}
        Err(CtxUnavailable::Closed) => from.close_after_flush(),
        Err(_) => {
            let _ = to.shutdown();
        }
    }
}
