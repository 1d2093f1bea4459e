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
//! client. Ctrl-C stops accepting, lets the answers under way go out, then quits.
use std::time::Duration;

use duo_net::codec::LineCodec;
use duo_net::process::{self, STOP_SIGNALS};
use duo_net::{ConnCtx, EventLoop, SubmitError, TcpConnection, TcpServer, ThreadPool};

/// Longest request line.
const MAX_LINE: usize = 64;

/// Requests the pool may hold waiting for a worker, from all clients together.
const QUEUE: usize = 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7001".into())
        .parse::<duo_net::Endpoint>()?;
    let workers = args.next().map_or(Ok(2), |n| n.parse())?;

    // Before any thread starts: the stop signals are read from the main loop only.
    process::prepare_server(&STOP_SIGNALS)?;
    let pool = std::sync::Arc::new(ThreadPool::new("factor", workers, QUEUE)?);
    let mut main_loop = EventLoop::new()?;
    let codec = LineCodec::new(MAX_LINE);
    let jobs = pool.clone();
    let server = TcpServer::builder("factor", addr)
        .io_threads(1)
        .on_message(move |ctx, input| loop {
            let line = match codec.decode(input.peek()) {
                Ok(Some(line)) => line,
                Ok(None) => return,
                Err(e) => {
                    ctx.send(format!("error: {e}\n").as_bytes());
                    ctx.close_after_flush();
                    input.consume_all();
                    return;
                }
            };
            let request = String::from_utf8_lossy(line.payload).into_owned();
            input.consume(line.consumed);
            submit(&jobs, ctx, &request);
        })
        .start(&mut main_loop)?;
    process::run_until_stopped(&mut main_loop, server, Duration::from_secs(3))?;
    // Every factorisation already queued runs; its answer goes nowhere if its client left.
    pool.stop();
    Ok(())
}

/// Parses `ID:N` and queues its factorisation; answers a bad request or a full pool at
/// once.
fn submit(pool: &ThreadPool, ctx: &mut ConnCtx<'_>, request: &str) {
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
    let (to, answer_id): (TcpConnection, String) = (ctx.connection().clone(), id.clone());
    let job = move || {
        let factors: Vec<String> = factor(n).iter().map(u64::to_string).collect();
        // The client may have left meanwhile: then nobody waits for the answer.
        let _ = to.send(format!("{answer_id}:{}\n", factors.join("*")));
    };
    let refused = match pool.submit(job) {
        Ok(()) => return,
        Err(SubmitError::Full(_)) => "busy",
        Err(SubmitError::Stopped(_)) => "error: stopping",
    };
    ctx.send(format!("{id}:{refused}\n").as_bytes());
}

/// The prime factors of `n` (at least 2), smallest first, by trial division: about two
/// billion steps for the largest `u64` primes, seconds of a worker's time.
fn factor(mut n: u64) -> Vec<u64> {
    let mut factors = Vec::new();
    let mut d = 2u64;
    while d.saturating_mul(d) <= n {
        while n % d == 0 {
            factors.push(d);
            n /= d;
        }
        d += if d == 2 { 1 } else { 2 };
    }
    if n > 1 {
        factors.push(n);
    }
    factors
}
