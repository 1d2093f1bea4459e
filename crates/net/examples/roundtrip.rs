//! Round-trip time and clock offset over UDP, muduo's `examples/roundtrip` (its UDP
//! version): `cargo run -p duo-net --example roundtrip -- server [ADDR]` on one host, then
//! `cargo run -p duo-net --example roundtrip -- client ADDR` on another.
//!
//! Every message is 16 bytes, two big-endian `i64`s, microseconds since the Unix epoch:
//! the client's send time, then the server's receive time. The client sends one every
//! INTERVAL ms with the second field 0; the server answers each at once with the same 16
//! bytes, its own receive time in the second field. From the time the answer comes back
//! the client prints
//!
//! ```text
//! round trip 87 us, clock offset -3 us
//! ```
//!
//! where the offset is the server's clock minus the client's at the middle of the round
//! trip (muduo's "clock error"): within half a round trip of the true offset, exact when
//! the datagram takes as long both ways.
//!
//! The server answers from `on_datagram` (`UdpCtx::send_to`): the answers of one batch of
//! datagrams leave together, one `sendmmsg`. A datagram of another size is ignored: not
//! answered, counted, logged at most 10 times per 10 s. At `SIGTERM` or Ctrl-C it stops,
//! sending what it has queued, and prints what it did on stderr.
//!
//! The client sends from a timer on its loop through a socket connected to the server,
//! so only the server's datagrams reach it. It gives up, exit status 1, when GIVE_UP
//! datagrams in a row went unanswered (a lost datagram is forgiven by any answer after
//! it); it stops with status 0 after COUNT answers (0: never) or at `SIGTERM`/Ctrl-C.
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use duo_net::process::{self, say, STOP_SIGNALS};
use duo_net::{log_limited, report_suppressed, EventLoop, LoopHandle, UdpSocket};
use duo_reactor::log_limit::DEFAULT_INTERVAL;

/// Bytes in a message: two `i64`s.
const MESSAGE: usize = 16;

/// The longest round trip the client believes, in microseconds: an answer that claims
/// more (or a send time in the future) answers no datagram of ours.
const MAX_RTT: i64 = 3_600_000_000;

const USAGE: &str = "usage: roundtrip server [ADDR]   (default 127.0.0.1:7002)\n       \
     roundtrip client ADDR [INTERVAL_MS] [COUNT] [GIVE_UP]   (default 200 0 5)";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("server") => parse_server(&args[1..]).map(serve),
        Some("client") => parse_client(&args[1..]).map(run_client),
        _ => Err("expected `server` or `client`".to_owned()),
    };
    match result {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            say(format!("roundtrip: {e}"));
            ExitCode::FAILURE
        }
        Err(problem) => {
            say(format!("roundtrip: {problem}\n{USAGE}"));
            ExitCode::from(2)
        }
    }
}

type Outcome = Result<ExitCode, Box<dyn std::error::Error>>;

/// The client's settings.
struct ClientArgs {
    server: SocketAddr,
    interval: Duration,
    /// Answers to stop after (0: never).
    count: u64,
    /// Datagrams in a row without an answer to give up after.
    give_up: u64,
}

fn parse_server(args: &[String]) -> Result<SocketAddr, String> {
    if args.len() > 1 {
        return Err(format!("unexpected argument {:?}", args[1]));
    }
    let addr = args.first().map_or("127.0.0.1:7002", String::as_str);
    addr.parse().map_err(|e| format!("ADDR {addr:?}: {e}"))
}

fn parse_client(args: &[String]) -> Result<ClientArgs, String> {
    if args.is_empty() || args.len() > 4 {
        return Err("expected ADDR [INTERVAL_MS] [COUNT] [GIVE_UP]".to_owned());
    }
    let number = |i: usize, name: &str, default: u64, min: u64| match args.get(i) {
        None => Ok(default),
        Some(s) => match s.parse::<u64>() {
            Ok(n) if (min..=1_000_000).contains(&n) => Ok(n),
            _ => Err(format!("{name} {s:?}: expected {min} to 1000000")),
        },
    };
    Ok(ClientArgs {
        server: args[0]
            .parse()
            .map_err(|e| format!("ADDR {:?}: {e}", args[0]))?,
        interval: Duration::from_millis(number(1, "INTERVAL_MS", 200, 1)?),
        count: number(2, "COUNT", 0, 0)?,
        give_up: number(3, "GIVE_UP", 5, 1)?,
    })
}

/// Microseconds since the Unix epoch.
fn now_micros() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH);
    since.map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn encode(sent: i64, received: i64) -> [u8; MESSAGE] {
    let mut message = [0u8; MESSAGE];
    message[..8].copy_from_slice(&sent.to_be_bytes());
    message[8..].copy_from_slice(&received.to_be_bytes());
    message
}

/// The two times of a 16-byte message; `None` for any other size.
fn decode(message: &[u8]) -> Option<(i64, i64)> {
    let message: &[u8; MESSAGE] = message.try_into().ok()?;
    let (sent, received) = message.split_at(8);
    Some((
        i64::from_be_bytes(sent.try_into().ok()?),
        i64::from_be_bytes(received.try_into().ok()?),
    ))
}

