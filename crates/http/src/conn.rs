//! One HTTP connection on its loop: the [`Service`] (routes, limits, timeouts) shared by
//! every connection of a server, and [`HttpConn`], each connection's state.
//!
//! # Phases and the one timer
//!
//! A connection is always in one phase, each with its deadline:
//!
//! | phase | waiting for | deadline | when it passes |
//! |---|---|---|---|
//! | `Head` | the rest of a request head | header timeout, from the connection's start (first request) or the request's first byte | 408 and close; a first request of which nothing came: close |
//! | `Body` | the rest of a body | body timeout, from the end of the head | 408 and close |
//! | `Idle` | the next request | keep-alive timeout, from the last response | close |
//! | `Closing` | the peer's close, after our last response and FIN | linger (renewed while the response is still being written, up to the keep-alive timeout) | close |
//!
//! One loop timer per connection serves all of them: a deadline moved later leaves the
//! timer as it is (when it fires it sees the later deadline and re-arms), a deadline moved
//! earlier re-arms it. So a busy keep-alive connection costs about one timer operation per
//! header timeout, not two per request.
//!
//! # Closing
//!
//! A response after which the connection must close (an error, `Connection: close`,
//! HTTP/1.0) is followed by a half-close once it is written, and what the peer still sends
//! is read and dropped until it closes too or the linger time passes: closing a socket
//! with unread input would send a reset, and the peer could lose the response.
//!
//! The state lives in the connection's context (a [`TcpConnection`] value); a callback
//! takes it out, works on it and puts it back, so the context's lock is never held while
//! the connection's own callbacks may run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_net::{ConnCtx, InputBuffer, TcpConnection};
use duo_reactor::TimerId;

use crate::response::ConnField;
use crate::{
    parse_request, Limits, Method, Parsed, Request, Response, Router, StatusCode, Version,
};

/// What every connection of one server shares: routes, limits, timeouts.
pub(crate) struct Service {
    pub(crate) router: Router,
    pub(crate) limits: Limits,
    pub(crate) header_timeout: Duration,
    pub(crate) body_timeout: Duration,
    pub(crate) keep_alive_timeout: Duration,
    pub(crate) linger: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Body,
    Idle,
    Closing,
}

/// One connection's HTTP state.
#[derive(Debug)]
pub(crate) struct HttpConn {
    phase: Phase,
    deadline: Instant,
    /// The pending timer and when it fires.
    armed: Option<(TimerId, Instant)>,
    /// Counts the timers armed: a timer that fires finds its number here, or was replaced
    /// (and does nothing).
    timer_seq: u64,
    /// `100 Continue` went out for the request being received.
    continue_sent: bool,
    /// Bytes of an unfinished request in the input buffer.
    pending: usize,
    /// When the connection entered `Closing`.
    closing_since: Option<Instant>,
}

impl Service {
    /// A connection came up or went down (the server's `on_connection`).
    pub(crate) fn on_connection(self: &Arc<Service>, conn: &TcpConnection) {
        if !conn.is_connected() {
            return;
        }
        conn.set_context(HttpConn {
            phase: Phase::Head,
            deadline: Instant::now() + self.header_timeout,
            armed: None,
            timer_seq: 0,
            continue_sent: false,
            pending: 0,
            closing_since: None,
        });
        let svc = self.clone();
        let _ = conn.queue_in_loop(move |ctx| {
            svc.with_state(ctx, |svc, ctx, st| {
                // Unless bytes came first and armed it already.
                if st.armed.is_none() {
                    let at = st.deadline;
                    svc.arm(ctx, st, at);
                }
            })
        });
    }

    /// A connection closed (the server's `on_close`, on its loop): its timer goes.
    pub(crate) fn on_close(conn: &TcpConnection) {
        if let Ok(HttpConn {
            armed: Some((timer, _)),
            ..
        }) = conn.take_context::<HttpConn>()
        {
            let _ = conn.loop_handle().queue_in_loop(move |lp| {
                lp.cancel(timer);
            });
        }
    }

    /// Bytes arrived (the server's `on_message`).
    pub(crate) fn on_message(self: &Arc<Service>, ctx: &mut ConnCtx<'_>, input: &mut InputBuffer) {
        self.with_state(ctx, |svc, ctx, st| svc.serve(ctx, st, input));
    }

