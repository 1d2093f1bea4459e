//! A TLS connection whose input the capped buffer pool refuses for now waits for memory,
//! as plain TCP does (`reading.rs`): a refused read takes nothing, so the plaintext stays
//! in rustls and the ciphertext not yet handed over is kept (`wire_left`); the retry
//! delivers it as held input. Before the connection is up (plaintext that came with the
//! handshake's last flight, early data), and for input that could never fit, the
//! connection closes `OutOfMemory` as before.

use duo_buffer::BufferError;
use duo_reactor::{Channel, EventLoop};

use super::super::machine::LoopConn;
use super::super::reading::never_fits;
use super::Pump;
use crate::close_reason::CloseReason;

impl LoopConn {
    /// The input buffer could not take the plaintext rustls holds (`e`), with `wire` not
    /// yet handed to rustls: waits for the pool to have room, or closes.
    pub(super) fn tls_input_refused(
        &mut self,
        lp: &mut EventLoop,
        ch: &mut Channel,
        e: BufferError,
        wire: &[u8],
    ) -> Pump {
        let up = self.m.tls.as_ref().is_some_and(|t| t.up);
        match e {
            BufferError::Pool(p) if up && !never_fits(&p, &self.input) => {
                self.keep_wire(wire);
                // The retry reads through `tls_read_ready`'s held path: what rustls and
                // `wire_left` hold first, then the socket. What the input holds was
                // delivered unless fresh (read in this pump before the refusal).
                self.m.held_input = true;
                if let Some(tls) = self.m.tls.as_mut() {
                    tls.pool_wait = true;
                }
                if self.read_when_pool_has_room(lp, ch) {
                    Pump::Held
                } else {
                    Pump::Closed
                }
            }
            e => {
                duo_reactor::log_limited!(
                    log::Level::Error,
                    "{}: read: {e}; closing",
                    self.m.handle.name()
                );
                self.m.close(lp, ch, CloseReason::OutOfMemory);
                Pump::Closed
            }
        }
    }
}

impl LoopConn {
    /// For the held path of `tls_read_ready`: true if this is a retry of a wait for the
    /// pool and nothing in the input is new to the message callback, which then is not
    /// called again with it (clears the wait's mark).
    pub(super) fn pool_waited(&mut self) -> bool {
        self.m
            .tls
            .as_mut()
            .is_some_and(|t| std::mem::take(&mut t.pool_wait) && !t.fresh)
    }
}
