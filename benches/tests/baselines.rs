//! The peer baselines of `cargo xtask bench` (`raw_epoll_echo` on one thread and on two in
//! both of its threading models, `tokio_echo`) echo every byte, in order, to several
//! concurrent clients, including one that reads late (so the server must hold back and
//! stop reading), and close on end of file.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use duo_testkit::{ChildServer, Rng};

/// Bytes each client sends.
const PAYLOAD: usize = 1 << 20;
const CLIENTS: u64 = 6;
/// Bounds every wait of the test.
const DEADLINE: Duration = Duration::from_secs(20);

/// Starts `exe --listen 127.0.0.1:0 EXTRA..`; the server is killed (by PID, `SIGKILL`) and
/// reaped when dropped.
fn start(exe: &str, extra: &[&str]) -> ChildServer {
    let mut cmd = Command::new(exe);
    cmd.args(["--listen", "127.0.0.1:0"]).args(extra);
    ChildServer::builder(cmd).startup(DEADLINE).start()
}

/// Sends `PAYLOAD` pseudo-random bytes in random chunks from one thread while another reads
/// the echo (after `read_delay`), then checks the echo and that the server closes on EOF.
fn client(addr: SocketAddr, seed: u64, read_delay: Duration) {
    let mut rng = Rng::new(seed);
    let data = rng.bytes(PAYLOAD);
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let reading = thread::spawn(move || {
        thread::sleep(read_delay);
        let mut echoed = Vec::with_capacity(PAYLOAD);
        reader.read_to_end(&mut echoed).map(|_| echoed)
    });
    let mut writer = stream;
    let mut rest = &data[..];
    while !rest.is_empty() {
        let chunk = rng.range(1, 100_000).min(rest.len());
        writer.write_all(&rest[..chunk]).unwrap();
        rest = &rest[chunk..];
    }
    writer.shutdown(Shutdown::Write).unwrap();
    let echoed = reading.join().unwrap().expect("reading the echo");
    assert_eq!(echoed.len(), PAYLOAD, "client {seed}: echo length");
    let first_diff = echoed.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "client {seed}: echo differs");
}

fn check_server(exe: &str, extra: &[&str]) {
    let server = start(exe, extra);
    // Connections that close at once, some after sending: the server must shrug them off.
    for i in 0..20 {
        let mut s = TcpStream::connect(server.addr()).unwrap();
        if i % 2 == 0 {
            s.write_all(b"bye").unwrap();
        }
    }
    let clients: Vec<_> = (0..CLIENTS)
        .map(|seed| {
            let addr = server.addr();
            // The first client reads late: the server has to stop reading it and buffer.
            let delay = Duration::from_millis(if seed == 0 { 300 } else { 0 });
            thread::spawn(move || client(addr, seed, delay))
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}

#[test]
fn raw_epoll_echo_echoes_concurrent_clients() {
    check_server(env!("CARGO_BIN_EXE_raw_epoll_echo"), &[]);
}

#[test]
fn raw_epoll_echo_on_two_threads_with_a_connection_per_thread() {
    check_server(
        env!("CARGO_BIN_EXE_raw_epoll_echo"),
        &["--threads", "2", "--spread", "reuseport"],
    );
}

#[test]
fn raw_epoll_echo_on_two_threads_sharing_one_epoll_set() {
    check_server(
        env!("CARGO_BIN_EXE_raw_epoll_echo"),
        &["--threads", "2", "--spread", "shared"],
    );
}

#[test]
fn raw_epoll_echo_on_two_threads_sharing_more_reactors() {
    check_server(
        env!("CARGO_BIN_EXE_raw_epoll_echo"),
        &["--threads", "2", "--spread", "loops", "--loops", "5"],
    );
}

#[test]
fn raw_epoll_echo_on_two_threads_owning_more_reactors() {
    check_server(
        env!("CARGO_BIN_EXE_raw_epoll_echo"),
        &["--threads", "2", "--spread", "owned", "--loops", "5"],
    );
}

#[test]
fn raw_epoll_echo_on_two_threads_owning_flat_reactors() {
    check_server(
        env!("CARGO_BIN_EXE_raw_epoll_echo"),
        &["--threads", "2", "--spread", "flat", "--loops", "5"],
    );
}

/// `--spread flat` with help on every stall (a help delay of 1 µs), so that events are
/// served by both threads most of the time: every byte still comes back, in order.
#[test]
fn raw_epoll_echo_flat_reactors_helped_all_the_time() {
    check_server(
        env!("CARGO_BIN_EXE_raw_epoll_echo"),
        &[
            "--threads",
            "2",
            "--spread",
            "flat",
            "--loops",
            "3",
            "--steal-after-us",
            "1",
        ],
    );
}

#[test]
fn tokio_echo_echoes_concurrent_clients() {
    check_server(env!("CARGO_BIN_EXE_tokio_echo"), &["--threads", "2"]);
}

#[test]
fn bad_arguments_are_refused() {
    for exe in [
        env!("CARGO_BIN_EXE_raw_epoll_echo"),
        env!("CARGO_BIN_EXE_tokio_echo"),
    ] {
        let status = Command::new(exe)
            .args(["--listen", "not-an-address"])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(2), "{exe}");
    }
    for bad in [
        &["--threads", "0"][..],
        &["--spread", "sideways"],
        &["--threads", "2", "--spread", "loops", "--loops", "0"],
        // `--loops` means nothing in the other models.
        &["--threads", "2", "--loops", "4"],
        &["--spread", "loops", "--loops", "4"],
        &["--spread", "flat", "--loops", "4"],
        &["--threads", "2", "--spread", "flat", "--loops", "0"],
    ] {
        let status = Command::new(env!("CARGO_BIN_EXE_raw_epoll_echo"))
            .args(bad)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(2), "{bad:?}");
    }
}

