//! Fuzz target: `ferry::fuzzing::playlist` (its docs say what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzzing::playlist(data));
