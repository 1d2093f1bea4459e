//! Worker threads for duo: [`ThreadPool`], a fixed set of threads fed by a bounded queue,
//! for blocking or heavy work (a database, a disk, a password hash) that must never run on
//! an I/O loop's thread.
//!
//! It knows nothing of networking; `duo-net` re-exports it (`duo_net::ThreadPool`) so a
//! server's users find it beside the server.
//!
//! Workers leave their signal mask alone: they inherit the mask of the thread that spawns
//! the pool. A server that takes its stop signals through a `signalfd` blocks them on the
//! main thread before it starts any thread (`duo_net::process::prepare_server`), and the
//! workers inherit that. (Only duo's loop threads block the stop signals themselves:
//! `duo_reactor::EventLoopThread`.)
//!
//! This crate is safe Rust.
// The doc examples are what users copy first: one that warns (an ignored `Result`, an
// unused value) fails its test.
#![doc(test(attr(deny(warnings))))]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

mod thread_pool;

pub use thread_pool::{Job, SubmitError, ThreadPool};
