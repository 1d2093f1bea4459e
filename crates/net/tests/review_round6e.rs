//! Review round 6e: what duo-net's timers keep alive.
//!
//! `TcpConnection::force_close_after(delay)` put a timer on the connection's loop that
//! held a strong handle of the connection for the whole delay: a connection that closed
//! long before (the common case for a "close at most this late" cap of an hour) stayed
//! alive until then, with its user context, so a server that caps every connection kept
//! every connection of the last `delay` in memory. The linger timer holds its connection
//! weakly for this reason; so does this one now.

mod util;

use std::sync::mpsc;
use std::time::Duration;

use duo_net::TcpServer;
use util::{connect, echo_once, init_log, localhost, TestServer};

/// A connection's context: says when it is dropped.
struct Dropped(mpsc::Sender<()>);

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[test]
fn a_connection_closed_before_its_force_close_timer_is_not_kept_alive_by_it() {
    init_log();
    let (tx, dropped) = mpsc::channel();
    let tx = parking_lot::Mutex::new(tx);
    let server = TestServer::start(move || {
        TcpServer::builder("cap", localhost())
            .on_connection(move |conn| {
                if conn.is_connected() {
                    conn.set_context(Dropped(tx.lock().clone()));
                    // A cap on the connection's life, far longer than this test.
                    conn.force_close_after(Duration::from_secs(3600)).unwrap();
                }
            })
            .on_message(|ctx, input| {
                ctx.send(input.peek());
                input.consume_all();
            })
    });
    let mut s = connect(server.addr());
    echo_once(&mut s, b"ping");
    drop(s);
    // The peer's close closes the connection; nothing else holds it then.
    let freed = dropped.recv_timeout(Duration::from_secs(5));
    assert!(
        freed.is_ok(),
        "a closed connection (and its context) is kept alive by its force_close_after timer"
    );
    server.stop();
}
