//! `echo serve --listen unix:...`, run as a user would: the `listening on unix:` line,
//! raw and framed echo over the socket file and over an abstract name, the file removed
//! at a graceful stop, a live server's path refused, `--processes` refused with a usage
//! error, and a socket-activated Unix-domain listener.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use duo_testkit::{run_within, ChildServer, Rng};

const IO_TIMEOUT: Duration = Duration::from_secs(20);

fn temp_path(what: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("duo-echo-{}-{what}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn start(listen: &str, args: &[&str]) -> ChildServer {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echo"));
    cmd.args(["serve", "--listen", listen])
        .args(args)
        .env("RUST_LOG", "info");
    ChildServer::start(cmd)
}

fn timeouts(s: UnixStream) -> UnixStream {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Sends `len` random bytes while a second thread reads the echo back; then half-closes
/// and expects end of stream.
fn round_trip(mut s: UnixStream, seed: u64, len: usize) {
    let data = Rng::new(seed).bytes(len);
    let mut reader = s.try_clone().unwrap();
    let expected = data.clone();
    let read = std::thread::spawn(move || {
        let mut got = vec![0u8; expected.len()];
        reader.read_exact(&mut got).expect("read the echo");
        assert!(got == expected, "echoed bytes differ");
    });
    s.write_all(&data).unwrap();
    read.join().expect("reader");
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn serves_a_socket_file_and_removes_it_at_stop() {
    let path = temp_path("file");
    let listen = format!("unix:{}", path.display());
    let mut server = start(&listen, &["--io-threads", "2", "--accept", "reuseport"]);
    assert_eq!(server.announced(), listen);
    assert!(path.exists());
    for seed in 0..3 {
        round_trip(
            timeouts(UnixStream::connect(&path).unwrap()),
            seed,
            256 * 1024,
        );
    }

    // A second server on the same live path is refused; the first keeps serving.
    let mut second = Command::new(env!("CARGO_BIN_EXE_echo"));
    second.args(["serve", "--listen", &listen]);
    let out = run_within(&mut second, Duration::from_secs(10)).unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = &out.stderr;
    assert!(stderr.contains("in use"), "{stderr}");
    round_trip(timeouts(UnixStream::connect(&path).unwrap()), 9, 1000);

    let (status, _) = server.terminate("TERM", Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(!path.exists(), "the socket file is removed at exit");
}

#[test]
fn serves_an_abstract_name_framed() {
    let name = format!("duo-echo-{}-abstract", std::process::id());
    let listen = format!("unix:@{name}");
    let mut server = start(&listen, &["--io-threads", "1", "--framed"]);
    assert_eq!(server.announced(), listen);
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
    let mut s = timeouts(UnixStream::connect_addr(&addr).unwrap());
    let mut packet = Vec::new();
    packet.extend_from_slice(&1u32.to_be_bytes());
    packet.extend_from_slice(&5u32.to_be_bytes());
    packet.extend_from_slice(b"hello");
    s.write_all(&packet).unwrap();
    let mut reply = [0u8; 13];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..4], &2u32.to_be_bytes());
    assert_eq!(&reply[8..], b"hello");
    drop(s);
    let (status, _) = server.terminate("TERM", Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

#[test]
fn processes_with_a_unix_address_is_a_usage_error() {
    let path = temp_path("processes");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echo"));
    cmd.args(["serve", "--processes", "2", "--listen"])
        .arg(format!("unix:{}", path.display()));
    let out = run_within(&mut cmd, Duration::from_secs(10)).unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = &out.stderr;
    assert!(stderr.contains("--processes needs a TCP"), "{stderr}");
    assert!(!path.exists());
}

/// `systemd-socket-activate -l /path echo serve`: echo serves the inherited Unix-domain
/// socket (the activator executes it at the first connection) and leaves its file, which
/// is not echo's, at exit.
#[test]
fn serves_a_socket_activated_unix_listener() {
    const SOCKET_ACTIVATE: &str = "/usr/bin/systemd-socket-activate";
    if !std::path::Path::new(SOCKET_ACTIVATE).exists() {
        println!("skipped: {SOCKET_ACTIVATE} is not installed");
        return;
    }
    let path = temp_path("activated");
    let mut cmd = Command::new(SOCKET_ACTIVATE);
    cmd.args(["-l"])
        .arg(&path)
        .args([env!("CARGO_BIN_EXE_echo"), "serve", "--io-threads", "1"])
        .env("RUST_LOG", "info");
    // The activator executes echo on the first connection: connect first (once the
    // activator listens), then the `listening on` line comes.
    let first_path = path.clone();
    let first = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + IO_TIMEOUT;
        let s = loop {
            match UnixStream::connect(&first_path) {
                Ok(s) => break s,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("connect to {}: {e}", first_path.display()),
            }
        };
        round_trip(timeouts(s), 1, 1000);
    });
    let mut server = ChildServer::start(cmd);
    assert_eq!(server.announced(), format!("unix:{}", path.display()));
    first.join().expect("the first connection");
    round_trip(timeouts(UnixStream::connect(&path).unwrap()), 2, 1000);
    let (status, _) = server.terminate("TERM", Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(path.exists(), "an inherited socket's file is left alone");
    let _ = std::fs::remove_file(&path);
}
