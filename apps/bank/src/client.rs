//! `bank client`: a blocking client over TCP or a Unix-domain socket (`--connect
//! unix:/path`, `unix:@name`), TLS with `--tls` (rustls, verifying the server's
//! certificate against `--ca PEM`, by default the system's CA bundle, as the host name of
//! `--connect`; as `localhost` over a Unix-domain socket).
//!
//! - One-shot: `bank client [--connect ADDR] COMMAND ...` sends the words as one command
//!   line and prints the reply. A lone `;` separates several commands sent on the same
//!   connection (so `LOGIN alice pw ; BALANCE` works); it stops at the first `ERR`.
//! - Interactive: with no command, reads command lines from standard input (printing a
//!   prompt on standard error when standard input is a terminal) until end of input or
//!   `QUIT`. A line is sent as the bytes it is: one that is not UTF-8 gets the server's
//!   `BAD_REQUEST`, and the session goes on.
//!
//! The TLS settings (`--ca`) are loaded before connecting. A reply must be a whole line of
//! text of at most [`MAX_REPLY_LINE`] bytes: a TLS record instead (a TLS server answering
//! a client without `--tls`), a plaintext line where a TLS client expected the handshake,
//! a longer line, a `HISTORY` count above [`HISTORY_MAX`] or a line cut short by the
//! close is an error, never printed as a reply.
//!
//! Exit status: 1 if the connection fails or, in one-shot mode, after an `ERR` reply;
//! 2 if a one-shot command holds a line end ([`ClientError::Usage`]); else 0. A blank
//! one-shot command (the server sends no reply to a blank line) is skipped.

use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use duo_net::tls::{self, rustls};
use duo_net::Endpoint;
use socket2::{Domain, Socket, Type};

use crate::protocol::{extra_reply_lines, HISTORY_MAX};

/// How long to wait to connect, and for a reply.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest reply line taken: far above any a bank sends (a `HISTORY` entry names one
/// user), so that a peer streaming one endless line cannot grow the client without bound.
pub const MAX_REPLY_LINE: usize = 64 * 1024;

/// Why the client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address given.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection before replying.
    #[error("the server closed the connection")]
    Closed,
    /// No reply came within the reply timeout (the server is stuck, or it is no bank).
    #[error("no reply within {} s", .0.as_secs())]
    NoReply(Duration),
    /// The server closed the connection in the middle of a reply line.
    #[error("the server closed the connection in the middle of a reply")]
    CutShort,
    /// A TLS record came back where a reply was expected: the server speaks TLS.
    #[error("the server answered with TLS: it serves TLS; connect with --tls")]
    ServerSpeaksTls,
    /// A TLS client met a plaintext reply where the server's handshake was expected.
    #[error("the server does not speak TLS: connect without --tls")]
    ServerSpeaksPlain,
    /// A reply that is not text (UTF-8): not a bank server.
    #[error("the reply is not text: is this a bank server?")]
    NotText,
    /// A reply line longer than [`MAX_REPLY_LINE`]: not a bank server.
    #[error("a reply line longer than {MAX_REPLY_LINE} bytes: is this a bank server?")]
    TooLong,
    /// A `HISTORY` reply announcing more than [`HISTORY_MAX`] entries: not a bank server.
    #[error("HISTORY answered {0:?}, more than {HISTORY_MAX} entries: is this a bank server?")]
    TooManyEntries(String),
    /// The TLS settings could not be loaded (the system's CA bundle), or the host is no
    /// valid name.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsConfigError),
    /// The CA file given with `--ca` cannot be used: a usage error, like a bad
    /// `serve --tls-cert`.
    #[error("TLS: {0}")]
    Ca(tls::TlsConfigError),
    /// A one-shot command that is no single command line (it holds a line end); nothing
    /// was sent.
    #[error("{0}")]
    Usage(String),
    /// Reading the command lines of an interactive session failed.
    #[error("reading standard input: {0}")]
    Stdin(io::Error),
    /// Printing a reply failed (standard output closed, a full disk).
    #[error("writing standard output: {0}")]
    Stdout(io::Error),
}

/// Where the system's CA certificates are (Debian, Ubuntu, Alpine; Fedora's is linked
/// there too on most systems).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How the client connects: plain TCP, or TLS trusting the CA certificates of a PEM file.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// Speak TLS.
    pub enabled: bool,
    /// CA certificates (PEM) to verify the server with; `None`: [`SYSTEM_CA_BUNDLE`].
    pub ca: Option<PathBuf>,
}

