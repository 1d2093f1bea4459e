//! What duo's benchmark tools share: the `loadgen` binary, the peer servers and
//! `cargo xtask` (which depends on this library). The CPU time of a process, which they
//! charge a server under test for its work, is `duo_testkit::cpu_time`.
//!
//! - [`loadgen_json`]: the one-line JSON report `loadgen --json` prints, which the
//!   xtask bench and soak read back.

pub mod loadgen_json;
