//! `Epoll` against the real kernel: wake-ups, edge vs level triggering, one-shot, growth
//! of the events buffer, error kinds.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::thread;
use std::time::{Duration, Instant};

use duo_sys::{Epoll, EventFd, Events, Interest};
use duo_testkit::nonblocking_pair;

const WAIT: Option<Duration> = Some(Duration::from_secs(5));
const NO_WAIT: Option<Duration> = Some(Duration::ZERO);

#[test]
fn eventfd_from_another_thread_wakes_a_blocked_wait() {
    let epoll = Epoll::new().unwrap();
    let efd = std::sync::Arc::new(EventFd::new().unwrap());
    epoll.add(efd.as_fd(), Interest::READABLE, 42).unwrap();
    // Taken before the notifier starts: it notifies at least 20 ms after this, however
    // late this thread gets to its wait on a loaded machine.
    let start = Instant::now();
    let notifier = {
        let efd = efd.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            efd.notify().unwrap();
        })
    };
    let mut events = Events::with_capacity(8);
    // No timeout: only the notification can end this wait.
    assert_eq!(epoll.wait(&mut events, None).unwrap(), 1);
    assert!(start.elapsed() >= Duration::from_millis(20));
    let (token, ready) = events.get(0).unwrap();
    assert_eq!(token, 42);
    assert!(ready.is_readable() && !ready.is_writable());
    assert_eq!(efd.drain().unwrap(), 1);
    notifier.join().unwrap();
}

#[test]
fn edge_triggered_reports_once_per_edge() {
    let epoll = Epoll::new().unwrap();
    let (mut a, mut b) = nonblocking_pair();
    epoll
        .add(b.as_fd(), Interest::READABLE | Interest::EDGE, 1)
        .unwrap();
    let mut events = Events::with_capacity(8);

    a.write_all(b"one").unwrap();
    assert_eq!(epoll.wait(&mut events, WAIT).unwrap(), 1);
    // Data is still unread, but no new edge: nothing is reported.
    assert_eq!(epoll.wait(&mut events, NO_WAIT).unwrap(), 0);

    // More data is a new edge even though the old bytes were never read.
    a.write_all(b"two").unwrap();
    assert_eq!(epoll.wait(&mut events, WAIT).unwrap(), 1);
    assert_eq!(epoll.wait(&mut events, NO_WAIT).unwrap(), 0);

    let mut buf = [0u8; 16];
    assert_eq!(b.read(&mut buf).unwrap(), 6);
    assert_eq!(&buf[..6], b"onetwo");
    assert_eq!(epoll.wait(&mut events, NO_WAIT).unwrap(), 0);
}

#[test]
fn level_triggered_reports_until_drained() {
    let epoll = Epoll::new().unwrap();
    let (mut a, mut b) = nonblocking_pair();
    epoll.add(b.as_fd(), Interest::READABLE, 1).unwrap();
    let mut events = Events::with_capacity(8);
    a.write_all(b"x").unwrap();
    for _ in 0..3 {
        assert_eq!(epoll.wait(&mut events, WAIT).unwrap(), 1);
    }
    let mut buf = [0u8; 4];
    assert_eq!(b.read(&mut buf).unwrap(), 1);
    assert_eq!(epoll.wait(&mut events, NO_WAIT).unwrap(), 0);
}

#[test]
fn modify_changes_the_token() {
    let epoll = Epoll::new().unwrap();
    let efd = EventFd::new().unwrap();
    epoll.add(efd.as_fd(), Interest::READABLE, 5).unwrap();
    let mut events = Events::with_capacity(8);
    efd.notify().unwrap();
    assert_eq!(epoll.wait(&mut events, WAIT).unwrap(), 1);
    assert_eq!(events.get(0).unwrap().0, 5);
    epoll.modify(efd.as_fd(), Interest::READABLE, 6).unwrap();
    assert_eq!(epoll.wait(&mut events, WAIT).unwrap(), 1);
    assert_eq!(events.get(0).unwrap().0, 6, "modify changes the token");
}

