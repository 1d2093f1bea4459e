//! Review round 9 of the Unix-domain socket area (endpoints, the stale-file rules, the
//! socket file at stop).
//!
//! - A socket path that ends in `/` names a directory, where no socket can be bound or
//!   reached. It used to be accepted: a server then failed with `No such file or
//!   directory` for a directory that exists (or `Not a directory` next to a live server's
//!   socket), and a client retried it for ever. Now it is refused when the endpoint is
//!   parsed or made, with the input named; an abstract name, which is bytes and no file,
//!   may still end in `/`.
//! - A path or abstract name that ends in a space was displayed with the space last, at
//!   the end of the `listening on` line, where line readers drop it (the shell's `read`,
//!   `duo_testkit::ChildServer`): the address read back was another one. That space now
//!   shows as `\x20`.
//! - The longest path (107 bytes) through the stale-file rules (a combination no other
//!   test made; it passed before).

mod util;

use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::Command;

use duo_net::{Endpoint, EventLoop};
use duo_testkit::{run_within, LIMIT};
use util::{echo_builder, init_log, unix_round_trip, TempDir, TestServer};

/// A path ending in `/`, written out or as the escape `\x2f`, relative or absolute, is
/// refused by the parser and by `Endpoint::unix`, naming the input; next to a live
/// server's socket, and in a directory that exists.
#[test]
fn a_socket_path_that_ends_in_a_slash_is_refused_with_the_input_named() {
    init_log();
    let dir = TempDir::new("trailing-slash");
    let live = dir.join("live.sock");
    let server = TestServer::start({
        let at = Endpoint::unix(&live).unwrap();
        move || echo_builder("r9-slash", at).io_threads(1)
    });
    assert!(UnixStream::connect(&live).is_ok(), "the server listens");

    let free = dir.join("free.sock");
    for text in [
        format!("unix:{}/", live.display()),
        format!("unix:{}/", free.display()),
        format!("unix:{}\\x2f", free.display()),
        format!("unix:{}/", dir.path().display()),
        "unix:rel.sock/".to_owned(),
        "unix:/".to_owned(),
    ] {
        let err = match text.parse::<Endpoint>() {
            Ok(e) => panic!("{text:?} parsed as {e}, a path no socket can be bound at"),
            Err(err) => err,
        };
        let shown = err.to_string();
        assert!(
            shown.contains(&format!("{text:?}")) && shown.contains("ends in '/'"),
            "{text}: {shown}"
        );
        let raw = PathBuf::from(OsString::from_vec(
            text.strip_prefix("unix:")
                .unwrap()
                .replace("\\x2f", "/")
                .into_bytes(),
        ));
        match Endpoint::unix(&raw) {
            Ok(e) => panic!("{raw:?} made {e}, a path no socket can be bound at"),
            Err(err) => assert!(err.to_string().contains("ends in '/'"), "{raw:?}: {err}"),
        }
    }
    // Without the slash: the same paths are fine; an abstract name may end in `/`.
    assert!(format!("unix:{}", free.display())
        .parse::<Endpoint>()
        .is_ok());
    assert!("unix:rel.sock".parse::<Endpoint>().is_ok());
    let name: Endpoint = "unix:@name/".parse().unwrap();
    assert_eq!(name, Endpoint::abstract_name("name/").unwrap());
    assert_eq!(name.to_string(), "unix:@name/");

    // The live server and its file are as they were.
    assert!(UnixStream::connect(&live).is_ok());
    server.stop();
    assert!(!live.exists(), "its file goes at its stop");
}

/// The longest path a Unix-domain address holds (107 bytes) through the stale-file rules:
/// served and displayed as given, refused to a second server while live, replaced once
/// its server is gone, removed at each stop.
#[test]
fn the_longest_path_is_served_refused_while_live_and_replaced_when_stale() {
    init_log();
    let dir = TempDir::new("long");
    let base = dir.path().display().to_string();
    let path = PathBuf::from(format!("{base}/{}", "p".repeat(107 - base.len() - 1)));
    assert_eq!(path.as_os_str().len(), 107);
    let e = Endpoint::unix(&path).unwrap();
    let start = |name: &'static str| {
        let e = e.clone();
        TestServer::start(move || echo_builder(name, e).io_threads(1))
    };
    let server = start("r9-long");
    assert_eq!(server.handle().endpoint(), &e);
    assert_eq!(server.handle().endpoint().to_string(), e.to_string());
    unix_round_trip(UnixStream::connect(&path).unwrap(), b"long");

    let mut lp = EventLoop::new().unwrap();
    let err = echo_builder("r9-long-2", e.clone())
        .start(&mut lp)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
    assert!(err.to_string().contains(&e.to_string()), "{err}");
    unix_round_trip(UnixStream::connect(&path).unwrap(), b"still");
    server.stop();
    assert!(!path.exists(), "removed at stop");

    // A dead server's file of that length.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = start("r9-long-3");
    unix_round_trip(UnixStream::connect(&path).unwrap(), b"replaced");
    server.stop();
    assert!(!path.exists(), "removed at stop");
}

/// Connects to a path or an abstract name.
fn connect_to(e: &Endpoint) -> UnixStream {
    match e {
        Endpoint::Unix(path) => UnixStream::connect(path).unwrap(),
        Endpoint::Abstract(name) => {
            UnixStream::connect_addr(&UnixAddr::from_abstract_name(name).unwrap()).unwrap()
        }
        other => panic!("{other} is not a path or an abstract name"),
    }
}

/// A path or an abstract name that ends in a space, as the `listening on` line shows it:
/// the address ends the line, where line readers drop blanks (the shell's `read`,
/// `duo_testkit::ChildServer`'s `str::trim`). The display used to end in the space, so
/// the address read back was another one (a path with no socket, a name nobody has); now
/// that last space shows as `\x20`, and both readers reach the server.
#[test]
fn an_address_that_ends_in_a_space_reads_back_from_a_line_reader_that_trims() {
    init_log();
    let dir = TempDir::new("space");
    let name = format!("duo-r9-{}-name ", std::process::id());
    for e in [
        Endpoint::unix(dir.join("space.sock ")).unwrap(),
        Endpoint::unix(dir.join("  ")).unwrap(),
        Endpoint::abstract_name(&name).unwrap(),
        Endpoint::abstract_name(" ").unwrap(),
    ] {
        let server = TestServer::start({
            let e = e.clone();
            move || echo_builder("r9-space", e).io_threads(1)
        });
        let line = format!("listening on {}\n", server.handle().endpoint());
        assert!(!line.trim_end_matches('\n').ends_with(' '), "{line:?}");
        // As a script reads it.
        let script = r#"printf '%s' "$1" | { read -r _ _ addr; printf '%s' "$addr"; }"#;
        let out = run_within(Command::new("sh").args(["-c", script, "sh", &line]), LIMIT).unwrap();
        assert!(out.status.success(), "{out:?}");
        let by_shell: Endpoint = out.stdout.parse().unwrap();
        assert_eq!(by_shell.to_string(), e.to_string(), "{line:?}");
        // As `ChildServer::announced` reads it.
        let trimmed = line.strip_prefix("listening on ").unwrap().trim();
        let by_trim: Endpoint = trimmed.parse().unwrap();
        assert_eq!(by_trim.to_string(), e.to_string(), "{line:?}");
        unix_round_trip(connect_to(&by_shell), b"space");
        unix_round_trip(connect_to(&by_trim), b"trim");
        server.stop();
    }
}
