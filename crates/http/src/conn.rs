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
//! | `Idle` | the next request | keep-alive timeout, from the last response, renewed while the client still receives it | close |
//! | `Blocked` | the client to read the responses queued for it, with requests still to answer | keep-alive timeout, renewed while the client receives them | close |
//! | `Waiting` | a deferred handler's answer (its [`Responder`]) | response timeout, from the request | 503 and close |
//! | `Closing` | the peer's close, after our last response and FIN | linger (renewed while the response is still being written, until a keep-alive timeout passes in which the client received none of it) | close |
//!
//! One loop timer per connection serves all of them: a deadline moved later leaves the
//! timer as it is (when it fires it sees the later deadline and re-arms), a deadline moved
//! earlier re-arms it. So a busy keep-alive connection costs about one timer operation per
//! header timeout, not two per request.
//!
//! # Pipelined requests and a client that does not read
//!
//! Requests are answered as they come, in order, as long as the connection's queued
//! output stays within [`Service::max_pending_output`]. Past it, the connection enters
//! `Blocked`: the unanswered requests move to the connection's backlog (they already left
//! the socket), reading stops, and the rest waits until the client has taken everything
//! queued (the write-complete callback); then the backlog is served on, and reading
//! resumes once it holds no complete request. So a client that pipelines without reading
//! makes the server hold at most the bound plus one response, and TCP flow control slows
//! the client down. The request timeouts do not run meanwhile: a connection is not late
//! with its next request while the server has not answered the last one.
//!
//! While the backlog holds the start of a request (it ended in one), later input is
//! appended to it and parsed from there, so order is kept; it is freed once empty.
//!
//! A response is never cut off for being read slowly: the timers of `Idle`, `Blocked` and
//! `Closing` are renewed while the client receives something of its output (the queued
//! output plus what the kernel holds unacknowledged,
//! [`ConnCtx::output_undelivered`]), so the keep-alive timeout bounds how long a client
//! may receive nothing, not a whole transfer (as nginx's `send_timeout`).
//!
//! # Deferred answers
//!
//! A request routed to a [deferred handler](crate::Router::route_deferred) puts the
//! connection in `Waiting`, as `Blocked` does: what follows the request moves to the
//! backlog and reading stops. The handler's [`Responder`] queues its answer to the
//! connection's loop ([`Service::on_answer`]), which sends it and serves the backlog on.
//! Each deferred request has a number, so an answer that comes after the response timeout
//! answered for it (or after a later request) is recognised and dropped.
//!
//! # Closing
//!
//! A response after which the connection must close (an error, `Connection: close`,
//! HTTP/1.0, an answer to `CONNECT`) is followed by a half-close once it is written, and
//! what the peer still sends is read and dropped until it closes too or the linger time
//! passes: closing a socket with unread input would send a reset, and the peer could
//! lose the response.
//!
//! # Graceful shutdown
//!
//! The server's shutdown marks each connection draining (the `on_shutdown` hook): an idle
//! one, or one that has received nothing of its next request (empty lines, or a lone CR
//! that may begin one, are nothing), closes at once (half-close and linger, as above);
//! one with a request under way (being received, or waiting in the backlog) answers that
//! request with `Connection: close` and closes after it. The rest of a pipeline is
//! dropped without running its handlers: no request runs whose response could not be
//! sent. The shutdown's grace period bounds it all.
//!
//! The state lives in the connection's context (a [`TcpConnection`] value); a callback
//! takes it out, works on it and puts it back, so the context's lock is never held while
//! the connection's own callbacks may run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_net::{log_limited, ConnCtx, InputBuffer, TcpConnection};
use duo_reactor::TimerId;

mod gone;
mod scan;

use crate::backlog::{Backlog, Source};
use crate::parse::empty_lines;
use crate::response::ConnField;
use crate::router::Dispatch;
use crate::{
    parse_request, ChunkedRequest, DeferredHandler, Limits, Method, Parsed, Request, Responder,
    Response, Route, Router, StatusCode, Version,
};
use scan::{begun, unfinished, Rescan};

/// What every connection of one server shares: routes, limits, timeouts.
pub(crate) struct Service {
    pub(crate) router: Router,
    pub(crate) limits: Limits,
    pub(crate) header_timeout: Duration,
    pub(crate) body_timeout: Duration,
    pub(crate) keep_alive_timeout: Duration,
    pub(crate) linger: Duration,
    /// How long a deferred handler may take to answer.
    pub(crate) response_timeout: Duration,
    /// Queued output beyond which a connection answers no further request until its
    /// client has read what is queued.
    pub(crate) max_pending_output: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Body,
    Idle,
    Blocked,
    /// For the answer to this request.
    Waiting(Awaited),
    Closing,
}

