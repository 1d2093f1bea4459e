//! The duo echo server as a library: the packet protocol of `echo --framed` ([`framed`])
//! and the server ([`serve`], [`serve_on`], [`serve_worker`]; several processes with
//! [`supervise`]); the `echo` binary is the command line in front of them.
#![forbid(unsafe_code)]

pub mod framed;
mod server;
pub mod supervise;

pub use server::serve_on_unix;
pub use server::{port_free_for_tcp_and_udp, serve, serve_on, serve_worker, ServeConfig};
