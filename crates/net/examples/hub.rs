//! A publish/subscribe hub, as muduo's `examples/hub`: clients subscribe to topics, and
//! every publication on a topic is forwarded to the topic's subscribers.
//!
//! The protocol is text, one command per line (`\r\n` or `\n`):
//!
//! ```text
//! sub TOPIC\r\n                  subscribe to TOPIC
//! unsub TOPIC\r\n                unsubscribe
//! pub TOPIC\r\nCONTENT\r\n       publish CONTENT (one line) on TOPIC
//! ```
//!
//! A subscriber receives each publication as the same `pub TOPIC\r\nCONTENT\r\n`. A topic
//! is one word (no spaces), at most [`MAX_LINE`] bytes with its command; so is a content.
//! Anything else (an unknown command, a missing or empty topic, a line too long) gets one
//! `error: WHY\r\n` line back, and the hub closes that connection; everyone else goes on.
//!
//! What it shows:
//!
//! - framing with [`LineCodec`], in place: a `pub` is two lines, taken only when both
//!   have arrived (a command cut short stays in the input until its rest comes);
//! - one registry shared by every I/O thread (a mutex over topic → subscribers), each
//!   subscriber's topics kept in its connection's context
//!   ([`TcpConnection::set_context`]), so a connection that goes down, for whatever
//!   reason, leaves every topic it was in;
//! - a publication is one shared buffer sent to every subscriber
//!   ([`TcpConnection::send_shared`]), under the topic's lock: every subscriber sees a
//!   topic's publications in the same order;
//! - a slow subscriber is dropped, not waited for: its queued output is bounded by
//!   [`ServerBuilder::output_limit`] (sends from other threads count from the moment they
//!   are made), and past it the connection closes; publishers and other subscribers go on;
//! - the client side with [`TcpClient`]: `hub pub` publishes one message and leaves,
//!   `hub sub` prints what it receives.
//!
//! ```text
//! cargo run -p duo-net --example hub -- serve [LISTEN_ADDR] [OUTPUT_LIMIT_BYTES]
//! cargo run -p duo-net --example hub -- sub HUB_ADDR TOPIC...
//! cargo run -p duo-net --example hub -- pub HUB_ADDR TOPIC CONTENT
//! ```
//!
//! `serve` listens on `127.0.0.1:7400` by default (port 0 picks a free port) and prints
//! `listening on HOST:PORT` when ready; it logs each subscription and each connection's
//! end (`RUST_LOG=info`, the default). `sub` prints `TOPIC: CONTENT` per publication on
//! stdout and exits when the hub closes the connection. `pub` exits once the hub has read
//! its publication and closed (status 0), or with status 1 if it could not connect.
//!
//! [`ServerBuilder::output_limit`]: duo_net::ServerBuilder::output_limit

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duo_net::codec::{CodecError, LineCodec};
use duo_net::process::{self, say, STOP_SIGNALS};
use duo_net::{CloseReason, TcpServer};
use duo_net::{ConnCtx, Endpoint, EventLoop, InputBuffer, OutputLimit, TcpClient, TcpConnection};

/// Longest command line or content accepted (line end not counted).
const MAX_LINE: usize = 64 << 10;

/// Default bound on a subscriber's queued output, past which it is dropped.
const OUTPUT_LIMIT: usize = 4 << 20;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args[..] {
        ["serve"] => serve("127.0.0.1:7400", OUTPUT_LIMIT),
        ["serve", addr] => serve(addr, OUTPUT_LIMIT),
        ["serve", addr, limit] => match limit.parse() {
            Ok(limit) => serve(addr, limit),
            Err(e) => return usage(&format!("OUTPUT_LIMIT_BYTES {limit:?}: {e}")),
        },
        ["sub", addr, ref topics @ ..] if !topics.is_empty() => subscribe(addr, topics),
        ["pub", addr, topic, content] => publish(addr, topic, content),
        _ => return usage("bad arguments"),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            say(format!("hub: {e}"));
            ExitCode::FAILURE
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    say(format!(
        "hub: {problem}\nusage: hub serve [LISTEN_ADDR] [OUTPUT_LIMIT_BYTES]\n       \
         hub sub HUB_ADDR TOPIC...\n       hub pub HUB_ADDR TOPIC CONTENT"
    ));
    ExitCode::from(2)
}

type Error = Box<dyn std::error::Error>;

// ---------------------------------------------------------------------------------------
// The protocol, shared by the hub and its clients.