/// A byte stream to the server: TCP or a Unix-domain socket, or TLS over either.
trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// A connection to the bank.
struct Conn {
    /// Reads buffered; writes go through `get_mut()`.
    reader: BufReader<Box<dyn Stream>>,
}

/// The host part of `HOST:PORT` (`[::1]:7100` gives `::1`); `localhost` for a
/// Unix-domain address.
fn host_of(addr: &str) -> &str {
    if addr.starts_with("unix:") {
        return "localhost";
    }
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

impl Conn {
    fn open(addr: &str, tls: &ClientTls) -> Result<Conn, ClientError> {
        // The TLS settings first: a bad `--ca` is reported as such, server up or down.
        let session = if tls.enabled {
            let ca = tls.ca.as_deref().unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
            let config = tls::client_config_from_pem(ca).map_err(|e| match tls.ca {
                Some(_) => ClientError::Ca(e),
                None => ClientError::Tls(e),
            })?;
            let name = tls::server_name(host_of(addr))?;
            let session = rustls::ClientConnection::new(config, name)
                .map_err(|e| ClientError::Tls(e.into()))?;
            Some(session)
        } else {
            None
        };
        let stream = Conn::connect(addr)?;
        let stream: Box<dyn Stream> = match session {
            Some(session) => Box::new(rustls::StreamOwned::new(session, stream)),
            None => stream,
        };
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    fn connect(addr: &str) -> Result<Box<dyn Stream>, ClientError> {
        let connect_err = |source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        };
        if addr.starts_with("unix:") {
            let stream = connect_unix(addr).map_err(connect_err)?;
            stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
            return Ok(Box::new(stream));
        }
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
        for a in addr.to_socket_addrs().map_err(connect_err)? {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
                    let _ = stream.set_nodelay(true);
                    return Ok(Box::new(stream));
                }
                Err(e) => last = e,
            }
        }
        Err(connect_err(last))
    }

    /// Sends `line` (without its line end; bytes that are not UTF-8 are the server's to
    /// refuse); returns the reply's lines (more than one after `HISTORY`).
    fn call(&mut self, line: &[u8]) -> Result<Vec<String>, ClientError> {
        let mut out = Vec::with_capacity(line.len() + 1);
        out.extend_from_slice(line);
        out.push(b'\n');
        let writer = self.reader.get_mut();
        writer
            .write_all(&out)
            .and_then(|()| writer.flush())
            .map_err(connection_error)?;
        let first = self.read_line()?;
        let extra = extra_reply_lines(&String::from_utf8_lossy(line), &first);
        if extra > HISTORY_MAX {
            return Err(ClientError::TooManyEntries(first));
        }
        let mut lines = vec![first];
        for _ in 0..extra {
            lines.push(self.read_line()?);
        }
        Ok(lines)
    }

    /// One reply line: a whole line of text of at most [`MAX_REPLY_LINE`] bytes (a TLS
    /// record, a longer line, or bytes cut short by the close, are errors, not replies).
    fn read_line(&mut self) -> Result<String, ClientError> {
        let mut buf = Vec::new();
        let limit = MAX_REPLY_LINE as u64 + 1;
        if (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut buf)
            .map_err(reply_error)?
            == 0
        {
            return Err(ClientError::Closed);
        }
        if is_tls_record(&buf) {
            return Err(ClientError::ServerSpeaksTls);
        }
        if buf.len() > MAX_REPLY_LINE && buf.last() != Some(&b'\n') {
            return Err(ClientError::TooLong);
        }
        if buf.last() != Some(&b'\n') {
            return Err(ClientError::CutShort);
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        String::from_utf8(buf).map_err(|_| ClientError::NotText)
    }
}

/// A failed read of a reply: the read timeout ([`REPLY_TIMEOUT`], reported by the socket as
/// `EAGAIN`) said as such, anything else as the connection's failure.
fn reply_error(e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::NoReply(REPLY_TIMEOUT),
        _ => connection_error(e),
    }
}

/// A failed read or write: a plaintext reply met by TLS (rustls finds no valid record
/// type: a bank's `ERR` line to the ClientHello) said as such, anything else as the
/// connection's failure.
fn connection_error(e: io::Error) -> ClientError {
    let plaintext = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| {
            matches!(
                tls,
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
            )
        });
    if plaintext {
        ClientError::ServerSpeaksPlain
    } else {
        ClientError::Io(e)
    }
}

