//! Bursts a loop works through a bounded batch per iteration, serving its other events in
//! between instead of stalling for the whole burst: many connections arriving at once
//! (accepted), and many idle since the same moment (closed by their idle timeouts). On
//! the 2-core test machine 10 000 connections expiring together held their loop 61 ms
//! in one callback before.

mod util;

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use duo_net::{CloseReason, EventLoop, TcpConnection, TcpServer};
use duo_testkit::{wait_until, LIMIT};
use util::{hold_loop, localhost, TestServer};

/// Idle connections a loop closes per iteration at most (`per_loop.rs`), and connections
/// an acceptor takes per event (`server/accept.rs`).
const BATCH: usize = 128;

/// How many connections this process can hold (two descriptors each: the client's and
/// the server's), up to `want`.
fn room_for(want: usize) -> usize {
    let soft = duo_sys::raise_fd_limit()
        .or_else(|_| duo_sys::fd_limit().map(|(soft, _)| soft))
        .unwrap_or(1024);
    let conns = ((soft.saturating_sub(256) / 2) as usize).min(want);
    assert!(
        conns > 2 * BATCH,
        "RLIMIT_NOFILE {soft} leaves room for {conns} connections only"
    );
    conns
}

/// Checks that no loop iteration saw more than [`BATCH`] of the connections `what` (one
/// loop iteration number per connection).
fn assert_a_batch_per_iteration(what: &str, iterations: impl IntoIterator<Item = u64>) {
    let mut per_iteration: HashMap<u64, usize> = HashMap::new();
    let mut conns = 0;
    for iteration in iterations {
        *per_iteration.entry(iteration).or_default() += 1;
        conns += 1;
    }
    let most = per_iteration.values().copied().max().unwrap_or(0);
    assert!(
        most <= BATCH,
        "{most} connections {what} in one loop iteration (at most {BATCH} wanted; {} \
         iterations for {conns})",
        per_iteration.len()
    );
}

/// A server with one I/O loop and `conns` clients connected to it: the server, the
/// clients' streams and the server's handles of their connections.
fn one_loop_with(conns: usize) -> (TestServer, Vec<TcpStream>, Vec<TcpConnection>) {
    let handles: Arc<Mutex<Vec<TcpConnection>>> = Arc::default();
    let seen = handles.clone();
    let server = TestServer::start(move || {
        TcpServer::builder("visits", localhost())
            .io_threads(1)
            .on_connection(move |conn| {
                if conn.is_connected() {
                    seen.lock().unwrap().push(conn.clone());
                }
            })
    });
    let clients: Vec<TcpStream> = (0..conns)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    wait_until("every connection up", || {
        handles.lock().unwrap().len() == conns
    });
    let handles = handles.lock().unwrap().clone();
    (server, clients, handles)
}

#[test]
fn a_burst_of_connections_is_accepted_a_batch_per_iteration() {
    let conns = room_for(1000);
    // The loop iteration each connection came up in.
    let ups: Arc<Mutex<Vec<u64>>> = Arc::default();
    let seen = ups.clone();
    let (started_tx, started) = mpsc::channel();
    let server_thread = thread::spawn(move || {
        let mut lp = EventLoop::new().unwrap();
        // Everything on this one loop: accepting and serving.
        let server = TcpServer::builder("burst", localhost())
            .io_threads(0)
            .on_connection(move |conn| {
                if conn.is_connected() {
                    let iteration = conn.loop_handle().metrics().iterations;
                    seen.lock().unwrap().push(iteration);
                }
            })
            .start(&mut lp)
            .unwrap();
        started_tx.send((server.local_addr(), lp.handle())).unwrap();
        lp.run().unwrap();
        server.stop(&mut lp);
    });
    let (addr, main) = started.recv_timeout(LIMIT).unwrap();
    // Hold the loop while the whole burst queues in the listener's backlog (4096).
    let release = hold_loop(&main);
    let clients: Vec<TcpStream> = (0..conns)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    drop(release);
    wait_until("every connection up", || ups.lock().unwrap().len() == conns);
    assert_a_batch_per_iteration("accepted", ups.lock().unwrap().iter().copied());
    drop(clients);
    main.quit();
    duo_testkit::join_within("the server's loop", server_thread);
}

