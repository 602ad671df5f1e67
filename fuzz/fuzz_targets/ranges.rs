//! Fuzz target: `ferry::fuzzing::ranges` (its docs say what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzzing::ranges(data));