/// Connects to `unix:/path` or `unix:@name` (an abstract name), read as duo-net reads
/// an address (so the `listening on` form, odd bytes as `\xNN`, works), within
/// [`CONNECT_TIMEOUT`]. A Unix socket connects at once or not at all: a full accept
/// queue (`EAGAIN` to a nonblocking connect, where a blocking one would wait for ever)
/// is tried again every 10 ms until the timeout.
fn connect_unix(addr: &str) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;

    let endpoint: Endpoint = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let target = match &endpoint {
        // Not `SockAddr::unix`, which stops a path at 107 bytes (Linux takes 108).
        Endpoint::Unix(path) => duo_sys::unix_addr(path.as_os_str().as_bytes())?,
        Endpoint::Abstract(name) => {
            let mut raw = Vec::with_capacity(name.len() + 1);
            raw.push(0);
            raw.extend_from_slice(name);
            duo_sys::unix_addr(&raw)?
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a Unix-domain address",
            ))
        }
    };
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        match socket.connect(&target) {
            Ok(()) => {
                socket.set_nonblocking(false)?;
                return Ok(UnixStream::from(std::os::fd::OwnedFd::from(socket)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection timed out (the server's accept queue stayed full)",
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether `bytes` begin as a TLS record does (content type 20 to 23, then version
/// 3.x): what a TLS server sends a client that spoke plaintext to it (an alert). No bank
/// reply begins with these control bytes.
fn is_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [20..=23, 3, ..])
}

fn is_error(reply: &[String]) -> bool {
    reply.first().is_none_or(|l| l.starts_with("ERR"))
}

/// Prints `reply`; a failure is the output's, not the connection's.
fn print_reply(reply: &[String]) -> Result<(), ClientError> {
    let mut out = io::stdout().lock();
    reply
        .iter()
        .try_for_each(|line| writeln!(out, "{line}"))
        .and_then(|()| out.flush())
        .map_err(ClientError::Stdout)
}

/// Runs the client; `Ok(true)` if every reply was a success.
pub fn run(addr: &str, tls: &ClientTls, words: &[String]) -> Result<bool, ClientError> {
    if let Some(word) = words.iter().find(|w| w.contains(['\n', '\r'])) {
        // It would go out as two lines (or a `\r` the server keeps) and get two replies,
        // the second taken for the next command's.
        return Err(ClientError::Usage(format!(
            "a command cannot hold a line end: {word:?}"
        )));
    }
    let mut conn = Conn::open(addr, tls)?;
    if words.is_empty() {
        interactive(&mut conn)
    } else {
        one_shot(&mut conn, words)
    }
}

fn one_shot(conn: &mut Conn, words: &[String]) -> Result<bool, ClientError> {
    for command in words.split(|w| w == ";").filter(|c| !c.is_empty()) {
        let line = command.join(" ");
        if line.split([' ', '\t']).all(str::is_empty) {
            // A blank line: the server ignores it and sends no reply.
            continue;
        }
        let reply = conn.call(line.as_bytes())?;
        print_reply(&reply)?;
        if is_error(&reply) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Reads command lines from standard input as bytes: a line that is not UTF-8 goes to
/// the server as it is, which answers it `BAD_REQUEST` (as it would through `nc`), and
/// the session goes on.
fn interactive(conn: &mut Conn) -> Result<bool, ClientError> {
    let stdin = io::stdin();
    let prompt = stdin.is_terminal();
    let mut input = stdin.lock();
    let mut buf = Vec::new();
    loop {
        if prompt {
            show_prompt();
        }
        buf.clear();
        if input
            .read_until(b'\n', &mut buf)
            .map_err(ClientError::Stdin)?
            == 0
        {
            return Ok(true);
        }
        let line = buf.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let reply = conn.call(line)?;
        print_reply(&reply)?;
        if line.eq_ignore_ascii_case(b"QUIT") {
            return Ok(true);
        }
    }
}

/// Shows the `bank> ` prompt on stderr, if it can. Not `eprint!`, which panics (exit status
/// 101) when stderr cannot be written (a pipe whose reader is gone, a full disk): the
/// prompt is a courtesy to whoever types, and the session goes on without it.
fn show_prompt() {
    let mut err = io::stderr().lock();
    let _ = err.write_all(b"bank> ").and_then(|()| err.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply that never came was reported as `connection: Resource temporarily
    /// unavailable` (the socket's read timeout).
    #[test]
    fn a_read_timeout_is_reported_as_no_reply() {
        let e = reply_error(io::Error::from(io::ErrorKind::WouldBlock));
        assert_eq!(e.to_string(), "no reply within 30 s");
        let e = reply_error(io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(e.to_string().starts_with("connection: "), "{e}");
    }
}
