//! Fuzz target: see `duo_fuzz::http_request` for the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| duo_fuzz::http_request(data));
