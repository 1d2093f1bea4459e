//! The bank of duo as a library: the line protocol ([`protocol`]), the server
//! ([`server::serve`]) with its storage and password hashing, and the blocking client
//! ([`client::run`]); the `bank` binary is the command line in front of them.
#![forbid(unsafe_code)]

mod auth;
pub mod client;
pub mod metrics;
pub mod protocol;
pub mod server;
mod store;
pub mod supervise;

pub use auth::HashCost;
pub use metrics::BankMetrics;
pub use store::{Database, StoreError, StoreOptions};
