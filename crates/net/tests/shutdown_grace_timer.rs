//! A graceful shutdown whose connections all closed before its deadline leaves no timer
//! behind on the main loop: the deadline's timer (which holds the server's loops and
//! would visit them for nothing) is cancelled when the server is found empty. With a long
//! grace (an hour, or `Duration::MAX` for "wait as long as it takes") it used to stay
//! pending for that long, one per shutdown, on a main loop that goes on running (a
//! server restarted in the same process).

mod util;

use std::io::Read;
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use duo_net::TcpServer;
use duo_reactor::EventLoop;
use duo_testkit::{join_within, LIMIT};
use util::localhost;

/// Starts a server on a fresh main loop, connects one client, shuts the server down with
/// `grace`, lets the client see the end of stream and close, and returns the main loop's
/// timer count before the shutdown and when the shutdown's continuation runs.
fn timers_around_a_shutdown(grace: Duration, io_threads: usize) -> (usize, usize) {
    let (addr_tx, addr_rx) = mpsc::channel();
    let (counts_tx, counts_rx) = mpsc::channel();
    let tick_tx = counts_tx.clone();
    let main = thread::spawn(move || {
        let mut lp = EventLoop::new().unwrap();
        let server = TcpServer::builder("grace-timer", localhost())
            .io_threads(io_threads)
            .on_message(|ctx, input| {
                ctx.send(input.peek());
                input.consume_all();
            })
            .start(&mut lp)
            .unwrap();
        let handle = server.clone_handle();
        addr_tx.send((server.local_addr(), handle)).unwrap();
        lp.run_every(Duration::from_millis(5), move |lp| {
            let _ = tick_tx.send(("tick", lp.timer_count()));
        });
        lp.run().unwrap();
        drop(server);
    });
    let (addr, handle) = addr_rx.recv_timeout(LIMIT).unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(LIMIT)).unwrap();
    // The connection is open on the server before the shutdown begins.
    duo_testkit::wait_until("the connection counted", || handle.stats().active == 1);
    let before = loop {
        let (what, n) = counts_rx.recv_timeout(LIMIT).unwrap();
        if what == "tick" {
            break n;
        }
    };
    let done_tx = counts_tx.clone();
    handle.shutdown(grace, move |lp| {
        let _ = done_tx.send(("done", lp.timer_count()));
        lp.quit();
    });
    // The server half-closes the connection once its (empty) output is written.
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    drop(client);
    let at_end = loop {
        let (what, n) = counts_rx.recv_timeout(LIMIT).unwrap();
        if what == "done" {
            break n;
        }
    };
    join_within("the main loop", main);
    (before, at_end)
}

#[test]
fn an_early_empty_server_cancels_its_shutdown_deadline() {
    for io_threads in [0, 1] {
        for grace in [Duration::from_secs(3600), Duration::MAX] {
            let (before, at_end) = timers_around_a_shutdown(grace, io_threads);
            assert_eq!(
                at_end, before,
                "{io_threads} I/O threads, grace {grace:?}: the shutdown's deadline timer \
                 is still pending once the server is empty"
            );
        }
    }
}
