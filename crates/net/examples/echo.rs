//! An echo server in a few lines: `cargo run -p duo-net --example echo [ADDR] [IO_THREADS]`,
//! then `nc 127.0.0.1 7000`. Ctrl-C stops it.
use std::time::Duration;

use duo_net::process::{self, STOP_SIGNALS};
use duo_net::{EventLoop, TcpServer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7000".into())
        .parse::<duo_net::Endpoint>()?;
    let io_threads = args.next().map_or(Ok(2), |n| n.parse())?;

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