/// One command, borrowed from the input.
#[derive(Debug, PartialEq)]
enum Command<'a> {
    Sub(&'a str),
    Unsub(&'a str),
    Pub(&'a str, &'a [u8]),
}

/// Parses the command at the start of `input`: `Ok(None)` until all of it has arrived,
/// else the command and the bytes it took. An error is the peer's fault.
fn parse<'a>(codec: &LineCodec, input: &'a [u8]) -> Result<Option<(Command<'a>, usize)>, String> {
    let err = |e: CodecError| e.to_string();
    let Some(line) = codec.decode(input).map_err(err)? else {
        return Ok(None);
    };
    let text = std::str::from_utf8(line.payload).map_err(|_| "command is not UTF-8")?;
    let (verb, topic) = text.split_once(' ').unwrap_or((text, ""));
    let one_word = !topic.is_empty() && !topic.contains(char::is_whitespace);
    let command = match verb {
        "sub" | "unsub" | "pub" if !one_word => {
            return Err(format!("expected `{verb} TOPIC`, got {text:?}"));
        }
        "sub" => Command::Sub(topic),
        "unsub" => Command::Unsub(topic),
        "pub" => match codec.decode(&input[line.consumed..]).map_err(err)? {
            Some(content) => {
                let used = line.consumed + content.consumed;
                return Ok(Some((Command::Pub(topic, content.payload), used)));
            }
            None => return Ok(None),
        },
        _ => return Err(format!("unknown command {verb:?}")),
    };
    Ok(Some((command, line.consumed)))
}

/// A publication as sent to subscribers.
fn publication(topic: &str, content: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(topic.len() + content.len() + 8);
    msg.extend_from_slice(b"pub ");
    msg.extend_from_slice(topic.as_bytes());
    msg.extend_from_slice(b"\r\n");
    msg.extend_from_slice(content);
    msg.extend_from_slice(b"\r\n");
    msg
}

// ---------------------------------------------------------------------------------------
// The hub.

/// Every topic's subscribers, by connection id (one lock for the whole hub: a
/// publication's fan-out is a few queue pushes per subscriber).
#[derive(Default)]
struct Hub {
    topics: Mutex<HashMap<String, BTreeMap<u64, TcpConnection>>>,
}

/// A connection's context: the topics it subscribes to.
#[derive(Default)]
struct Subscriptions(BTreeSet<String>);

impl Hub {
    fn subscribe(&self, conn: &TcpConnection, topic: &str) {
        let fresh = conn
            .with_context(|s: &mut Subscriptions| s.0.insert(topic.to_owned()))
            .unwrap_or(false);
        if fresh {
            let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
            let subscribers = topics.entry(topic.to_owned()).or_default();
            subscribers.insert(conn.id(), conn.clone());
            log::info!("{} subscribes to {topic}", conn.name());
        }
    }

    fn unsubscribe(&self, conn: &TcpConnection, topic: &str) {
        let was = conn
            .with_context(|s: &mut Subscriptions| s.0.remove(topic))
            .unwrap_or(false);
        if was {
            self.leave(conn.id(), topic);
            log::info!("{} unsubscribes from {topic}", conn.name());
        }
    }

    fn leave(&self, id: u64, topic: &str) {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(subscribers) = topics.get_mut(topic) {
            subscribers.remove(&id);
            if subscribers.is_empty() {
                topics.remove(topic);
            }
        }
    }

    /// Sends one publication to every subscriber of `topic`; returns how many took it. A
    /// subscriber past its output limit is closed by the send, and leaves every topic
    /// when it goes down.
    fn publish(&self, topic: &str, content: &[u8]) -> usize {
        let msg: Arc<[u8]> = publication(topic, content).into();
        let topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock, so that every subscriber sees one order of publications.
        let sent = topics.get(topic).map_or(0, |subscribers| {
            let took = subscribers
                .values()
                .filter(|c| c.send_shared(msg.clone()).is_ok());
            took.count()
        });
        log::debug!("{topic}: to {sent} subscribers");
        sent
    }

    /// The connection went down: leave every topic.
    fn disconnected(&self, conn: &TcpConnection) {
        let Ok(Subscriptions(mine)) = conn.take_context::<Subscriptions>() else {
            return;
        };
        for topic in &mine {
            self.leave(conn.id(), topic);
        }
        let reason = conn.close_reason().unwrap_or(CloseReason::Peer);
        log::info!("{} left {} topics ({reason})", conn.name(), mine.len());
    }

