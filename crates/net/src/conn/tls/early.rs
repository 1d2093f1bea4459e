//! Early data (TLS 1.3 0-RTT) on a server whose rustls configuration accepts it
//! (`max_early_data_size` above 0): rustls keeps it apart from the other plaintext, to be
//! read through `ServerConnection::early_data`. It is the first input of the connection,
//! delivered (with the rest) once the handshake completes. Early data can be replayed by
//! an attacker: a configuration that accepts it says the application's first messages
//! are safe to run twice.

use std::io;

use duo_buffer::{BufferError, InputBuffer, ReadOutcome};
use rustls::Connection;

use super::{Step, TlsState};

/// Moves the early data (TLS 1.3 0-RTT, if the server's configuration accepts it:
/// `max_early_data_size`) rustls holds into `input`, ahead of the plaintext after the
/// handshake: rustls keeps it apart (`ServerConnection::early_data`). All of it comes
/// before the client's `Finished`; once the handshake is over and none is left,
/// `early_open` goes off and this costs nothing more.
pub(super) fn take_early_data(tls: &mut TlsState, input: &mut InputBuffer) -> Step {
    let Connection::Server(server) = &mut tls.conn else {
        tls.early_open = false;
        return Step::Done;
    };
    let handshaking = server.is_handshaking();
    let Some(mut early) = server.early_data() else {
        tls.early_open = handshaking;
        return Step::Done;
    };
    loop {
        if input.len() >= input.max_len() {
            // Full (at most `max_input` of early data is announced: exactly that much
            // fills the input). The buffer refuses any read now, so look whether rustls
            // holds more: none left is no overflow. A byte taken here is lost, but more
            // early data than the input holds closes the connection anyway.
            let mut probe = [0u8; 1];
            return match io::Read::read(&mut early, &mut probe) {
                Ok(0) => {
                    tls.early_open = handshaking;
                    Step::Done
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tls.early_open = handshaking;
                    Step::Done
                }
                _ => Step::Full,
            };
        }
        match input.read_with(|iovs| io::Read::read_vectored(&mut early, iovs)) {
            Ok(ReadOutcome::Data { .. }) => tls.fresh = true,
            Ok(ReadOutcome::WouldBlock | ReadOutcome::Eof) => {
                tls.early_open = handshaking;
                return Step::Done;
            }
            Err(BufferError::Full { .. }) => return Step::Full,
            Err(e) => return Step::Buffer(e),
        }
    }
}
