//! Review round 10 of endpoints and Unix-domain / UDP sockets: what a peer's endpoint
//! prints reads back as the same endpoint (the empty abstract name, the unnamed peer, and
//! the paths and names that look like them), `Eq` and `Hash` agree on paths that differ
//! only in spelling, a second server's probe of a live path is a connection the live
//! server sees (as documented), a successor's socket file survives its predecessor's
//! stop, and a UDP socket bound to the IPv4-mapped wildcard replies from the address
//! each datagram came to.

mod util;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::{SocketAddr, UdpSocket as StdUdp};
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc};

use duo_net::{Endpoint, UdpSocket};
use duo_reactor::EventLoopThread;
use duo_testkit::LIMIT;
use proptest::prelude::*;
use socket2::{Domain, SockAddr, Socket, Type};
use util::shared::echoing;
use util::{echo_builder, init_log, unix_round_trip, TempDir, TestServer};

fn hash_of(e: &Endpoint) -> u64 {
    let mut h = DefaultHasher::new();
    e.hash(&mut h);
    h.finish()
}

/// Display, then parse: the same endpoint.
fn reads_back(e: &Endpoint) {
    let shown = e.to_string();
    let back: Endpoint = shown
        .parse()
        .unwrap_or_else(|err| panic!("{shown:?} does not parse back: {err}"));
    assert_eq!(&back, e, "{shown:?} parses back as another endpoint");
}

#[test]
fn the_kernel_forms_and_their_look_alikes_read_back() {
    // What `accept`/`getsockname` can hand us besides names and paths.
    reads_back(&Endpoint::UnixUnnamed);
    reads_back(&Endpoint::Abstract(Arc::from(&b""[..])));
    // A path or name spelled like those forms is still itself.
    reads_back(&Endpoint::unix("(unnamed)").unwrap());
    reads_back(&Endpoint::abstract_name("(unnamed)").unwrap());
    reads_back(&Endpoint::abstract_name("(empty)").unwrap());
    reads_back(&Endpoint::unix("@(empty)").unwrap());
    // The typo guard stays: nothing after `unix:@` is refused.
    assert!("unix:@".parse::<Endpoint>().is_err());
    assert!("unix:".parse::<Endpoint>().is_err());
    // An unnamed endpoint still cannot be listened on or connected to.
    let unnamed: Endpoint = "unix:(unnamed)".parse().unwrap();
    assert_eq!(unnamed, Endpoint::UnixUnnamed);
}

proptest! {
    #[test]
    fn any_unix_endpoint_reads_back(
        name in proptest::collection::vec(any::<u8>(), 0..=107),
        unnamed in any::<bool>(),
    ) {
        // Every form a peer can show up as: any abstract name (the empty one too), any
        // path, the unnamed socket.
        let e = if unnamed { Endpoint::UnixUnnamed } else { Endpoint::Abstract(Arc::from(&name[..])) };
        let back: Endpoint = e.to_string().parse().unwrap();
        prop_assert_eq!(back, e);
        if !name.is_empty() && !name.contains(&0) && name.last() != Some(&b'/') {
            let path = std::path::PathBuf::from(
                <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(name),
            );
            let e = Endpoint::unix(path).unwrap();
            let back: Endpoint = e.to_string().parse().unwrap();
            prop_assert_eq!(back, e);
        }
    }

    #[test]
    fn equal_paths_hash_alike(path in "[a-z./]{0,30}[a-z]") {
        // `Path` compares by component: `a//b`, `a/./b` and `a/b` are one endpoint, so
        // they must hash alike (a map keyed by endpoint finds either).
        let e = Endpoint::unix(&path).unwrap();
        let respelled = Endpoint::unix(path.replace('/', "/./")).unwrap();
        let doubled = Endpoint::unix(path.replace('/', "//")).unwrap();
        prop_assert_eq!(&respelled, &e);
        prop_assert_eq!(&doubled, &e);
        prop_assert_eq!(hash_of(&respelled), hash_of(&e));
        prop_assert_eq!(hash_of(&doubled), hash_of(&e));
    }
}

/// A client bound to the empty abstract name (a real Linux address: `bind` with just the
/// leading NUL) shows up at the server as an endpoint that reads back as itself.
#[test]
fn a_peer_bound_to_the_empty_abstract_name_prints_as_something_that_parses_back() {
    init_log();
    let dir = TempDir::new("r10-empty-abstract");
    let at = Endpoint::unix(dir.join("s.sock")).unwrap();
    let (tx, rx) = mpsc::channel();
    let server = TestServer::start({
        let at = at.clone();
        move || {
            let tx = std::sync::Mutex::new(tx);
            echo_builder("r10-empty", at).on_connection(move |c| {
                if c.is_connected() {
                    let _ = tx
                        .lock()
                        .unwrap()
                        .send((c.peer_endpoint().clone(), c.name().to_string()));
                }
            })
        }
    });
    let client = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    // The sockaddr is the family and one NUL byte: the empty abstract name.
    let empty = SockAddr::unix("\0").unwrap();
    if let Err(e) = client.bind(&empty) {
        // Another process holds the (system-wide, single) empty name: nothing to test.
        eprintln!("cannot bind the empty abstract name ({e}); skipping");
        server.stop();
        return;
    }
    client
        .connect(&SockAddr::unix(at.as_path().unwrap()).unwrap())
        .unwrap();
    let (peer, name) = rx.recv_timeout(LIMIT).expect("the server saw the client");
    assert_eq!(peer, Endpoint::Abstract(Arc::from(&b""[..])));
    reads_back(&peer);
    assert!(name.contains(&peer.to_string()), "{name}");
    unix_round_trip(UnixStream::from(std::os::fd::OwnedFd::from(client)), b"hi");
    server.stop();
}