/// Per closed connection: the loop iteration it closed in, and why.
type Closes = Arc<Mutex<Vec<(u64, Option<CloseReason>)>>>;

#[test]
fn a_burst_of_idle_connections_is_closed_a_batch_per_iteration() {
    let conns = room_for(1500);
    let closes: Closes = Arc::default();
    let seen = closes.clone();
    // A timeout long against the time it takes to open them all, so that they all expire
    // within a tick or two of each other (a tick is an eighth of it).
    let server = TestServer::start(move || {
        TcpServer::builder("mass-idle", localhost())
            .io_threads(1)
            .idle_timeout(Duration::from_secs(2))
            .on_connection(move |conn| {
                if !conn.is_connected() {
                    let iteration = conn.loop_handle().metrics().iterations;
                    seen.lock().unwrap().push((iteration, conn.close_reason()));
                }
            })
    });
    let clients: Vec<TcpStream> = (0..conns)
        .map(|_| TcpStream::connect(server.addr()).unwrap())
        .collect();
    wait_until("every connection closed for being idle", || {
        closes.lock().unwrap().len() == conns
    });
    let closes = closes.lock().unwrap();
    assert!(
        closes
            .iter()
            .all(|(_, why)| *why == Some(CloseReason::Idle)),
        "every close is an idle timeout"
    );
    assert_a_batch_per_iteration("closed", closes.iter().map(|(i, _)| *i));
    drop(clients);
    server.stop();
}

/// A function run on every connection (a broadcast) visits a batch of a loop's
/// connections per iteration, serving the loop's other events in between, and keeps
/// order with what the same thread queues after it: every client reads the broadcast
/// before a message sent to it through its handle afterwards.
#[test]
fn a_visit_of_every_connection_runs_a_batch_per_iteration() {
    let conns = room_for(1000);
    let (server, mut clients, handles) = one_loop_with(conns);
    let visits: Arc<Mutex<Vec<u64>>> = Arc::default();
    let visited = visits.clone();
    server.handle().connections().for_each(move |ctx| {
        let iteration = ctx.event_loop().metrics().iterations;
        visited.lock().unwrap().push(iteration);
        ctx.send(b"A");
    });
    for h in &handles {
        h.send(b"B".to_vec()).unwrap();
    }
    for c in &mut clients {
        c.set_read_timeout(Some(LIMIT)).unwrap();
        let mut got = [0u8; 2];
        std::io::Read::read_exact(c, &mut got).unwrap();
        assert_eq!(
            &got, b"AB",
            "the visit reaches a connection before what follows it"
        );
    }
    assert_eq!(visits.lock().unwrap().len(), conns);
    assert_a_batch_per_iteration("visited", visits.lock().unwrap().iter().copied());
    drop(clients);
    server.stop();
}

/// The bound holds across visits too: ten broadcasts queued together to a loop of 100
/// connections (a chat under a burst of messages) visit at most a batch per iteration,
/// not all 1 000 in one.
#[test]
fn a_burst_of_visits_runs_a_batch_per_iteration() {
    const CONNS: usize = 100;
    const VISITS: usize = 10;
    let (server, clients, handles) = one_loop_with(CONNS);
    // Hold the loop while the visits are queued, as a burst from other threads finds it.
    let release = hold_loop(handles[0].loop_handle());
    let visits: Arc<Mutex<Vec<u64>>> = Arc::default();
    for _ in 0..VISITS {
        let visited = visits.clone();
        server.handle().connections().for_each(move |ctx| {
            let iteration = ctx.event_loop().metrics().iterations;
            visited.lock().unwrap().push(iteration);
        });
    }
    release.send(()).unwrap();
    wait_until("every visit", || {
        visits.lock().unwrap().len() == CONNS * VISITS
    });
    assert_a_batch_per_iteration("visited", visits.lock().unwrap().iter().copied());
    drop(clients);
    server.stop();
}
