//! `idle_refresh_on_read(false)`: only the application's `refresh_idle` counts as activity,
//! so a peer that trickles bytes but never completes a message (slowloris) is evicted.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use duo_net::TcpServer;
use util::{localhost, TestServer};

const DEADLINE: Duration = Duration::from_secs(10);
/// The idle timeout of these tests: long against the peers' 20-50 ms pace, so that a test
/// thread that loses its core for a while on a loaded host is not taken for idle.
const IDLE: Duration = Duration::from_secs(1);

#[test]
fn a_trickling_peer_is_evicted_and_a_chatty_one_is_not() {
    let server = TestServer::start(|| {
        TcpServer::builder("slowloris", localhost())
            .io_threads(1)
            .idle_timeout(IDLE)
            .idle_refresh_on_read(false)
            .on_message(|ctx, input| {
                // A "message" is a line: refresh only when one is complete.
                while let Some(end) = input.peek().iter().position(|&b| b == b'\n') {
                    input.consume(end + 1);
                    ctx.send(b"ok\n");
                    ctx.refresh_idle();
                }
            })
    });
    let handle = server.handle();
    let addr = server.addr();

    // Before connecting: the server counts the timeout from registering the connection,
    // which may come before this thread runs again after `connect`.
    let start = Instant::now();
    let mut trickler = TcpStream::connect(addr).unwrap();
    let mut chatty = TcpStream::connect(addr).unwrap();
    chatty.set_read_timeout(Some(DEADLINE)).unwrap();
    trickler
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let mut evicted_after = None;
    let mut buf = [0u8; 16];
    while start.elapsed() < IDLE * 3 {
        // One byte of a line that never ends, and one whole line, every 50 ms.
        if evicted_after.is_none() {
            let _ = trickler.write_all(b"x");
            match trickler.read(&mut buf) {
                Ok(0) => evicted_after = Some(start.elapsed()),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    evicted_after = Some(start.elapsed())
                }
                _ => {}
            }
        }
        chatty.write_all(b"ping\n").unwrap();
        let mut reply = [0u8; 3];
        chatty.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"ok\n");
        thread::sleep(Duration::from_millis(50));
    }
    let evicted_after = evicted_after.expect("the trickling peer was never evicted");
    // The timeout is counted from the connection's registration, after `start`: never
    // early.
    assert!(evicted_after >= IDLE, "{evicted_after:?}");
    assert_eq!(
        handle.stats().active,
        1,
        "the chatty peer must still be open"
    );
    drop(chatty);
    let mut server = server;
    server.shutdown_and_join(Duration::from_millis(200));
}

/// A peer that sends nothing but is still reading a large reply (a slow download) is not
/// idle: writing its queued output counts as activity, so the idle timeout does not close
/// the connection with the output half delivered.
#[test]
fn a_slow_download_is_not_cut_by_the_idle_timeout() {
    const SIZE: usize = 16 << 20;
    let server = TestServer::start(|| {
        TcpServer::builder("download", localhost())
            .io_threads(1)
            .idle_timeout(IDLE)
            .on_message(|ctx, input| {
                if input.peek().contains(&b'\n') {
                    input.consume_all();
                    let body: Vec<u8> = (0..SIZE).map(|i| (i % 253) as u8).collect();
                    ctx.send(&body);
                    ctx.close_after_flush();
                }
            })
    });
    let handle = server.handle();
    let mut client = TcpStream::connect(handle.local_addr()).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    client.write_all(b"GET\n").unwrap();
    // Read at most 128 KiB every 20 ms: the whole body takes at least 2.6 s, far past the
    // timeout, while the client never sends another byte.
    let mut got = Vec::with_capacity(SIZE);
    let mut buf = vec![0u8; 128 << 10];
    loop {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("after {} bytes: {e}", got.len()),
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(got.len(), SIZE, "the download was cut short");
    assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 253) as u8));
    let mut server = server;
    server.shutdown_and_join(Duration::from_millis(100));
}
