#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signaling::fuzzing::sdpfrag(data));
