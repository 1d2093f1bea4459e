//! `udp_echo_peer`: the UDP echo baselines of `cargo xtask bench` (scenario `udp-rr-*`).
//!
//! - `--runtime tokio` (default): a current-thread tokio runtime with one task that
//!   `recv_from`s a datagram and `send_to`s it back, one at a time: what most Rust users
//!   would write, and the bar duo's UDP echo has to clear.
//! - `--runtime blocking`: one thread in a blocking `recv_from` / `send_to` loop on std's
//!   `UdpSocket`: two system calls per datagram and nothing else, the floor for an echo
//!   that handles datagrams one at a time (no `recvmmsg`).
//!
//! Datagrams up to 64 KiB are echoed whole. It prints `listening on HOST:PORT` once bound
//! and stops on SIGTERM/SIGINT's default action.
//!
//! ```text
//! udp_echo_peer [--listen ADDR] [--runtime tokio|blocking]   (default 127.0.0.1:0)
//! ```

#![forbid(unsafe_code)]

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

/// The UDP echo peers of `cargo xtask bench`.
#[derive(Debug, Parser)]
#[command(name = "udp_echo_peer")]
struct Cli {
    /// Address to bind.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Which echo.
    #[arg(long, value_enum, default_value_t = Runtime::Tokio)]
    runtime: Runtime,
}

/// Which echo.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Runtime {
    /// tokio, one task on a current-thread runtime.
    Tokio,
    /// std, one thread blocked in `recv_from`.
    Blocking,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ran = match cli.runtime {
        Runtime::Tokio => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .and_then(|rt| rt.block_on(tokio_echo(cli.listen))),
        Runtime::Blocking => blocking_echo(cli.listen),
    };
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udp_echo_peer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn announce(addr: SocketAddr) -> io::Result<()> {
    println!("listening on {addr}");
    io::stdout().flush()
}

async fn tokio_echo(addr: SocketAddr) -> io::Result<()> {
    let socket = tokio::net::UdpSocket::bind(addr).await?;
    announce(socket.local_addr()?)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A peer's ICMP error (ECONNREFUSED) and the like: not the echo's problem.
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let _ = socket.send_to(&buf[..n], from).await;
    }
}

fn blocking_echo(addr: SocketAddr) -> io::Result<()> {
    let socket = std::net::UdpSocket::bind(addr)?;
    announce(socket.local_addr()?)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let _ = socket.send_to(&buf[..n], from);
    }
}
