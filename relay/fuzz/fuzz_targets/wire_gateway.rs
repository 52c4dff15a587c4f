//! Relay frames from a hostile peer: each input is a sequence of
//! length-prefixed frames decoded as the QUIC transport does, and every
//! frame that decodes is fed to a gateway as if from one of two links. No
//! input may panic, and the gateway's outputs stay bounded.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use relay::{Gateway, LinkId, WorkerId, decode, wire::MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    let mut gateway = Gateway::new(2, Box::new(|_| WorkerId(0)));
    gateway.route(wave_vocab::RoomId::parse("r").unwrap(), LinkId(1));
    let now = Instant::now();
    let mut rest = data;
    let mut outputs = 0usize;
    while rest.len() >= 3 {
        let link = LinkId(u64::from(rest[0] & 1) + 1);
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(MAX_FRAME);
        rest = &rest[3..];
        let frame = &rest[..len.min(rest.len())];
        rest = &rest[frame.len()..];
        if let Ok(msg) = decode(frame, now) {
            gateway.handle_link(link, msg);
        }
        while gateway.poll_output().is_some() {
            outputs += 1;
        }
    }
    assert!(outputs <= data.len() * 4 + 16, "{outputs} outputs for {} bytes", data.len());
});
