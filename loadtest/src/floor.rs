//! The floor a forwarded packet cannot go below on this machine: sealing
//! 1,200 bytes with AES-128-GCM (SRTP's AEAD, through aws-lc-rs as str0m
//! uses it) plus its share of a batched (GSO) loopback UDP send.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use quinn_udp::{Transmit, UdpSocketState};
use serde::Serialize;

use crate::error::Error;

const PACKET: usize = 1200;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Floor {
    /// Nanoseconds to seal one 1,200-byte packet.
    pub seal_ns: f64,
    /// Nanoseconds per packet of a batched loopback send.
    pub send_ns: f64,
}

impl Floor {
    pub fn total_us(&self) -> f64 {
        (self.seal_ns + self.send_ns) / 1000.0
    }
}

/// Measures for about `budget` (split between the two parts).
pub fn measure(budget: Duration) -> Result<Floor, Error> {
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_128_GCM, &[7u8; 16]).map_err(|_| Error::Media("AES key".into()))?,
    );
    let header = [0x80u8; 12];
    let mut buf = vec![0xabu8; PACKET - 12];
    let mut n: u64 = 0;
    let t = Instant::now();
    while t.elapsed() < budget / 2 {
        for _ in 0..1000 {
            let mut iv = [0u8; 12];
            iv[4..].copy_from_slice(&n.to_be_bytes());
            let nonce = Nonce::assume_unique_for_key(iv);
            let tag = key
                .seal_in_place_separate_tag(nonce, Aad::from(&header), &mut buf)
                .map_err(|_| Error::Media("AES-GCM seal".into()))?;
            std::hint::black_box(tag.as_ref());
            n += 1;
        }
    }
    let seal_ns = t.elapsed().as_nanos() as f64 / n as f64;

    let rx = UdpSocket::bind("127.0.0.1:0")?;
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    let state = UdpSocketState::new((&tx).into())?;
    let _ = state.set_send_buffer_size((&tx).into(), 8 << 20);
    let dest = rx.local_addr()?;
    let segments = state.max_gso_segments().clamp(1, 32);
    let batch = vec![0x5au8; PACKET * segments];
    let mut sent: u64 = 0;
    let t = Instant::now();
    while t.elapsed() < budget / 2 {
        let transmit = Transmit {
            destination: dest,
            ecn: None,
            contents: &batch,
            segment_size: (segments > 1).then_some(PACKET),
            src_ip: None,
        };
        // A full receive buffer drops on the receiver side; the send cost is what counts.
        if state.try_send((&tx).into(), &transmit).is_err() {
            std::thread::yield_now();
        }
        sent += segments as u64;
    }
    let send_ns = t.elapsed().as_nanos() as f64 / sent as f64;
    Ok(Floor { seal_ns, send_ns })
}

#[cfg(test)]
mod tests {
    #[test]
    fn measures_both_parts() {
        let f = super::measure(std::time::Duration::from_millis(40)).unwrap();
        assert!(f.seal_ns > 0.0 && f.send_ns > 0.0, "{f:?}");
        assert!(f.total_us() < 1000.0, "{f:?}");
    }
}
