//! [`ServerConnections`]: every open connection of one server, on all its loops.

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use std::ops::ControlFlow;

use duo_reactor::{EventLoop, LoopHandle, Token};

use super::ctx::ConnCtx;
use super::machine::LoopConn;
use crate::per_loop::NetLoop;
#[cfg(doc)]
use crate::{Backpressure, OutputLimit};

/// What a server's connections know of their server: its key, its loops, and whether a
/// graceful shutdown has begun.
pub(crate) struct ServerLink {
    pub(crate) id: u64,
    pub(crate) loops: Vec<LoopHandle>,
    /// A graceful shutdown has begun: a connection established from now on is told at
    /// once ([`LoopConn::establish`]), since the shutdown's visit of its loop may have
    /// gone by (a hand-over between loops arrives after it).
    pub(crate) shutdown_begun: AtomicBool,
    /// The graceful shutdown's deadline has passed: a connection established from now on
    /// is closed at once (the deadline's visit of its loop may have gone by).
    pub(crate) deadline_passed: AtomicBool,
}

/// The open connections of one server, on all its loops: for a broadcast, or anything
/// else done to every connection. From [`ServerHandle::connections`] or, inside a
/// callback, [`ConnCtx::server_connections`]. `Clone + Send + Sync`.
///
/// [`ServerHandle::connections`]: crate::ServerHandle::connections
#[derive(Clone)]
pub struct ServerConnections {
    link: Arc<ServerLink>,
}

impl ServerConnections {
    pub(crate) fn new(link: Arc<ServerLink>) -> ServerConnections {
        ServerConnections { link }
    }

    /// Runs `f` on every open connection, on each connection's own loop: one queued
    /// function per loop, which visits that loop's connections in no particular order,
    /// 128 per loop iteration over all such visits ([`LoopHandle::queue_in_slices`]), so
    /// that a loop with many connections serves its other events in between. Returns at
    /// once.
    ///
    /// Calls made one after another from one thread reach each connection in that order,
    /// so messages broadcast by one sender arrive in the order sent; so does anything
    /// queued to the loop through a handle after the call (a send or a close through a
    /// [`TcpConnection`](crate::TcpConnection)), which waits for the end of the visit.
    /// The connections' own callbacks (their I/O) run between slices: a reply a
    /// connection sends from its message callback may reach it before a visit that began
    /// earlier does. The visit covers the connections registered on the loop when its
    /// first slice runs and still open when their turn comes: one accepted just now may
    /// be registered a moment after that, and miss it (order *across* senders, or
    /// relative to a connection's arrival, is not promised). A panic in `f` closes that
    /// connection only.
    pub fn for_each(&self, f: impl Fn(&mut ConnCtx<'_>) + Send + Sync + 'static) {
        self.visit("function run on every connection", false, Arc::new(f));
    }

    /// As [`for_each`](ServerConnections::for_each), but also on the connections still
    /// in their TLS handshake, which no callback has seen: for the server's graceful
    /// shutdown and its deadline, which must end those too.
    pub(crate) fn for_each_with_pending(
        &self,
        what: &'static str,
        f: impl Fn(&mut ConnCtx<'_>) + Send + Sync + 'static,
    ) {
        self.visit(what, true, Arc::new(f));
    }

    fn visit(
        &self,
        what: &'static str,
        pending: bool,
        f: Arc<dyn Fn(&mut ConnCtx<'_>) + Send + Sync>,
    ) {
        let id = self.link.id;
        for lp in &self.link.loops {
            let f = f.clone();
            // The loop's channels when the visit begins, then a slice of them per loop
            // iteration; what is queued to the loop after the visit waits for its end.
            let mut left: Option<Vec<Token>> = None;
            let _ = lp.queue_in_slices(move |lp| {
                let tokens = left.get_or_insert_with(|| {
                    let mut all = lp.channel_tokens();
                    all.reverse();
                    all
                });
                let from = tokens.len() - NetLoop::take_visits(lp, tokens.len());
                for token in tokens.drain(from..).rev() {
                    LoopConn::visit_of_server(lp, token, id, what, pending, &*f);
                }
                if tokens.is_empty() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
        }
    }

    /// Sends `msg` to every open connection without copying it per connection (see
    /// [`ConnCtx::send_shared`]; over TLS each connection encrypts its own copy); each
    /// connection's [`OutputLimit`] and [`Backpressure`] policy apply as to any send.
    ///
    /// Each call queues a visit to every loop ([`for_each`](ServerConnections::for_each)),
    /// and those queues are not bounded: the limits above count what reached an output
    /// buffer, not visits on their way. A sender that broadcasts faster than the loops
    /// visit their connections (many small messages from one read, say) must be paced:
    /// gather a read's messages into one broadcast, and stop reading the sender while a
    /// few of its broadcasts are on their way (the `chat` example does both; a value moved
    /// into a `for_each` closure is dropped once every loop has finished that visit).
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # fn demo(server: &duo_net::ServerHandle) {
    /// server.connections().broadcast(&b"the market opens\n"[..]);
    /// # }
    /// ```
    pub fn broadcast(&self, msg: impl Into<Arc<[u8]>>) {
        let msg: Arc<[u8]> = msg.into();
        self.for_each(move |ctx| {
            ctx.send_shared(msg.clone());
        });
    }
}

impl LoopConn {
    /// Runs `f` on each open connection of `server` on this loop: those the application
    /// has seen, and with `pending` also those still in their TLS handshake (for the
    /// server's own shutdown and stop, which must end them too). The loop's channels are
    /// visited (no per-connection bookkeeping: an idle connection costs nothing more, and
    /// opening or closing one costs no set insertion or removal).
    pub(crate) fn for_each_of_server(
        lp: &mut EventLoop,
        server: u64,
        what: &str,
        pending: bool,
        f: &(dyn Fn(&mut ConnCtx<'_>) + Send + Sync),
    ) {
        for token in lp.channel_tokens() {
            LoopConn::visit_of_server(lp, token, server, what, pending, f);
        }
    }

    /// Runs `f` on the connection of `token` if it is an open one of `server` (as
    /// [`LoopConn::for_each_of_server`] chooses them).
    pub(crate) fn visit_of_server(
        lp: &mut EventLoop,
        token: Token,
        server: u64,
        what: &str,
        pending: bool,
        f: &(dyn Fn(&mut ConnCtx<'_>) + Send + Sync),
    ) {
        lp.with_handler::<LoopConn, _>(token, |lp, ch, conn| {
            let ours = conn.m.owner.server.as_ref().is_some_and(|s| s.id == server);
            if ours && !conn.m.closed() && (pending || conn.m.is_up()) {
                conn.m.run_guarded(lp, ch, what, f);
            }
        });
    }
}

impl fmt::Debug for ServerConnections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConnections")
            .field("server", &self.link.id)
            .field("loops", &self.link.loops.len())
            .finish()
    }
}
