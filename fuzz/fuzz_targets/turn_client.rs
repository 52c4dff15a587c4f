#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| turn_server::fuzzing::exercise(data));
