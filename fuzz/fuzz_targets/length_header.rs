//! Fuzz target: see `duo_fuzz::length_header` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| duo_fuzz::length_header(data));