/// Suspect 3: a second server's probe of a live path is a real connection, which the live
/// server accepts (and its application sees open and close with no data). Documented in
/// the module docs of the stale-file policy; this pins the documented behaviour.
#[test]
fn a_second_servers_probe_is_a_connection_the_live_server_sees() {
    init_log();
    let dir = TempDir::new("r10-probe");
    let at = Endpoint::unix(dir.join("live.sock")).unwrap();
    let live = TestServer::start({
        let at = at.clone();
        move || echo_builder("r10-live", at)
    });
    let second = TestServer::try_start({
        let at = at.clone();
        move || echo_builder("r10-second", at)
    });
    let err = second.err().expect("the live server keeps its path");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    let s = live.wait_for_stats("the probe accepted and closed", |s| {
        s.accepted == 1 && s.closed == 1
    });
    assert_eq!(s.active, 0, "{s:?}");
    // And the path still works.
    unix_round_trip(UnixStream::connect(at.as_path().unwrap()).unwrap(), b"ok");
    live.stop();
}

/// Suspect 2: a successor bound at the same path after the file was unlinked keeps its
/// file when the first server stops. (The first server's socket holds the unlinked
/// inode until it closes, and the file is checked before the socket closes, so the
/// successor's file cannot have the same device and inode.)
#[test]
fn a_successors_file_survives_the_first_servers_stop() {
    init_log();
    let dir = TempDir::new("r10-successor");
    let path = dir.join("s.sock");
    let at = Endpoint::unix(&path).unwrap();
    let first = TestServer::start({
        let at = at.clone();
        move || echo_builder("r10-first", at)
    });
    std::fs::remove_file(&path).unwrap();
    let second = TestServer::start({
        let at = at.clone();
        move || echo_builder("r10-second", at)
    });
    first.stop();
    assert!(path.exists(), "the successor's socket file was removed");
    unix_round_trip(UnixStream::connect(&path).unwrap(), b"still here");
    second.stop();
    assert!(!path.exists(), "the successor removes its own file");
}

/// Suspect 4: bound to `[::ffff:0.0.0.0]` (the IPv4 wildcard, IPv4-mapped, on an IPv6
/// socket), the socket has no address of its own either: a reply must leave from the
/// address the datagram came to, as for `0.0.0.0` and `[::]`.
#[test]
fn the_mapped_ipv4_wildcard_replies_from_the_address_each_datagram_came_to() {
    let at: Endpoint = "[::ffff:0.0.0.0]:0".parse().unwrap();
    assert_eq!(at.to_string(), "[::ffff:0.0.0.0]:0");
    let io = EventLoopThread::spawn("r10-udp-mapped", None).unwrap();
    let sock = match echoing(UdpSocket::builder("mapped", at.as_inet().unwrap())).start(io.handle())
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("no IPv6 here ({e}); skipping");
            io.stop().unwrap();
            return;
        }
    };
    let local = sock.local_addr();
    assert_eq!(local.ip().to_string(), "::ffff:0.0.0.0", "{local}");
    let c = StdUdp::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(LIMIT)).unwrap();
    // 127.0.0.2 is this host too, but not the source the kernel would pick for a reply to
    // 127.0.0.1.
    let to: SocketAddr = format!("127.0.0.2:{}", local.port()).parse().unwrap();
    c.send_to(b"where", to).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = c.recv_from(&mut buf).expect("the echo within the limit");
    assert_eq!((&buf[..n], from), (&b"where"[..], to));
    sock.stop();
    io.stop().unwrap();
}

/// The same wildcard for a TCP server: a connection's local endpoint is the address the
/// peer dialled, not the wildcard (as for `0.0.0.0` and `[::]`).
#[test]
fn the_mapped_ipv4_wildcard_tcp_server_reports_the_dialled_address() {
    init_log();
    let (tx, rx) = mpsc::channel();
    let server = match TestServer::try_start(move || {
        let tx = std::sync::Mutex::new(tx);
        echo_builder(
            "r10-mapped",
            "[::ffff:0.0.0.0]:0".parse::<Endpoint>().unwrap(),
        )
        .on_connection(move |c| {
            if c.is_connected() {
                let _ = tx.lock().unwrap().send(c.local_endpoint().clone());
            }
        })
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("no IPv6 here ({e}); skipping");
            return;
        }
    };
    let port = server.addr().port();
    assert_eq!(server.addr().ip().to_string(), "::ffff:0.0.0.0");
    let dialled: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
    let s = std::net::TcpStream::connect_timeout(&dialled, LIMIT).unwrap();
    let local = rx
        .recv_timeout(LIMIT)
        .expect("the server saw the connection");
    let want: SocketAddr = format!("[::ffff:127.0.0.2]:{port}").parse().unwrap();
    assert_eq!(local, Endpoint::from(want));
    drop(s);
    server.stop();
}
