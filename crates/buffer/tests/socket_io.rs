//! read_from / write_to / send_to against real sockets (Unix socketpair and TCP loopback).

mod util;

use std::io::{self, Read, Write};
use std::os::fd::AsFd;

use duo_buffer::{BufPool, BufferError, InputBuffer, OutputBuffer, PoolConfig, ReadOutcome};
use duo_sys::socket2::SockRef;
use duo_testkit::nonblocking_pair;
use util::{pattern, tcp_pair, until};

#[test]
fn read_from_an_empty_socket_would_block_and_holds_nothing() {
    let (_a, b) = nonblocking_pair();
    let pool = BufPool::new(PoolConfig::default());
    let mut input = InputBuffer::with_pool(pool, 1 << 20);
    assert_eq!(
        input.read_from(b.as_fd()).expect("read"),
        ReadOutcome::WouldBlock
    );
    assert_eq!(input.capacity(), 0);
    assert_eq!(pool.stats().in_use_blocks(), 0);
}

#[test]
fn read_from_reports_data_then_eof() {
    let (mut a, b) = nonblocking_pair();
    a.write_all(b"hello").expect("write");
    drop(a);
    let mut input = InputBuffer::new();
    assert_eq!(
        input.read_from(b.as_fd()).expect("read"),
        ReadOutcome::Data {
            len: 5,
            drained: true
        }
    );
    assert_eq!(input.peek(), b"hello");
    assert_eq!(input.read_from(b.as_fd()).expect("read"), ReadOutcome::Eof);
    assert_eq!(input.peek(), b"hello", "EOF keeps what was read");
    input.consume_all();
    assert_eq!(input.read_from(b.as_fd()).expect("read"), ReadOutcome::Eof);
    assert_eq!(input.capacity(), 0);
}

