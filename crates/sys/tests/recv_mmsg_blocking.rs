//! `recv_mmsg` on a blocking socket. `recvmmsg` without `MSG_WAITFORONE` waits until
//! every slot is filled (or the socket's receive timeout ends it), so one datagram waiting
//! on a blocking socket was not returned while fewer than a batch arrived: a caller that
//! reads a batch at a time on a blocking socket (a simple client, a test) stalled on a
//! quiet peer. The call now returns once it has one, as `recv_from` would.

use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use duo_sys::{recv_mmsg, MmsgScratch, RecvMeta};

#[test]
fn a_blocking_socket_returns_what_has_come_without_waiting_for_a_full_batch() {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Blocking, with a receive timeout far beyond the test's wait below, so that the
    // thread of a failing run ends by itself.
    b.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    a.send_to(b"one", b.local_addr().unwrap()).unwrap();
    a.send_to(b"two", b.local_addr().unwrap()).unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut scratch = MmsgScratch::new(8);
        let mut buf = [0u8; 8 * 64];
        let mut meta = [RecvMeta::default(); 8];
        let got = recv_mmsg(b.as_fd(), &mut scratch, &mut buf, 64, &mut meta);
        let texts: Vec<Vec<u8>> = meta
            .iter()
            .enumerate()
            .take(*got.as_ref().unwrap_or(&0))
            .map(|(i, m)| buf[i * 64..i * 64 + m.len].to_vec())
            .collect();
        let _ = tx.send((got.map_err(|e| e.kind()), texts));
    });
    let (got, texts) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("recv_mmsg still blocked after 10 s with two datagrams waiting");
    // Both were sent on loopback before the call (each `send_to` queues its datagram on
    // the receiver before it returns), so both come; the first one would do.
    assert_eq!(got, Ok(2));
    assert_eq!(texts, [b"one".to_vec(), b"two".to_vec()]);
}
