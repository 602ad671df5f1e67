//! Fuzz target: `ferry::fuzzing::chunked` (its docs say what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzzing::chunked(data));
