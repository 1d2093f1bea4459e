//! The codecs as users run them: a length-framed server on `TcpServer`, over TCP, a
//! Unix-domain socket and TLS (one test per transport), crossed with what the peer and
//! the server do around a frame: a frame exactly at and one past the maximum, a stream
//! split at every byte, frames behind a `QUIT` in the same write, the peer's half-close
//! or reset with a frame half received, backpressure with a frame cut in two
//! (`output_undelivered` included), the server's graceful shutdown mid-frame, and a
//! callback that takes one frame at a time, pausing reading in between.
//!
//! Two of them failed before their fixes: `frames_behind_quit` (the read that delivered
//! `QUIT` went on delivering what followed to the message callback after its
//! `close_after_flush`, while the close lingered) and `one_frame_at_a_time` (frames the
//! callback left in the buffer when it paused reading were not delivered on resuming
//! until new bytes came, so a peer that pipelined its requests waited forever).

mod util;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duo_net::codec::{CodecError, LengthHeaderCodec};
use duo_net::{CloseReason, Endpoint, ServerBuilder, TcpConnection, TcpServer};
use duo_testkit::{random_bytes, wait_until, LIMIT};
use util::{init_log, localhost, TestServer};

// ---------------------------------------------------------------------------------------
// Transports

/// The transports a framed server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Unix,
    #[cfg(feature = "tls")]
    Tls,
}

/// One test per transport: `$name::tcp`, `$name::unix`, `$name::tls`, each running
/// `$body(transport)`.
macro_rules! on_every_transport {
    ($name:ident, $body:ident) => {
        mod $name {
            #[test]
            fn tcp() {
                super::$body(super::Transport::Tcp);
            }
            #[test]
            fn unix() {
                super::$body(super::Transport::Unix);
            }
            #[cfg(feature = "tls")]
            #[test]
            fn tls() {
                super::$body(super::Transport::Tls);
            }
        }
    };
}

/// An abstract Unix-domain name unique to this process and call.
fn abstract_endpoint() -> Endpoint {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Endpoint::abstract_name(format!("duo-cc-{}-{n}", std::process::id())).unwrap()
}

#[cfg(feature = "tls")]
mod tls_peer {
    use std::sync::{Arc, OnceLock};

    use duo_net::tls::rustls;

    use super::util::pki::{pki, Pki};

    fn the_pki() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(pki)
    }

    pub(crate) fn server_config() -> Arc<rustls::ServerConfig> {
        the_pki().server_config()
    }

    pub(crate) fn client_conn() -> rustls::ClientConnection {
        the_pki().client_conn()
    }
}

/// A blocking client of a framed server, on any transport.
enum Peer {
    Tcp(TcpStream),
    Unix(UnixStream),
    #[cfg(feature = "tls")]
    Tls(Box<duo_net::tls::rustls::StreamOwned<duo_net::tls::rustls::ClientConnection, TcpStream>>),
}

impl Peer {
    fn connect(server: &FramedServer) -> Peer {
        match server.transport {
            Transport::Tcp => Peer::Tcp(util::connect(server.server.addr())),
            Transport::Unix => {
                let Endpoint::Abstract(name) = &server.at else {
                    unreachable!()
                };
                let s =
                    UnixStream::connect_addr(&UnixAddr::from_abstract_name(name).unwrap()).unwrap();
                s.set_read_timeout(Some(LIMIT)).unwrap();
                s.set_write_timeout(Some(LIMIT)).unwrap();
                Peer::Unix(s)
            }
            #[cfg(feature = "tls")]
            Transport::Tls => {
                let mut sock = util::connect(server.server.addr());
                let mut conn = tls_peer::client_conn();
                while conn.is_handshaking() {
                    conn.complete_io(&mut sock).expect("TLS handshake");
                }
                Peer::Tls(Box::new(duo_net::tls::rustls::StreamOwned::new(conn, sock)))
            }
        }
    }

