//! Fuzz target: see `duo_fuzz::echo_framed` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| duo_fuzz::echo_framed(data));
