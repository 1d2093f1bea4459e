//! An echo server in a few lines: `cargo run -p duo-net --example echo [ADDR] [IO_THREADS]`,
//! then `nc 127.0.0.1 7000`. Ctrl-C stops it. (`IO_THREADS` 0 serves on the main thread;
//! at most 4096.)
use std::process::ExitCode;
use std::time::Duration;

use duo_net::process::{self, say, STOP_SIGNALS};
use duo_net::{EventLoop, TcpServer};

/// The most I/O threads, as the echo app's `--io-threads`: beyond a host's cores a thread
/// only costs memory and descriptors, and a mistyped 100000000 started threads until those
/// ran out.
const MAX_IO_THREADS: usize = 4096;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, io_threads) = match parse_args(&args) {
        Ok(parsed) => parsed,
        Err(problem) => {
            say(format!(
                "echo: {problem}\nusage: echo [ADDR] [IO_THREADS]   (default 127.0.0.1:7000 2; \
                 IO_THREADS 0 to {MAX_IO_THREADS})"
            ));
            return ExitCode::from(2);
        }
    };
    match run(addr, io_threads) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(format!("echo: {e}"));
            ExitCode::FAILURE
        }
    }
}

fn parse_args(args: &[String]) -> Result<(duo_net::Endpoint, usize), String> {
    if let Some(extra) = args.get(2) {
        return Err(format!("unexpected argument {extra:?}"));
    }
    let addr = args.first().map_or("127.0.0.1:7000", String::as_str);
    let addr = addr.parse().map_err(|e| format!("ADDR {addr:?}: {e}"))?;
    let io_threads = match args.get(1) {
        None => 2,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if n <= MAX_IO_THREADS => n,
            _ => {
                return Err(format!(
                    "IO_THREADS {n:?}: expected a whole number from 0 to {MAX_IO_THREADS}"
                ))
            }
        },
    };
    Ok((addr, io_threads))
}

fn run(addr: duo_net::Endpoint, io_threads: usize) -> Result<(), Box<dyn std::error::Error>> {
    // Before any thread starts: the stop signals are read from the main loop only.
    process::prepare_server(&STOP_SIGNALS)?;
    let mut main_loop = EventLoop::new()?;
    let server = TcpServer::builder("echo", addr)
        .io_threads(io_threads)
        .on_message(|ctx, input| {
            ctx.send(input.peek());
            input.consume_all();
        })
        .start(&mut main_loop)?;
    // Ctrl-C: stop accepting, let pending output drain, then quit the loop (a second
    // Ctrl-C quits at once).
    process::run_until_stopped(&mut main_loop, server, Duration::from_secs(3))?;
    Ok(())
}
