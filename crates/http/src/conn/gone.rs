//! A client that finished sending, or is gone, while its connection was not reading; and
//! giving up on it.

use std::sync::Arc;

use duo_net::{log_limited, ConnCtx};

use super::{Backlog, HttpConn, Phase, Service};

impl Service {
    /// The client finished sending, or is gone (reset), while the connection was not
    /// reading (the server's `on_peer_half_close_while_paused`). A client that is gone
    /// can receive nothing: its connection, blocked on output the reset dropped (no
    /// write-complete will come) or waiting for an answer that cannot be sent, closes
    /// now rather than at its timeout. One that only finished sending may still read:
    /// unless `abort` (`abort_on_client_close`), nothing changes; with it, one waiting for
    /// a deferred answer gives it up, one blocked on its output is still served what it
    /// can read, but runs no deferred handler.
    pub(crate) fn on_client_finished(self: &Arc<Service>, ctx: &mut ConnCtx<'_>, abort: bool) {
        self.with_state(ctx, |svc, ctx, st| {
            // (In these phases the server has not begun closing: not connected means the
            // peer is gone.)
            let paused = matches!(st.phase, Phase::Blocked | Phase::Waiting(_));
            if paused && !ctx.connection().is_connected() {
                log_limited!(
                    log::Level::Debug,
                    "{}: the client is gone while its requests wait; closing",
                    ctx.connection().name()
                );
                st.backlog = Backlog::default();
                return ctx.force_close();
            }
            if abort {
                st.client_finished = true;
                if matches!(st.phase, Phase::Waiting(_)) {
                    svc.abandon(ctx, st);
                }
            }
        });
    }

    /// Gives up on a client that left: what is queued for it is written, nothing more is
    /// answered or run, and the connection closes (`close_after_flush` reads and drops
    /// what the client still sends rather than reset it).
    pub(super) fn abandon(self: &Arc<Service>, ctx: &mut ConnCtx<'_>, st: &mut HttpConn) {
        log_limited!(
            log::Level::Debug,
            "{}: the client left before its deferred answer; closing",
            ctx.connection().name()
        );
        st.backlog = Backlog::default();
        ctx.close_after_flush();
        self.enter_closing(ctx, st);
    }
}