    /// Serves the commands that have arrived whole.
    fn on_message(&self, codec: &LineCodec, ctx: &mut ConnCtx<'_>, input: &mut InputBuffer) {
        loop {
            let used = match parse(codec, input.peek()) {
                Ok(None) => return,
                Ok(Some((command, used))) => {
                    let conn = ctx.connection();
                    match command {
                        Command::Sub(topic) => self.subscribe(conn, topic),
                        Command::Unsub(topic) => self.unsubscribe(conn, topic),
                        Command::Pub(topic, content) => _ = self.publish(topic, content),
                    }
                    used
                }
                Err(why) => {
                    log::warn!("{}: {why}; closing", ctx.connection().name());
                    ctx.send(format!("error: {why}\r\n").as_bytes());
                    ctx.close_after_flush();
                    return;
                }
            };
            input.consume(used);
        }
    }
}

fn serve(addr: &str, output_limit: usize) -> Result<ExitCode, Error> {
    let addr: Endpoint = addr.parse()?;
    let hub = Arc::new(Hub::default());
    let codec = LineCodec::new(MAX_LINE);

    process::prepare_server(&STOP_SIGNALS)?;
    let mut main_loop = EventLoop::new()?;
    let down = hub.clone();
    let server = TcpServer::builder("hub", addr)
        .io_threads(2)
        // A `pub` is two lines, and both must fit in the input together.
        .max_input(2 * (MAX_LINE + 2))
        // A subscriber that reads slower than the topics it follows are published is
        // dropped once this much is queued for it. (The default backpressure pauses
        // reading a subscriber whose own output is past the high-water mark: harmless, a
        // subscriber that does not read has nothing to say.)
        .output_limit(output_limit, OutputLimit::Close)
        .on_connection(move |conn| {
            if conn.is_connected() {
                conn.set_context(Subscriptions::default());
            } else {
                down.disconnected(conn);
            }
        })
        .on_message(move |ctx, input| hub.on_message(&codec, ctx, input))
        .start(&mut main_loop)?;
    process::run_until_stopped(&mut main_loop, server, Duration::from_secs(3))?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------
// The clients.

/// Connects to the hub with `on_up` as the first thing done on the connection, runs until
/// the connection is down (or connecting gave up), then returns whether it ever came up.
fn run_client(
    addr: &str,
    on_up: impl Fn(&TcpConnection) + Send + Sync + 'static,
    on_message: impl Fn(&mut ConnCtx<'_>, &mut InputBuffer) + Send + Sync + 'static,
) -> Result<bool, Error> {
    let addr: Endpoint = addr.parse()?;
    let mut lp = EventLoop::new()?;
    let was_up = Arc::new(AtomicBool::new(false));
    let up = was_up.clone();
    let handle = lp.handle();
    let client = TcpClient::builder("hub-client", addr)
        .max_attempts(3)
        .retry_backoff(Duration::from_millis(100), Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(3))
        .on_connect_failed(move |failure| {
            log::warn!("cannot connect: {}", failure.error);
            if !failure.will_retry {
                handle.quit();
            }
        })
        .on_connection(move |conn| {
            if conn.is_connected() {
                up.store(true, Ordering::Relaxed);
                on_up(conn);
            } else {
                conn.loop_handle().quit();
            }
        })
        .on_message(on_message)
        .connect(&lp.handle());
    lp.run()?;
    client.stop();
    Ok(was_up.load(Ordering::Relaxed))
}

/// `hub pub`: publishes one message, half-closes, and waits for the hub to close.
fn publish(addr: &str, topic: &str, content: &str) -> Result<ExitCode, Error> {
    let msg = format!("pub {topic}\r\n{content}\r\n");
    let up = run_client(
        addr,
        move |conn| {
            let _ = conn.send(msg.as_bytes());
            let _ = conn.shutdown();
        },
        |_, input| input.consume_all(),
    )?;
    Ok(if up {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `hub sub`: subscribes to `topics` and prints every publication until the hub closes.
fn subscribe(addr: &str, topics: &[&str]) -> Result<ExitCode, Error> {
    let subs: String = topics.iter().map(|t| format!("sub {t}\r\n")).collect();
    let codec = LineCodec::new(MAX_LINE);
    let up = run_client(
        addr,
        move |conn| _ = conn.send(subs.as_bytes()),
        move |ctx, input| loop {
            match parse(&codec, input.peek()) {
                Ok(Some((Command::Pub(topic, content), used))) => {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{topic}: {}", String::from_utf8_lossy(content));
                    let _ = out.flush();
                    input.consume(used);
                }
                Ok(None) => return,
                Ok(Some((other, _))) => {
                    log::warn!("unexpected from the hub: {other:?}");
                    return ctx.force_close();
                }
                Err(_) => {
                    let text = String::from_utf8_lossy(input.peek()).into_owned();
                    log::warn!("the hub says: {}", text.trim_end());
                    return ctx.force_close();
                }
            }
        },
    )?;
    Ok(if up {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
