//! `echo serve --listen unix:...` in combinations no other test makes: a path or abstract
//! name with bytes that are not printable ASCII, connected to at the address read back
//! from the `listening on` line as a script would; the stale file of a killed server
//! replaced while a symbolic link to a live socket, a directory and a path too long are
//! refused (and left as they are); the socket file removed on every exit path (a startup
//! error after binding, a second signal).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixStream};
use std::process::Command;
use std::time::Duration;

use duo_net::Endpoint;
use duo_testkit::{run_within, wait_until_within, ChildServer, TempDir};

const IO_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT: Duration = Duration::from_secs(10);

fn echo(listen: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echo"));
    cmd.args(["serve", "--io-threads", "1", "--listen", listen])
        .args(args)
        .env("RUST_LOG", "info");
    cmd
}

/// Connects to a Unix-domain endpoint (a path or an abstract name).
fn connect(at: &Endpoint) -> std::io::Result<UnixStream> {
    match at {
        Endpoint::Unix(path) => UnixStream::connect(path),
        Endpoint::Abstract(name) => UnixStream::connect_addr(&UnixAddr::from_abstract_name(name)?),
        other => panic!("not a Unix-domain endpoint: {other}"),
    }
}

fn round_trip(mut s: UnixStream, msg: &[u8]) {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

/// A server on a name or path with UTF-8 or a newline in it announces a one-line address
/// that reads back as where it listens: a script connects to what it printed.
#[test]
fn an_odd_name_or_path_is_announced_in_a_form_that_reads_back() {
    let dir = TempDir::new("odd");
    let name = format!("duo-echo-caf\u{e9}-{}", std::process::id());
    let path = dir.join("new\nline.sock");
    let cases = [
        (
            format!("unix:@{name}"),
            Endpoint::abstract_name(&name).unwrap(),
        ),
        (
            format!("unix:{}", path.display()),
            Endpoint::unix(&path).unwrap(),
        ),
    ];
    for (listen, want) in cases {
        let mut server = ChildServer::start(echo(&listen, &[]));
        let announced: Endpoint = server
            .announced()
            .parse()
            .unwrap_or_else(|e| panic!("{:?}: {e}", server.announced()));
        assert_eq!(announced, want, "announced {:?}", server.announced());
        let s = connect(&announced)
            .unwrap_or_else(|e| panic!("connect to the announced {announced}: {e}"));
        round_trip(s, b"odd");
        let (status, _) = server.terminate("TERM", EXIT);
        assert!(status.success(), "{status:?}");
    }
    assert!(!path.exists(), "the socket file is removed at exit");
}

/// The file a SIGKILLed server left is replaced by the next server, while a symbolic link
/// to that live socket, a directory and a path too long for `sun_path` are refused (exit
/// 1, or 2 for the usage error) and left as they are.
#[test]
fn a_stale_file_is_replaced_and_what_is_not_ours_is_refused_and_kept() {
    let dir = TempDir::new("stale");
    let path = dir.join("echo.sock");
    let listen = format!("unix:{}", path.display());
    let mut killed = ChildServer::start(echo(&listen, &[]));
    killed.kill();
    assert!(path.exists(), "SIGKILL leaves the socket file behind");
    assert!(connect(&Endpoint::unix(&path).unwrap()).is_err(), "stale");

    let mut server = ChildServer::start(echo(&listen, &[]));
    round_trip(UnixStream::connect(&path).unwrap(), b"replaced");

    let link = dir.join("link.sock");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let long = format!("unix:{}/{}", dir.path().display(), "x".repeat(108));
    for (at, code, says) in [
        (format!("unix:{}", link.display()), 1, "not a socket"),
        (format!("unix:{}", sub.display()), 1, "not a socket"),
        (long, 2, "at most 108 bytes"),
    ] {
        let out = run_within(&mut echo(&at, &[]), EXIT).unwrap();
        assert_eq!(out.status.code(), Some(code), "{at}: {out:?}");
        assert!(out.stderr.contains(says), "{at}: {}", out.stderr);
    }
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(sub.is_dir());
    // The live server still serves through its path (and through the link).
    round_trip(UnixStream::connect(&link).unwrap(), b"still here");

    let (status, _) = server.terminate("TERM", EXIT);
    assert!(status.success(), "{status:?}");
    assert!(!path.exists(), "the replacement removes its file at exit");
}

/// Every exit path removes the socket file: a startup error after binding (the metrics
/// address is taken: exit 1), and a second signal during a drain held up by a client.
#[test]
fn the_socket_file_goes_on_a_startup_error_and_on_a_second_signal() {
    let dir = TempDir::new("exits");
    let path = dir.join("echo.sock");
    let listen = format!("unix:{}", path.display());

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = taken.local_addr().unwrap().to_string();
    let out = run_within(&mut echo(&listen, &["--metrics", &metrics]), EXIT).unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("metrics"), "{}", out.stderr);
    assert!(!path.exists(), "the socket file goes with the failed start");

    let mut server = ChildServer::start(echo(&listen, &["--drain-timeout", "60"]));
    // A client that never closes holds the drain up: only the second signal ends it.
    let client = UnixStream::connect(&path).unwrap();
    round_trip(client.try_clone().unwrap(), b"hold");
    server.signal("INT");
    server.wait_for_stderr("shutting down", EXIT);
    // The line is written as the drain begins, just before the listener (and its file)
    // goes: wait for it, bounded, rather than look once (CI saw the file still there).
    wait_until_within(EXIT, "the path goes when the drain begins", || {
        !path.exists()
    });
    server.signal("INT");
    let status = server.wait_exit(EXIT);
    assert!(status.success(), "{status:?}");
    assert!(!path.exists());
    drop(client);
}
