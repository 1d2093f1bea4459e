//! Whether a client is taking its replies: what counts as activity for the idle timeout
//! besides the complete commands the message callback reads (`docs/bank-protocol.md`,
//! "Heartbeat and idle eviction"), and how long a connection the server is closing lives.
//!
//! The server refreshes the idle timer itself (`idle_refresh_on_read(false)`, so that a
//! slowloris peer is evicted). A client whose commands wait for the server is not idle
//! while they make progress, though it may send nothing meanwhile (it pipelined them and
//! waits, or the server stopped reading from it at `QUEUE_HIGH`):
//!
//! - a command of it completes while it is paused or more of its commands wait
//!   ([`completed`]);
//! - a command of it is on the workers: a command the server takes longer than the
//!   timeout to answer (its write waits for a database lock, the worker queue is long)
//!   does not make its client idle, who waits for the reply. A timer ([`watch_busy`])
//!   looks every quarter of the timeout whether the connection's job is still in flight,
//!   and refreshes it if so; such a slow command's completion then counts too, so the
//!   timeout counts from its reply;
//! - its replies drain while the server is not reading from it ([`drained`]);
//! - while `pump` holds its commands back because `OUTPUT_HIGH` bytes of replies wait,
//!   nothing of the above happens until the client has taken all of them, which a slow
//!   reader may take longer than the timeout to do: a timer ([`watch_drain`]) looks every
//!   quarter of the timeout at what the client has not received yet
//!   (`ConnCtx::output_undelivered`, which the kernel's acknowledgements shrink), and a
//!   decrease counts. A client that takes nothing is still evicted.
//!
//! Closing: a connection whose peer half-closed, or that a graceful shutdown is ending,
//! closes once every command it sent is answered ([`close_if_done`]). When the server
//! closes a connection itself (`QUIT`, `LINE_TOO_LONG`, the fifth failed login:
//! [`close_gently`]), it half-closes once the replies before are written and gives the
//! peer `CLOSE_LINGER` to close its side: counted from that half-close, not from the
//! command, since the client may take longer than that to take the replies.

use std::sync::Arc;
use std::time::Duration;

use duo_net::{ConnCtx, EventLoop, TcpConnection};

use super::session::Session;
use super::App;

/// After the server half-closes a connection (QUIT, LINE_TOO_LONG, too many failed logins),
/// how long the peer has to close its side before the server closes it anyway (counted
/// from that half-close, once the replies before it are written: [`linger`]).
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Looks at a held-back connection's delivery this many times per idle timeout.
const DRAIN_LOOKS_PER_TIMEOUT: u32 = 4;

/// A command of this connection completed; `waiting`: more of its commands are queued;
/// `slow`: it was still in flight at a look of [`watch_busy`].
pub(super) fn completed(ctx: &mut ConnCtx<'_>, waiting: bool, slow: bool) {
    // While the server reads from a client that sends nothing more, the commands read
    // refresh nothing: its backlog is the activity. (A request-response client, nothing
    // queued behind its command, costs no wheel work per job, unless the job was slow.)
    if waiting || slow || ctx.is_reading_paused() {
        ctx.refresh_idle();
    }
}

/// `pump` sent a job of this connection to the workers, and no timer watches its jobs
/// yet (`Session::busy_watch`, which the caller has set): every quarter of the idle
/// timeout, while a job of the connection is in flight, refresh it. One timer per
/// connection at most, which ends at the first look that finds no job in flight; a
/// request-response client whose jobs are quick costs a timer per quarter timeout, not
/// one per job.
pub(super) fn watch_busy(ctx: &mut ConnCtx<'_>, app: &Arc<App>) {
    let every = app.idle_timeout / DRAIN_LOOKS_PER_TIMEOUT;
    let conn = ctx.connection().clone();
    look_busy_after(ctx.event_loop(), conn, every);
}

