//! Socket syscalls against the real kernel over socketpairs and loopback TCP.

use std::io::{ErrorKind, IoSlice, IoSliceMut, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use duo_sys::{
    accept4, bytes_available, readv, recv_vectored, send_vectored, set_tcp_defer_accept,
    shutdown_write, take_socket_error, tcp_defer_accept, writev,
};
use duo_testkit::nonblocking_pair;

#[test]
fn readv_writev_round_trip() {
    let (a, b) = nonblocking_pair();
    let parts: [&[u8]; 3] = [b"hello, ", b"vectored ", b"world"];
    let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    assert_eq!(writev(a.as_fd(), &slices).unwrap(), 21);
    assert_eq!(bytes_available(b.as_fd()).unwrap(), 21);

    let mut x = [0u8; 4];
    let mut y = [0u8; 32];
    let mut bufs = [IoSliceMut::new(&mut x), IoSliceMut::new(&mut y)];
    assert_eq!(readv(b.as_fd(), &mut bufs).unwrap(), 21);
    assert_eq!(&x, b"hell");
    assert_eq!(&y[..17], b"o, vectored world");

    let err = readv(b.as_fd(), &mut [IoSliceMut::new(&mut y)]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WouldBlock);

    assert_eq!(
        send_vectored(b.as_fd(), &[IoSlice::new(b"back")]).unwrap(),
        4
    );
    let mut back = [0u8; 4];
    assert_eq!(
        readv(a.as_fd(), &mut [IoSliceMut::new(&mut back)]).unwrap(),
        4
    );
    assert_eq!(&back, b"back");
}

#[test]
fn writev_is_partial_when_the_peer_is_full() {
    let (a, _b) = nonblocking_pair();
    let chunk = vec![7u8; 64 * 1024];
    let slices = [IoSlice::new(&chunk), IoSlice::new(&chunk)];
    let mut total = 0;
    loop {
        match writev(a.as_fd(), &slices) {
            Ok(n) => {
                assert!(n <= 2 * chunk.len());
                total += n;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::WouldBlock);
                break;
            }
        }
        assert!(total < 64 << 20, "socket buffer never filled");
    }
    assert!(total > 0);
}

#[test]
fn eof_reads_zero() {
    let (a, b) = nonblocking_pair();
    drop(a);
    let mut buf = [0u8; 8];
    assert_eq!(
        readv(b.as_fd(), &mut [IoSliceMut::new(&mut buf)]).unwrap(),
        0
    );
}

#[test]
fn send_to_a_closed_peer_is_epipe_not_sigpipe() {
    let (a, b) = nonblocking_pair();
    drop(b);
    // Without MSG_NOSIGNAL this would kill the test process.
    let err = send_vectored(a.as_fd(), &[IoSlice::new(b"x")]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BrokenPipe);
    // Two buffers take the sendmsg path, one the send path: both must not signal.
    let two = [IoSlice::new(b"x"), IoSlice::new(b"y")];
    assert_eq!(
        send_vectored(a.as_fd(), &two).unwrap_err().kind(),
        ErrorKind::BrokenPipe
    );
    assert_eq!(
        send_vectored(a.as_fd(), &[IoSlice::new(b"x")])
            .unwrap_err()
            .kind(),
        ErrorKind::BrokenPipe
    );
}

#[test]
fn recv_and_send_move_bytes_and_report_eof_and_would_block() {
    let (a, b) = nonblocking_pair();
    let mut buf = [0u8; 16];
    assert_eq!(
        recv_vectored(b.as_fd(), &mut [IoSliceMut::new(&mut buf)])
            .unwrap_err()
            .kind(),
        ErrorKind::WouldBlock
    );
    assert_eq!(
        send_vectored(a.as_fd(), &[IoSlice::new(b"hello")]).unwrap(),
        5
    );
    assert_eq!(
        recv_vectored(b.as_fd(), &mut [IoSliceMut::new(&mut buf)]).unwrap(),
        5
    );
    assert_eq!(&buf[..5], b"hello");
    // One slice goes through recv, two through readv; both fill in order.
    assert_eq!(
        send_vectored(a.as_fd(), &[IoSlice::new(b"abcdefgh")]).unwrap(),
        8
    );
    let (mut x, mut y) = ([0u8; 3], [0u8; 8]);
    let mut bufs = [IoSliceMut::new(&mut x), IoSliceMut::new(&mut y)];
    assert_eq!(recv_vectored(b.as_fd(), &mut bufs).unwrap(), 8);
    assert_eq!((&x, &y[..5]), (b"abc", &b"defgh"[..]));
    assert_eq!(send_vectored(a.as_fd(), &[IoSlice::new(b"z")]).unwrap(), 1);
    assert_eq!(
        recv_vectored(b.as_fd(), &mut [IoSliceMut::new(&mut buf)]).unwrap(),
        1
    );
    drop(a);
    assert_eq!(
        recv_vectored(b.as_fd(), &mut [IoSliceMut::new(&mut buf)]).unwrap(),
        0,
        "end of stream"
    );
}

#[test]
fn recv_and_send_refuse_non_sockets() {
    let file = std::fs::File::open("/proc/self/status").unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(
        recv_vectored(file.as_fd(), &mut [IoSliceMut::new(&mut buf)])
            .unwrap_err()
            .raw_os_error(),
        Some(libc_enotsock())
    );
    assert_eq!(
        send_vectored(file.as_fd(), &[IoSlice::new(b"x")])
            .unwrap_err()
            .raw_os_error(),
        Some(libc_enotsock())
    );
}

/// `ENOTSOCK` on Linux (this crate's tests do not depend on `libc`).
fn libc_enotsock() -> i32 {
    88
}

