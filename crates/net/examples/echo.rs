//! An echo server in a few lines: `cargo run -p duo-net --example echo [ADDR] [IO_THREADS]`,
//! then `nc 127.0.0.1 7000`. Ctrl-C stops it.
use std::time::Duration;

use duo_net::TcpServer;
use duo_reactor::{EventLoop, Signal};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7000".into())
        .parse()?;
    let io_threads = args.next().map_or(Ok(2), |n| n.parse())?;

    let mut main_loop = EventLoop::new()?;
    let server = TcpServer::builder("echo", addr)
        .io_threads(io_threads)
        .on_message(|ctx, input| {
            ctx.send(input.peek());
            input.consume_all();
        })
        .start(&mut main_loop)?;
    println!("listening on {}", server.local_addr());
    // Ctrl-C: stop accepting, let pending output drain, then quit the loop.
    let handle = server.clone_handle();
    main_loop.watch_signals(&[Signal::INT, Signal::TERM], move |_, _| {
        handle.shutdown(Duration::from_secs(3), |lp| lp.quit())
    })?;
    main_loop.run()?;
    server.stop(&mut main_loop);
    Ok(())
}
