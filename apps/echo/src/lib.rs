//! The duo echo server as a library: the packet protocol of `echo --framed` ([`framed`])
//! and the server ([`serve`]); the `echo` binary is the command line in front of them.
#![forbid(unsafe_code)]

pub mod framed;
mod server;

pub use server::{serve, ServeConfig};
