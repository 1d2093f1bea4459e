//! Helpers of the HTTP tests: a server with a few routes on its own thread, and a raw
//! client that reads responses off a real socket with a deadline on every read.

#![allow(dead_code, unreachable_pub)]

use std::io::{ErrorKind, Read, Write};

pub mod deferred;
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use duo_http::{HttpServer, HttpServerBuilder, HttpServerThread, Method, Response, StatusCode};
use duo_net::{EventLoop, ServerHandle, ServerStats};
use duo_testkit::{join_within, LIMIT};

pub fn init_log() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// A builder with the test routes: `GET /hello` ("hello"), `POST /echo` (the body back),
/// `GET /query` (the query string), `GET /panic` (panics), `GET /empty` (204).
pub fn test_builder() -> HttpServerBuilder {
    HttpServer::builder("http-test", "127.0.0.1:0".parse().unwrap())
        .route(Method::Get, "/hello", |_| {
            Response::text(StatusCode::OK, "hello")
        })
        .route(Method::Post, "/echo", |req| {
            Response::with_body(StatusCode::OK, "application/octet-stream", req.body())
        })
        .route(Method::Get, "/query", |req| {
            Response::text(StatusCode::OK, req.query().unwrap_or("-"))
        })
        .route(Method::Get, "/panic", |_| panic!("a handler that panics"))
        .route(Method::Get, "/empty", |_| {
            Response::new(StatusCode::NO_CONTENT)
        })
}

/// Body size of `GET /big` ([`blocking_builder`]).
pub const BIG: usize = 64 << 10;

/// The timeouts a gone client used to be held for: far beyond what a test waits.
pub const LONG: Duration = Duration::from_secs(60);

/// How soon a connection whose client is gone must be closed.
pub const SOON: Duration = Duration::from_secs(5);

/// [`test_builder`] with `GET /big` (a body of [`BIG`] bytes) and room for only one such
/// response in the queued output, so that a client pipelining them without reading
/// blocks its connection; the keep-alive timeout is [`LONG`].
pub fn blocking_builder() -> HttpServerBuilder {
    test_builder()
        .keep_alive_timeout(LONG)
        .max_pending_output(BIG)
        .route(Method::Get, "/big", |_| {
            Response::with_body(StatusCode::OK, "application/octet-stream", vec![b'b'; BIG])
        })
}

/// Closes `s` with a reset (`SO_LINGER` zero), as a client killed with unread data does.
pub fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    drop(s);
}

pub fn start(builder: HttpServerBuilder) -> HttpServerThread {
    init_log();
    builder.spawn().expect("start the HTTP server")
}

/// A response as read off the socket.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a UTF-8 body")
    }
}

/// A client connection, over TCP or another stream (TLS): what it read beyond the last
/// response stays buffered.
pub struct Client<S = TcpStream> {
    pub stream: S,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(LIMIT)).unwrap();
        Client::over(stream)
    }
}

impl<S: Read + Write> Client<S> {
    /// A client over `stream` (whose reads have a deadline already).
    pub fn over(stream: S) -> Client<S> {
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write a request");
        self.stream.flush().expect("flush a request");
    }

    /// Sends `GET path` (HTTP/1.1, with Host) and reads the response.
    pub fn get(&mut self, path: &str) -> Reply {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        self.read_reply(false)
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 << 10];
        let n = self.stream.read(&mut chunk).expect("read a response");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads one response (without a body if `head_only`: the answer to HEAD).
    pub fn read_reply(&mut self, head_only: bool) -> Reply {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut fields);
            match resp.parse(&self.buf).expect("a well-formed response") {
                httparse::Status::Complete(head_len) => {
                    let status = resp.code.unwrap();
                    let headers: Vec<(String, String)> = resp
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8(h.value.to_vec()).unwrap(),
                            )
                        })
                        .collect();
                    let len = headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                        .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
                    let body_len = if head_only { 0 } else { len };
                    while self.buf.len() < head_len + body_len {
                        assert!(self.fill() > 0, "EOF inside a response body");
                    }
                    let body = self.buf[head_len..head_len + body_len].to_vec();
                    self.buf.drain(..head_len + body_len);
                    return Reply {
                        status,
                        headers,
                        body,
                    };
                }
                httparse::Status::Partial => {
                    assert!(
                        self.fill() > 0,
                        "EOF before a whole response head: {:?}",
                        self.buf
                    );
                }
            }
        }
    }

    /// Waits for the server's EOF (nothing more after the responses read), within
    /// `LIMIT`; returns how long it took.
    pub fn expect_eof(&mut self) -> Duration {
        let started = Instant::now();
        assert!(self.buf.is_empty(), "unread bytes: {:?}", self.buf);
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return started.elapsed(),
                Ok(n) => panic!("bytes instead of EOF: {:?}", &chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("no EOF: {e}"),
            }
        }
    }

    /// Everything until the end of stream: `Ok` on a clean end, else what came and the
    /// error that ended it.
    pub fn rest(&mut self) -> Result<Vec<u8>, (Vec<u8>, std::io::Error)> {
        let mut chunk = [0u8; 16 << 10];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(std::mem::take(&mut self.buf)),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err((std::mem::take(&mut self.buf), e)),
            }
        }
    }
}

/// A server on an event loop of a test thread, for the graceful shutdown that
/// [`HttpServerThread`] does not offer; dropping it shuts down at once and joins.
pub struct LoopServer {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl LoopServer {
    pub fn start(builder: HttpServerBuilder) -> LoopServer {
        init_log();
        let (tx, rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            let mut lp = EventLoop::new().expect("an event loop");
            let server = builder.start(&mut lp).expect("start the HTTP server");
            tx.send((server.local_addr(), server.clone_handle()))
                .unwrap();
            lp.run().expect("the loop runs");
            server.stop(&mut lp);
        });
        let (addr, handle) = rx.recv_timeout(LIMIT).expect("the server to start");
        LoopServer {
            addr,
            handle,
            thread: Some(thread),
        }
    }

    /// Begins a graceful shutdown; `done` gets a message when it has completed.
    pub fn shutdown(&self, grace: Duration) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel();
        self.handle.shutdown(grace, move |lp| {
            let _ = tx.send(());
            lp.quit();
        });
        rx
    }

    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            join_within("the server's loop thread", t);
        }
    }
}

impl Drop for LoopServer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.handle.shutdown(Duration::ZERO, |lp| lp.quit());
            join_within("the server's loop thread", t);
        }
    }
}

/// `GET path` as an HTTP/1.1 request with a `Host` field.
pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
}

/// Reads what comes until EOF (within `LIMIT`); a reset or a read timeout fails.
pub fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("no EOF after {} bytes: {e}", all.len()),
        }
    }
}

/// Waits until the server whose counters `stats` reads has output queued for some
/// connection (its client not reading).
pub fn wait_for_queued_output(stats: impl Fn() -> ServerStats) {
    duo_testkit::wait_until("the server to queue output", || stats().output_queued() > 0);
}
