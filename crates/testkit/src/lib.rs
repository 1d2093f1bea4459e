//! Test support shared by duo's test suites (a dev-dependency only; never published).
//!
//! What used to be copied from one `tests/` directory to the next lives here once:
//!
//! - [`ChildServer`]: a server binary run as a child process, as a user would run it. It is
//!   started with `--listen 127.0.0.1:0` (or the like), the test waits with a deadline for
//!   its `listening on ADDR` stdout line, talks to it, sends it signals, waits for its exit
//!   with a deadline; dropping it kills the process by PID and reaps it, and prints its
//!   collected stderr if the test is failing.
//! - [`wait_until`], [`wait_until_within`], [`join_within`], [`join_before`],
//!   [`wait_child_within`]: every wait of a test polls with a deadline instead of sleeping
//!   on a guess or blocking forever.
//! - [`run_within`], [`finish_within`]: a command run to completion with a deadline, its
//!   output collected.
//! - [`example_binary`]: a Cargo example of the workspace, built (once per test process)
//!   and located next to the running test binary.
//! - [`Rng`]: a small seeded PRNG (xorshift64* seeded through splitmix64) for reproducible
//!   test data, without the `rand` crate.
//!
//! - [`nonblocking_pair`]: a connected, non-blocking `AF_UNIX` stream pair.
//! - [`cpu_time`]: the CPU time a process has used (`/proc/PID/stat`), for tests and for
//!   the benchmark tools, which charge a server under test for its work.
//!
//! Everything here stands on `std` alone: signals are sent through `kill(1)`, so no test
//! needs `libc`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod child_server;
mod child_server_builder;
mod cpu;
mod example;
mod process;
mod rng;
mod socket;
mod wait;

pub use child_server::ChildServer;
pub use child_server_builder::ChildServerBuilder;
pub use cpu::{clock_ticks_per_second, cpu_time};
pub use example::example_binary;
pub use process::{finish_within, run_within, send_signal, wait_child_within, Finished};
pub use rng::{random_bytes, Rng};
pub use socket::nonblocking_pair;
pub use wait::{join_before, join_within, wait_until, wait_until_within, LIMIT};
