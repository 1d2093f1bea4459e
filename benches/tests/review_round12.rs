//! Review round 12 of the benchmark harness (loadgen and its peer servers). Each test
//! failed before its fix (written by a review helper):
//!
//! - `rr --udp` left out the waits of the requests still in flight when the measured phase
//!   ended, which `rr` over TCP records (`Latency::record_unanswered`): a UDP server that
//!   stops answering showed only its earlier, fast answers in the latency figures.
//! - `tokio_echo` bound a Unix-domain path with `std`, which refuses one that fills all
//!   108 bytes of `sun_path` (duo's servers and loadgen take it, through
//!   `duo_sys::unix_addr`): a bench on such a path failed for that peer alone.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::ffi::OsStrExt as _;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::{loadgen, number};
use duo_testkit::{ChildServer, TempDir};

/// A UDP server on a free loopback port that echoes the first datagram of each peer and
/// none after it (a server that stalls), for as long as the test process lives.
fn udp_echo_once_per_peer() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("local addr");
    thread::spawn(move || {
        let mut answered = Vec::<SocketAddr>::new();
        let mut buf = [0u8; 2048];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            if !answered.contains(&from) {
                answered.push(from);
                let _ = socket.send_to(&buf[..n], from);
            }
        }
    });
    addr
}

/// Each socket's first request is answered at once, its second never: at the end of a
/// phase shorter than the loss timeout (200 ms) that one has waited about the whole phase,
/// and the latency figures must show it, as `rr` over TCP does.
#[test]
fn udp_rr_records_the_waits_of_requests_in_flight_at_the_end() {
    let addr = udp_echo_once_per_peer().to_string();
    let (code, out) = loadgen(&[
        "rr",
        "--udp",
        "--addr",
        &addr,
        "--conns",
        "2",
        "--threads",
        "1",
        "--secs",
        "0.15",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(number(&out, "msgs") >= 1.0, "{out}");
    // Nothing counted lost: the phase ended before any request expired.
    assert_eq!(number(&out, "error_total"), 0.0, "{out}");
    // Each socket's first answer and the wait of its second request fill the phase
    // (150 ms), so the longer of the two is at least 75 ms; without the in-flight wait,
    // the figures show only the first answers (about 0.3 ms on an idle machine).
    let max = number(&out, "max_us");
    assert!(max >= 60_000.0, "the stalled requests are missing: {out}");
}

/// `tokio_echo --listen unix:PATH` with a PATH of exactly 108 bytes (all of `sun_path`,
/// no room for a NUL) listens and echoes, as duo's servers do, and loadgen measures it.
#[test]
fn tokio_echo_listens_on_a_unix_path_that_fills_sun_path() {
    let dir = TempDir::new("r12-tokio-unix");
    let base = dir.path().as_os_str().as_bytes().len() + 1;
    if base >= 108 {
        eprintln!("skipped: the temporary directory's path is too long");
        return;
    }
    let path = dir.join("s".repeat(108 - base));
    assert_eq!(path.as_os_str().as_bytes().len(), 108);
    let listen = format!("unix:{}", path.display());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokio_echo"));
    cmd.args(["--listen", &listen, "--threads", "1"]);
    let server = ChildServer::builder(cmd)
        .startup(Duration::from_secs(20))
        .try_start()
        .unwrap_or_else(|e| panic!("tokio_echo on a 108-byte path: {e}"));
    assert_eq!(server.announced(), listen);
    let (code, out) = loadgen(&[
        "rr", "--addr", &listen, "--conns", "2", "--secs", "0.2", "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(number(&out, "msgs") >= 1.0, "{out}");
    assert_eq!(number(&out, "error_total"), 0.0, "{out}");
}
