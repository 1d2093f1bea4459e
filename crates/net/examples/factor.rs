//! Heavy work off the I/O threads, muduo's sudoku server in small: `cargo run -p duo-net
//! --example factor [ADDR] [WORKERS]`, then `nc 127.0.0.1 7001` and type `1:600851475143`.
//!
//! Each request is a line `ID:N`; the answer is `ID:p1*p2*...` (the prime factors of `N`,
//! a `u64`), or `ID:error: why`. Factoring can take long, so the I/O loop only parses the
//! line and hands `N` to a pool of worker threads (`duo_workers::ThreadPool`); the worker
//! sends the answer itself ([`TcpConnection::send`] is callable from any thread). Answers
//! come as workers finish, not in request order: the `ID` says which request each answers.
//!
//! A full pool answers `ID:busy` at once instead of queueing without bound, and a line
//! longer than 64 bytes closes the connection: the loop never holds more than that per
//! client.
//!
//! # Ending a connection with answers still being computed
//!
//! A connection counts the answers it has under way on the pool ([`Work`], its context).
//! Three things end a connection while some may be under way, and each of them waits for
//! those answers, then closes once they are written:
//!
//! - the client half-closes after its last request (`printf '1:97\n' | nc -N HOST PORT`):
//!   [`on_peer_half_close`](duo_net::ServerBuilder::on_peer_half_close) is set, so the
//!   library leaves the connection open for the answers instead of closing it at once;
//! - a line too long: the error is answered, the rest of the input ignored;
//! - a graceful stop (Ctrl-C, `SIGTERM`): `on_shutdown` does the same for every connection.
//!
//! Work for a client that has gone is abandoned: a job whose connection is closed (the
//! client reset it, or the stop's grace period ran out) does not start, and one under way
//! gives up within a few milliseconds. So the pool serves the clients that are still
//! there, and the process exits soon after the grace period however long the queued
//! factorisations would have taken.
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duo_net::codec::LineCodec;
use duo_net::process::{self, say, STOP_SIGNALS};
use duo_net::{ConnCtx, EventLoop, SubmitError, TcpConnection, TcpServer, ThreadPool};

/// Longest request line.
const MAX_LINE: usize = 64;

/// Requests the pool may hold waiting for a worker, from all clients together.
const QUEUE: usize = 1024;

/// How long a graceful stop lets the answers under way go out.
const GRACE: Duration = Duration::from_secs(3);

/// The most worker threads: beyond a host's cores a worker only costs memory, and a
/// mistyped 100000000 started threads until the process's memory maps ran out, when the
/// standard library aborted the process.
const MAX_WORKERS: usize = 1024;

const USAGE: &str =
    "usage: factor [ADDR] [WORKERS]   (default 127.0.0.1:7001 2; WORKERS 1 to 1024)";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, workers) = match parse_args(&args) {
        Ok(parsed) => parsed,
        Err(problem) => {
            say(format!("factor: {problem}\n{USAGE}"));
            return ExitCode::from(2);
        }
    };
    match run(addr, workers) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(format!("factor: {e}"));
            ExitCode::FAILURE
        }
    }
}

fn parse_args(args: &[String]) -> Result<(duo_net::Endpoint, usize), String> {
    if args.len() > 2 {
        return Err(format!("unexpected argument {:?}", args[2]));
    }
    let addr = args.first().map_or("127.0.0.1:7001", String::as_str);
    let addr = addr
        .parse::<duo_net::Endpoint>()
        .map_err(|e| format!("ADDR {addr:?}: {e}"))?;
    let workers = match args.get(1) {
        None => 2,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if (1..=MAX_WORKERS).contains(&n) => n,
            _ => {
                return Err(format!(
                    "WORKERS {n:?}: expected a whole number from 1 to {MAX_WORKERS}"
                ))
            }
        },
    };
    Ok((addr, workers))
}

fn run(addr: duo_net::Endpoint, workers: usize) -> Result<(), Box<dyn std::error::Error>> {
    // Before any thread starts: the stop signals are read from the main loop only.
    process::prepare_server(&STOP_SIGNALS)?;
    let pool = Arc::new(ThreadPool::new("factor", workers, QUEUE)?);
    let mut main_loop = EventLoop::new()?;
    let codec = LineCodec::new(MAX_LINE);
    let jobs = pool.clone();
    let server = TcpServer::builder("factor", addr)
        .io_threads(1)
        .on_connection(|conn| {
            if conn.is_connected() {
                conn.set_context(Arc::new(Work::default()));
            }
        })
        .on_message(move |ctx, input| {
            let Some(work) = Work::of(ctx.connection()) else {
                return;
            };
            loop {
                if work.is_finishing() {
                    // Closing once the answers under way are out: the rest is ignored.
                    input.consume_all();
                    return;
                }
                let line = match codec.decode(input.peek()) {
                    Ok(Some(line)) => line,
                    Ok(None) => return,
                    Err(e) => {
                        ctx.send(format!("error: {e}\n").as_bytes());
                        input.consume_all();
                        work.finish(ctx);
                        return;
                    }
                };
                let request = String::from_utf8_lossy(line.payload).into_owned();
                input.consume(line.consumed);
                submit(&jobs, ctx, &work, &request);
            }
        })
        // The client sent its last request: answer what is under way, then close.
        .on_peer_half_close(|ctx| {
            if let Some(work) = Work::of(ctx.connection()) {
                work.finish(ctx);
            }
        })
        // A graceful stop: likewise (instead of the default half-close at once, which
        // would cut off the answers under way).
        .on_shutdown(|ctx| {
            if let Some(work) = Work::of(ctx.connection()) {
                work.finish(ctx);
            }
        })
        .start(&mut main_loop)?;
    process::run_until_stopped(&mut main_loop, server, GRACE)?;
    // Every connection is closed now: the queued factorisations see it and return at once.
    pool.stop();
    Ok(())
}

