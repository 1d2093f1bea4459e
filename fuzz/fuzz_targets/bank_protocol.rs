//! Fuzz target: see `duo_fuzz::bank_protocol` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| duo_fuzz::bank_protocol(data));