/// The request a deferred handler has yet to answer: how to send its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Awaited {
    /// Its number among the connection's deferred requests.
    seq: u64,
    /// The request's method: a `HEAD` request's answer goes without its body, a
    /// `CONNECT` request's successful answer without its body and length; any answer
    /// to `CONNECT` closes.
    method: Method,
    /// The request let the connection stay open.
    keep_alive: bool,
    version: Version,
}

/// What [`Service::serve`] stopped at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    /// Everything it could: the source is empty or holds the start of a request.
    All,
    /// A complete request waits at the front of the source: the output is full.
    OutputFull,
    /// A deferred handler has yet to answer: the rest of the source waits.
    Waiting,
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
    /// The request being received (its head incomplete, its body, or refused) is a `HEAD`
    /// request, so that its refusal goes without a body. Set by `serve` when it finds a
    /// request incomplete or refuses it; a complete request's answer reads its method.
    head_request: bool,
    /// Bytes of an unfinished request in the input buffer (a lone CR is none, see
    /// [`begun`]).
    pending: usize,
    /// A request whose chunked body is being decoded (`Body`), or is complete and waits
    /// for the output to drain (`Blocked`).
    chunked: Option<Box<ChunkedRequest>>,
    /// When the connection entered `Closing`, or its client last received some of the
    /// output still queued then.
    closing_since: Option<Instant>,
    /// Input taken off the input buffer and not answered yet (see the module docs).
    backlog: Backlog,
    /// While `Blocked`, or `Idle` after a response its client is still receiving: what
    /// the client had not received ([`ConnCtx::output_undelivered`]) when the timer was
    /// last set, to tell a client that reads slowly from one that does not read.
    undelivered: usize,
    /// The server is shutting down: the request under way is the last one answered.
    draining: bool,
    /// Deferred requests so far (numbers their answers).
    deferred: u64,
    /// The client finished sending while the connection was not reading, and the server
    /// gives up on such clients (`abort_on_client_close`): no deferred handler runs.
    client_finished: bool,
    /// What the last parse of the unfinished request at the front of the input found.
    rescan: Rescan,
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
            head_request: false,
            pending: 0,
            chunked: None,
            closing_since: None,
            backlog: Backlog::default(),
            undelivered: 0,
            draining: false,
            deferred: 0,
            client_finished: false,
            rescan: Rescan::default(),
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

    /// The server is shutting down (its `on_shutdown` hook): see the module docs.
    pub(crate) fn on_shutdown(self: &Arc<Service>, ctx: &mut ConnCtx<'_>) {
        self.with_state(ctx, |svc, ctx, st| {
            st.draining = true;
            let nothing_under_way = match st.phase {
                Phase::Idle => true,
                Phase::Head => st.pending == 0 && !begun(st.backlog.peek()),
                Phase::Body | Phase::Blocked | Phase::Waiting(_) | Phase::Closing => false,
            };
            if nothing_under_way {
                svc.close_gracefully(ctx, st);
            }
        });
    }

    /// Bytes arrived (the server's `on_message`).
    pub(crate) fn on_message(self: &Arc<Service>, ctx: &mut ConnCtx<'_>, input: &mut InputBuffer) {
        self.with_state(ctx, |svc, ctx, st| {
            if st.backlog.is_empty() {
                let served = svc.serve(ctx, st, input);
                if served != Served::All {
                    // The rest waits in the backlog, behind what holds the connection.
                    st.backlog.append(input.peek());
                    input.consume_all();
                    svc.hold(ctx, st, served);
                }
                st.pending = unfinished(input.peek());
            } else {
                // After what is in the backlog, in order.
                st.backlog.append(input.peek());
                input.consume_all();
                svc.serve_backlog(ctx, st);
            }
        });
    }

    /// The connection's output has all been written (the server's `on_write_complete`):
    /// a `Blocked` connection answers the requests it holds.
    pub(crate) fn on_write_complete(self: &Arc<Service>, ctx: &mut ConnCtx<'_>) {
        // Cheap test first: this runs after nearly every response, and a `Blocked`
        // connection has stopped reading.
        if !ctx.is_reading_paused() {
            return;
        }
        self.with_state(ctx, |svc, ctx, st| {
            if st.phase == Phase::Blocked {
                svc.serve_backlog(ctx, st);
            }
        });
    }

    /// Serves the backlog; blocks again if the output fills, else reads on.
    fn serve_backlog(self: &Arc<Service>, ctx: &mut ConnCtx<'_>, st: &mut HttpConn) {
        let mut backlog = std::mem::take(&mut st.backlog);
        let served = self.serve(ctx, st, &mut backlog);
        st.pending = unfinished(backlog.peek());
        st.backlog = backlog;
        match served {
            Served::OutputFull | Served::Waiting => self.hold(ctx, st, served),
            Served::All => {
                if st.phase == Phase::Blocked {
                    // Not reached (a blocked backlog starts with a complete request), but
                    // a connection must not stay blocked with nothing to wait for.
                    st.phase = Phase::Idle;
                    st.undelivered = 0;
                    self.set_deadline(ctx, st, Instant::now() + self.keep_alive_timeout);
                }
                ctx.start_reading();
            }
        }
    }

    /// Stops reading while `served` says the connection is held: blocked on its output,
    /// or waiting for a deferred answer.
    fn hold(self: &Arc<Service>, ctx: &mut ConnCtx<'_>, st: &mut HttpConn, served: Served) {
        match served {
            Served::OutputFull => self.block(ctx, st),
            Served::Waiting => ctx.stop_reading(),
            Served::All => {}
        }
    }

    /// Stops answering (and reading) until the client has read the queued output.
    fn block(self: &Arc<Service>, ctx: &mut ConnCtx<'_>, st: &mut HttpConn) {
        ctx.stop_reading();
        st.phase = Phase::Blocked;
        st.undelivered = ctx.output_undelivered();
        self.set_deadline(ctx, st, Instant::now() + self.keep_alive_timeout);
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

    /// Answers the complete requests in `input`, in order, while the queued output stays
    /// within the bound.
    fn serve(
        self: &Arc<Service>,
        ctx: &mut ConnCtx<'_>,
        st: &mut HttpConn,
        input: &mut impl Source,
    ) -> Served {
        let peer = ctx.connection().peer_addr();
        loop {
            // (Not connected: closing below us, so no response could be sent: run no
            // handler.)
            if st.phase == Phase::Closing || !ctx.connection().is_connected() {
                input.consume_all();
                break;
            }
            if matches!(st.phase, Phase::Waiting(_)) {
                return Served::Waiting;
            }
            if let Some(body) = &mut st.chunked {
                let fed = body.feed(input.peek());
                match fed {
                    Ok(used) => input.consume(used),
                    Err(e) => {
                        st.chunked = None;
                        input.consume_all();
                        self.fail(ctx, st, e.status(), e.reason());
                        continue;
                    }
                }
                if !body.is_complete() {
                    break;
                }
                if ctx.output_len() > self.max_pending_output {
                    return Served::OutputFull;
                }
                if let Some(req) = st.chunked.take().and_then(|b| b.into_request()) {
                    st.continue_sent = false;
                    self.answer(ctx, st, &req);
                }
                continue;
            }
            // Empty lines before a request are ignored (RFC 9112 section 2.2): a stray
            // CRLF after the last request does not begin another. A bare CR is not an
            // empty line: the parser refuses it.
            input.consume(empty_lines(input.peek()));
            // (Nor does a lone CR, which may be an empty line's start.)
            if !begun(input.peek()) {
                break;
            }
            if matches!(st.phase, Phase::Idle | Phase::Blocked) {
                st.phase = Phase::Head;
                self.set_deadline(ctx, st, Instant::now() + self.header_timeout);
            }
            if !st.rescan.worth_parsing(input.peek(), self.limits.max_head) {
                // (Its method may have come whole since: a refusal at its timeout goes
                // without a body to a `HEAD` request.)
                st.head_request = is_head(input.peek());
                break;
            }
            let parsed = parse_request(input.peek(), &self.limits, peer);
            st.rescan = Rescan::default();
            match parsed {
                Err(e) => {
                    st.head_request = is_head(input.peek());
                    input.consume_all();
                    self.fail(ctx, st, e.status(), e.reason());
                }
                Ok(Parsed::Partial(p)) => {
                    st.rescan.partial(input.len(), p.request_len);
                    st.head_request = is_head(input.peek());
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
                Ok(Parsed::Complete(_, _)) if ctx.output_len() > self.max_pending_output => {
                    return Served::OutputFull;
                }
                Ok(Parsed::Complete(req, used)) => {
                    input.consume(used);
                    st.continue_sent = false;
                    self.answer(ctx, st, &req);
                }
                // The body is decoded by the branch above, from the next turn on.
                Ok(Parsed::Chunked(body, used)) => {
                    st.head_request = is_head(input.peek());
                    input.consume(used);
                    st.phase = Phase::Body;
                    self.set_deadline(ctx, st, Instant::now() + self.body_timeout);
                    if body.expects_continue() && !st.continue_sent {
                        st.continue_sent = true;
                        ctx.send(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    st.chunked = Some(Box::new(body));
                }
            }
        }
        Served::All
    }

    /// Runs the request's handler and sends its response (or, for a deferred handler,
    /// waits for it).
    fn answer(self: &Arc<Service>, ctx: &mut ConnCtx<'_>, st: &mut HttpConn, req: &Request) {
        let handler = match self.router.dispatch(req) {
            Dispatch::Miss(resp) => return self.send_answer(ctx, st, req.into(), &resp),
            Dispatch::Route(Route::Deferred(h)) => return self.defer(ctx, st, req, h),
            Dispatch::Route(Route::Now(h)) => h,
        };
        match catch_unwind(AssertUnwindSafe(|| handler(req))) {
            Ok(resp) => self.send_answer(ctx, st, req.into(), &resp),
            Err(_) => self.handler_panicked(ctx, st, req),
        }
    }

    /// Runs a deferred handler: the connection waits for its answer (`Waiting`).
    fn defer(
        self: &Arc<Service>,
        ctx: &mut ConnCtx<'_>,
        st: &mut HttpConn,
        req: &Request,
        handler: &DeferredHandler,
    ) {
        if st.client_finished {
            return self.abandon(ctx, st);
        }
        st.deferred += 1;
        let mut awaited = Awaited::from(req);
        awaited.seq = st.deferred;
        st.phase = Phase::Waiting(awaited);
        self.set_deadline(ctx, st, Instant::now() + self.response_timeout);
        let responder = Responder::for_conn(ctx.connection().clone(), self, awaited.seq);
        if catch_unwind(AssertUnwindSafe(|| handler(req, responder))).is_err() {
            // (The responder, dropped in the unwinding, queued a 500 that will find
            // nothing awaited: the connection is closing.)
            self.handler_panicked(ctx, st, req);
        }
    }

    /// A deferred handler's answer to request `seq` (on the loop, queued by its
    /// [`Responder`]); `failed`: the responder was dropped unanswered. An answer to a
    /// request no longer awaited (answered 503 at the response timeout) is dropped.
    pub(crate) fn on_answer(
        self: &Arc<Service>,
        ctx: &mut ConnCtx<'_>,
        seq: u64,
        resp: Response,
        failed: bool,
    ) {
        self.with_state(ctx, |svc, ctx, st| {
            let mut awaited = match st.phase {
                Phase::Waiting(awaited) if awaited.seq == seq => awaited,
                _ => {
                    log_limited!(
                        log::Level::Debug,
                        "{}: a deferred answer came after its request was answered; dropped",
                        ctx.connection().name()
                    );
                    return;
                }
            };
            awaited.keep_alive &= !failed;
            svc.send_answer(ctx, st, awaited, &resp);
            // The next requests, if it stays open; else drops them and reads on to the
            // peer's close (the linger).
            svc.serve_backlog(ctx, st);
        });
    }

    /// A handler panicked: a peer can make a buggy one do so as often as it likes.
    fn handler_panicked(
        self: &Arc<Service>,
        ctx: &mut ConnCtx<'_>,
        st: &mut HttpConn,
        req: &Request,
    ) {
        log_limited!(
            log::Level::Error,
            "{}: the handler of {} {} panicked; answering 500",
            ctx.connection().name(),
            req.method(),
            req.path()
        );
        let mut to = Awaited::from(req);
        to.keep_alive = false;
        self.send_answer(ctx, st, to, &Responder::unanswered());
    }

    /// Sends `resp` as the answer to the request `to` describes, then waits for the next
    /// request or closes.
    fn send_answer(
        self: &Arc<Service>,
        ctx: &mut ConnCtx<'_>,
        st: &mut HttpConn,
        to: Awaited,
        resp: &Response,
    ) {
        // After any answer to `CONNECT` the connection ends: a successful one makes no
        // tunnel, and a client may have sent tunnel bytes behind a refused one without
        // waiting for it (RFC 9110 section 9.3.6), which must never be read as requests.
        let keep = to.keep_alive && !st.draining && to.method != Method::Connect;
        let field = match (keep, to.version) {
            (false, _) => ConnField::Close,
            (true, Version::Http10) => ConnField::KeepAlive,
            (true, Version::Http11) => ConnField::None,
        };
        send(ctx, resp, to.method, field);
        if keep {
            st.phase = Phase::Idle;
            // The wait for the next request begins once this response is delivered: the
            // timer renews while the client receives it (see `on_timer`).
            // (The timer's first look takes what is still undelivered then as its
            // measure: no system call per response.)
            st.undelivered = 0;
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
        // Every line a peer can cause is rate-limited, even at debug level.
        log_limited!(
            log::Level::Debug,
            "{}: {status}: {reason}",
            ctx.connection().name()
        );
        let resp = Response::text(status, format!("{reason}\n"));
        // The answer to a `HEAD` request has no body, a refusal's neither.
        let method = if st.head_request {
            Method::Head
        } else {
            Method::Get
        };
        send(ctx, &resp, method, ConnField::Close);
        self.close_gracefully(ctx, st);
    }

    /// Half-closes once the output is written and drops input until the peer closes or
    /// the linger time passes.
    fn close_gracefully(self: &Arc<Service>, ctx: &mut ConnCtx<'_>, st: &mut HttpConn) {
        ctx.shutdown();
        self.enter_closing(ctx, st);
    }

    /// The `Closing` phase: what is queued is written (the linger time, renewed while it
    /// is), nothing more is answered or run.
    fn enter_closing(self: &Arc<Service>, ctx: &mut ConnCtx<'_>, st: &mut HttpConn) {
        st.phase = Phase::Closing;
        st.closing_since = Some(Instant::now());
        st.undelivered = 0;
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
            // Whether the client received some of its responses since the last look (or
            // is receiving one the first look found).
            let undelivered = match st.phase {
                Phase::Idle | Phase::Blocked => ctx.output_undelivered(),
                Phase::Closing if ctx.output_len() > 0 => ctx.output_undelivered(),
                _ => 0,
            };
            let receiving =
                undelivered < st.undelivered || (st.undelivered == 0 && undelivered > 0);
            match st.phase {
                Phase::Head if st.pending == 0 => {
                    log_limited!(
                        log::Level::Debug,
                        "{name}: no request within the header timeout; closing"
                    );
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
                // Written out meanwhile (its write-complete is on its way): serve on.
                Phase::Blocked if ctx.output_len() == 0 => svc.serve_backlog(ctx, st),
                // Receiving, slowly (or just finished receiving the last response): the
                // wait for its next request, or for room to answer, starts again.
                Phase::Idle | Phase::Blocked if receiving => {
                    st.undelivered = undelivered;
                    let at = Instant::now() + svc.keep_alive_timeout;
                    svc.set_deadline(ctx, st, at);
                }
                Phase::Idle => {
                    log_limited!(
                        log::Level::Debug,
                        "{name}: idle past the keep-alive timeout; closing"
                    );
                    ctx.force_close();
                }
                Phase::Blocked => {
                    log_limited!(
                        log::Level::Debug,
                        "{name}: took none of its responses within the keep-alive timeout; closing"
                    );
                    ctx.force_close();
                }
                // A large last response still going out gets up to the keep-alive timeout
                // from the last time its client received some of it.
                Phase::Closing
                    if ctx.output_len() > 0
                        && (receiving
                            || st
                                .closing_since
                                .is_some_and(|t| t.elapsed() < svc.keep_alive_timeout)) =>
                {
                    if receiving {
                        st.undelivered = undelivered;
                        st.closing_since = Some(Instant::now());
                    }
                    let at = Instant::now() + svc.linger;
                    svc.set_deadline(ctx, st, at);
                }
                Phase::Waiting(mut to) => {
                    // The application's fault, not the peer's: but a handler that never
                    // answers could log once per request.
                    log_limited!(
                        log::Level::Warn,
                        "{name}: no answer from a deferred handler within the response \
                         timeout; answering 503"
                    );
                    let resp = Response::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no response within the response timeout\n",
                    );
                    to.keep_alive = false;
                    svc.send_answer(ctx, st, to, &resp);
                    // Drops what waits and reads on to the peer's close.
                    svc.serve_backlog(ctx, st);
                }
                Phase::Closing => ctx.force_close(),
            }
        });
    }
}

impl From<&Request> for Awaited {
    /// How to answer `req` (not deferred: numbered 0).
    fn from(req: &Request) -> Awaited {
        Awaited {
            seq: 0,
            method: req.method(),
            keep_alive: req.keep_alive(),
            version: req.version(),
        }
    }
}

/// Sends `resp`, the answer to a `method` request (its head and, unless the method or
/// status says otherwise, its body), with one vectored write.
fn send(ctx: &mut ConnCtx<'_>, resp: &Response, method: Method, field: ConnField) {
    let mut head = Vec::with_capacity(256);
    let body = resp.encode_head(&mut head, method, field);
    ctx.send_parts(&[&head, body]);
}

/// Whether the request at the start of `input` (past any empty lines) is, or begins as, a
/// `HEAD` request.
fn is_head(input: &[u8]) -> bool {
    input.starts_with(b"HEAD ")
}
