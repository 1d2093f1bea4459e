//! `bank client --connect unix:...` against a server whose accept queue is full (an
//! overloaded or stopped bank): the client gives up after its connect timeout with a clear
//! error and exit 1, as over TCP, instead of blocking in `connect` for ever. And the form
//! echo and the bank print in `listening on` (odd bytes as `\xNN`) reaches the server.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use duo_testkit::run_within;
use socket2::{Domain, SockAddr, Socket, Type};

const BANK: &str = env!("CARGO_BIN_EXE_bank");

/// A listening Unix socket at a fresh path whose accept queue is full: it never accepts,
/// and nonblocking connects were made until the kernel refused one with `EAGAIN`. The
/// sockets are kept open (the queued connections stay queued) until drop.
struct FullListener {
    path: PathBuf,
    _listener: Socket,
    _queued: Vec<Socket>,
}

impl FullListener {
    fn new(tag: &str) -> FullListener {
        let path = std::env::temp_dir().join(format!("bank-uc-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let addr = SockAddr::unix(&path).unwrap();
        let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        listener.bind(&addr).unwrap();
        listener.listen(0).unwrap();
        let mut queued = Vec::new();
        loop {
            let s = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            match s.connect(&addr) {
                Ok(()) => queued.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling the queue: {e}"),
            }
            assert!(queued.len() < 64, "the accept queue never filled");
        }
        FullListener {
            path,
            _listener: listener,
            _queued: queued,
        }
    }
}

impl Drop for FullListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn a_full_accept_queue_times_out_the_connect() {
    let full = FullListener::new("full");
    let target = format!("unix:{}", full.path.display());
    let start = Instant::now();
    let out = run_within(
        Command::new(BANK).args(["client", "--connect", &target, "PING"]),
        Duration::from_secs(15),
    )
    .expect("the client blocked in connect");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains(&target) && out.stderr.contains("timed out"),
        "{out:?}"
    );
    assert!(start.elapsed() >= Duration::from_secs(4), "gave up at once");
}

/// An abstract name with a byte that `listening on` prints as `\xNN`: the client takes
/// that printed form (and the raw one) to the same server.
#[test]
fn the_announced_form_of_an_odd_name_connects() {
    let name = format!("bank-uc-caf\u{e9}-{}", std::process::id());
    let mut raw = vec![0u8];
    raw.extend_from_slice(name.as_bytes());
    let addr = SockAddr::unix(std::ffi::OsStr::from_bytes(&raw)).unwrap();
    let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    listener.bind(&addr).unwrap();
    listener.listen(8).unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (conn, _) = listener.accept().unwrap();
            let mut conn = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(conn));
            let mut line = String::new();
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
            assert_eq!(line, "PING\n");
            std::io::Write::write_all(&mut conn, b"PONG\n").unwrap();
        }
    });
    let printed = format!("unix:@{}", name.replace('\u{e9}', "\\xc3\\xa9"));
    for target in [printed, format!("unix:@{name}")] {
        let out = run_within(
            Command::new(BANK).args(["client", "--connect", &target, "PING"]),
            Duration::from_secs(15),
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(0), "{target}: {out:?}");
        assert_eq!(out.stdout, "PONG\n", "{target}");
    }
    server.join().unwrap();
}
