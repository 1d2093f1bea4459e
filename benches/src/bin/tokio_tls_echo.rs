//! `tokio_tls_echo`: the TLS echo server most Rust users would write, tokio with
//! `tokio-rustls`, the peer baseline of `cargo xtask bench`'s TLS scenarios.
//!
//! As `tokio_echo` (one task per connection, a 16 KiB buffer, `read` then `write_all`),
//! behind a `tokio_rustls::TlsAcceptor` with the same rustls configuration duo's echo
//! server builds from the same PEM files (`duo_net::tls::server_config_from_pem`: the
//! `ring` provider, TLS 1.3 and 1.2), so both negotiate the same protocol and cipher
//! suite. At the client's end of stream it sends `close_notify` and closes.
//!
//! ```text
//! tokio_tls_echo --tls-cert PEM --tls-key PEM [--listen ADDR] [--threads N]
//! ```
//! It prints `listening on HOST:PORT` once the socket listens.

#![forbid(unsafe_code)]

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Bytes read per `read`, per connection.
const BUF_SIZE: usize = 16 << 10;
/// How long accepting pauses when the process is out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// A handshake not done by then is dropped (duo's default handshake timeout).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The tokio-rustls peer echo server of `cargo xtask bench`.
#[derive(Debug, Parser)]
#[command(name = "tokio_tls_echo")]
struct Cli {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Tokio worker threads [default: number of cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Certificate chain (PEM).
    #[arg(long, value_name = "PEM")]
    tls_cert: PathBuf,
    /// Private key (PEM).
    #[arg(long, value_name = "PEM")]
    tls_key: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match duo_net::tls::server_config_from_pem(&cli.tls_cert, &cli.tls_key) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tokio_tls_echo: {e}");
            return ExitCode::from(2);
        }
    };
    let threads = cli.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        usize::from,
    );
    let _ = duo_sys::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build();
    let acceptor = TlsAcceptor::from(config);
    match runtime.and_then(|rt| rt.block_on(serve(cli.listen, acceptor))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio_tls_echo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(addr: SocketAddr, acceptor: TlsAcceptor) -> io::Result<()> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    println!("listening on {}", listener.local_addr()?);
    io::stdout().flush()?;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(echo(acceptor.clone(), stream));
            }
            Err(e) if matches!(e.raw_os_error(), Some(24 | 23 | 12 | 105)) => {
                eprintln!("tokio_tls_echo: accept: {e}; pausing accept for {ACCEPT_PAUSE:?}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
            Err(_) => {}
        }
    }
}

/// Handshakes, then echoes until end of stream or an error.
async fn echo(acceptor: TlsAcceptor, stream: TcpStream) {
    let Ok(Ok(mut tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
    else {
        return;
    };
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = match tls.read(&mut buf).await {
            Ok(0) => {
                let _ = tls.shutdown().await;
                return;
            }
            Err(_) => return,
            Ok(n) => n,
        };
        if tls.write_all(&buf[..n]).await.is_err() || tls.flush().await.is_err() {
            return;
        }
    }
}
