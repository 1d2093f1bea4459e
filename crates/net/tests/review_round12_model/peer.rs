//! The model test's peer: a non-blocking loopback client with a small receive buffer,
//! plain or TLS (a rustls client driven by hand).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use duo_net::tls::rustls::ClientConnection;

use super::util::pki::Pki;

/// The byte the peer sends at `offset`.
pub(crate) fn peer_byte(offset: usize) -> u8 {
    (offset % 251) as u8
}

/// The peer's side of one case.
pub(crate) struct Peer {
    s: Option<TcpStream>,
    tls: Option<ClientConnection>,
    /// Bytes written (over TLS: handed to rustls, which sends them as the socket takes
    /// them).
    pub(crate) sent: usize,
    pub(crate) got: Vec<u8>,
    pub(crate) reading: bool,
    pub(crate) fin: bool,
    /// Over TLS: the TCP half-close waits for the records before it (close_notify
    /// included) to be written.
    fin_pending: bool,
    pub(crate) reset: bool,
    /// The server's end of stream (or a reset) was seen.
    pub(crate) ended: bool,
    /// Bytes the server's kernel had acknowledged when the peer reset (0 over TLS:
    /// ciphertext does not count plaintext).
    pub(crate) acked_at_reset: usize,
}

impl Peer {
    /// Connects to `addr` (and completes a TLS handshake with `pki`'s CA).
    pub(crate) fn connect(addr: SocketAddr, pki: Option<&Pki>) -> Peer {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.set_recv_buffer_size(16 << 10).expect("SO_RCVBUF");
        sock.connect(&addr.into()).expect("connect");
        let mut s: TcpStream = sock.into();
        let tls = pki.map(|pki| {
            s.set_read_timeout(Some(duo_testkit::LIMIT)).unwrap();
            let mut conn = pki.client_conn();
            while conn.is_handshaking() {
                conn.complete_io(&mut s).expect("TLS handshake");
            }
            conn
        });
        s.set_nonblocking(true).expect("non-blocking");
        Peer {
            s: Some(s),
            tls,
            sent: 0,
            got: Vec::new(),
            reading: true,
            fin: false,
            fin_pending: false,
            reset: false,
            ended: false,
            acked_at_reset: 0,
        }
    }

    /// Writes up to `n` bytes of the pattern, what the socket (or rustls) takes now.
    pub(crate) fn send(&mut self, n: usize, peer_sent: &AtomicUsize) {
        if self.fin || self.reset {
            return;
        }
        let data: Vec<u8> = (self.sent..self.sent + n).map(peer_byte).collect();
        let mut off = 0;
        while off < n {
            let wrote = match self.tls.as_mut() {
                Some(tls) => tls.writer().write(&data[off..]),
                None => self.s.as_mut().expect("open").write(&data[off..]),
            };
            match wrote {
                Ok(0) => break,
                Ok(k) => off += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
            if self.tls.is_some() && !self.flush() {
                break;
            }
        }
        self.sent += off;
        peer_sent.store(self.wire(), Ordering::SeqCst);
        self.flush();
    }

    /// What the peer has written, as far as a closed server socket cares: its bytes, and
    /// over TLS its close_notify (a record, which a closed socket answers with a reset as
    /// it does any data; a plain FIN it does not).
    pub(crate) fn wire(&self) -> usize {
        self.sent + usize::from(self.tls.is_some() && self.fin)
    }

    /// Writes the TLS records rustls holds, what the socket takes; false if some are left.
    /// Then makes a pending half-close.
    pub(crate) fn flush(&mut self) -> bool {
        let (Some(tls), Some(s)) = (self.tls.as_mut(), self.s.as_mut()) else {
            return true;
        };
        while tls.wants_write() {
            match tls.write_tls(s) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if std::mem::take(&mut self.fin_pending) {
            let _ = s.shutdown(Shutdown::Write);
        }
        true
    }

    /// Reads what is there now, if reading.
    pub(crate) fn drain(&mut self) {
        self.flush();
        if !self.reading || self.ended {
            return;
        }
        let Some(s) = self.s.as_mut() else { return };
        let mut buf = vec![0u8; 64 << 10];
        let Some(tls) = self.tls.as_mut() else {
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break self.ended = true,
                    Ok(k) => self.got.extend_from_slice(&buf[..k]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                    Err(_) => break self.ended = true,
                }
            }
            return;
        };
        loop {
            match tls.read_tls(s) {
                Ok(0) => return self.ended = true,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return self.ended = true,
            }
            if tls.process_new_packets().is_err() {
                return self.ended = true;
            }
            loop {
                match tls.reader().read(&mut buf) {
                    // close_notify: the server's end of stream.
                    Ok(0) => return self.ended = true,
                    Ok(k) => self.got.extend_from_slice(&buf[..k]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => return self.ended = true,
                }
            }
        }
    }

    /// Half-closes (over TLS: close_notify, then the TCP FIN once it is written).
    pub(crate) fn fin(&mut self, peer_sent: &AtomicUsize) {
        if self.fin || self.reset {
            return;
        }
        self.fin = true;
        peer_sent.store(self.wire(), Ordering::SeqCst);
        match self.tls.as_mut() {
            Some(tls) => {
                tls.send_close_notify();
                self.fin_pending = true;
                self.flush();
            }
            None => {
                let _ = self.s.as_ref().expect("open").shutdown(Shutdown::Write);
            }
        }
    }

    /// Resets the connection (`SO_LINGER` 0, close).
    pub(crate) fn reset(&mut self) {
        if self.reset {
            return;
        }
        self.reset = true;
        self.ended = true;
        if let Some(s) = self.s.take() {
            if self.tls.is_none() {
                // What the server's kernel has acknowledged is its to deliver.
                let unacked = duo_sys::bytes_unacknowledged(s.as_fd()).unwrap_or(self.sent);
                self.acked_at_reset = self.sent - unacked.min(self.sent);
            }
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
    }
}
