//! `tokio_echo`: the idiomatic Rust echo server, the tokio peer baseline of
//! `cargo xtask bench`.
//!
//! A multi-thread tokio runtime with `--threads N` workers (default: one per core), one
//! task per connection, each with its own 16 KiB buffer: `read`, then `write_all` of what
//! was read, until end of file or an error. This is what most Rust users would write, so it
//! is the bar duo has to clear to be worth its callbacks.
//!
//! The listening socket matches duo's (`SO_REUSEADDR`, backlog 4096) and, as in duo's echo
//! server, `TCP_NODELAY` is left off. When `accept` fails for lack of descriptors or memory the
//! server logs it and pauses accepting for 100 ms instead of spinning. It stops on
//! SIGTERM/SIGINT's default action.
//!
//! ```text
//! tokio_echo [--listen ADDR] [--threads N]     (defaults 127.0.0.1:0, number of cores)
//! ```
//! It prints `listening on HOST:PORT` once the socket listens. `--listen unix:/path` or
//! `unix:@name` serves a Unix-domain socket instead (tokio's `UnixListener`; a path must
//! not exist yet), announced as `listening on unix:...`. The address is read as duo's
//! servers read theirs ([`duo_net::Endpoint`]: `\xNN` is the byte `NN`) and bound as they
//! bind it ([`duo_sys::unix_addr`]): a path may fill all 108 bytes of `sun_path`, which
//! `std`'s `UnixListener::bind` refuses.

#![forbid(unsafe_code)]

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpSocket;

/// Bytes read per `read`, per connection.
const BUF_SIZE: usize = 16 << 10;
/// How long accepting pauses when the process is out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The tokio peer echo server of `cargo xtask bench`.
#[derive(Debug, Parser)]
#[command(name = "tokio_echo")]
struct Cli {
    /// Address to listen on: HOST:PORT, unix:/path or unix:@name.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0", value_parser = parse_listen)]
    listen: Listen,
    /// Tokio worker threads [default: number of cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// `TCP_DEFER_ACCEPT` on the TCP listener: accept a connection only once its first
    /// bytes arrived, or after about SECS seconds (0: off); like `echo --defer-accept`.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    defer_accept: u32,
}

/// Where to listen: TCP, or a Unix-domain `unix:/path` / `unix:@name`.
#[derive(Debug, Clone)]
enum Listen {
    Inet(SocketAddr),
    /// The address as given (to announce it) and its `sun_path` bytes (a leading NUL for
    /// an abstract name).
    Unix {
        shown: String,
        sun_path: Vec<u8>,
    },
}

/// A usage error (exit 2) for anything but `HOST:PORT` with an IP, `unix:/path` or
/// `unix:@name`.
fn parse_listen(s: &str) -> Result<Listen, String> {
    match s.strip_prefix("unix:") {
        Some("" | "@") => Err(format!("`{s}`: the Unix-domain address is empty")),
        Some(_) => {
            let endpoint: duo_net::Endpoint = s.parse().map_err(|e| format!("{e}"))?;
            let sun_path = match &endpoint {
                duo_net::Endpoint::Unix(path) => path.as_os_str().as_bytes().to_vec(),
                // A leading NUL byte makes it abstract (Linux's convention).
                duo_net::Endpoint::Abstract(name) if !name.is_empty() => {
                    [&[0u8][..], name].concat()
                }
                _ => return Err(format!("`{s}` is not a Unix-domain address to listen on")),
            };
            Ok(Listen::Unix {
                shown: s.to_owned(),
                sun_path,
            })
        }
        None => s
            .parse()
            .map(Listen::Inet)
            .map_err(|e| format!("`{s}`: {e}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = cli.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        usize::from,
    );
    let _ = duo_sys::raise_fd_limit(); // the idle scenario holds 10 000 connections
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build();
    let served = runtime.and_then(|rt| match &cli.listen {
        Listen::Inet(addr) => rt.block_on(serve(*addr, cli.defer_accept)),
        Listen::Unix { shown, sun_path } => rt.block_on(serve_unix(shown, sun_path)),
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio_echo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(addr: SocketAddr, defer_accept: u32) -> io::Result<()> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    if defer_accept > 0 {
        duo_sys::set_tcp_defer_accept(std::os::fd::AsFd::as_fd(&listener), defer_accept)?;
    }
    println!("listening on {}", listener.local_addr()?);
    io::stdout().flush()?;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(echo(stream));
            }
            Err(e) if out_of_resources(&e) => {
                eprintln!("tokio_echo: accept: {e}; pausing accept for {ACCEPT_PAUSE:?}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
            // A connection reset before it was accepted, and the like: not the server's
            // problem.
            Err(_) => {}
        }
    }
}

/// [`serve`] on a Unix-domain socket bound to `sun_path` (announced as `shown`).
async fn serve_unix(shown: &str, sun_path: &[u8]) -> io::Result<()> {
    // Not `std`'s `UnixListener::bind`, which stops a path at 107 bytes (Linux takes 108).
    let addr = duo_sys::unix_addr(sun_path)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&addr)?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    let std_listener = std::os::unix::net::UnixListener::from(socket);
    let listener = tokio::net::UnixListener::from_std(std_listener)?;
    println!("listening on {shown}");
    io::stdout().flush()?;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(echo(stream));
            }
            Err(e) if out_of_resources(&e) => {
                eprintln!("tokio_echo: accept: {e}; pausing accept for {ACCEPT_PAUSE:?}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
            Err(_) => {}
        }
    }
}

/// `EMFILE`, `ENFILE`, `ENOMEM`, `ENOBUFS` (24, 23, 12, 105 on Linux; `std` has no
/// `ErrorKind` for the first two and this file uses no `libc`).
fn out_of_resources(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(24 | 23 | 12 | 105))
}

/// Echoes one connection (TCP or Unix-domain) until end of file or an error.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
