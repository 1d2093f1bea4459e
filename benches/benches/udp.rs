//! Criterion benchmark: what batching saves on UDP system calls, over loopback, 64-byte
//! datagrams (`duo_sys::udp`).
//!
//! - `udp-send`: `sendto` of one datagram, `sendmmsg` of one, `sendmmsg` of 32 (per
//!   datagram), to a socket that does not read (its queue overflows: the kernel drops
//!   what does not fit, as UDP may). Why `duo_net::UdpSocket` sends one queued datagram
//!   with `sendto`.
//! - `udp-recv`: 32 datagrams sent with one `sendmmsg`, then received with 32 `recvfrom`
//!   or one `recvmmsg` (per datagram; the send is the same in both).
//!
//! ```text
//! cargo bench -p duo-benches --bench udp [-- CRITERION OPTIONS]
//! ```
//! `cargo xtask bench` runs it and reports the medians.

use std::hint::black_box;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;

use criterion::{BenchmarkId, Criterion, Throughput};
use duo_sys::{MmsgScratch, RecvMeta};

const SIZE: usize = 64;
const BATCH: usize = 32;

fn socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind on loopback");
    s.set_nonblocking(true).expect("non-blocking");
    s
}

fn send(c: &mut Criterion) {
    let (sink, from) = (socket(), socket());
    let to = sink.local_addr().expect("address");
    let data = [7u8; SIZE];
    let mut scratch = MmsgScratch::new(BATCH);
    let mut group = c.benchmark_group("udp-send");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("sendto", 1), |b| {
        b.iter(|| duo_sys::send_to(from.as_fd(), black_box(&data), Some(to)))
    });
    group.bench_function(BenchmarkId::new("sendmmsg", 1), |b| {
        b.iter(|| duo_sys::send_mmsg(from.as_fd(), &mut scratch, [(&data[..], Some(to))]))
    });
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(BenchmarkId::new("sendmmsg", BATCH), |b| {
        b.iter(|| {
            let batch = std::iter::repeat_n((&data[..], Some(to)), BATCH);
            duo_sys::send_mmsg(from.as_fd(), &mut scratch, batch)
        })
    });
    group.finish();
}

/// Sends `BATCH` datagrams from `from` to `to` and receives them on `sink`, with one
/// `recvmmsg` or with one `recvfrom` each.
fn round(
    from: &UdpSocket,
    sink: &UdpSocket,
    to: SocketAddr,
    batched: bool,
    scratch: &mut MmsgScratch,
    buf: &mut [u8],
    meta: &mut [RecvMeta],
) {
    let data = [7u8; SIZE];
    let batch = std::iter::repeat_n((&data[..], Some(to)), BATCH);
    let sent = duo_sys::send_mmsg(from.as_fd(), scratch, batch).expect("sendmmsg");
    let mut got = 0;
    while got < sent {
        got += if batched {
            duo_sys::recv_mmsg(sink.as_fd(), scratch, buf, SIZE, meta).unwrap_or(0)
        } else {
            usize::from(duo_sys::recv_from(sink.as_fd(), &mut buf[..SIZE]).is_ok())
        };
    }
    black_box(&buf);
}

fn recv(c: &mut Criterion) {
    let (sink, from) = (socket(), socket());
    let to = sink.local_addr().expect("address");
    let mut scratch = MmsgScratch::new(BATCH);
    let mut buf = vec![0u8; BATCH * SIZE];
    let mut meta = vec![RecvMeta::default(); BATCH];
    let mut group = c.benchmark_group("udp-recv");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, batched) in [("recvfrom", false), ("recvmmsg", true)] {
        group.bench_function(BenchmarkId::new(name, BATCH), |b| {
            b.iter(|| round(&from, &sink, to, batched, &mut scratch, &mut buf, &mut meta))
        });
    }
    group.finish();
}

/// What `criterion_main!` would generate, written out so that it is documented.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    send(&mut c);
    recv(&mut c);
    c.final_summary();
}
