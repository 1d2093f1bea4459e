//! The `echo` example (`examples/echo.rs`) as its doc comment says to run it, with what a
//! user does to it with `nc`: a client that half-closes after a huge line without a line
//! end or after binary garbage, one that resets, one that keeps writing without reading
//! when Ctrl-C or SIGTERM comes, and a second echo on a port already in use. (Bad
//! arguments: `example_combos.rs`.)
//!
//! Every wait has a deadline; each server process is killed by its guard if a test fails.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::process::Command;
use std::thread;
use std::time::Duration;

use duo_testkit::{example_binary, run_within, ChildServer, LIMIT};
use util::{connect, read_until_closed, End};

/// `echo ADDR IO_THREADS`, once its `listening on` line came.
fn echo(addr: &str, io_threads: &str) -> ChildServer {
    let mut cmd = Command::new(example_binary("duo-net", "echo"));
    cmd.args([addr, io_threads]).env("RUST_LOG", "info");
    ChildServer::builder(cmd).startup(LIMIT).start()
}

/// Byte `i` of the stream a client sends: a pattern in which a lost, repeated or
/// reordered piece shows.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// `printf ... | nc -N HOST PORT`: whatever was sent comes back whole, then the end of
/// stream, on one I/O thread, two, or the main loop (0): a line of 4 MiB without a line end
/// (echo does not frame), binary garbage, an empty stream. A client that resets meanwhile
/// disturbs nobody.
#[test]
fn half_closing_clients_get_everything_back_then_the_end() {
    for threads in ["0", "2"] {
        let server = echo("127.0.0.1:0", threads);
        let huge: Vec<u8> = (0..4 << 20).map(pattern).collect();
        let garbage = b"\x00\xff\xfe\r\n\r\n\x1b[2J garbage".to_vec();
        let mut resetting = connect(server.addr());
        resetting.write_all(b"half a request").unwrap();
        let writers: Vec<_> = [huge, garbage, Vec::new()]
            .into_iter()
            .map(|sent| {
                let mut s = connect(server.addr());
                let mut w = s.try_clone().unwrap();
                let writer = thread::spawn(move || {
                    w.write_all(&sent).unwrap();
                    w.shutdown(Shutdown::Write).unwrap();
                    sent
                });
                let got = read_until_closed(&mut s);
                (writer.join().unwrap(), got)
            })
            .collect();
        let sock = socket2::Socket::from(resetting);
        sock.set_linger(Some(Duration::ZERO)).unwrap();
        drop(sock);
        for (sent, (got, end)) in writers {
            assert_eq!(end, End::Eof, "{threads} I/O threads");
            assert!(
                got == sent,
                "{threads} I/O threads: {} of {} bytes",
                got.len(),
                sent.len()
            );
        }
        let mut again = connect(server.addr());
        again.write_all(b"still there?\n").unwrap();
        again.shutdown(Shutdown::Write).unwrap();
        assert_eq!(
            read_until_closed(&mut again),
            (b"still there?\n".to_vec(), End::Eof)
        );
    }
}

/// A client that writes without reading until it cannot write any more (the server,
/// paused by backpressure, holds its echo queued) when SIGTERM or Ctrl-C comes: it reads an
/// exact prefix of what it sent, what the server had read, then the end of stream (not a
/// reset), and the server exits 0 without waiting for the grace.
#[test]
fn a_stop_signal_delivers_what_was_read_then_exits_0() {
    for signal in ["TERM", "INT"] {
        let mut server = echo("127.0.0.1:0", "2");
        let mut s = connect(server.addr());
        s.set_nonblocking(true).unwrap();
        let mut sent = 0;
        loop {
            let piece: Vec<u8> = (sent..sent + (64 << 10)).map(pattern).collect();
            match s.write(&piece) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        s.set_nonblocking(false).unwrap();
        server.signal(signal);
        let (got, end) = read_until_closed(&mut s);
        assert_eq!(end, End::Eof, "SIG{signal}");
        assert!(
            !got.is_empty() && got.len() <= sent,
            "SIG{signal}: {} of {sent}",
            got.len()
        );
        let first_wrong = got.iter().enumerate().find(|&(i, b)| *b != pattern(i));
        assert_eq!(first_wrong, None, "SIG{signal}: a lost or repeated piece");
        drop(s);
        let status = server.wait_exit(LIMIT);
        assert!(
            status.success(),
            "SIG{signal}: {status}; log:\n{}",
            server.stderr()
        );
    }
}

/// A second echo on a port in use says so and exits 1: no panic, no Debug dump.
#[test]
fn a_port_in_use_is_a_clear_error() {
    let first = echo("127.0.0.1:0", "1");
    let addr = first.addr().to_string();
    for threads in ["0", "2"] {
        let out = run_within(
            Command::new(example_binary("duo-net", "echo")).args([addr.as_str(), threads]),
            LIMIT,
        )
        .expect("run echo");
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            out.stderr
                .contains(&format!("echo: cannot bind {addr}: Address already in use")),
            "{}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        assert!(out.stdout.is_empty(), "{}", out.stdout);
    }
    // The first one is undisturbed.
    let mut s = connect(first.addr());
    s.write_all(b"ok").unwrap();
    let mut back = [0u8; 2];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ok");
}
