//! The `echo` binary as a child process, shared by the end-to-end tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::{Deref, DerefMut};
use std::process::Command;
use std::time::Duration;

use duo_testkit::ChildServer;

pub(crate) mod supervised;

/// Any single socket operation.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `echo` server; killed (SIGKILL by PID) and reaped on drop. Derefs to the
/// [`ChildServer`] (address, log, signals, exit).
pub(crate) struct Server(ChildServer);

impl Server {
    /// Starts `echo [serve] --listen 127.0.0.1:0 ARGS..` (`serve` is kept first if given)
    /// and waits for its `listening on` line.
    pub(crate) fn start(args: &[&str]) -> Server {
        let (sub, args) = match args.split_first() {
            Some((&"serve", rest)) => (&["serve"][..], rest),
            _ => (&[][..], args),
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_echo"));
        cmd.args(sub)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info");
        let server = ChildServer::start(cmd);
        assert_ne!(server.addr().port(), 0, "the real port is printed");
        Server(server)
    }

    /// A blocking client connection whose every operation has a deadline.
    pub(crate) fn connect(&self) -> TcpStream {
        let s = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }
}

impl Deref for Server {
    type Target = ChildServer;
    fn deref(&self) -> &ChildServer {
        &self.0
    }
}

impl DerefMut for Server {
    fn deref_mut(&mut self) -> &mut ChildServer {
        &mut self.0
    }
}

/// Sends `msg` and reads it back, asserting the echo.
pub(crate) fn round_trip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(buf, msg);
}

/// Reads until EOF; everything read.
pub(crate) fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("read to EOF");
    all
}

/// One framed packet: `kind` and the payload's length (big-endian `u32`s), then the payload.
pub(crate) fn packet(kind: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads one framed packet (`kind`, big-endian `u32`; length, big-endian `u32`; payload).
pub(crate) fn read_packet(stream: &mut impl Read) -> (u32, Vec<u8>) {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).expect("read packet header");
    let kind = u32::from_be_bytes(header[..4].try_into().unwrap());
    let len = u32::from_be_bytes(header[4..].try_into().unwrap()) as usize;
    let mut payload = vec![0u8; len];
    stream
        .read_exact(&mut payload)
        .expect("read packet payload");
    (kind, payload)
}
