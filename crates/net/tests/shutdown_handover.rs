//! A graceful shutdown tells every connection the server accepted, including one that a
//! loop accepted from the shared listener ([`AcceptMode::Shared`]) and handed over to
//! another loop whose shutdown visit was already queued: the hand-over reaches that loop
//! after the visit, so the visit cannot see it.
//!
//! The same for the shutdown's deadline: a connection handed to a loop after the
//! deadline's visit of that loop went by is closed as it is registered.
//!
//! The interleavings are arranged with held loops, not left to chance (each test says
//! how).

mod util;

use std::net::TcpStream;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use duo_net::{AcceptMode, TcpServer};
use duo_reactor::{EventLoop, LoopHandle};
use duo_testkit::{join_within, wait_until, LIMIT};
use parking_lot::Mutex;
use util::{connect, hold_loop, init_log, localhost, read_until_closed, End};

/// What the server's callbacks report.
enum Event {
    /// A connection's first message arrived, on this loop.
    Hello(String, LoopHandle),
    /// A message's callback now blocks its loop until released.
    Blocked,
    /// The shutdown reached this connection (its `on_shutdown` ran).
    Told(String),
}

#[test]
fn a_connection_handed_over_after_the_shutdown_visit_is_told() {
    init_log();
    let (ev_tx, ev_rx) = mpsc::channel::<Event>();
    let (unblock_tx, unblock_rx) = mpsc::channel::<()>();
    let unblock_rx = Arc::new(Mutex::new(unblock_rx));
    let (started_tx, started_rx) = mpsc::channel();
    let main = thread::spawn(move || {
        let mut lp = EventLoop::new().expect("main loop");
        let told_tx = ev_tx.clone();
        let server = TcpServer::builder("handover-shutdown", localhost())
            .io_threads(2)
            .accept_mode(AcceptMode::Shared)
            .on_message(move |ctx, input| {
                let block = input.peek() == b"block";
                input.consume_all();
                if block {
                    let _ = ev_tx.send(Event::Blocked);
                    let _ = unblock_rx.lock().recv_timeout(LIMIT);
                } else {
                    let name = ctx.connection().name().to_string();
                    let _ = ev_tx.send(Event::Hello(name, ctx.event_loop().handle()));
                }
            })
            .on_shutdown(move |ctx| {
                let _ = told_tx.send(Event::Told(ctx.connection().name().to_string()));
                ctx.shutdown();
            })
            .start(&mut lp)
            .expect("server starts");
        let _ = started_tx.send((server.local_addr(), server.clone_handle(), lp.handle()));
        lp.run().expect("main loop runs");
        server.stop(&mut lp);
    });
    let (addr, server, main_loop) = started_rx.recv_timeout(LIMIT).expect("started");

    // Four clients: the hand-overs spread them over both loops, at least two on one.
    let mut clients: Vec<(TcpStream, String, LoopHandle)> = Vec::new();
    for _ in 0..4 {
        let mut s = connect(addr);
        std::io::Write::write_all(&mut s, b"hello").unwrap();
        match ev_rx.recv_timeout(LIMIT).expect("the hello") {
            Event::Hello(name, lp) => clients.push((s, name, lp)),
            _ => panic!("expected a hello"),
        }
    }
    let first = clients[0].2.clone();
    let on_first = clients.iter().filter(|c| c.2.same_loop(&first)).count();
    let x = if on_first >= 2 {
        first
    } else {
        clients[1].2.clone()
    };
    let y = clients
        .iter()
        .map(|c| c.2.clone())
        .find(|lp| !lp.same_loop(&x))
        .expect("the hand-overs put a connection on the other loop");
    // Y empty, X with two or more: X hands the next connection it accepts to Y.
    clients.retain(|c| c.2.same_loop(&x));
    let on_x = clients.len() as u64;
    assert!(on_x >= 2);
    wait_until("the clients on Y to be closed", || {
        server.stats().active == on_x
    });

    let release_y = hold_loop(&y);
    let release_x = hold_loop(&x);
    std::io::Write::write_all(&mut clients[0].0, b"block").unwrap();
    let mut late = connect(addr);
    let before = server.stats();
    let (accepted, handed_over) = (before.accepted, before.handed_over);
    drop(release_x);
    match ev_rx.recv_timeout(LIMIT).expect("the block") {
        Event::Blocked => {}
        _ => panic!("expected the block"),
    }
    assert_eq!(
        server.stats().accepted,
        accepted,
        "X reports the message before the listener (the arrangement needs this order)"
    );

    server.shutdown(Duration::from_secs(60), |lp| lp.quit());
    // The main loop has queued the visits once a function queued after them runs.
    let (marker_tx, marker_rx) = mpsc::channel::<()>();
    main_loop
        .queue_in_loop(move |_| {
            let _ = marker_tx.send(());
        })
        .unwrap();
    marker_rx.recv_timeout(LIMIT).expect("the main loop's turn");
    drop(unblock_tx);
    wait_until("X to accept the late connection and hand it over", || {
        let s = server.stats();
        s.accepted > accepted && s.handed_over > handed_over
    });
    drop(release_y);

    let mut told = Vec::new();
    while told.len() < clients.len() + 1 {
        match ev_rx.recv_timeout(LIMIT) {
            Ok(Event::Told(name)) => told.push(name),
            Ok(_) => {}
            Err(_) => panic!(
                "{} of {} connections told of the shutdown: {told:?}",
                told.len(),
                clients.len() + 1
            ),
        }
    }
    for (s, name, _) in &mut clients {
        assert!(told.contains(name), "{name} told");
        let (rest, end) = read_until_closed(s);
        assert!(
            rest.is_empty() && matches!(end, End::Eof),
            "{name} half-closed"
        );
    }
    let (rest, end) = read_until_closed(&mut late);
    assert!(
        rest.is_empty() && matches!(end, End::Eof),
        "the late connection half-closed, not left to the deadline"
    );
    drop(clients);
    drop(late);
    join_within("the main loop", main);
}