/// Stops `socket` and the loop once the socket's queued datagrams are sent: the loop runs
/// every function queued before `quit` first, and the stop queued one.
fn stop(socket: &UdpSocket, lp: &LoopHandle) {
    socket.stop();
    lp.quit();
}

fn serve(addr: SocketAddr) -> Outcome {
    // Before any thread starts: the stop signals are read from the main loop only.
    process::prepare_server(&STOP_SIGNALS)?;
    process::install_panic_hook();
    let mut main_loop = EventLoop::new()?;
    let ignored = Arc::new(AtomicU64::new(0));
    let counted = ignored.clone();
    let socket = UdpSocket::builder("roundtrip", addr)
        .on_datagram(move |ctx, message, from| {
            let received = now_micros();
            let Some((sent, _)) = decode(message) else {
                counted.fetch_add(1, Ordering::Relaxed);
                log_limited!(
                    log::Level::Warn,
                    "{from}: ignored a datagram of {} bytes (expected {MESSAGE})",
                    message.len()
                );
                return;
            };
            // A full send queue is counted by the socket (`dropped`); the client's next
            // datagram asks again.
            let _ = ctx.send_to(&encode(sent, received), from);
        })
        .start(&main_loop.handle())?;
    let (on_signal, lp) = (socket.clone(), main_loop.handle());
    main_loop.watch_signals(&STOP_SIGNALS, move |_, signal| {
        log::info!("{signal}: stopping");
        stop(&on_signal, &lp);
    })?;
    // The count of suppressed log lines, even when no later line carries it.
    main_loop.run_every(DEFAULT_INTERVAL, |_| {
        report_suppressed();
    });
    process::announce_listening(socket.local_addr())?;
    main_loop.run()?;
    let stats = socket.stats();
    report_suppressed();
    // Datagrams over the receive slot (2 KiB) are cut, counted as truncated and never
    // delivered: they are of the wrong size too.
    say(format!(
        "roundtrip: answered {}, ignored {} of the wrong size, {} answers not sent",
        stats.datagrams_out,
        ignored.load(Ordering::Relaxed) + stats.truncated,
        stats.dropped + stats.send_errors,
    ));
    Ok(ExitCode::SUCCESS)
}

/// What the client's timer and its socket's callback share (both on the main loop).
struct Progress {
    answers: AtomicU64,
    /// Datagrams sent since the last answer came.
    unanswered: AtomicU64,
    gave_up: AtomicBool,
}

fn run_client(args: ClientArgs) -> Outcome {
    process::prepare_server(&STOP_SIGNALS)?;
    process::install_panic_hook();
    let mut main_loop = EventLoop::new()?;
    let progress = Arc::new(Progress {
        answers: AtomicU64::new(0),
        unanswered: AtomicU64::new(0),
        gave_up: AtomicBool::new(false),
    });
    let local: SocketAddr = if args.server.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let (seen, lp, count) = (progress.clone(), main_loop.handle(), args.count);
    let socket = UdpSocket::builder("roundtrip-client", local)
        .connect(args.server)
        .on_datagram(move |ctx, message, _| {
            let back = now_micros();
            let Some((send, their)) = decode(message) else {
                log_limited!(log::Level::Warn, "an answer of {} bytes", message.len());
                return;
            };
            // The first field is one of our send times, or the answer is not to us (and
            // arithmetic on it could overflow).
            let rtt = back
                .checked_sub(send)
                .filter(|rtt| (0..=MAX_RTT).contains(rtt));
            let Some(rtt) = rtt else {
                log_limited!(log::Level::Warn, "an answer to no datagram of ours");
                return;
            };
            let offset = their.saturating_sub(send + rtt / 2);
            // Not `println!`, which panics when stdout's reader is gone.
            let line = format!("round trip {rtt} us, clock offset {offset} us\n");
            let _ = std::io::stdout().write_all(line.as_bytes());
            seen.unanswered.store(0, Ordering::Relaxed);
            if seen.answers.fetch_add(1, Ordering::Relaxed) + 1 == count {
                stop(&ctx.socket(), &lp);
            }
        })
        .start(&main_loop.handle())?;
    let (sender, lp) = (socket.clone(), main_loop.handle());
    let state = progress.clone();
    let give_up = args.give_up;
    main_loop.run_every(args.interval, move |_| {
        if state.unanswered.load(Ordering::Relaxed) >= give_up {
            say(format!(
                "roundtrip: no answer to {give_up} datagrams in a row; giving up"
            ));
            state.gave_up.store(true, Ordering::Relaxed);
            stop(&sender, &lp);
            return;
        }
        if sender.send(encode(now_micros(), 0)).is_ok() {
            state.unanswered.fetch_add(1, Ordering::Relaxed);
        }
    });
    let (on_signal, lp) = (socket.clone(), main_loop.handle());
    main_loop.watch_signals(&STOP_SIGNALS, move |_, signal| {
        log::info!("{signal}: stopping");
        stop(&on_signal, &lp);
    })?;
    log::info!("sending to {} every {:?}", args.server, args.interval);
    main_loop.run()?;
    report_suppressed();
    let stats = socket.stats();
    say(format!(
        "roundtrip: sent {}, answered {}, refused {} (port unreachable)",
        stats.datagrams_out,
        progress.answers.load(Ordering::Relaxed),
        stats.refused
    ));
    Ok(if progress.gave_up.load(Ordering::Relaxed) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
