//! A few routes on duo's HTTP server: `cargo run -p duo-http --example hello [ADDR]`, then
//! `curl http://127.0.0.1:8080/`, `curl http://127.0.0.1:8080/healthz`,
//! `curl --data-binary hi http://127.0.0.1:8080/echo`,
//! `curl 'http://127.0.0.1:8080/primes?below=10000000'`. Ctrl-C stops it.
//!
//! `/primes` is the heavy one: it is answered later ([`HttpServerBuilder::route_deferred`])
//! by a pool of worker threads, so the loop serves the other routes meanwhile; a full
//! pool answers `503` at once, and the work of a client that went away (it reset, or the
//! server stopped after its shutdown grace) is abandoned.
//!
//! [`HttpServerBuilder::route_deferred`]: duo_http::HttpServerBuilder::route_deferred
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duo_http::{HttpServer, Method, Request, Responder, Response, StatusCode};
use duo_net::process::{self, say, STOP_SIGNALS};
use duo_net::EventLoop;
use duo_net::ThreadPool;
use parking_lot::Mutex;

/// The largest `below` `/primes` takes.
const MAX_BELOW: u64 = 100_000_000;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = match parse_args(&args) {
        Ok(addr) => addr,
        Err(problem) => {
            say(format!(
                "hello: {problem}\nusage: hello [ADDR]   (ADDR like 127.0.0.1:8080, the default)"
            ));
            return ExitCode::from(2);
        }
    };
    match serve(addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(format!("hello: {e}"));
            ExitCode::FAILURE
        }
    }
}

fn parse_args(args: &[String]) -> Result<std::net::SocketAddr, String> {
    if let Some(extra) = args.get(1) {
        return Err(format!("unexpected argument {extra:?}"));
    }
    let addr = args.first().map_or("127.0.0.1:8080", String::as_str);
    addr.parse().map_err(|e| format!("ADDR {addr:?}: {e}"))
}

fn serve(addr: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    // Before any thread starts: the stop signals are read from the main loop only.
    process::prepare_server(&STOP_SIGNALS)?;
    let mut main_loop = EventLoop::new()?;
    let hits = Arc::new(AtomicU64::new(0));
    // Two threads for the heavy route, with room for 16 requests waiting.
    let pool = Arc::new(ThreadPool::new("primes", 2, 16)?);
    let workers = pool.clone();
    let counter = hits.clone();
    let server = HttpServer::builder("hello", addr)
        .route(Method::Get, "/", move |req| {
            let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
            Response::text(
                StatusCode::OK,
                format!("hello {}, visitor number {n}\n", req.peer_addr()),
            )
        })
        .route(Method::Get, "/healthz", |_| {
            Response::text(StatusCode::OK, "ok\n")
        })
        .route(Method::Post, "/echo", |req| {
            Response::with_body(StatusCode::OK, "application/octet-stream", req.body())
        })
        .route_deferred(Method::Get, "/primes", move |req, responder| {
            count_primes_later(&workers, req, responder)
        })
        .start(&mut main_loop)?;
    // Ctrl-C: stop accepting, let responses drain, then quit (a second Ctrl-C quits at
    // once).
    process::run_until_stopped(
        &mut main_loop,
        server.into_tcp_server(),
        Duration::from_secs(3),
    )?;
    pool.stop();
    log::info!("served {} greetings", hits.load(Ordering::Relaxed));
    Ok(())
}

/// `GET /primes?below=N`: counts the primes below `N` on the pool and answers through
/// `responder`; a bad query is answered at once (400), and so is a full pool (503). The
/// job gives up when nobody waits for its answer any more
/// ([`Responder::is_connected`]).
fn count_primes_later(pool: &ThreadPool, req: &Request, responder: Responder) {
    let below = req
        .query()
        .and_then(|q| q.strip_prefix("below="))
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n <= MAX_BELOW);
    let Some(below) = below else {
        let why = format!("use /primes?below=N with N at most {MAX_BELOW}\n");
        return responder.respond(Response::text(StatusCode::BAD_REQUEST, why));
    };
    // Shared with the job, so that a job the pool refuses hands the responder back.
    let slot = Arc::new(Mutex::new(Some(responder)));
    let job_slot = slot.clone();
    let submitted = pool.submit(move || {
        if let Some(responder) = job_slot.lock().take() {
            // A client that went away (it reset, the response timeout answered for it,
            // the server's shutdown grace ran out) waits for nothing: its work stops, so
            // that the pool serves the next client and a stopping server exits instead
            // of finishing every queued job for nobody.
            let answer = match count_primes(below, || responder.is_connected()) {
                Some(n) => Response::text(StatusCode::OK, format!("{n} primes below {below}\n")),
                None => Response::text(StatusCode::SERVICE_UNAVAILABLE, "abandoned\n"),
            };
            // To a closed connection this goes nowhere (dropping the responder instead
            // would log an error).
            responder.respond(answer);
        }
    });
    if submitted.is_err() {
        if let Some(responder) = slot.lock().take() {
            responder.respond(Response::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy: try again\n",
            ));
        }
    }
}

/// The number of primes below `n` (a sieve of Eratosthenes), or `None` as soon as
/// `wanted` says the answer is no longer wanted (asked every million steps or so: a
/// cancelled sieve of 10^8 stops within milliseconds, not after seconds).
fn count_primes(n: u64, wanted: impl Fn() -> bool) -> Option<usize> {
    const CHECK_EVERY: u32 = 1 << 20;
    let mut steps = 0u32;
    let mut step = || {
        steps = steps.wrapping_add(1);
        steps % CHECK_EVERY != 0 || wanted()
    };
    if !wanted() {
        return None;
    }
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    let mut composite = vec![false; n];
    let mut count = 0;
    for i in 2..n {
        if !step() {
            return None;
        }
        if !composite[i] {
            count += 1;
            let mut j = i.saturating_mul(i);
            while j < n {
                if !step() {
                    return None;
                }
                composite[j] = true;
                j += i;
            }
        }
    }
    Some(count)
}
