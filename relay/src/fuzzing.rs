//! The entry point shared by the fuzz target (`fuzz/`, nightly) and the
//! regression tests that replay `fuzz/regressions/` on stable.

use std::time::Instant;

use crate::wire::{self, MAX_FRAME};
use crate::{Gateway, LinkId, Topic, WorkerId};

/// Relay frames from a hostile peer: `data` is a sequence of
/// `[link u8][len u16][frame]`, each frame decoded as the QUIC transport
/// does and, when it decodes, fed to a gateway as if from one of two
/// links. No input may panic; a decoded frame encodes to one that decodes
/// to the same message; the gateway's outputs stay bounded.
pub fn wire_gateway(data: &[u8]) {
    let mut gateway = Gateway::new(2, Box::new(|_| WorkerId(0)));
    let room = wave_vocab::RoomId::parse("r").expect("a valid room name");
    // Fed from node 1's stream of the room over link 1 (the gateway is node 0).
    gateway.route(Topic::new(room, 1), LinkId(1));
    let now = Instant::now();
    let mut rest = data;
    let mut outputs = 0usize;
    let mut encoded = Vec::new();
    while let [link, l0, l1, tail @ ..] = rest {
        let link = LinkId(u64::from(link & 1) + 1);
        let len = usize::from(u16::from_be_bytes([*l0, *l1])).min(MAX_FRAME);
        let (frame, after) = tail.split_at(len.min(tail.len()));
        rest = after;
        if let Ok(msg) = wire::decode(frame, now) {
            encoded.clear();
            wire::encode(&msg, &mut encoded);
            let again = wire::decode(&encoded, now).expect("an encoded message decodes");
            assert_eq!(format!("{again:?}"), format!("{msg:?}"));
            gateway.handle_link(link, msg);
        }
        while gateway.poll_output().is_some() {
            outputs += 1;
        }
    }
    assert!(
        outputs <= data.len() * 4 + 16,
        "{outputs} outputs for {} bytes",
        data.len()
    );
}
