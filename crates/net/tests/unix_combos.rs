//! Unix-domain endpoints in combinations no other test makes: paths and abstract names
//! with bytes that are not printable ASCII (a newline, UTF-8, a backslash, a NUL inside an
//! abstract name, bytes that are not UTF-8), each served by a real server on the endpoint
//! read back from its own display, as a script reads a server's `listening on` line; a
//! draining server's name and path taken over by a successor at once; a peer that shuts
//! down its reading (which over a Unix-domain socket forbids our writes).

mod util;

use std::ffi::OsString;
use std::io::Write;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixStream};
use std::path::PathBuf;

use duo_net::Endpoint;
use duo_testkit::LIMIT;
use util::{echo_builder, init_log, unix_round_trip, TempDir, TestServer};

/// The display of `e` is one line of printable ASCII, and reads back as `e`.
fn reads_back(e: &Endpoint) -> Endpoint {
    let shown = e.to_string();
    assert!(
        shown.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
        "{shown:?} is not one line of printable ASCII"
    );
    let back: Endpoint = shown
        .parse()
        .unwrap_or_else(|err| panic!("{shown:?} does not parse: {err}"));
    assert_eq!(back, *e, "{shown:?} reads back as another endpoint");
    back
}

/// Abstract names with any byte: each displays as printable ASCII that reads back as the
/// same name, and a server started on that read-back form is reached at the raw name.
#[test]
fn abstract_names_with_odd_bytes_read_back_from_their_display_and_serve() {
    init_log();
    let pid = std::process::id();
    let names: Vec<Vec<u8>> = vec![
        format!("duo-caf\u{e9}-{pid}").into_bytes(),
        format!("duo-new\nline-{pid}").into_bytes(),
        format!("duo-back\\slash\\x41-{pid}").into_bytes(),
        [&b"duo-nul\0inside-"[..], pid.to_string().as_bytes()].concat(),
        [&b"duo-\xff\xfe-"[..], pid.to_string().as_bytes()].concat(),
    ];
    for name in names {
        let e = Endpoint::abstract_name(&name).unwrap();
        let at = reads_back(&e);
        let server = TestServer::start(move || echo_builder("uds-odd-name", at).io_threads(1));
        assert_eq!(server.handle().endpoint(), &e);
        let addr = UnixAddr::from_abstract_name(&name).unwrap();
        unix_round_trip(UnixStream::connect_addr(&addr).unwrap(), b"odd name");
        server.stop();
    }
    // Every byte value on its own.
    for b in 0..=255u8 {
        reads_back(&Endpoint::abstract_name([b'n', b, b'n']).unwrap());
    }
}

/// Socket paths with a newline, UTF-8, a backslash, bytes that are not UTF-8, and a
/// relative path that begins with `@` (not an abstract name): each
/// displays as printable ASCII that reads back as the same path, and a server started on
/// that read-back form is reached at the raw path (whose file it removes at stop).
#[test]
fn socket_paths_with_odd_bytes_read_back_from_their_display_and_serve() {
    init_log();
    let dir = TempDir::new("odd-paths");
    let files: Vec<Vec<u8>> = vec![
        "caf\u{e9}.sock".into(),
        "new\nline.sock".into(),
        "back\\x41slash.sock".into(),
        b"not-utf8-\xff.sock".to_vec(),
        "@at-first.sock".into(),
    ];
    for file in files {
        let path = dir.join(PathBuf::from(OsString::from_vec(file.clone())));
        let e = Endpoint::unix(&path).unwrap();
        let at = reads_back(&e);
        // The file name alone, as a relative path: read back, not taken for something else.
        reads_back(&Endpoint::unix(PathBuf::from(OsString::from_vec(file))).unwrap());
        let server = TestServer::start(move || echo_builder("uds-odd-path", at).io_threads(1));
        assert_eq!(server.handle().endpoint(), &e);
        assert!(path.exists(), "the server binds the raw path {path:?}");
        unix_round_trip(UnixStream::connect(&path).unwrap(), b"odd path");
        server.stop();
        assert!(!path.exists(), "{path:?} is removed at stop");
    }
}

/// A graceful shutdown held up by a client frees the server's address at once: a
/// successor binds the same abstract name, and the same path, while the predecessor
/// still drains; the predecessor's end leaves the successor's file alone.
#[test]
fn a_draining_server_hands_its_name_and_path_to_a_successor() {
    init_log();
    let dir = TempDir::new("handover");
    let name = format!("duo-unix-combos-{}-handover", std::process::id());
    for at in [
        Endpoint::abstract_name(&name).unwrap(),
        Endpoint::unix(dir.join("s.sock")).unwrap(),
    ] {
        let first = at.clone();
        let mut old = TestServer::start(move || echo_builder("uds-old", first).io_threads(1));
        let held = match &at {
            Endpoint::Unix(path) => UnixStream::connect(path).unwrap(),
            Endpoint::Abstract(n) => {
                UnixStream::connect_addr(&UnixAddr::from_abstract_name(n).unwrap()).unwrap()
            }
            other => panic!("{other}"),
        };
        unix_round_trip(held.try_clone().unwrap(), b"held");
        old.handle()
            .shutdown(std::time::Duration::from_secs(30), |lp| lp.quit());
        let deadline = std::time::Instant::now() + LIMIT;
        let new = loop {
            let second = at.clone();
            match TestServer::try_start(move || echo_builder("uds-new", second).io_threads(1)) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() < deadline => {
                    log::debug!("not yet: {e}");
                    std::thread::yield_now();
                }
                Err(e) => panic!("{at}: no successor while the old server drains: {e}"),
            }
        };
        assert!(!old.is_finished(), "the old server still drains");
        drop(held);
        old.join_within(LIMIT);
        let c = match &at {
            Endpoint::Unix(path) => UnixStream::connect(path),
            Endpoint::Abstract(n) => {
                UnixStream::connect_addr(&UnixAddr::from_abstract_name(n).unwrap())
            }
            other => panic!("{other}"),
        };
        unix_round_trip(c.expect("the successor serves"), b"new");
        new.stop();
    }
}

/// A Unix-domain peer that shuts down its reading (which, unlike TCP, forbids our
/// writes: `EPIPE`) and goes on writing: the server neither spins nor closes before the
/// peer's end, and closes once the peer closes.
#[test]
fn a_peer_that_shuts_its_reading_is_served_until_it_closes() {
    init_log();
    let dir = TempDir::new("shut-rd");
    let path = dir.join("s.sock");
    let at = Endpoint::unix(&path).unwrap();
    let server = TestServer::start(move || echo_builder("uds-shut-rd", at).io_threads(1));
    let mut c = UnixStream::connect(&path).unwrap();
    c.set_write_timeout(Some(LIMIT)).unwrap();
    c.shutdown(std::net::Shutdown::Read).unwrap();
    for _ in 0..100 {
        c.write_all(&[7u8; 4096]).unwrap();
    }
    duo_testkit::wait_until("the bytes are read", || {
        server.stats().bytes_in() == 409_600
    });
    assert_eq!(server.stats().active, 1, "still open");
    drop(c);
    duo_testkit::wait_until("closed", || server.stats().active == 0);
    server.stop();
}
