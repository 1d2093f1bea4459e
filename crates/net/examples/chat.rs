//! A chat server, as muduo's `examples/asio/chat/server.cc`: every message any client
//! sends is relayed to every connected client, the sender included.
//!
//! What it shows:
//!
//! - framing with [`LengthHeaderCodec`]: a message is a 4-byte big-endian length followed
//!   by that many bytes of payload (at most 64 KiB); a header announcing more closes that
//!   one connection, and everyone else chats on;
//! - a broadcast without a registry of your own: [`ConnCtx::server_connections`] reaches
//!   every connection of the server on every I/O thread, and
//!   [`ServerConnections::broadcast`] sends one shared buffer to all of them (no copy per
//!   recipient). Messages from one sender reach every client in the order sent;
//! - protection from a client that stops reading: its queued output is bounded by
//!   [`ServerBuilder::output_limit`]; past it the client is dropped, not the server;
//! - a graceful stop on Ctrl-C or `SIGTERM`.
//!
//! Run it with `cargo run -p duo-net --example chat [LISTEN_ADDR]` (default
//! `127.0.0.1:7200`; port 0 picks a free port). It prints `listening on HOST:PORT` when
//! ready. The protocol is binary, so `nc` alone cannot speak it; any program that writes
//! `u32` big-endian length + payload and reads the same back will do (the integration test
//! `crates/net/tests/example_chat.rs` is one). `RUST_LOG=debug` shows each connection's
//! `up` and `down (reason)` lines from the library.
//!
//! [`ConnCtx::server_connections`]: duo_net::ConnCtx::server_connections
//! [`ServerConnections::broadcast`]: duo_net::ServerConnections::broadcast
//! [`ServerBuilder::output_limit`]: duo_net::ServerBuilder::output_limit

use std::sync::Arc;
use std::time::Duration;

use duo_net::codec::LengthHeaderCodec;
use duo_net::process::{self, STOP_SIGNALS};
use duo_net::{EventLoop, OutputLimit, TcpServer};

/// Largest payload a client may send; a header announcing more closes its connection.
const MAX_MESSAGE: usize = 64 << 10;

/// Most output a client may have queued (messages it has not read yet) before it is dropped.
const OUTPUT_LIMIT: usize = 4 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7200".into())
        .parse::<duo_net::Endpoint>()?;
    let codec = LengthHeaderCodec::new(MAX_MESSAGE);

    // Before any thread starts: the stop signals are read from the main loop only.
    process::prepare_server(&STOP_SIGNALS)?;
    let mut main_loop = EventLoop::new()?;
    let server = TcpServer::builder("chat", addr)
        .io_threads(2)
        // A client that reads slower than the room talks falls behind; its backlog is
        // bounded here, and past it the client is disconnected (everyone else goes on).
        //
        // Backpressure stays at the default, `PauseReading`: when a client's own backlog
        // passes the high-water mark, the server stops reading *that* client's messages
        // until it catches up. That is harmless here (a client too busy to read cannot
        // talk either), and it never pauses anyone on account of another client's backlog,
        // so there is nothing to deadlock. (With the default high-water mark, 4 MiB like
        // this limit, the limit acts first anyway.) `Notify` would only matter if we wanted
        // to pause the *senders* to spare a slow reader, which a chat room should not do.
        .output_limit(OUTPUT_LIMIT, OutputLimit::Close)
        .on_connection(|conn| {
            let state = if conn.is_connected() { "UP" } else { "DOWN" };
            log::info!("{} -> {} is {state}", conn.local_addr(), conn.peer_addr());
        })
        .on_message(move |ctx, input| {
            // Every connection of a server has its server's connections; `None` would
            // mean this callback serves a client's connection.
            let Some(everyone) = ctx.server_connections() else {
                return;
            };
            loop {
                match codec.decode(input.peek()) {
                    Ok(Some(frame)) => {
                        // Relay the frame as received, header included: one allocation,
                        // shared by every recipient.
                        let len = frame.consumed;
                        let message: Arc<[u8]> = Arc::from(&input.peek()[..len]);
                        input.consume(len);
                        everyone.broadcast(message);
                    }
                    // Incomplete: the rest stays in the input for the next call.
                    Ok(None) => return,
                    Err(e) => {
                        log::warn!("{}: {e}; closing", ctx.connection().name());
                        ctx.force_close();
                        return;
                    }
                }
            }
        })
        .start(&mut main_loop)?;

    // Ctrl-C or SIGTERM: stop accepting, let queued messages drain, then quit the loop.
    process::run_until_stopped(&mut main_loop, server, Duration::from_secs(3))?;
    Ok(())
}