    /// Writes `data` in one write (over TLS: its records in one write); returns the bytes
    /// written to the socket.
    fn send(&mut self, data: &[u8]) -> usize {
        match self {
            Peer::Tcp(s) => {
                s.write_all(data).unwrap();
                data.len()
            }
            Peer::Unix(s) => {
                s.write_all(data).unwrap();
                data.len()
            }
            #[cfg(feature = "tls")]
            Peer::Tls(s) => {
                // rustls takes a limited amount of plaintext at a time: records out
                // between the pieces, all in one write at the end.
                let mut wire = Vec::new();
                let mut rest = data;
                while !rest.is_empty() {
                    let n = s.conn.writer().write(rest).unwrap();
                    rest = &rest[n..];
                    while s.conn.wants_write() {
                        s.conn.write_tls(&mut wire).unwrap();
                    }
                }
                s.sock.write_all(&wire).unwrap();
                wire.len()
            }
        }
    }

    /// Ends our direction: FIN (with close_notify before it over TLS).
    fn half_close(&mut self) {
        match self {
            Peer::Tcp(s) => s.shutdown(Shutdown::Write).unwrap(),
            Peer::Unix(s) => s.shutdown(Shutdown::Write).unwrap(),
            #[cfg(feature = "tls")]
            Peer::Tls(s) => {
                s.conn.send_close_notify();
                let mut wire = Vec::new();
                while s.conn.wants_write() {
                    s.conn.write_tls(&mut wire).unwrap();
                }
                s.sock.write_all(&wire).unwrap();
                s.sock.shutdown(Shutdown::Write).unwrap();
            }
        }
    }

    fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        match self {
            Peer::Tcp(s) => s.read_exact(&mut buf),
            Peer::Unix(s) => s.read_exact(&mut buf),
            #[cfg(feature = "tls")]
            Peer::Tls(s) => s.read_exact(&mut buf),
        }
        .expect("read a reply");
        buf
    }

    /// Reads until the server ends the stream; the bytes and whether it ended cleanly
    /// (end of stream, after close_notify over TLS) rather than with a reset.
    fn read_to_end(&mut self) -> (Vec<u8>, bool) {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let r = match self {
                Peer::Tcp(s) => s.read(&mut buf),
                Peer::Unix(s) => s.read(&mut buf),
                #[cfg(feature = "tls")]
                Peer::Tls(s) => s.read(&mut buf),
            };
            match r {
                Ok(0) => return (got, true),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if util::is_peer_close(&e) || e.kind() == ErrorKind::UnexpectedEof => {
                    return (got, false)
                }
                Err(e) => panic!("the server did not end the stream within {LIMIT:?}: {e}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// A framed server

/// What the server saw, per connection id.
#[derive(Default)]
struct Seen {
    frames: Mutex<HashMap<u64, Vec<Vec<u8>>>>,
    errors: Mutex<HashMap<u64, Vec<CodecError>>>,
    closes: Mutex<HashMap<u64, Vec<Option<CloseReason>>>>,
    handles: Mutex<Vec<TcpConnection>>,
}

impl Seen {
    /// The connection that came up `i`-th.
    fn handle(&self, i: usize) -> TcpConnection {
        wait_until("the connection is up", || {
            self.handles.lock().unwrap().len() > i
        });
        self.handles.lock().unwrap()[i].clone()
    }

    /// Waits for connection `id` to close; its one close reason.
    fn closed(&self, id: u64) -> Option<CloseReason> {
        wait_until("the server to close the connection", || {
            self.closes.lock().unwrap().contains_key(&id)
        });
        let closes = self.closes.lock().unwrap();
        assert_eq!(closes[&id].len(), 1, "closes of #{id}: {:?}", closes[&id]);
        closes[&id][0]
    }

    fn frames_of(&self, id: u64) -> Vec<Vec<u8>> {
        self.frames
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    fn errors_of(&self, id: u64) -> Vec<CodecError> {
        self.errors
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }
}

/// A running framed server.
struct FramedServer {
    server: TestServer,
    transport: Transport,
    at: Endpoint,
    seen: Arc<Seen>,
    codec: LengthHeaderCodec,
}

/// The reply payload of `BIG n`.
fn big_payload(n: usize) -> Vec<u8> {
    random_bytes(0xB1, n)
}

/// A server on one I/O thread framing with a `LengthHeaderCodec` of `max_frame`. Each
/// frame is answered with a frame: `QUIT` gets `BYE` and `close_after_flush` (frames after
/// it are left unread); `BIG n` gets `n` bytes of [`big_payload`]; anything else is
/// echoed. A framing error is recorded, answered with `ERR <error>`, and closes after the
/// replies (`close_after_flush`).
fn framed_server(
    transport: Transport,
    max_frame: usize,
    build: impl FnOnce(ServerBuilder) -> ServerBuilder + Send + 'static,
) -> FramedServer {
    let codec = LengthHeaderCodec::new(max_frame);
    let seen = Arc::new(Seen::default());
    let at = match transport {
        Transport::Unix => abstract_endpoint(),
        _ => Endpoint::from(localhost()),
    };
    let (s1, s2, s3, at2) = (seen.clone(), seen.clone(), seen.clone(), at.clone());
    let server = TestServer::start(move || {
        let b = TcpServer::builder("codec-combos", at2).io_threads(1);
        #[cfg(feature = "tls")]
        let b = if transport == Transport::Tls {
            b.tls(tls_peer::server_config())
        } else {
            b
        };
        let b = b
            .on_connection(move |c| {
                if c.is_connected() {
                    s1.handles.lock().unwrap().push(c.clone());
                }
            })
            .on_message(move |ctx, input| {
                let id = ctx.connection().id();
                loop {
                    let (reply, consumed, quit) = match codec.decode(input.peek()) {
                        Ok(None) => return,
                        Ok(Some(frame)) => {
                            s2.frames
                                .lock()
                                .unwrap()
                                .entry(id)
                                .or_default()
                                .push(frame.payload.to_vec());
                            let p = frame.payload;
                            if p == b"QUIT" {
                                (b"BYE".to_vec(), frame.consumed, true)
                            } else if let Some(n) = p.strip_prefix(b"BIG ") {
                                let n = std::str::from_utf8(n).unwrap().parse().unwrap();
                                (big_payload(n), frame.consumed, false)
                            } else {
                                (p.to_vec(), frame.consumed, false)
                            }
                        }
                        Err(e) => {
                            s2.errors.lock().unwrap().entry(id).or_default().push(e);
                            let mut out = Vec::new();
                            codec
                                .encode(format!("ERR {e}").as_bytes(), &mut out)
                                .unwrap();
                            ctx.send(&out);
                            ctx.close_after_flush();
                            return;
                        }
                    };
                    input.consume(consumed);
                    let header = codec.header(reply.len()).unwrap();
                    ctx.send_parts(&[&header, &reply]);
                    if quit {
                        ctx.close_after_flush();
                        return;
                    }
                }
            })
            .on_close(move |c| {
                s3.closes
                    .lock()
                    .unwrap()
                    .entry(c.id())
                    .or_default()
                    .push(c.close_reason());
            });
        build(b)
    });
    FramedServer {
        server,
        transport,
        at,
        seen,
        codec,
    }
}

impl FramedServer {
    fn frame(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.codec.encode(payload, &mut out).unwrap();
        out
    }

    fn stop(self) {
        self.server.stop();
    }
}

/// Reads one reply frame.
fn read_frame(peer: &mut Peer) -> Vec<u8> {
    let header = peer.read_exact(4);
    let len = u32::from_be_bytes(header.try_into().unwrap()) as usize;
    peer.read_exact(len)
}

/// Parses every complete frame of `wire`; panics on a partial one.
fn parse_frames(mut wire: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while !wire.is_empty() {
        assert!(wire.len() >= 4, "a partial header: {wire:?}");
        let len = u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
        assert!(wire.len() >= 4 + len, "a partial frame");
        frames.push(wire[4..4 + len].to_vec());
        wire = &wire[4 + len..];
    }
    frames
}

// ---------------------------------------------------------------------------------------
// Tests

/// A frame of exactly the maximum (with `max_input` at `max + 4`, the least that holds
/// it) is answered, also several in one write; one past it is `FrameTooLarge`, answered
/// with the error, and the connection ends cleanly after it.
fn frame_exactly_at_max_passes_one_past_is_refused_on_every_transport(t: Transport) {
    init_log();
    const MAX: usize = 100_000;
    let server = framed_server(t, MAX, |b| b.max_input(MAX + 4));
    let mut peer = Peer::connect(&server);
    let conn = server.seen.handle(0);
    let at_max = random_bytes(7, MAX);
    let one = server.frame(&at_max);
    let wire = [one.clone(), one.clone(), one].concat();
    peer.send(&wire);
    for i in 0..3 {
        assert!(read_frame(&mut peer) == at_max, "{t:?}: reply {i} differs");
    }
    peer.send(&((MAX + 1) as u32).to_be_bytes());
    let (rest, clean) = peer.read_to_end();
    let err = CodecError::FrameTooLarge {
        len: MAX as u64 + 1,
        max: MAX,
    };
    assert_eq!(
        parse_frames(&rest),
        [format!("ERR {err}").into_bytes()],
        "{t:?}"
    );
    assert!(clean, "{t:?}: reset");
    assert_eq!(server.seen.closed(conn.id()), Some(CloseReason::User));
    assert_eq!(server.seen.errors_of(conn.id()), [err], "{t:?}");
    server.stop();
}

on_every_transport!(
    frame_at_max,
    frame_exactly_at_max_passes_one_past_is_refused_on_every_transport
);

impl FramedServer {
    /// Bytes the server has read from all its connections (ciphertext over TLS).
    fn bytes_in(&self) -> u64 {
        self.server.stats().bytes_in()
    }

    /// Sends `data` and waits until the server has read it, so that what follows comes
    /// in another read.
    fn send_and_wait(&self, peer: &mut Peer, data: &[u8]) {
        let before = self.bytes_in();
        let n = peer.send(data) as u64;
        wait_until("the server to read the piece", || {
            self.bytes_in() >= before + n
        });
    }
}

/// A stream of frames written one byte at a time, each byte read by the server before
/// the next is sent (every split point of headers and payloads, an empty frame
/// included), and the same stream cut once at every offset: each reply arrives whole and
/// in order.
fn frames_split_at_every_byte_boundary_on_every_transport(t: Transport) {
    init_log();
    let server = framed_server(t, 64, |b| b);
    let payloads: [&[u8]; 3] = [b"hello", b"", b"xyz\r\n"];
    let wire: Vec<u8> = payloads.iter().flat_map(|p| server.frame(p)).collect();
    let mut peer = Peer::connect(&server);
    for b in &wire {
        server.send_and_wait(&mut peer, std::slice::from_ref(b));
    }
    for p in payloads {
        assert_eq!(read_frame(&mut peer), p, "{t:?}: byte by byte");
    }
    for cut in 1..wire.len() {
        let mut peer = Peer::connect(&server);
        server.send_and_wait(&mut peer, &wire[..cut]);
        peer.send(&wire[cut..]);
        for p in payloads {
            assert_eq!(read_frame(&mut peer), p, "{t:?}: cut at {cut}");
        }
    }
    server.stop();
}

on_every_transport!(
    split_at_every_byte,
    frames_split_at_every_byte_boundary_on_every_transport
);

/// `QUIT` with many frames behind it in the same write (and, in a second round, 2 MiB of
/// frames, more than the server reads in one event, so that the close lingers while the
/// read that delivered `QUIT` could go on): the server answers what came before it, then `BYE`, then ends
/// the stream cleanly (no reset cuts the replies); the frames after `QUIT` are never
/// handled; the close reason is the application's.
fn frames_behind_a_quit_in_the_same_write_are_dropped_cleanly(t: Transport) {
    init_log();
    let server = framed_server(t, 1 << 16, |b| b.close_linger(LIMIT).read_budget(128 << 10));
    for (round, trailing) in [(0usize, 50usize), (1, 2048)] {
        let mut peer = Peer::connect(&server);
        peer.grow_send_buffer();
        let conn = server.seen.handle(round);
        let mut wire = server.frame(b"first");
        wire.extend(server.frame(b"QUIT"));
        let filler = server.frame(&[b'x'; 1020]);
        for _ in 0..trailing {
            wire.extend_from_slice(&filler);
        }
        // Written whole before reading: the server reads and drops what follows QUIT.
        peer.send(&wire);
        let (got, clean) = peer.read_to_end();
        let replies = parse_frames(&got);
        assert!(
            replies == [b"first".to_vec(), b"BYE".to_vec()],
            "{t:?} round {round}: {} replies",
            replies.len()
        );
        assert!(clean, "{t:?} round {round}: reset");
        drop(peer);
        assert_eq!(server.seen.closed(conn.id()), Some(CloseReason::User));
        let handled = server.seen.frames_of(conn.id());
        assert!(
            handled == [b"first".to_vec(), b"QUIT".to_vec()],
            "{t:?} round {round}: {} frames handled, {} after QUIT",
            handled.len(),
            handled.len().saturating_sub(2)
        );
    }
    server.stop();
}

on_every_transport!(
    frames_behind_quit,
    frames_behind_a_quit_in_the_same_write_are_dropped_cleanly
);

/// Two frames and the start of a third, then the peer's end of stream (over TLS
/// close_notify and FIN): the two are answered, the stream ends cleanly, the partial
/// frame is neither a frame nor an error, and the close is the peer's.
fn half_close_with_an_incomplete_frame_buffered(t: Transport) {
    init_log();
    let server = framed_server(t, 1 << 16, |b| b);
    for (i, cut) in [2usize, 4, 9].into_iter().enumerate() {
        let mut peer = Peer::connect(&server);
        let conn = server.seen.handle(i);
        let mut wire = server.frame(b"one");
        wire.extend(server.frame(b"two"));
        wire.extend_from_slice(&server.frame(b"three and more")[..cut]);
        peer.send(&wire);
        peer.half_close();
        let (got, clean) = peer.read_to_end();
        assert_eq!(
            parse_frames(&got),
            [b"one".to_vec(), b"two".to_vec()],
            "{t:?} cut {cut}"
        );
        assert!(clean, "{t:?} cut {cut}: reset");
        assert_eq!(server.seen.closed(conn.id()), Some(CloseReason::Peer));
        assert!(server.seen.errors_of(conn.id()).is_empty());
        assert_eq!(server.seen.frames_of(conn.id()).len(), 2);
    }
    server.stop();
}

on_every_transport!(
    half_close_mid_frame,
    half_close_with_an_incomplete_frame_buffered
);

impl Peer {
    /// Ends the connection abortively: a TCP reset (`SO_LINGER` 0); a Unix-domain
    /// socket closed with unread input, which the kernel reports to the server as
    /// `ECONNRESET`.
    fn reset(self) {
        match self {
            Peer::Tcp(s) => {
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            Peer::Unix(_) => {}
            #[cfg(feature = "tls")]
            Peer::Tls(s) => {
                socket2::SockRef::from(&s.sock)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
        }
    }
}

impl Peer {
    /// Lets the kernel queue more of what we write than the server reads in one event
    /// (the read budget and one read), on a Unix-domain socket too, whose queue is
    /// bounded by the sender's buffer.
    fn grow_send_buffer(&self) {
        if let Peer::Unix(s) = self {
            socket2::SockRef::from(s)
                .set_send_buffer_size(4 << 20)
                .unwrap();
        }
    }
}

/// Asks the loop of `conn` for its `output_undelivered`.
fn undelivered(conn: &TcpConnection) -> usize {
    let (tx, rx) = std::sync::mpsc::channel();
    conn.queue_in_loop(move |ctx| {
        let _ = tx.send(ctx.output_undelivered());
    })
    .unwrap();
    rx.recv_timeout(LIMIT).unwrap()
}

/// Frames then the start of another, then the peer resets (with a reply of ours unread,
/// which is how a Unix-domain peer resets): the frames before are handled, the partial
/// one is no frame and no error, the close is the reset, and another connection is
/// served as before.
fn reset_mid_frame(t: Transport) {
    init_log();
    let server = framed_server(t, 1 << 16, |b| b);
    let mut peer = Peer::connect(&server);
    let conn = server.seen.handle(0);
    let out_before = server.server.stats().bytes_out();
    let mut wire = server.frame(b"BIG 1000");
    wire.extend(server.frame(b"a"));
    wire.extend_from_slice(&server.frame(b"partial frame")[..7]);
    server.send_and_wait(&mut peer, &wire);
    // The replies reach our socket unread (over TLS at least as many bytes go out).
    wait_until("the replies written", || {
        server.server.stats().bytes_out() >= out_before + (4 + 1000) + (4 + 1)
    });
    peer.reset();
    let reason = server.seen.closed(conn.id());
    assert_eq!(
        reason,
        Some(CloseReason::Error(ErrorKind::ConnectionReset)),
        "{t:?}"
    );
    assert_eq!(
        server.seen.frames_of(conn.id()),
        [b"BIG 1000".to_vec(), b"a".to_vec()],
        "{t:?}"
    );
    assert!(server.seen.errors_of(conn.id()).is_empty());
    let mut witness = Peer::connect(&server);
    witness.send(&server.frame(b"still here"));
    assert_eq!(read_frame(&mut witness), b"still here");
    server.stop();
}

on_every_transport!(reset_mid_frame_tests, reset_mid_frame);

/// Backpressure with a frame cut in two: requests whose replies pass the high-water mark
/// while the peer reads nothing, then half a frame; reading pauses (the half frame waits
/// in the input buffer or the kernel), `output_undelivered` reports the replies the peer
/// has not taken; the rest of the frame is sent, then everything is read: every reply
/// arrives whole and in order, the cut frame's last, and nothing is left undelivered.
fn backpressure_with_a_frame_cut_in_two(t: Transport) {
    init_log();
    const REQUESTS: usize = 160;
    const BIG: usize = 64 << 10;
    let server = framed_server(t, 1 << 16, |b| b.water_marks(64 << 10, 16 << 10));
    let mut peer = Peer::connect(&server);
    let conn = server.seen.handle(0);
    let request = server.frame(format!("BIG {BIG}").as_bytes());
    let cut = server.frame(b"the cut frame");
    let mut wire = Vec::new();
    for _ in 0..REQUESTS {
        wire.extend_from_slice(&request);
    }
    wire.extend_from_slice(&cut[..6]);
    peer.send(&wire);
    wait_until("reading paused by backpressure", || {
        server
            .server
            .stats()
            .per_loop
            .iter()
            .any(|l| l.backpressured > 0)
    });
    assert!(undelivered(&conn) > 64 << 10, "{t:?}");
    peer.send(&cut[6..]);
    let expected = big_payload(BIG);
    for i in 0..REQUESTS {
        assert!(
            read_frame(&mut peer) == expected,
            "{t:?}: reply {i} differs"
        );
    }
    assert_eq!(read_frame(&mut peer), b"the cut frame", "{t:?}");
    wait_until("the peer took every reply", || undelivered(&conn) == 0);
    assert_eq!(server.seen.frames_of(conn.id()).len(), REQUESTS + 1);
    peer.half_close();
    let (rest, clean) = peer.read_to_end();
    assert!(rest.is_empty() && clean, "{t:?}");
    assert_eq!(server.seen.closed(conn.id()), Some(CloseReason::Peer));
    server.stop();
}

on_every_transport!(backpressure_cut_frame, backpressure_with_a_frame_cut_in_two);

/// The server's graceful shutdown arrives with a frame half received: the replies owed
/// arrive, then a clean end of stream (our half-close); the peer can still finish its
/// frame and close; the server finishes then, well within its grace period, and the
/// close is the peer's.
fn shutdown_mid_frame(t: Transport) {
    init_log();
    let mut server = framed_server(t, 1 << 16, |b| b);
    let mut peer = Peer::connect(&server);
    let conn = server.seen.handle(0);
    let last = server.frame(b"last");
    let mut wire = server.frame(b"one");
    wire.extend_from_slice(&last[..5]);
    server.send_and_wait(&mut peer, &wire);
    assert_eq!(read_frame(&mut peer), b"one");
    let started = std::time::Instant::now();
    server
        .server
        .handle()
        .shutdown(Duration::from_secs(30), |lp| lp.quit());
    let (rest, clean) = peer.read_to_end();
    assert!(rest.is_empty() && clean, "{t:?}: {} bytes", rest.len());
    peer.send(&last[5..]);
    peer.half_close();
    server.server.join_within(LIMIT);
    assert!(started.elapsed() < LIMIT, "{t:?}");
    assert_eq!(server.seen.closed(conn.id()), Some(CloseReason::Peer));
    assert!(server.seen.errors_of(conn.id()).is_empty());
}

on_every_transport!(shutdown_mid_frame_tests, shutdown_mid_frame);

/// A server that handles one frame at a time, as an application does that hands each
/// request to a worker and keeps their order: the message callback takes one frame,
/// pauses reading (`ConnCtx::stop_reading`) and leaves the rest of the input; the answer
/// comes a moment later from elsewhere (`TcpConnection::send`), which then resumes
/// reading (`TcpConnection::start_reading`). A peer that pipelines its requests in one
/// write gets every answer: the frames left in the input buffer are handed to the
/// message callback again when reading resumes, though no new byte arrives; with the
/// peer's end of stream behind them, every answer comes before the server's.
fn one_frame_at_a_time_with_pipelined_requests(t: Transport) {
    init_log();
    let codec = LengthHeaderCodec::new(1024);
    let server = framed_server(t, 1024, move |b| {
        b.on_message(move |ctx, input| {
            let Ok(Some(frame)) = codec.decode(input.peek()) else {
                return;
            };
            let mut reply = Vec::new();
            codec.encode(frame.payload, &mut reply).unwrap();
            input.consume(frame.consumed);
            ctx.stop_reading();
            let conn = ctx.connection().clone();
            let mut reply = Some(reply);
            ctx.event_loop()
                .run_after(Duration::from_millis(1), move |_| {
                    if let Some(reply) = reply.take() {
                        let _ = conn.send(reply);
                        let _ = conn.start_reading();
                    }
                });
        })
    });
    let requests: Vec<Vec<u8>> = (0..5)
        .map(|i| format!("request {i}").into_bytes())
        .collect();
    let wire: Vec<u8> = requests.iter().flat_map(|r| server.frame(r)).collect();
    for half_close in [false, true] {
        let mut peer = Peer::connect(&server);
        peer.send(&wire);
        if half_close {
            peer.half_close();
        }
        for r in &requests {
            assert_eq!(&read_frame(&mut peer), r, "{t:?} half-close {half_close}");
        }
        if half_close {
            let (rest, clean) = peer.read_to_end();
            assert!(rest.is_empty() && clean, "{t:?}");
        }
    }
    server.stop();
}

on_every_transport!(
    one_frame_at_a_time,
    one_frame_at_a_time_with_pipelined_requests
);
