//! Many connections idle since the same moment (a burst of clients that went quiet
//! together): their idle timeouts close them over several loop iterations, a bounded
//! batch per iteration, so that the loop serves its other connections in between instead
//! of stalling for the whole burst (about 10 µs per close in a release build: a second
//! for 100 000 connections).

mod util;

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duo_net::{CloseReason, TcpServer};
use duo_testkit::wait_until;
use util::{localhost, TestServer};

/// Idle connections a loop closes per iteration at most (`per_loop.rs`).
const BATCH: usize = 128;

/// Per closed connection: the loop iteration it closed in, and why.
type Closes = Arc<Mutex<Vec<(u64, Option<CloseReason>)>>>;

#[test]
fn a_burst_of_idle_connections_is_closed_a_batch_per_iteration() {
    // Each connection costs this process two descriptors (the client's and the server's).
    let soft = duo_sys::raise_fd_limit()
        .or_else(|_| duo_sys::fd_limit().map(|(soft, _)| soft))
        .unwrap_or(1024);
    let conns = ((soft.saturating_sub(256) / 2) as usize).min(1500);
    assert!(
        conns > 2 * BATCH,
        "RLIMIT_NOFILE {soft} leaves room for {conns} connections only"
    );
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
    let mut per_iteration: HashMap<u64, usize> = HashMap::new();
    for (iteration, _) in closes.iter() {
        *per_iteration.entry(*iteration).or_default() += 1;
    }
    let most = per_iteration.values().copied().max().unwrap_or(0);
    assert!(
        most <= BATCH,
        "{most} connections closed in one loop iteration (at most {BATCH} wanted; \
         {} iterations for {conns})",
        per_iteration.len()
    );
    drop(clients);
    server.stop();
}
