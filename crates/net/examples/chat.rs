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
//!   [`ServerConnections::for_each`] with [`ConnCtx::send_shared`] sends one shared buffer
//!   to all of them (as [`ServerConnections::broadcast`] does; this way the chat also
//!   learns when every loop has had it). Messages from one sender reach every client in
//!   the order sent;
//! - protection from a client that stops reading: its queued output is bounded by
//!   [`ServerBuilder::output_limit`]; past it the client is dropped, not the server;
//! - protection from a client that talks faster than the room is served: the frames of
//!   one read are relayed as one broadcast, and a client with a few broadcasts still on
//!   their way to the loops is not read until they arrive, so the broadcasts queued to
//!   the loops stay bounded however fast and however small the messages;
//! - a client that half-closes after its last message still gets it back (then the end);
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
//! [`ServerConnections::for_each`]: duo_net::ServerConnections::for_each
//! [`ConnCtx::send_shared`]: duo_net::ConnCtx::send_shared
//! [`ServerBuilder::output_limit`]: duo_net::ServerBuilder::output_limit

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duo_net::codec::LengthHeaderCodec;
use duo_net::process::{self, say, STOP_SIGNALS};
use duo_net::{ConnCtx, EventLoop, OutputLimit, ServerConnections, TcpConnection, TcpServer};

/// Largest payload a client may send; a header announcing more closes its connection.
const MAX_MESSAGE: usize = 64 << 10;

/// Broadcasts of one client's messages that may be on their way to the loops before that
/// client is read no more until they arrive.
const IN_FLIGHT: usize = 4;

/// Most output a client may have queued (messages it has not read yet) before it is dropped.
const OUTPUT_LIMIT: usize = 4 << 20;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = match &args[..] {
        [] => Ok("127.0.0.1:7200".parse()),
        [addr] => Ok(addr.parse::<duo_net::Endpoint>()),
        [_, extra, ..] => Err(format!("unexpected argument {extra:?}")),
    };
    let addr = match addr {
        Ok(Ok(addr)) => addr,
        Ok(Err(e)) => return usage(&format!("LISTEN_ADDR: {e}")),
        Err(problem) => return usage(&problem),
    };
    match run(addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(format!("chat: {e}"));
            ExitCode::FAILURE
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    say(format!(
        "chat: {problem}\nusage: chat [LISTEN_ADDR]   (default 127.0.0.1:7200)"
    ));
    ExitCode::from(2)
}

fn run(addr: duo_net::Endpoint) -> Result<(), Box<dyn std::error::Error>> {
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
            if conn.is_connected() {
                conn.set_context(Relaying::default());
            }
            let state = if conn.is_connected() { "UP" } else { "DOWN" };
            log::info!("{} -> {} is {state}", conn.local_addr(), conn.peer_addr());
        })
        // A client that half-closes (sends its last message, then its end of stream) still
        // gets back what it sent, like everyone: the broadcast of its last messages is
        // queued to the loops (`for_each` returns at once), and closing through the
        // handle queues the close behind it. (Without this callback the library would
        // close as soon as the output is written, before the broadcast reaches it.)
        .on_peer_half_close(|ctx| {
            let _ = ctx.connection().close_after_flush();
        })
        .on_message(move |ctx, input| {
            // Every connection of a server has its server's connections; `None` would
            // mean this callback serves a client's connection.
            let Some(everyone) = ctx.server_connections() else {
                return;
            };
            // The complete frames at the front of the input, relayed as received (headers
            // included) in one message: one allocation and one visit of each loop per
            // read, however small the frames.
            let mut whole = 0;
            let bad = loop {
                match codec.decode(&input.peek()[whole..]) {
                    Ok(Some(frame)) => whole += frame.consumed,
                    // Incomplete: the rest stays in the input for the next call.
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
            };
            if whole > 0 {
                let message: Arc<[u8]> = Arc::from(&input.peek()[..whole]);
                input.consume(whole);
                relay(ctx, &everyone, message);
            }
            if let Some(e) = bad {
                log::warn!("{}: {e}; closing", ctx.connection().name());
                ctx.force_close();
            }
        })
        .start(&mut main_loop)?;

    // Ctrl-C or SIGTERM: stop accepting, let queued messages drain, then quit the loop.
    process::run_until_stopped(&mut main_loop, server, Duration::from_secs(3))?;
    Ok(())
}

/// A connection's broadcasts on their way to the loops (its context).
#[derive(Default, Clone)]
struct Relaying(Arc<AtomicUsize>);

/// One broadcast on its way: held by the function every loop runs, so dropped once every
/// loop has visited its connections with it. The last of [`IN_FLIGHT`] lets its sender
/// be read again.
struct Relayed {
    sender: TcpConnection,
    count: Arc<AtomicUsize>,
}

impl Drop for Relayed {
    fn drop(&mut self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == IN_FLIGHT {
            // Decided on the sender's loop, where `relay` pauses it: this runs after that
            // callback's pause, and resumes only if the count is still below the bound. A
            // `start_reading` through the handle here would take effect at once, and a
            // pause `relay` was about to make (its count already at the bound) would then
            // undo it for good. (A sender that has gone ignores it.)
            let count = self.count.clone();
            let _ = self.sender.queue_in_loop(move |ctx| {
                if count.load(Ordering::Acquire) < IN_FLIGHT {
                    ctx.start_reading();
                }
            });
        }
    }
}

/// Sends `message` to everyone; pauses reading `ctx`'s client while [`IN_FLIGHT`] of its
/// broadcasts are on their way. A broadcast is queued to every loop, and a loop visits
/// its connections a slice at a time: without the pause a client writing small messages
/// fast got read far faster than its messages were delivered, and the queued broadcasts
/// grew without bound (the output limit counts only what reached an output buffer).
fn relay(ctx: &mut ConnCtx<'_>, everyone: &ServerConnections, message: Arc<[u8]>) {
    let Ok(Relaying(count)) = ctx.connection().with_context(|r: &mut Relaying| r.clone()) else {
        // Not reached: the context is set when the connection comes up.
        everyone.broadcast(message);
        return;
    };
    let on_the_way = count.fetch_add(1, Ordering::AcqRel) + 1;
    let relayed = Relayed {
        sender: ctx.connection().clone(),
        count,
    };
    everyone.for_each(move |to| {
        let _ = &relayed;
        to.send_shared(message.clone());
    });
    if on_the_way >= IN_FLIGHT {
        ctx.stop_reading();
    }
}