#[test]
fn writable_and_hangup_are_reported() {
    let epoll = Epoll::new().unwrap();
    let (a, b) = nonblocking_pair();
    epoll
        .add(b.as_fd(), Interest::READABLE | Interest::WRITABLE, 9)
        .unwrap();
    let mut events = Events::with_capacity(8);
    assert_eq!(epoll.wait(&mut events, WAIT).unwrap(), 1);
    let (_, ready) = events.get(0).unwrap();
    assert!(ready.is_writable() && !ready.is_readable());

    drop(a);
    assert_eq!(epoll.wait(&mut events, WAIT).unwrap(), 1);
    let (_, ready) = events.get(0).unwrap();
    assert!(ready.is_read_hup(), "{ready:?}");
    assert!(ready.is_hup(), "{ready:?}");
    assert!(ready.is_readable(), "EOF is readable: {ready:?}");
}

#[test]
fn events_buffer_doubles_when_a_wait_fills_it() {
    let epoll = Epoll::new().unwrap();
    let fds: Vec<EventFd> = (0..10).map(|_| EventFd::new().unwrap()).collect();
    for (i, fd) in fds.iter().enumerate() {
        epoll.add(fd.as_fd(), Interest::READABLE, i as u64).unwrap();
        fd.notify().unwrap();
    }
    let mut events = Events::with_capacity(2);
    assert_eq!(epoll.wait(&mut events, WAIT).unwrap(), 2);
    assert_eq!(events.capacity(), 2);
    assert_eq!(epoll.wait(&mut events, WAIT).unwrap(), 4);
    assert_eq!(epoll.wait(&mut events, WAIT).unwrap(), 8);
    assert_eq!(events.capacity(), 8);
    assert_eq!(epoll.wait(&mut events, WAIT).unwrap(), 10);
    assert_eq!(events.capacity(), 16);
    let mut tokens: Vec<u64> = events.iter().map(|(t, _)| t).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, (0..10).collect::<Vec<_>>());
    // Not full this time: no further growth.
    assert_eq!(epoll.wait(&mut events, WAIT).unwrap(), 10);
    assert_eq!(events.capacity(), 16);
}

#[test]
fn a_fixed_events_buffer_never_grows() {
    let epoll = Epoll::new().unwrap();
    let fds: Vec<EventFd> = (0..3).map(|_| EventFd::new().unwrap()).collect();
    for (i, fd) in fds.iter().enumerate() {
        epoll.add(fd.as_fd(), Interest::READABLE, i as u64).unwrap();
        fd.notify().unwrap();
    }
    let mut events = Events::fixed(1);
    for _ in 0..4 {
        assert_eq!(epoll.wait(&mut events, WAIT).unwrap(), 1);
        assert_eq!(events.capacity(), 1);
    }
}

#[test]
fn oneshot_reports_once_until_rearmed_and_rearming_reports_pending_readiness() {
    let epoll = Epoll::new().unwrap();
    let efd = EventFd::new().unwrap();
    let oneshot = Interest::READABLE | Interest::ONESHOT;
    epoll.add(efd.as_fd(), oneshot, 5).unwrap();
    efd.notify().unwrap();
    let mut events = Events::with_capacity(4);
    assert_eq!(epoll.wait(&mut events, WAIT).unwrap(), 1);
    assert_eq!(events.get(0).map(|(t, _)| t), Some(5));
    // Still readable (level), but disarmed: nothing more until re-armed.
    assert_eq!(epoll.wait(&mut events, NO_WAIT).unwrap(), 0);
    efd.notify().unwrap();
    assert_eq!(epoll.wait(&mut events, NO_WAIT).unwrap(), 0);
    // Re-arming with the readiness pending reports it at once.
    epoll.modify(efd.as_fd(), oneshot, 6).unwrap();
    assert_eq!(epoll.wait(&mut events, NO_WAIT).unwrap(), 1);
    assert_eq!(events.get(0).map(|(t, _)| t), Some(6));
    // Drained and re-armed: silent until the next notification.
    efd.drain().unwrap();
    epoll.modify(efd.as_fd(), oneshot, 6).unwrap();
    assert_eq!(epoll.wait(&mut events, NO_WAIT).unwrap(), 0);
    efd.notify().unwrap();
    assert_eq!(epoll.wait(&mut events, WAIT).unwrap(), 1);
    assert_eq!(format!("{oneshot:?}"), "Interest(READABLE | ONESHOT)");
}

