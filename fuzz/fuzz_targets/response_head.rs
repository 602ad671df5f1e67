//! Fuzz target: `ferry::fuzzing::response_head` (its docs say what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzzing::response_head(data));
