//! A few routes on duo's HTTP server: `cargo run -p duo-http --example hello [ADDR]`, then
//! `curl http://127.0.0.1:8080/`, `curl http://127.0.0.1:8080/healthz`,
//! `curl --data-binary hi http://127.0.0.1:8080/echo`. Ctrl-C stops it.
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duo_http::{HttpServer, Method, Response, StatusCode};
use duo_net::process::{self, STOP_SIGNALS};
use duo_net::EventLoop;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let arg = std::env::args().nth(1);
    let addr = match arg.as_deref().unwrap_or("127.0.0.1:8080").parse() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("usage: hello [ADDR]   (ADDR like 127.0.0.1:8080): {e}");
            return ExitCode::from(2);
        }
    };
    match serve(addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hello: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(addr: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    // Before any thread starts: the stop signals are read from the main loop only.
    process::prepare_server(&STOP_SIGNALS)?;
    let mut main_loop = EventLoop::new()?;
    let hits = Arc::new(AtomicU64::new(0));
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
        .start(&mut main_loop)?;
    // Ctrl-C: stop accepting, let responses drain, then quit (a second Ctrl-C quits at
    // once).
    process::run_until_stopped(
        &mut main_loop,
        server.into_tcp_server(),
        Duration::from_secs(3),
    )?;
    log::info!("served {} greetings", hits.load(Ordering::Relaxed));
    Ok(())
}
