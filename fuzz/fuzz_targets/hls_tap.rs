#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hls_bridge::fuzzing::hls_tap(data));
