//! Review round 11 of the connection state machine (`crates/net/src/conn/`): a message
//! callback that ends its connection while leaving input unread, on a capped buffer pool
//! whose memory the rest of the process holds (other connections, here the test itself).
//!
//! Since round 11 of duo-buffer, a read into an empty input buffer (or one whose growth a
//! capped pool refused) leaves its bytes unsettled in the thread's spill area, and the
//! connection settles them into a pooled block after each message callback. When the
//! callback has already decided that the connection ends (`close_after_flush`: reading
//! stopped for good, its reply still draining, or lingering to drop the peer's input),
//! that input will never be delivered; settling it anyway asked the pool for a block the
//! connection did not need, and a refusal closed the connection at once with
//! `OutOfMemory`: the queued reply that `close_after_flush` promises to write was
//! dropped, and a lingering close lost its reason.
//!
//! Likewise, what the last message callback left (a partial message) when the peer's end
//! of stream arrives can never be delivered; a half-closed connection kept its block
//! until it closed.

mod util;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use duo_buffer::{BufPool, IoBuf, PoolConfig};
use duo_net::{CloseReason, ServerBuilder, TcpConnection, TcpServer};
use duo_testkit::LIMIT;
use util::{connect, init_log, localhost, read_until_closed, TestServer};

/// The pool's cap: room for the queued part of the reply, with some to spare.
const CAP: usize = 32 << 20;
/// The request the client sends in one write; the callback reads none of it.
const REQUEST: usize = 40_000;

/// Takes every block the pool still has (as the other connections of a busy server
/// would hold them), keeping them in `hoard`.
fn exhaust(pool: BufPool, hoard: &Mutex<Vec<IoBuf>>) {
    let mut hoard = hoard.lock().unwrap();
    while let Ok(block) = pool.alloc(4 << 10) {
        hoard.push(block);
    }
}

/// What one run saw.
struct Run {
    /// The bytes of the reply the client received before the close.
    received: usize,
    /// The connection's close reason.
    reason: CloseReason,
    /// Whether the callback saw the request unsettled in the spill area (the premise).
    unsettled: bool,
}

/// The client sends `REQUEST` bytes and reads nothing until the callback has run. The
/// callback replies `reply` bytes, the pool runs out (taken by others), and it asks for
/// `close_after_flush`, leaving the request unread. Then the client reads to the end
/// (and half-closes, so that a lingering close ends).
fn close_after_flush_on_an_exhausted_pool(name: &'static str, reply: usize) -> Run {
    init_log();
    let pool = BufPool::new(PoolConfig {
        memory_cap: Some(CAP),
        ..PoolConfig::default()
    });
    let hoard = Arc::new(Mutex::new(Vec::new()));
    let unsettled = Arc::new(AtomicBool::new(false));
    let (reason_tx, reason_rx) = mpsc::channel::<CloseReason>();
    let reason_tx = Mutex::new(reason_tx);
    let (ran_tx, ran_rx) = mpsc::channel::<()>();
    let ran_tx = Mutex::new(ran_tx);
    let (h, u) = (hoard.clone(), unsettled.clone());
    let server = TestServer::start(move || -> ServerBuilder {
        TcpServer::builder(name, localhost())
            .io_threads(1)
            .buffer_pool(pool)
            .close_linger(LIMIT)
            .on_message(move |ctx, input| {
                if input.len() < REQUEST {
                    return;
                }
                u.store(input.is_unsettled(), Ordering::SeqCst);
                ctx.send(&vec![b'r'; reply]);
                exhaust(pool, &h);
                ctx.close_after_flush();
                let _ = ran_tx.lock().unwrap().send(());
            })
            .on_close(move |conn| {
                let reason = conn.close_reason().expect("closed");
                let _ = reason_tx.lock().unwrap().send(reason);
            })
    });
    let mut client = connect(server.addr());
    client.write_all(&vec![b'q'; REQUEST]).unwrap();
    ran_rx
        .recv_timeout(LIMIT)
        .expect("the message callback ran");
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let (got, _) = read_until_closed(&mut client);
    let reason = reason_rx
        .recv_timeout(LIMIT)
        .expect("the connection closed");
    hoard.lock().unwrap().clear();
    server.stop();
    Run {
        received: got.len(),
        reason,
        unsettled: unsettled.load(Ordering::SeqCst),
    }
}

/// The reply is larger than the socket takes: the rest is queued and drains after the
/// callback. Every byte of it reaches the client, and the close is the application's.
///
/// Failed before the fix: settling the unread request found the pool exhausted and closed
/// the connection with `OutOfMemory`, dropping the queued part of the reply.
#[test]
fn a_queued_reply_is_written_whole_though_the_unread_input_finds_no_block() {
    const REPLY: usize = 8 << 20;
    let run = close_after_flush_on_an_exhausted_pool("r11m-queued", REPLY);
    assert!(
        run.unsettled,
        "premise: the request was read into the spill area"
    );
    assert_eq!(run.received, REPLY, "the reply was cut short");
    assert_eq!(run.reason, CloseReason::User);
}

/// The reply fits in the socket: nothing is queued, and the close lingers (the request
/// was left unread) until the client's end of stream; its reason is the application's.
///
/// Failed before the fix: the lingering connection settled the request it will never
/// deliver, and the refusal closed it with `OutOfMemory` instead.
#[test]
fn a_lingering_close_keeps_its_reason_though_the_unread_input_finds_no_block() {
    const REPLY: usize = 100;
    let run = close_after_flush_on_an_exhausted_pool("r11m-linger", REPLY);
    assert!(
        run.unsettled,
        "premise: the request was read into the spill area"
    );
    assert_eq!(run.received, REPLY);
    assert_eq!(run.reason, CloseReason::User);
}

/// The peer half-closes after a partial message the callback leaves in the buffer; the
/// application keeps the connection open to send (`on_peer_half_close` does nothing).
/// After the end of stream no message callback can run again, so that partial message is
/// dead: its block goes back to the pool at once, not when the connection closes (a
/// half-closed connection may stay open long, each one holding up to `max_input`).
///
/// Failed before the fix: the block stayed in use until the close.
#[test]
fn input_left_at_the_peers_end_of_stream_gives_its_block_back() {
    init_log();
    let pool = BufPool::new(PoolConfig {
        memory_cap: Some(CAP),
        ..PoolConfig::default()
    });
    let (half_tx, half_rx) = mpsc::channel::<TcpConnection>();
    let half_tx = Mutex::new(half_tx);
    let server = TestServer::start(move || -> ServerBuilder {
        TcpServer::builder("r11m-half", localhost())
            .io_threads(1)
            .buffer_pool(pool)
            // A partial message: never consumed.
            .on_message(|_, _| {})
            .on_peer_half_close(move |ctx| {
                let _ = half_tx.lock().unwrap().send(ctx.connection().clone());
            })
    });
    let mut client = connect(server.addr());
    client.write_all(&[b'p'; 1000]).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let conn = half_rx
        .recv_timeout(LIMIT)
        .expect("the half-close callback ran");
    duo_testkit::wait_until("the partial message's block to be free", || {
        pool.stats().in_use_blocks() == 0
    });
    assert!(!conn.is_closed(), "open for sending");
    drop(client);
    server.stop();
}