#[test]
fn accept4_drains_the_backlog_then_would_block() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut accepted = Vec::new();
    while accepted.len() < clients.len() {
        match accept4(listener.as_fd()) {
            Ok((fd, peer)) => {
                let peer = peer.as_socket().expect("an inet address");
                let local = clients.iter().map(|c| c.local_addr().unwrap());
                assert!(local.clone().any(|l| l == peer), "unknown peer {peer}");
                accepted.push(TcpStream::from(fd));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "connections never arrived");
                std::thread::yield_now();
            }
            Err(e) => panic!("accept4: {e}"),
        }
    }
    assert_eq!(
        accept4(listener.as_fd()).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );

    // The accepted socket is non-blocking and close-on-exec.
    let mut s = &accepted[0];
    let mut buf = [0u8; 1];
    assert_eq!(s.read(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock);
    let fl = std::fs::read_to_string(format!(
        "/proc/self/fdinfo/{}",
        std::os::fd::AsRawFd::as_raw_fd(&accepted[0])
    ))
    .unwrap();
    let flags = fl
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
        .unwrap();
    assert_ne!(flags & 0o2000000, 0, "O_CLOEXEC missing: {flags:o}");
    assert_ne!(flags & 0o4000, 0, "O_NONBLOCK missing: {flags:o}");
}

#[test]
fn shutdown_write_half_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    server.write_all(b"last words").unwrap();
    shutdown_write(server.as_fd()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words");
    // The other direction still works.
    client.write_all(b"reply").unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"reply");
    // A second shutdown is harmless.
    shutdown_write(server.as_fd()).unwrap();
}

#[test]
fn socket_error_reports_a_refused_connect() {
    use duo_sys::socket2::{Domain, SockAddr, Socket, Type};
    // Find a port with nothing listening: bind, note the port, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    assert!(take_socket_error(sock.as_fd()).unwrap().is_none());
    sock.set_nonblocking(true).unwrap();
    match sock.connect(&SockAddr::from(addr)) {
        Err(e) if e.raw_os_error() == Some(libc_einprogress()) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return,
        other => panic!("unexpected connect result {other:?}"),
    }
    // The outcome of a non-blocking connect is signalled as writable (plus error).
    let epoll = duo_sys::Epoll::new().unwrap();
    epoll
        .add(sock.as_fd(), duo_sys::Interest::WRITABLE, 0)
        .unwrap();
    let mut events = duo_sys::Events::with_capacity(1);
    assert_eq!(
        epoll
            .wait(&mut events, Some(Duration::from_secs(5)))
            .unwrap(),
        1
    );
    assert!(events.get(0).unwrap().1.is_error());
    let err = take_socket_error(sock.as_fd())
        .unwrap()
        .expect("a pending error");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    // Reading SO_ERROR clears it.
    assert!(take_socket_error(sock.as_fd()).unwrap().is_none());
}

/// EINPROGRESS on Linux (the test crate does not depend on libc).
fn libc_einprogress() -> i32 {
    115
}

#[test]
fn fd_limit_can_be_read_and_raised_to_the_hard_limit() {
    let (soft, hard) = duo_sys::fd_limit().unwrap();
    assert!(soft <= hard);
    let raised = duo_sys::raise_fd_limit().unwrap();
    assert_eq!(raised, hard);
    assert_eq!(duo_sys::fd_limit().unwrap(), (hard, hard));
}

/// `RssAnon` of this process, KiB.
fn rss_anon_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn release_free_heap_returns_fragmented_free_memory() {
    // 32 MiB in 16 KiB blocks, each followed by a small block that stays: freeing the big
    // ones leaves holes that plain `free` cannot hand back (the heap's top stays in use).
    // Done on a thread of its own, so its allocations come from that thread's arena and no
    // other test's allocations land in between.
    let (before, after_free, after_release, released) = std::thread::spawn(|| {
        let mut big = Vec::new();
        let mut small = Vec::new();
        for i in 0..2048u32 {
            let mut b = vec![0u8; 16 << 10];
            b.iter_mut().step_by(4096).for_each(|x| *x = i as u8);
            big.push(b);
            small.push(Box::new(i));
        }
        let before = rss_anon_kib();
        drop(big);
        let after_free = rss_anon_kib();
        let released = duo_sys::release_free_heap();
        let after_release = rss_anon_kib();
        drop(small);
        (before, after_free, after_release, released)
    })
    .join()
    .unwrap();
    if cfg!(target_env = "gnu") {
        assert!(released, "glibc released nothing");
        assert!(
            after_release + 16 * 1024 < after_free,
            "RssAnon {before} KiB with the blocks, {after_free} KiB after free, {after_release} KiB after release"
        );
    } else {
        assert!(!released);
    }
}

#[test]
fn deferred_accept_waits_for_the_clients_first_bytes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    assert_eq!(tcp_defer_accept(listener.as_fd()).unwrap(), 0);
    set_tcp_defer_accept(listener.as_fd(), 5).unwrap();
    assert!(tcp_defer_accept(listener.as_fd()).unwrap() >= 5);

    // Connected on the client's side, but not acceptable while it has sent nothing.
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(200)); // the silence under test
    let err = accept4(listener.as_fd()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WouldBlock);

    // Its first bytes complete the connection, and they are there to read at once.
    client.write_all(b"hi").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (fd, _) = loop {
        match accept4(listener.as_fd()) {
            Ok(accepted) => break accepted,
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("accept4: {e}"),
        }
    };
    assert_eq!(bytes_available(fd.as_fd()).unwrap(), 2);

    set_tcp_defer_accept(listener.as_fd(), 0).unwrap();
    assert_eq!(tcp_defer_accept(listener.as_fd()).unwrap(), 0);
}
