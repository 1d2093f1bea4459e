//! One client connection of the [`Engine`](crate::engine::Engine): its socket, the bytes
//! received and not yet consumed, the bytes queued for sending, and its TLS session.

use std::io::{self, Write};

use duo_sys::socket2::Socket;

use crate::fault::Fault;
use crate::net;
use crate::tls::TlsConn;

/// A connected (or connecting) socket and its bytes.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: Option<Socket>,
    /// Received, not yet consumed by the session.
    pub(crate) input: Vec<u8>,
    /// Queued for sending; `out[out_pos..]` is still unsent.
    pub(crate) out: Vec<u8>,
    out_pos: usize,
    /// The TLS session, with `--tls-ca` (`out` is then plaintext).
    pub(crate) tls: Option<Box<TlsConn>>,
}

impl Conn {
    pub(crate) fn new(stream: Socket) -> Conn {
        Conn {
            stream: Some(stream),
            input: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            tls: None,
        }
    }

    pub(crate) fn stream(&mut self) -> &mut Socket {
        self.stream.as_mut().expect("a live Conn has a stream")
    }

    /// Writes queued output until it is all sent or the socket is full.
    pub(crate) fn flush(&mut self) -> Result<(), Fault> {
        if let Some(tls) = &mut self.tls {
            let stream = self.stream.as_mut().expect("a live Conn has a stream");
            let plain = if tls.up {
                &self.out[self.out_pos..]
            } else {
                &[][..]
            };
            tls.flush(plain, stream)?;
            if tls.up {
                self.out.clear();
                self.out_pos = 0;
            }
            return Ok(());
        }
        while self.out_pos < self.out.len() {
            let stream = self.stream.as_mut().expect("a live Conn has a stream");
            match stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(Fault::Io),
                Ok(n) => self.out_pos += n,
                // Edge-triggered: the next writable edge resumes the flush.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Fault::of(&e)),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Closing also removes the socket from the epoll set: nothing else holds a
        // duplicate of the descriptor, so no explicit `epoll_ctl(DEL)` is needed.
        if let Some(stream) = self.stream.take() {
            net::close_abortively(stream);
        }
    }
}