/// Out of descriptors, every mode stops accepting for a moment and then resumes, also
/// while its other connections keep it busy (in `--spread shared` the pause used to end
/// only on a wait that found no event at all, so busy connections held it off forever).
#[test]
fn accepting_resumes_after_running_out_of_descriptors_under_load() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: no prlimit on this machine");
        return;
    }
    for extra in [
        &[][..],
        &["--threads", "2", "--spread", "reuseport"][..],
        &["--threads", "2", "--spread", "shared"][..],
        &["--threads", "2", "--spread", "loops", "--loops", "3"][..],
        &["--threads", "2", "--spread", "owned", "--loops", "3"][..],
        &["--threads", "2", "--spread", "flat", "--loops", "3"][..],
    ] {
        let mut cmd = Command::new("prlimit");
        cmd.args(["--nofile=32:32", env!("CARGO_BIN_EXE_raw_epoll_echo")])
            .args(["--listen", "127.0.0.1:0"])
            .args(extra);
        let server = ChildServer::builder(cmd).startup(DEADLINE).start();
        let addr = server.addr();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Busy connections: a steady stream of events for the server's threads.
        let busy: Vec<_> = (0..4)
            .map(|_| {
                let stop = stop.clone();
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(DEADLINE)).unwrap();
                thread::spawn(move || {
                    let mut b = [0u8; 1];
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        s.write_all(b"x").unwrap();
                        s.read_exact(&mut b).unwrap();
                    }
                })
            })
            .collect();
        // More connections than the server has descriptors: the last ones wait in the
        // backlog while the server is out of them. The waiting ones must all fit once the
        // others are gone: the modes with most descriptors of their own (`owned`: three
        // listeners, three reactor sets and two thread sets, besides stdio) have 17 left
        // beside the 4 busy connections, and a served connection stays open. (With 20
        // waiting, the last ones accepted on other reactors could take every descriptor
        // while the one the test waits for was still queued: 4 failures in 60 runs.)
        let mut held: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let waiting = held.split_off(28);
        drop(held); // frees descriptors on the server once it sees the closes
        for (i, mut s) in waiting.into_iter().enumerate() {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"?").unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b)
                .unwrap_or_else(|e| panic!("{extra:?}: waiting connection {i} never served: {e}"));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in busy {
            t.join().unwrap();
        }
    }
}
