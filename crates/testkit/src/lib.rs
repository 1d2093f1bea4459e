//! Test and tool support for duo, never published. The test suites use it as a
//! dev-dependency; the benchmark tools (`loadgen`, `cargo xtask`) link it for [`Rng`],
//! [`cpu_time`] and [`loadgen_json`].
//!
//! What used to be copied from one `tests/` directory (or tool) to the next lives here once:
//!
//! - [`ChildServer`] (started through a [`ChildServerBuilder`]): a server binary run as a
//!   child process, as a user would run it. It is started with `--listen 127.0.0.1:0` (or
//!   the like), the test waits with a deadline for its `listening on ADDR` stdout line
//!   (which must come first, unless [`ChildServerBuilder::allow_preamble`]), talks to it,
//!   waits for its log lines (a new one: after a [`StderrMark`]), sends it signals,
//!   waits for its exit with a deadline; dropping it kills the process by PID and reaps
//!   it, and prints its collected stderr if the test is failing.
//! - [`wait_until`], [`wait_until_within`], [`join_within`], [`join_before`],
//!   [`wait_child_within`] (all bounded by [`LIMIT`] or a given limit): every wait of a test
//!   polls with a deadline instead of sleeping on a guess or blocking forever.
//! - [`run_within`], [`finish_within`] (giving a [`Finished`]): a command run to completion
//!   with a deadline, its output collected; [`send_signal`] to a process by PID.
//! - [`example_binary`], [`package_binary`]: a Cargo example or binary of the workspace,
//!   built (once per test process) and located next to the running test binary.
//! - [`Rng`], [`random_bytes`]: a small seeded PRNG (xorshift64* seeded through splitmix64)
//!   for reproducible test data and load, without the `rand` crate.
//! - [`TempDir`]: a fresh directory for a test's files (databases, socket files), removed
//!   when dropped.
//! - [`nonblocking_pair`]: a connected, non-blocking `AF_UNIX` stream pair.
//! - [`tcp_queues`], [`tcp_state`]: what the kernel lists for a loopback TCP socket (its
//!   queues, its state), for a test that waits until a segment has reached the other side.
//! - [`cpu_time`], [`tree_cpu_time`], [`clock_ticks_per_second`]: the CPU time a process
//!   (or a process and every process below it) has used (`/proc/PID/stat`), for tests and
//!   for the benchmark tools, which charge a server under test for its work; [`page_size`],
//!   the unit of the kernel's TCP memory figures.
//! - [`pg`]: a throwaway PostgreSQL cluster ([`pg::PgCluster`]) for tests and benchmarks,
//!   made by `initdb` in a temporary directory, started on a free loopback port and a Unix
//!   socket, removed (its server stopped, killed by PID if need be) when dropped; tests
//!   skip with one line where PostgreSQL is not installed, except under CI.
//! - `TestCerts` (the feature `pki`): a test CA and a certificate for `localhost` as PEM
//!   files, removed when dropped.
//! - [`loadgen_json`]: the one-line JSON report `loadgen --json` prints and the xtask
//!   bench and soak read back.
//!
//! Nothing here depends on duo, and there is no `libc`: signals are sent through `kill(1)`,
//! the clock tick comes from `getconf`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod child_server;
mod child_server_builder;
mod cpu;
mod example;
mod exposition;
mod http;
pub mod loadgen_json;
pub mod pg;
#[cfg(feature = "pki")]
mod pki;
mod process;
mod rng;
mod socket;
mod temp_dir;
mod wait;

pub use child_server::{ChildServer, StderrMark};
pub use child_server_builder::ChildServerBuilder;
pub use cpu::{clock_ticks_per_second, cpu_time, page_size, thread_cpu_time, tree_cpu_time};
pub use example::{example_binary, package_binary};
pub use exposition::{
    assert_metrics_documented, documented_metrics, exported_metrics, family_sum,
    observability_page, sample,
};
pub use http::http_get;
#[cfg(feature = "pki")]
pub use pki::TestCerts;
pub use process::{
    all_gone_within, children, exit_code_without_output, finish_within, is_running, run_with_gone,
    run_within, send_signal, wait_child_within, Finished, Gone,
};
pub use rng::{random_bytes, Rng};
pub use socket::{nonblocking_pair, tcp_queues, tcp_state, RefusedPort, TcpState};
pub use temp_dir::TempDir;
pub use wait::{join_before, join_within, wait_until, wait_until_within, LIMIT};