#[test]
fn read_errors_other_than_would_block_are_io_errors() {
    let mut input = InputBuffer::new();
    // A directory cannot be read: EISDIR.
    let dir = std::fs::File::open("/").expect("open /");
    match input.read_from(dir.as_fd()) {
        Err(BufferError::Io(e)) => assert_eq!(e.raw_os_error(), Some(21), "EISDIR: {e}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert_eq!(input.capacity(), 0);
}

#[test]
fn one_read_uses_block_and_spill_area_and_respects_max_len() {
    let (mut a, b) = nonblocking_pair();
    SockRef::from(&a)
        .set_send_buffer_size(1 << 20)
        .expect("sndbuf");
    let data = pattern(0, 50_000);
    a.write_all(&data).expect("write"); // fits the socket buffer
    let mut input = InputBuffer::with_pool(BufPool::global(), 30_000);
    // One read, limited to max_len: 4 KiB into the block, the rest through the spill area.
    assert_eq!(
        input.read_from(b.as_fd()).expect("read"),
        ReadOutcome::Data {
            len: 30_000,
            drained: false
        }
    );
    assert_eq!(input.capacity(), 64 << 10);
    assert!(matches!(
        input.read_from(b.as_fd()),
        Err(BufferError::Full { limit: 30_000 })
    ));
    assert_eq!(input.peek(), &data[..30_000]);
    input.consume(25_000);
    let outcome = input.read_from(b.as_fd()).expect("read");
    assert_eq!(
        outcome,
        ReadOutcome::Data {
            len: 20_000,
            drained: true
        }
    );
    assert_eq!(input.peek(), &data[25_000..]);
}

#[test]
fn write_to_would_block_when_the_socket_is_full_and_keeps_the_data() {
    let (a, mut b) = nonblocking_pair();
    SockRef::from(&a)
        .set_send_buffer_size(4096)
        .expect("sndbuf");
    let data = pattern(0, 1 << 20);
    let mut out = OutputBuffer::new();
    out.append(&data).expect("append");
    let mut sent = 0;
    let err = loop {
        match out.write_to(a.as_fd()) {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    assert!(sent > 0 && sent < data.len(), "sent {sent}");
    assert_eq!(out.len(), data.len() - sent);
    let mut received = vec![0; sent];
    b.read_exact(&mut received).expect("read");
    assert_eq!(received, data[..sent]);
}

#[test]
fn send_to_a_closed_peer_is_epipe_not_sigpipe() {
    let (a, b) = nonblocking_pair();
    drop(b);
    let mut out = OutputBuffer::new();
    out.append(b"nobody listens").expect("append");
    let err = out.send_to(a.as_fd()).expect_err("peer closed");
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    assert_eq!(out.len(), 14, "nothing dropped on error");
}

/// Moves `total` bytes from `out` through the pair into `input` in one thread, alternating
/// non-blocking writes and reads; returns (writes, reads) that moved bytes.
fn transfer(
    write: &mut dyn FnMut(&mut OutputBuffer) -> io::Result<usize>,
    read: &mut dyn FnMut(&mut InputBuffer) -> Result<ReadOutcome, BufferError>,
    total: usize,
) -> (usize, usize) {
    let data = pattern(0, total);
    let mut out = OutputBuffer::new();
    out.append(&data).expect("append");
    let mut input = InputBuffer::with_pool(BufPool::global(), 256 << 10);
    let mut received = Vec::with_capacity(total);
    let (mut writes, mut reads) = (0, 0);
    until("the transfer to finish", || {
        match write(&mut out) {
            Ok(0) => {}
            Ok(_) => writes += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("write: {e}"),
        }
        loop {
            match read(&mut input).expect("read") {
                ReadOutcome::Data { .. } => {
                    reads += 1;
                    received.extend_from_slice(input.peek());
                    input.consume_all();
                }
                ReadOutcome::WouldBlock => break,
                ReadOutcome::Eof => panic!("unexpected EOF"),
            }
        }
        (received.len() == total).then_some(())
    });
    assert!(received == data, "received bytes differ");
    assert!(out.is_empty() && out.block_count() == 0);
    assert_eq!(input.capacity(), 0);
    (writes, reads)
}

#[test]
fn one_mib_over_a_unix_socketpair_with_a_small_send_buffer() {
    let (a, b) = nonblocking_pair();
    SockRef::from(&a)
        .set_send_buffer_size(4096)
        .expect("sndbuf");
    let (writes, reads) = transfer(
        &mut |out| out.write_to(a.as_fd()),
        &mut |input| input.read_from(b.as_fd()),
        1 << 20,
    );
    assert!(writes > 10, "writes were partial: {writes}");
    assert!(reads >= writes / 2, "reads {reads}");
}

#[test]
fn one_mib_over_tcp_with_a_small_send_buffer() {
    let (client, server) = tcp_pair();
    SockRef::from(&client)
        .set_send_buffer_size(4096)
        .expect("sndbuf");
    let (writes, _reads) = transfer(
        &mut |out| out.send_to(client.as_fd()),
        &mut |input| input.read_from(server.as_fd()),
        1 << 20,
    );
    assert!(writes > 10, "writes were partial: {writes}");
}

#[test]
fn drained_flag_on_tcp_proves_the_receive_queue_empty() {
    let (mut client, server) = tcp_pair();
    SockRef::from(&server)
        .set_recv_buffer_size(1 << 20)
        .expect("rcvbuf");
    let mut input = InputBuffer::new();

    // A small message: one short read, and the next read would only say EAGAIN.
    client.write_all(b"ping").expect("write");
    let outcome = until("the message", || {
        match input.read_from(server.as_fd()).expect("read") {
            ReadOutcome::WouldBlock => None,
            other => Some(other),
        }
    });
    assert_eq!(
        outcome,
        ReadOutcome::Data {
            len: 4,
            drained: true
        }
    );
    assert_eq!(
        input.read_from(server.as_fd()).expect("read"),
        ReadOutcome::WouldBlock
    );
    input.consume_all();

    // More than one read can take: the first read (into the empty buffer: the 64 KiB spill
    // area alone) is full, not drained; the last one is short and drained; after it the
    // socket is empty.
    let data = pattern(0, 200_000);
    let mut out = OutputBuffer::new();
    out.append(&data).expect("append");
    until("the data to be queued", || {
        match out.send_to(client.as_fd()) {
            Ok(_) if out.is_empty() => Some(()),
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("send: {e}"),
        }
    });
    until("all bytes to arrive", || {
        let queued = duo_sys::bytes_available(server.as_fd()).expect("FIONREAD");
        (queued == data.len()).then_some(())
    });
    let mut outcomes = Vec::new();
    loop {
        match input.read_from(server.as_fd()).expect("read") {
            ReadOutcome::Data { len, drained } => {
                outcomes.push((len, drained));
                if drained {
                    break;
                }
            }
            other => panic!("unexpected {other:?} before a drained read"),
        }
    }
    assert_eq!(outcomes.first(), Some(&(64 << 10, false)), "{outcomes:?}");
    assert!(outcomes[..outcomes.len() - 1]
        .iter()
        .all(|&(_, drained)| !drained));
    assert_eq!(input.peek(), &data[..]);
    assert_eq!(
        input.read_from(server.as_fd()).expect("read"),
        ReadOutcome::WouldBlock
    );
}
