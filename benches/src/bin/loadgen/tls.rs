//! TLS for every mode (`--tls-ca PEM`): each connection runs a rustls client session
//! inside the engine, verifying the server as `localhost` against the CA certificates of
//! the file. A session's `on_open` runs once the handshake completes; sessions see
//! plaintext. TLS failures count as `io` errors.

use std::io::{self, Read, Write};
use std::sync::{Arc, OnceLock};

use duo_net::tls::{self, rustls};

use crate::fault::Fault;

/// The run's client configuration, if `--tls-ca` was given.
static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

/// Turns TLS on for this process, trusting the CA certificates of `ca`.
pub(crate) fn enable(ca: &std::path::Path) -> Result<(), String> {
    let config = tls::client_config_from_pem(ca).map_err(|e| e.to_string())?;
    let _ = CONFIG.set(config);
    Ok(())
}

/// One connection's TLS session and the ciphertext waiting to be written.
#[derive(Debug)]
pub(crate) struct TlsConn {
    session: rustls::ClientConnection,
    wire: Vec<u8>,
    wire_pos: usize,
    /// The handshake completed and the session's `on_open` ran.
    pub(crate) up: bool,
    /// When the handshake began: one that takes longer than `--timeout` fails the
    /// connection as a timeout, like a stalled connect.
    pub(crate) started: std::time::Instant,
}

impl TlsConn {
    /// A session for a new connection, if TLS is on.
    pub(crate) fn start() -> Option<Result<Box<TlsConn>, Fault>> {
        let config = CONFIG.get()?.clone();
        let name = tls::server_name("localhost").expect("a valid name");
        Some(match rustls::ClientConnection::new(config, name) {
            Ok(mut session) => {
                session.set_buffer_limit(None);
                Ok(Box::new(TlsConn {
                    session,
                    wire: Vec::new(),
                    wire_pos: 0,
                    up: false,
                    started: std::time::Instant::now(),
                }))
            }
            Err(_) => Err(Fault::Io),
        })
    }

    /// Hands ciphertext read from the socket to rustls and appends the plaintext to
    /// `plain`; true if the handshake just completed.
    pub(crate) fn take_in(&mut self, mut wire: &[u8], plain: &mut Vec<u8>) -> Result<bool, Fault> {
        while !wire.is_empty() {
            match self.session.read_tls(&mut wire) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => return Err(Fault::Io),
            }
            self.session.process_new_packets().map_err(|_| Fault::Io)?;
            match self.session.reader().read_to_end(plain) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(Fault::Io),
            }
        }
        let just_up = !self.up && !self.session.is_handshaking();
        self.up |= just_up;
        Ok(just_up)
    }

    /// Encrypts `plain` (once the handshake is done) and writes the ciphertext until it is
    /// all sent or the socket is full.
    pub(crate) fn flush(
        &mut self,
        plain: &[u8],
        stream: &mut socket2::Socket,
    ) -> Result<(), Fault> {
        if !plain.is_empty() {
            self.session
                .writer()
                .write_all(plain)
                .map_err(|_| Fault::Io)?;
        }
        while self.session.wants_write() {
            if self.session.write_tls(&mut self.wire).is_err() {
                return Err(Fault::Io);
            }
        }
        while self.wire_pos < self.wire.len() {
            match stream.write(&self.wire[self.wire_pos..]) {
                Ok(0) => return Err(Fault::Io),
                Ok(n) => self.wire_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Fault::of(&e)),
            }
        }
        self.wire.clear();
        self.wire_pos = 0;
        Ok(())
    }
}
