#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| relay::fuzzing::wire_gateway(data));
