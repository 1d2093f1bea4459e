//! What duo's benchmark tools share: the `loadgen` binary, the peer servers and
//! `cargo xtask` (which depends on this library).
//!
//! - [`cpu`]: the CPU time a process has used, from `/proc/PID/stat`.
//! - [`loadgen_json`]: the one-line JSON report `loadgen --json` prints, which the
//!   xtask bench and soak read back.

pub mod cpu;
pub mod loadgen_json;
