//! Delays and timeouts too long for the clock (`Duration::MAX`, a config value read from a
//! user's file, say): the library takes them as "never" instead of panicking on an
//! `Instant` overflow (found through the echo app, whose `--drain-timeout` and
//! `--stats-interval` are now bounded; a library user has no such guard).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duo_net::TcpServer;
use duo_reactor::{EventLoop, EventLoopThread};

const NEVER: Duration = Duration::MAX;

#[test]
fn timers_too_far_away_for_the_clock_never_fire_and_do_not_panic() {
    let mut lp = EventLoop::new().unwrap();
    let fired = Arc::new(AtomicBool::new(false));
    for delay in [NEVER, Duration::from_secs(u64::MAX / 2)] {
        let f = fired.clone();
        lp.run_after(delay, move |_| f.store(true, Ordering::SeqCst));
        let f = fired.clone();
        lp.run_every(delay, move |_| f.store(true, Ordering::SeqCst));
        let f = fired.clone();
        lp.handle()
            .run_after(delay, move |_| f.store(true, Ordering::SeqCst))
            .unwrap();
        let f = fired.clone();
        lp.handle()
            .run_every(delay, move |_| f.store(true, Ordering::SeqCst))
            .unwrap();
    }
    let cancel = lp.run_after(NEVER, |_| {});
    lp.cancel(cancel);
    lp.run_after(Duration::from_millis(20), |lp| lp.quit());
    lp.run().unwrap();
    assert!(!fired.load(Ordering::SeqCst));
}

#[test]
fn a_server_with_timeouts_too_long_for_the_clock_serves_and_stops() {
    let looped = EventLoopThread::spawn("huge", None).unwrap();
    let handle = looped.handle();
    let (tx, rx) = std::sync::mpsc::channel();
    handle
        .queue_in_loop(move |lp| {
            let server = TcpServer::builder(
                "huge",
                "127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap(),
            )
            .io_threads(1)
            .idle_timeout(NEVER)
            .on_connection(|conn| {
                if conn.is_connected() {
                    let _ = conn.force_close_after(NEVER);
                }
            })
            .on_message(|ctx, input| {
                ctx.send(input.peek());
                input.consume_all();
            })
            .start(lp)
            .unwrap();
            tx.send(server).unwrap();
        })
        .unwrap();
    let server = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"ping").unwrap();
    let mut buf = [0; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    // A graceful shutdown with no end to its grace: the client's close ends it.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    server.shutdown(NEVER, move |_| done_tx.send(()).unwrap());
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap(); // the server half-closes
    drop(s);
    done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    drop(server);
    looped.stop().unwrap();
}
