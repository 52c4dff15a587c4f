//! The fuzz target's harness, run deterministically: valid messages with
//! bit flips, truncations, length lies and splices must never panic the
//! core. What the `turn_client` fuzz target finds is kept in
//! `fuzz/regressions/turn_client/` and replayed by
//! `sfu/tests/fuzz_regressions.rs`.

use turn_server::fuzzing::{exercise, sample_inputs};

#[test]
fn mutated_messages_never_panic() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let samples = sample_inputs();
    for i in 0..20_000u32 {
        let mut case = samples[i as usize % samples.len()].clone();
        match next() % 5 {
            0 => {
                let at = (next() as usize) % case.len();
                case[at] ^= 1 << (next() % 8);
            }
            1 => case.truncate((next() as usize) % (case.len() + 1)),
            2 if case.len() >= 4 => {
                // Lie about the length field.
                let v = (next() % 0x10000) as u16;
                case[2..4].copy_from_slice(&v.to_be_bytes());
            }
            3 => {
                let other = &samples[(next() as usize) % samples.len()];
                let cut = (next() as usize) % other.len();
                case.extend_from_slice(&other[cut..]);
            }
            _ => {
                let n = (next() % 16) as usize;
                case.extend((0..n).map(|_| next() as u8));
            }
        }
        exercise(&case);
    }
}
