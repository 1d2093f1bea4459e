//! [`Responder`]: how a [deferred](crate::Router::route_deferred) handler answers, from
//! any thread.

use std::fmt;
use std::sync::{mpsc, Arc, Weak};

use duo_net::{log_limited, TcpConnection};

use crate::conn::Service;
use crate::{Response, StatusCode};

/// The answer to one request whose handler answers later
/// ([`Router::route_deferred`](crate::Router::route_deferred)): `Send`, so it can go to
/// the thread that has the answer, and used once ([`respond`](Responder::respond)).
///
/// The connection waits for it: its later pipelined requests are not read or run until
/// the answer has been queued, so responses keep their order. Dropping a responder
/// without answering answers `500 Internal Server Error` and closes the connection after
/// it (the handler failed, say a worker panicked); an answer after the server's response
/// timeout, or after the connection closed, goes nowhere.
#[must_use = "a request is answered by `respond`; a dropped responder answers 500"]
pub struct Responder {
    to: Option<To>,
}

/// Where the answer goes.
enum To {
    /// The connection's state, on its loop: `seq` tells this request's answer from a
    /// late one to an earlier request. (The server's service weakly: a handler that
    /// keeps responders in its own state must not keep the server's routes, itself
    /// among them, alive.)
    Conn {
        conn: TcpConnection,
        svc: Weak<Service>,
        seq: u64,
    },
    /// A channel ([`Responder::channel`]).
    Channel(mpsc::Sender<Response>),
}

impl Responder {
    /// The responder for request `seq` of `conn`.
    pub(crate) fn for_conn(conn: TcpConnection, svc: &Arc<Service>, seq: u64) -> Responder {
        Responder {
            to: Some(To::Conn {
                conn,
                svc: Arc::downgrade(svc),
                seq,
            }),
        }
    }

    /// A responder not tied to a connection: its answer (a `500` if it is dropped
    /// unanswered) arrives on the receiver. For running a deferred handler outside a
    /// server, in tests say ([`Router::respond`](crate::Router::respond) does this).
    ///
    /// ```
    /// use duo_http::{Responder, Response, StatusCode};
    ///
    /// let (r, answer) = Responder::channel();
    /// std::thread::spawn(move || r.respond(Response::text(StatusCode::OK, "done\n")));
    /// assert_eq!(answer.recv()?.body(), b"done\n");
    ///
    /// let (r, answer) = Responder::channel();
    /// drop(r);
    /// assert_eq!(answer.recv()?.status(), StatusCode::INTERNAL_SERVER_ERROR);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn channel() -> (Responder, mpsc::Receiver<Response>) {
        let (tx, rx) = mpsc::channel();
        let responder = Responder {
            to: Some(To::Channel(tx)),
        };
        (responder, rx)
    }

    /// Answers the request with `resp`. It is queued to the connection's loop, which
    /// sends it (with the `Connection` field and `HEAD` handling of any response) and then
    /// serves the connection's next request.
    pub fn respond(mut self, resp: Response) {
        if let Some(to) = self.to.take() {
            deliver(to, resp, false);
        }
    }

    /// Whether the answer can still reach its client: `false` once the client reset the
    /// connection or it closed (the response timeout answered for it, the server
    /// stopped), so a handler can skip work nobody waits for. A client that closed its
    /// socket normally is seen here only on a server built with
    /// [`abort_on_client_close`](crate::HttpServerBuilder::abort_on_client_close);
    /// otherwise its FIN looks the same as a client that half-closed after its request
    /// and still reads, and it is noticed when the answer is written.
    pub fn is_connected(&self) -> bool {
        match &self.to {
            Some(To::Conn { conn, .. }) => conn.is_connected(),
            Some(To::Channel(_)) => true,
            None => false,
        }
    }

    /// What a request whose responder was dropped unanswered gets.
    pub(crate) fn unanswered() -> Response {
        Response::text(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
    }
}

/// Hands `resp` to where it goes; `failed`: the handler dropped its responder, so the
/// connection closes after this answer.
fn deliver(to: To, resp: Response, failed: bool) {
    match to {
        To::Conn { conn, svc, seq } => {
            // A closed connection (or a server gone) takes nothing: the answer goes
            // nowhere.
            if let Some(svc) = svc.upgrade() {
                let _ = conn.queue_in_loop(move |ctx| svc.on_answer(ctx, seq, resp, failed));
            }
        }
        To::Channel(tx) => {
            // The receiver gone: nobody waits.
            let _ = tx.send(resp);
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let Some(to) = self.to.take() else {
            return;
        };
        // While unwinding, the panic is what gets reported (by the server, for a handler
        // that panicked on the loop).
        if !std::thread::panicking() {
            if let To::Conn { conn, .. } = &to {
                log_limited!(
                    log::Level::Error,
                    "{}: a deferred handler dropped its responder unanswered; answering 500",
                    conn.name()
                );
            }
        }
        deliver(to, Responder::unanswered(), true);
    }
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to = match &self.to {
            Some(To::Conn { conn, seq, .. }) => format!("{} request {seq}", conn.name()),
            Some(To::Channel(_)) => "channel".to_owned(),
            None => "answered".to_owned(),
        };
        f.debug_struct("Responder").field("to", &to).finish()
    }
}