/// In `every`, refreshes the connection if a job of it is in flight, and looks again;
/// else ends the watch.
fn look_busy_after(lp: &mut EventLoop, conn: TcpConnection, every: Duration) {
    lp.run_after(every, move |lp| {
        let conn = conn.clone();
        // Closed meanwhile: the watch ends with it.
        let _ = conn.clone().with_ctx(lp, |ctx| {
            let busy = conn
                .with_context(|s: &mut Session| {
                    s.slow_job |= s.busy;
                    s.busy_watch = s.busy;
                    s.busy
                })
                .unwrap_or(false);
            if busy {
                ctx.refresh_idle();
                look_busy_after(ctx.event_loop(), conn, every);
            }
        });
    });
}

/// The output drained (the write-complete callback).
pub(super) fn drained(ctx: &mut ConnCtx<'_>) {
    // A client that took its replies while the server is not reading from it (`QUEUE_HIGH`:
    // commands of its wait) is not idle. (While reading, see `completed`.)
    if ctx.is_reading_paused() {
        ctx.refresh_idle();
    }
}

/// `pump` holds the connection's commands back until its output drains: watch that the
/// client is taking it (one timer per connection, until the output is empty or the
/// connection closes).
pub(super) fn watch_drain(ctx: &mut ConnCtx<'_>, app: &Arc<App>) {
    if app.idle_timeout.is_zero() {
        return;
    }
    let conn = ctx.connection().clone();
    let arm = conn
        .with_context(|s: &mut Session| !std::mem::replace(&mut s.drain_watch, true))
        .unwrap_or(false);
    if arm {
        let every = app.idle_timeout / DRAIN_LOOKS_PER_TIMEOUT;
        let undelivered = ctx.output_undelivered();
        look_after(ctx.event_loop(), conn, every, undelivered);
    }
}

/// In `every`, compares what the client has not received with `before`.
fn look_after(lp: &mut EventLoop, conn: TcpConnection, every: Duration, before: usize) {
    lp.run_after(every, move |lp| {
        let conn = conn.clone();
        // Closed meanwhile: the watch ends with it.
        let _ = conn.clone().with_ctx(lp, |ctx| {
            if ctx.output_len() == 0 {
                // Drained: the write-complete callback has run `pump` again, which arms a
                // new watch if it holds the commands back again (a hold that began while
                // this look was pending is watched by this timer: the output is not empty).
                let _ = conn.with_context(|s: &mut Session| s.drain_watch = false);
                return;
            }
            let now = ctx.output_undelivered();
            if now < before {
                ctx.refresh_idle();
            }
            look_after(ctx.event_loop(), conn, every, now);
        });
    });
}

/// Closes (after the output) a connection whose peer has half-closed, or that a shutdown
/// is ending, once nothing is queued or in flight for it. Of one the server is closing,
/// starts the peer's linger once the output is written.
pub(super) fn close_if_done(ctx: &mut ConnCtx<'_>) {
    let conn = ctx.connection().clone();
    // The server's half-close has gone out (see `linger`).
    let written = ctx.output_len() == 0;
    let (done, linger) = conn
        .with_context(|s: &mut Session| {
            let linger = if written { s.linger.take() } else { None };
            (s.peer_done && !s.busy && s.queue.is_empty(), linger)
        })
        .unwrap_or((false, None));
    if let Some(limit) = linger {
        let _ = conn.force_close_after(limit);
    }
    if done {
        ctx.close_after_flush();
    }
}

/// Half-closes after the queued output, and closes for good if the peer lingers.
pub(super) fn close_gently(ctx: &mut ConnCtx<'_>) {
    ctx.start_reading(); // to see the peer's end of stream
    ctx.shutdown();
    linger(ctx, CLOSE_LINGER);
}

/// The server half-closes the connection once its output is written (`ConnCtx::shutdown`):
/// close it for good `limit` after that. If output waits, the time starts when it has
/// been written ([`close_if_done`] takes [`Session::linger`] then); until then the
/// connection is as any other whose client does not read (the idle timeout).
fn linger(ctx: &mut ConnCtx<'_>, limit: Duration) {
    if ctx.output_len() == 0 {
        let _ = ctx.connection().force_close_after(limit);
    } else {
        let _ = ctx
            .connection()
            .with_context(|s: &mut Session| s.linger = Some(limit));
    }
}