    /// Runs `f` on the connection's state, taken out of its context and put back after
    /// (or dropped with its timer, if the connection closed meanwhile).
    fn with_state(
        self: &Arc<Service>,
        ctx: &mut ConnCtx<'_>,
        f: impl FnOnce(&Arc<Service>, &mut ConnCtx<'_>, &mut HttpConn),
    ) {
        let conn = ctx.connection().clone();
        let Ok(mut st) = conn.take_context::<HttpConn>() else {
            return;
        };
        f(self, ctx, &mut st);
        if conn.is_closed() {
            if let Some((timer, _)) = st.armed.take() {
                ctx.event_loop().cancel(timer);
            }
        } else {
            conn.set_context(st);
        }
    }

    /// Answers every complete request in `input`, in order.
    fn serve(
        self: &Arc<Service>,
        ctx: &mut ConnCtx<'_>,
        st: &mut HttpConn,
        input: &mut InputBuffer,
    ) {
        let peer = ctx.connection().peer_addr();
        loop {
            if st.phase == Phase::Closing {
                input.consume_all();
                break;
            }
            if input.is_empty() {
                break;
            }
            if st.phase == Phase::Idle {
                st.phase = Phase::Head;
                self.set_deadline(ctx, st, Instant::now() + self.header_timeout);
            }
            match parse_request(input.peek(), &self.limits, peer) {
                Err(e) => {
                    input.consume_all();
                    self.fail(ctx, st, e.status(), e.reason());
                }
                Ok(Parsed::Partial(p)) => {
                    if p.head_len.is_some() && st.phase != Phase::Body {
                        st.phase = Phase::Body;
                        self.set_deadline(ctx, st, Instant::now() + self.body_timeout);
                    }
                    if p.expects_continue && !st.continue_sent {
                        st.continue_sent = true;
                        ctx.send(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    break;
                }
                Ok(Parsed::Complete(req, used)) => {
                    input.consume(used);
                    st.continue_sent = false;
                    self.answer(ctx, st, &req);
                }
            }
        }
        st.pending = input.len();
    }

    /// Runs the request's handler and sends its response.
    fn answer(self: &Arc<Service>, ctx: &mut ConnCtx<'_>, st: &mut HttpConn, req: &Request) {
        let (resp, keep) = match catch_unwind(AssertUnwindSafe(|| self.router.respond(req))) {
            Ok(resp) => (resp, req.keep_alive()),
            Err(_) => {
                log::error!(
                    "{}: the handler of {} {} panicked; answering 500",
                    ctx.connection().name(),
                    req.method(),
                    req.path()
                );
                let resp =
                    Response::text(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n");
                (resp, false)
            }
        };
        let field = match (keep, req.version()) {
            (false, _) => ConnField::Close,
            (true, Version::Http10) => ConnField::KeepAlive,
            (true, Version::Http11) => ConnField::None,
        };
        send(ctx, &resp, req.method() == Method::Head, field);
        if keep {
            st.phase = Phase::Idle;
            self.set_deadline(ctx, st, Instant::now() + self.keep_alive_timeout);
        } else {
            self.close_gracefully(ctx, st);
        }
    }

    /// Answers `status` with `reason` as the body, and closes.
    fn fail(
        self: &Arc<Service>,
        ctx: &mut ConnCtx<'_>,
        st: &mut HttpConn,
        status: StatusCode,
        reason: &str,
    ) {
        log::debug!("{}: {status}: {reason}", ctx.connection().name());
        let resp = Response::text(status, format!("{reason}\n"));
        send(ctx, &resp, false, ConnField::Close);
        self.close_gracefully(ctx, st);
    }

    /// Half-closes once the output is written and drops input until the peer closes or
    /// the linger time passes.
    fn close_gracefully(self: &Arc<Service>, ctx: &mut ConnCtx<'_>, st: &mut HttpConn) {
        st.phase = Phase::Closing;
        st.closing_since = Some(Instant::now());
        ctx.shutdown();
        self.set_deadline(ctx, st, Instant::now() + self.linger);
    }

    /// The current phase ends at `deadline`.
    fn set_deadline(
        self: &Arc<Service>,
        ctx: &mut ConnCtx<'_>,
        st: &mut HttpConn,
        deadline: Instant,
    ) {
        st.deadline = deadline;
        match st.armed {
            // Fires no later than the deadline, and re-arms then.
            Some((_, at)) if at <= deadline => {}
            Some((timer, _)) => {
                ctx.event_loop().cancel(timer);
                self.arm(ctx, st, deadline);
            }
            None => self.arm(ctx, st, deadline),
        }
    }

    /// Arms the connection's timer for `at` (the caller cancelled any pending one).
    fn arm(self: &Arc<Service>, ctx: &mut ConnCtx<'_>, st: &mut HttpConn, at: Instant) {
        st.timer_seq += 1;
        let seq = st.timer_seq;
        let conn = ctx.connection().clone();
        let svc = self.clone();
        let timer = ctx.event_loop().run_at(at, move |lp| {
            // Closed meanwhile: nothing to do.
            let _ = conn.with_ctx(lp, |ctx| svc.on_timer(ctx, seq));
        });
        st.armed = Some((timer, at));
    }

    fn on_timer(self: &Arc<Service>, ctx: &mut ConnCtx<'_>, seq: u64) {
        self.with_state(ctx, |svc, ctx, st| {
            if seq != st.timer_seq {
                return; // replaced by a later timer
            }
            st.armed = None;
            if Instant::now() < st.deadline {
                let at = st.deadline;
                svc.arm(ctx, st, at);
                return;
            }
            let name = ctx.connection().name().to_string();
            match st.phase {
                Phase::Head if st.pending == 0 => {
                    log::debug!("{name}: no request within the header timeout; closing");
                    ctx.force_close();
                }
                Phase::Head | Phase::Body => {
                    svc.fail(
                        ctx,
                        st,
                        StatusCode::REQUEST_TIMEOUT,
                        "request not received in time",
                    );
                }
                Phase::Idle => {
                    log::debug!("{name}: idle past the keep-alive timeout; closing");
                    ctx.force_close();
                }
                // A large last response still going out to a slow reader gets up to the
                // keep-alive timeout in all.
                Phase::Closing
                    if ctx.output_len() > 0
                        && st
                            .closing_since
                            .is_some_and(|t| t.elapsed() < svc.keep_alive_timeout) =>
                {
                    let at = Instant::now() + svc.linger;
                    svc.set_deadline(ctx, st, at);
                }
                Phase::Closing => ctx.force_close(),
            }
        });
    }
}

/// Sends `resp` (its head and, unless `head_only`, its body) with one vectored write.
fn send(ctx: &mut ConnCtx<'_>, resp: &Response, head_only: bool, field: ConnField) {
    let mut head = Vec::with_capacity(256);
    let body = resp.encode_head(&mut head, head_only, field);
    ctx.send_parts(&[&head, body]);
}
