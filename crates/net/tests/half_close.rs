//! A peer that half-closes right after its request still gets replies computed later,
//! when the application asks for that with `on_peer_half_close`; without it, the server
//! closes once its output is written.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use duo_net::TcpServer;
use util::{localhost, TestServer};

const DEADLINE: Duration = Duration::from_secs(10);

/// Runs a server built by `build` on its own thread; returns its address and a function
/// that stops it.
fn serve(
    build: impl FnOnce(duo_net::ServerBuilder) -> duo_net::ServerBuilder + Send + 'static,
) -> (std::net::SocketAddr, impl FnOnce()) {
    let mut server = TestServer::start(move || {
        build(TcpServer::builder("half-close", localhost()).io_threads(1))
    });
    (server.addr(), move || {
        server.shutdown_and_join(Duration::from_millis(200));
    })
}

fn request(addr: std::net::SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(msg).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    got
}

#[test]
fn late_replies_reach_a_peer_that_half_closed() {
    let (addr, stop) = serve(|b| {
        b.on_message(|ctx, input| {
            // The "work" finishes 50 ms later, as a worker pool's would.
            let request = input.peek().to_vec();
            input.consume_all();
            let conn = ctx.connection().clone();
            let _ = conn
                .loop_handle()
                .clone()
                .run_after(Duration::from_millis(50), move |_| {
                    let mut reply = b"done: ".to_vec();
                    reply.extend_from_slice(&request);
                    let _ = conn.send(reply);
                    let _ = conn.close_after_flush();
                });
        })
        .on_peer_half_close(|ctx| {
            assert!(ctx.peer_half_closed());
            // Still open for sending: the reply is on its way.
            assert!(ctx.connection().is_connected());
        })
    });
    assert_eq!(request(addr, b"job"), b"done: job");
    stop();
}

#[test]
fn without_the_callback_the_server_closes_after_its_output() {
    let (conn_tx, conn_rx) = mpsc::channel();
    let conn_tx = std::sync::Mutex::new(conn_tx);
    let (addr, stop) = serve(move |b| {
        b.on_message(move |ctx, input| {
            ctx.send(input.peek());
            input.consume_all();
            let _ = conn_tx.lock().unwrap().send(ctx.connection().clone());
        })
    });
    // The reply, then the end of stream: the server closed once its output was written.
    assert_eq!(request(addr, b"echo me"), b"echo me");
    let conn = conn_rx.recv_timeout(DEADLINE).unwrap();
    duo_testkit::wait_until("the connection closed", || conn.is_closed());
    // Too late: the connection closed when the peer's EOF came.
    assert_eq!(conn.send(&b"late"[..]), Err(duo_net::ConnectionClosed));
    stop();
}

/// A write-complete callback that sends a large last reply and shuts down: the peer gets
/// every byte of it before the end of stream (the drain that the callback's own send
/// restarted is not cut short by the flush that called it).
#[test]
fn a_shutdown_from_write_complete_after_a_large_send_delivers_it_all() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const FIRST: usize = 8 << 20;
    const LAST: usize = 4 << 20;
    let sent_last = Arc::new(AtomicBool::new(false));
    let server = util::TestServer::start(move || {
        let sent_last = sent_last.clone();
        duo_net::TcpServer::builder("wc-shutdown", util::localhost())
            .on_message(|ctx, input| {
                input.consume_all();
                ctx.send(&vec![1u8; FIRST]);
            })
            .on_write_complete(move |ctx| {
                if !sent_last.swap(true, Ordering::SeqCst) {
                    ctx.send(&vec![2u8; LAST]);
                    ctx.shutdown();
                }
            })
    });
    let mut client = util::connect(server.addr());
    client.write_all(b"go").unwrap();
    // The server's socket fills before we read (the rest of the first reply waits in its
    // output buffer), so the last reply is buffered.
    duo_testkit::wait_until("the server to queue output", || {
        let queued: u64 = server.stats().output_queued();
        queued > 0
    });
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(
        got.len(),
        FIRST + LAST,
        "every byte before the end of stream"
    );
    assert!(got[..FIRST].iter().all(|&b| b == 1) && got[FIRST..].iter().all(|&b| b == 2));
    server.stop();
}
