//! Feeds arbitrary bytes to the Sans-IO core as a client datagram, stream
//! frames and a peer datagram, after setting up an allocation so the
//! authenticated paths are reachable. Any panic is a bug; crashes found
//! here become cases in `turn-server/tests/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turn_server::fuzzing;

fuzz_target!(|data: &[u8]| {
    fuzzing::exercise(data);
});
