//! Review round 11 of endpoints and Unix-domain / UDP sockets: a Unix-domain path of
//! 108 bytes (all of `sun_path`, no terminating NUL, which Linux binds and connects to)
//! is an endpoint like any other: a peer bound to one prints an endpoint that reads back,
//! and a server listens on one (the stale-file probe included); any path of 1 to 108
//! bytes, any byte but NUL, reads back from its display. A UDP socket its caller
//! connected before handing it over (`UdpSocket::builder_on`) reports its peer.

mod util;

use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;

use duo_net::{Endpoint, EventLoop, UdpSocket};
use duo_reactor::EventLoopThread;
use duo_testkit::LIMIT;
use proptest::prelude::*;
use socket2::{Domain, Socket, Type};
use util::{echo_builder, init_log, unix_round_trip, TempDir, TestServer};

/// Display, then parse: the same endpoint.
fn reads_back(e: &Endpoint) {
    let shown = e.to_string();
    let back: Endpoint = shown
        .parse()
        .unwrap_or_else(|err| panic!("{shown:?} does not parse back: {err}"));
    assert_eq!(&back, e, "{shown:?} parses back as another endpoint");
}

/// A path of exactly `len` bytes in `dir`.
fn path_of_len(dir: &TempDir, len: usize) -> PathBuf {
    let base = dir.path().display().to_string();
    let path = PathBuf::from(format!("{base}/{}", "f".repeat(len - base.len() - 1)));
    assert_eq!(path.as_os_str().len(), len);
    path
}

/// A stream socket connected to `path` (its `sun_path` built by duo-sys, which takes
/// all 108 bytes).
fn connect_path(path: &std::path::Path, bind_to: Option<&std::path::Path>) -> UnixStream {
    let s = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    if let Some(local) = bind_to {
        s.bind(&duo_sys::unix_addr(local.as_os_str().as_bytes()).unwrap())
            .unwrap();
    }
    s.connect(&duo_sys::unix_addr(path.as_os_str().as_bytes()).unwrap())
        .unwrap();
    UnixStream::from(std::os::fd::OwnedFd::from(s))
}

/// Suspect 1: the limits: a path holds 108 bytes (no NUL needed when it fills
/// `sun_path`), an abstract name 107 (after its leading NUL); one more is refused.
#[test]
fn a_path_that_fills_sun_path_is_an_endpoint_an_abstract_name_one_byte_less() {
    let full = format!("/{}", "x".repeat(107));
    let e = Endpoint::unix(&full).expect("108 bytes fill sun_path: a path Linux takes");
    reads_back(&e);
    let parsed: Endpoint = format!("unix:{full}").parse().unwrap();
    assert_eq!(parsed, e);
    let err = format!("unix:/{}", "x".repeat(108))
        .parse::<Endpoint>()
        .unwrap_err();
    assert!(
        matches!(err, duo_net::ParseEndpointError::TooLong(_)),
        "{err}"
    );
    assert!(err.to_string().contains("108"), "{err}");

    reads_back(&Endpoint::abstract_name("y".repeat(107)).unwrap());
    let err = format!("unix:@{}", "y".repeat(108))
        .parse::<Endpoint>()
        .unwrap_err();
    assert!(
        matches!(err, duo_net::ParseEndpointError::TooLong(_)),
        "{err}"
    );
    assert!(err.to_string().contains("107"), "{err}");
}

/// Suspect 1, end to end: a peer bound to a 108-byte path connects; the server reports
/// that path as the peer's endpoint, and its printed form reads back as it.
#[test]
fn a_peer_bound_to_a_108_byte_path_prints_an_endpoint_that_reads_back() {
    init_log();
    let dir = TempDir::new("r11-peer108");
    let at = Endpoint::unix(dir.join("s.sock")).unwrap();
    let (tx, rx) = mpsc::channel();
    let server = TestServer::start({
        let at = at.clone();
        move || {
            let tx = std::sync::Mutex::new(tx);
            echo_builder("r11-peer108", at).on_connection(move |c| {
                if c.is_connected() {
                    let _ = tx.lock().unwrap().send(c.peer_endpoint().clone());
                }
            })
        }
    });
    let local = path_of_len(&dir, 108);
    let client = connect_path(at.as_path().unwrap(), Some(&local));
    let peer = rx.recv_timeout(LIMIT).expect("the server saw the client");
    assert_eq!(peer.as_path(), Some(local.as_path()));
    reads_back(&peer);
    assert_eq!(
        peer.to_string().parse::<Endpoint>().unwrap(),
        Endpoint::unix(&local).unwrap()
    );
    unix_round_trip(client, b"full");
    server.stop();
}

/// The same limit at bind and connect: a server listens on a 108-byte path, displays it,
/// serves it, refuses it to a second server while live (the stale-file probe connects to
/// the full path) and removes the file at its stop.
#[test]
fn a_server_listens_on_a_108_byte_path() {
    init_log();
    let dir = TempDir::new("r11-listen108");
    let path = path_of_len(&dir, 108);
    let e = Endpoint::unix(&path).unwrap();
    let server = TestServer::start({
        let e = e.clone();
        move || echo_builder("r11-listen108", e).io_threads(1)
    });
    assert_eq!(server.handle().endpoint(), &e);
    reads_back(server.handle().endpoint());
    assert!(path.exists(), "the socket file is at the full path");
    unix_round_trip(connect_path(&path, None), b"served");

    let mut lp = EventLoop::new().unwrap();
    let err = echo_builder("r11-listen108-2", e.clone())
        .start(&mut lp)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
    unix_round_trip(connect_path(&path, None), b"still");
    server.stop();
    assert!(!path.exists(), "removed at stop");
}

/// A socket connected by its caller before `builder_on` is connected all the same: its
/// handle reports the peer (`peer_addr` said `None`), and `send` reaches it.
#[test]
fn a_udp_socket_connected_before_builder_on_reports_its_peer() {
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(LIMIT)).unwrap();
    let inherited = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    inherited.connect(peer.local_addr().unwrap()).unwrap();
    let io = EventLoopThread::spawn("r11-udp-on", None).unwrap();
    let sock = UdpSocket::builder_on("r11-on", inherited)
        .unwrap()
        .start(io.handle())
        .unwrap();
    assert_eq!(sock.peer_addr(), Some(peer.local_addr().unwrap()));
    sock.send(&b"to the peer"[..]).unwrap();
    let mut buf = [0u8; 32];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"to the peer"[..], sock.local_addr()));
    sock.stop();
    io.stop().unwrap();
}

proptest! {
    /// Any path a peer can show up with, the full 108 bytes included, reads back from its
    /// display (any byte but NUL; a path that ends in `/` names no socket).
    #[test]
    fn any_path_up_to_sun_paths_size_reads_back(
        bytes in proptest::collection::vec(1u8..=255, 1..=108),
    ) {
        prop_assume!(bytes.last() != Some(&b'/'));
        let path = PathBuf::from(std::ffi::OsString::from_vec(bytes));
        let e = Endpoint::unix(&path).unwrap();
        let back: Endpoint = e.to_string().parse().unwrap();
        prop_assert_eq!(back, e);
    }
}