#[test]
fn timeout_is_rounded_up_not_down() {
    let epoll = Epoll::new().unwrap();
    let mut events = Events::with_capacity(1);
    let start = Instant::now();
    assert_eq!(
        epoll
            .wait(&mut events, Some(Duration::from_micros(300)))
            .unwrap(),
        0
    );
    assert!(start.elapsed() >= Duration::from_micros(300));
}

#[test]
fn registration_errors_have_the_right_kind() {
    let epoll = Epoll::new().unwrap();
    let efd = EventFd::new().unwrap();
    assert_eq!(
        epoll
            .modify(efd.as_fd(), Interest::READABLE, 0)
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        epoll.delete(efd.as_fd()).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    epoll.add(efd.as_fd(), Interest::READABLE, 0).unwrap();
    let err = epoll.add(efd.as_fd(), Interest::READABLE, 0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert!(err.to_string().contains("epoll_ctl(ADD)"), "{err}");
    epoll.delete(efd.as_fd()).unwrap();
    efd.notify().unwrap();
    let mut events = Events::with_capacity(1);
    assert_eq!(
        epoll.wait(&mut events, NO_WAIT).unwrap(),
        0,
        "deleted fd is silent"
    );
}

#[test]
fn interest_debug_and_flags() {
    let i = Interest::READABLE | Interest::WRITABLE;
    assert_eq!(format!("{i:?}"), "Interest(READABLE | WRITABLE)");
    assert_eq!(format!("{:?}", Interest::NONE), "Interest(NONE)");
    assert!(!i.remove(Interest::WRITABLE).is_writable());
    assert_eq!(format!("{:?}", Interest::READ_HUP), "Interest(READ_HUP)");
    assert!(Interest::READABLE.is_read_hup());
    assert!(!Interest::READABLE.remove(Interest::READ_HUP).is_read_hup());
}

/// A TCP socket that asks only for the peer's half-close is told of the peer's FIN, not
/// of the bytes before it, which stay readable.
#[test]
fn read_hup_alone_reports_the_peers_fin_but_not_its_data() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let epoll = Epoll::new().unwrap();
    epoll.add(server.as_fd(), Interest::READ_HUP, 3).unwrap();
    let mut events = Events::with_capacity(4);
    client.write_all(b"last words").unwrap();
    assert_eq!(
        epoll
            .wait(&mut events, Some(Duration::from_millis(50)))
            .unwrap(),
        0,
        "data alone is not reported"
    );
    client.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(epoll.wait(&mut events, WAIT).unwrap(), 1);
    let (token, ready) = events.get(0).unwrap();
    assert_eq!(token, 3);
    assert!(ready.is_read_hup() && !ready.is_readable() && !ready.is_hup());
    let mut got = Vec::new();
    server.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words");
}

#[test]
fn exclusive_registration_of_a_listener_can_be_paused_and_resumed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let epoll = Epoll::new().unwrap();
    // READABLE carries the read-hang-up bit, which the kernel refuses with EXCLUSIVE: it
    // is left out rather than failing the registration.
    let interest = Interest::READABLE | Interest::EXCLUSIVE;
    assert!(format!("{interest:?}").contains("EXCLUSIVE"));
    epoll.add(listener.as_fd(), interest, 7).unwrap();
    let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let mut events = Events::with_capacity(8);
    assert_eq!(epoll.wait(&mut events, WAIT).unwrap(), 1);
    assert_eq!(events.get(0).unwrap().0, 7);

    // The kernel refuses EPOLL_CTL_MOD on an exclusive registration: modify re-registers.
    epoll
        .modify(listener.as_fd(), Interest::EXCLUSIVE, 8)
        .unwrap();
    assert_eq!(epoll.wait(&mut events, NO_WAIT).unwrap(), 0, "paused");
    epoll.modify(listener.as_fd(), interest, 9).unwrap();
    assert_eq!(
        epoll.wait(&mut events, WAIT).unwrap(),
        1,
        "resumed, still pending"
    );
    assert_eq!(events.get(0).unwrap().0, 9);
    epoll.delete(listener.as_fd()).unwrap();
}
