//! `TcpClient::connect` after `disconnect` while a connection comes up: the last call asks
//! for a connection, so the client ends up connected.
//!
//! `disconnect()` ends whatever connection its queued work finds on the loop. One may have
//! come up in between (its attempt was started, or completed, before that work ran, and a
//! `connect()` after the `disconnect()` wanted it). Before the fix the client marked
//! itself "ending" only when `disconnect()` was called, the new connection cleared the
//! mark, the queued work half-closed it anyway, and the final `connect()`, finding a
//! connection not marked ending, did nothing: the client stayed idle for ever. Both
//! interleavings are arranged by holding the loop.

mod util;

use std::sync::mpsc;

use duo_net::{Endpoint, TcpClient, TcpServer};
use duo_reactor::{EventLoopThread, LoopHandle};
use duo_testkit::{wait_until, LIMIT};
use util::{barrier, hold_loop, init_log, localhost, TestServer};

/// Waits (at most [`LIMIT`]) until the client has a connection that is open.
fn wait_open_connection(client: &TcpClient, what: &str) {
    wait_until(&format!("{what}: {client:?}"), || {
        client.connection().is_some_and(|c| c.is_connected())
    });
}

/// An echo server (one I/O thread); it closes its side when the client half-closes.
fn echo_on(ep: Endpoint) -> TestServer {
    TestServer::start(move || {
        TcpServer::builder("hc-echo", ep)
            .io_threads(1)
            .on_message(|ctx, input| {
                ctx.send(input.peek());
                input.consume_all();
            })
    })
}

/// Stops `client` and waits until the stop has taken effect on the loop.
fn stop_and_settle(client: &TcpClient, lp: &LoopHandle) {
    client.stop();
    barrier(lp);
    barrier(lp);
    assert!(client.connection().is_none(), "{client:?}");
}

/// `connect()`, `disconnect()`, `connect()` from one thread, in that order, while the
/// loop is busy: the client must end up connected. Over a Unix-domain socket the first
/// `connect()`'s attempt completes at once when the loop runs it; the `disconnect()`
/// queued behind it then half-closes that new connection, and the final `connect()` is
/// lost.
#[test]
fn connect_disconnect_connect_over_unix_ends_connected() {
    init_log();
    let name = format!("duo-client-order-cdc-{}", std::process::id());
    let ep: Endpoint = format!("unix:@{name}").parse().unwrap();
    let server = echo_on(ep.clone());
    let lp = EventLoopThread::spawn("hc-cdc", None).unwrap();
    let client = TcpClient::builder("cdc", ep).connect(lp.handle());
    wait_open_connection(&client, "the first connection");
    stop_and_settle(&client, lp.handle());

    let release = hold_loop(lp.handle());
    client.connect();
    client.disconnect();
    client.connect();
    drop(release);
    wait_open_connection(&client, "connect() after disconnect() was lost");
    client.stop();
    server.stop();
    lp.stop().unwrap();
}

/// The same over TCP ("reconnect now": `disconnect(); connect();`) while a connect
/// attempt is in flight whose completion the loop has not handled yet. The loop handles
/// the completion first (the connection comes up: `connect()` had set `wanted` again),
/// then `disconnect()`'s queued work half-closes it, and the final `connect()` is lost.
#[test]
fn disconnect_then_connect_while_a_tcp_connect_completes_ends_connected() {
    init_log();
    let server = echo_on(localhost().into());
    let lp = EventLoopThread::spawn("hc-dc-tcp", None).unwrap();
    let client = TcpClient::builder("dc-tcp", server.addr()).connect(lp.handle());
    wait_open_connection(&client, "the first connection");
    stop_and_settle(&client, lp.handle());

    // The attempt starts in one pass of the loop's queue and the loop is held right after
    // it, in the same pass: its completion is handled in the next iteration, before what
    // is queued meanwhile.
    let release_first = hold_loop(lp.handle());
    client.connect();
    let (entered_tx, entered) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    lp.handle()
        .queue_in_loop(move |_| {
            let _ = entered_tx.send(());
            let _ = released.recv_timeout(LIMIT);
        })
        .unwrap();
    drop(release_first);
    entered
        .recv_timeout(LIMIT)
        .expect("the loop is held after the attempt started");
    assert!(
        format!("{client:?}").contains("Connecting"),
        "the attempt is in flight: {client:?}"
    );
    client.disconnect();
    client.connect();
    drop(release);
    wait_open_connection(&client, "connect() after disconnect() was lost");
    client.stop();
    server.stop();
    lp.stop().unwrap();
}