/// The live loop named `name`.
fn loop_named(name: &str) -> LoopHandle {
    duo_reactor::loops()
        .into_iter()
        .find(|h| h.name() == name)
        .unwrap_or_else(|| panic!("no loop named {name}"))
}

/// The graceful shutdown promises that whatever is still open at the deadline is closed,
/// and that `then` runs once none is left. A connection that an `AcceptMode::Shared` loop
/// X accepts after the deadline's visit of another loop Y went by, and hands to Y (X holds
/// clearly more connections), is told of the shutdown on Y (half-closed) but never
/// force-closed: the deadline has been and gone on Y. A client that keeps it open holds the
/// server's shutdown forever.
///
/// Arrangement: Y is held while four clients connect, so X accepts them all and hands the
/// third to Y (3 on X, 1 on Y). X is then held and the shutdown asked for with a short
/// grace: Y runs its visits (its one connection is closed at the deadline, which is how the
/// test knows Y's deadline visit ran). A late client connects while X is still held; X,
/// released, reports the listener before it runs its queued listener removal, accepts the
/// late connection and hands it to the now empty Y.
#[test]
fn a_connection_handed_over_after_the_deadline_visit_is_closed() {
    init_log();
    const NAME: &str = "handover-deadline";
    let (started_tx, started_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let main = thread::spawn(move || {
        let mut lp = EventLoop::new().expect("main loop");
        let server = TcpServer::builder(NAME, localhost())
            .io_threads(2)
            .accept_mode(AcceptMode::Shared)
            .start(&mut lp)
            .expect("server starts");
        let _ = started_tx.send((server.local_addr(), server.clone_handle()));
        lp.run().expect("main loop runs");
        server.stop(&mut lp);
    });
    let (addr, server) = started_rx.recv_timeout(LIMIT).expect("started");
    let x = loop_named(&format!("{NAME}-0"));
    let y = loop_named(&format!("{NAME}-1"));

    // Y held: X alone accepts; it keeps two, hands the third to Y, keeps the fourth.
    let release_y = hold_loop(&y);
    let mut clients: Vec<TcpStream> = (0..4).map(|_| connect(addr)).collect();
    wait_until("X to accept the four clients", || {
        server.stats().accepted == 4
    });
    drop(release_y);
    wait_until("Y to establish its connection", || {
        let s = server.stats();
        s.per_loop.iter().map(|l| l.opened).collect::<Vec<_>>() == vec![3, 1]
    });

    // X held: its listener removal and both visits wait behind the hold. Y runs its own:
    // its connection is half-closed, then closed at the deadline.
    let release_x = hold_loop(&x);
    server.shutdown(Duration::from_millis(50), move |lp| {
        let _ = done_tx.send(());
        lp.quit();
    });
    wait_until("the deadline to close Y's connection", || {
        let s = server.stats();
        s.closed == 1 && s.per_loop[1].closes.shutdown == 1
    });

    // A late client, queued on the listener that only X still holds.
    let late = connect(addr);
    drop(release_x);
    wait_until("X to accept the late connection and hand it over", || {
        let s = server.stats();
        s.accepted == 5 && s.per_loop[1].opened == 2
    });

    // Nobody closes a client: the deadline alone must end every connection.
    let finished = done_rx.recv_timeout(LIMIT);
    let s = server.stats();
    assert!(
        finished.is_ok(),
        "the shutdown never completed: {} connection(s) still open {LIMIT:?} after a 50 ms \
         grace (accepted {}, closed {}, per loop opened {:?}, shutdown closes {:?})",
        s.active,
        s.accepted,
        s.closed,
        s.per_loop.iter().map(|l| l.opened).collect::<Vec<_>>(),
        s.per_loop
            .iter()
            .map(|l| l.closes.shutdown)
            .collect::<Vec<_>>(),
    );
    assert_eq!(s.active, 0);
    assert_eq!(s.accepted, s.closed + s.active);
    clients.clear();
    drop(late);
    join_within("the main loop", main);
}