/// One connection's answers under way on the pool, and whether it is finishing (closing
/// once they are written). Kept in the connection's context; the jobs hold it too.
#[derive(Default)]
struct Work {
    /// Twice the answers under way, plus [`FINISHING`](Work::FINISHING).
    state: AtomicUsize,
}

impl Work {
    const FINISHING: usize = 1;
    const ONE: usize = 2;

    /// The connection's `Work` (set when it came up).
    fn of(conn: &TcpConnection) -> Option<Arc<Work>> {
        conn.with_context(|w: &mut Arc<Work>| w.clone()).ok()
    }

    fn is_finishing(&self) -> bool {
        self.state.load(Ordering::Acquire) & Work::FINISHING != 0
    }

    /// An answer is under way.
    fn start(&self) {
        self.state.fetch_add(Work::ONE, Ordering::AcqRel);
    }

    /// An answer was sent (or abandoned): the last one of a finishing connection closes it,
    /// after everything sent before.
    fn done(&self, conn: &TcpConnection) {
        let before = self.state.fetch_sub(Work::ONE, Ordering::AcqRel);
        if before == Work::ONE | Work::FINISHING {
            let _ = conn.close_after_flush();
        }
    }

    /// Reads no more requests and closes once the answers under way are written (at once
    /// if there are none).
    ///
    /// Through the handle, not `ctx`: an answer a worker has sent may still be on its way
    /// to the loop (queued, not yet in the output buffer), and the handle's close is
    /// queued behind it, where `ctx.close_after_flush()` would close before it arrives.
    fn finish(&self, ctx: &mut ConnCtx<'_>) {
        if self.state.fetch_or(Work::FINISHING, Ordering::AcqRel) == 0 {
            let _ = ctx.connection().close_after_flush();
        }
    }
}

/// Parses `ID:N` and queues its factorisation; answers a bad request or a full pool at
/// once.
fn submit(pool: &ThreadPool, ctx: &mut ConnCtx<'_>, work: &Arc<Work>, request: &str) {
    let Some((id, n)) = request.split_once(':') else {
        ctx.send(format!("{request}:error: expected ID:N\n").as_bytes());
        return;
    };
    let id = id.to_owned();
    let n: u64 = match n.trim().parse() {
        Ok(n) if n >= 2 => n,
        _ => {
            let why = format!(
                "{id}:error: N must be a whole number from 2 to {}\n",
                u64::MAX
            );
            ctx.send(why.as_bytes());
            return;
        }
    };
    // The handle, unlike `ctx`, can go to another thread.
    let (to, answer_id, job_work) = (ctx.connection().clone(), id.clone(), work.clone());
    let job = move || {
        // A client that has gone (reset, or cut off by the stop) gets no more work done.
        if let Some(factors) = factor(n, || to.is_closed()) {
            let factors: Vec<String> = factors.iter().map(u64::to_string).collect();
            // The client may have left meanwhile: then nobody waits for the answer.
            let _ = to.send(format!("{answer_id}:{}\n", factors.join("*")));
        }
        job_work.done(&to);
    };
    work.start();
    let refused = match pool.submit(job) {
        Ok(()) => return,
        Err(SubmitError::Full(_)) => "busy",
        Err(SubmitError::Stopped(_)) => "error: stopping",
    };
    work.done(ctx.connection());
    ctx.send(format!("{id}:{refused}\n").as_bytes());
}

/// The prime factors of `n` (at least 2), smallest first, by trial division: about two
/// billion steps for the largest `u64` primes, seconds of a worker's time. `None` if
/// `cancelled` said so: it is asked before the first step and every 2^19 steps (a few
/// milliseconds).
fn factor(mut n: u64, cancelled: impl Fn() -> bool) -> Option<Vec<u64>> {
    if cancelled() {
        return None;
    }
    let mut factors = Vec::new();
    let mut d = 2u64;
    while d.saturating_mul(d) <= n {
        if d % (1 << 20) == 1 && cancelled() {
            return None;
        }
        while n % d == 0 {
            factors.push(d);
            n /= d;
        }
        d += if d == 2 { 1 } else { 2 };
    }
    if n > 1 {
        factors.push(n);
    }
    Some(factors)
}
