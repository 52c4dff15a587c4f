//! Generated RTP for the bridge's tests: an RFC 6184 packetizer (single NAL,
//! STAP-A, FU-A) over synthetic access units.
#![allow(dead_code)]

pub mod media;

/// A 1080p High-profile SPS (level 4.0) as written by a real encoder.
pub const SPS_1080P: [u8; 26] = [
    103, 100, 0, 40, 172, 217, 64, 120, 2, 39, 229, 132, 0, 0, 3, 0, 4, 0, 0, 3, 0, 240, 60, 96, 198, 88,
];
pub const PPS: [u8; 5] = [104, 235, 236, 178, 44];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkt {
    pub seq: u16,
    pub ts: u32,
    pub marker: bool,
    pub payload: Vec<u8>,
}

/// A slice NAL unit of `len` bytes (type 5 for IDR, 1 otherwise) whose
/// body is recognisable.
pub fn slice(idr: bool, len: usize, tag: u8) -> Vec<u8> {
    let mut v = vec![if idr { 0x65 } else { 0x41 }];
    v.extend((1..len).map(|i| (i as u8).wrapping_add(tag)));
    v
}

/// The NAL units of access unit `n` of a stream with an IDR every `gop`.
pub fn access_unit(n: usize, gop: usize, slice_len: usize) -> Vec<Vec<u8>> {
    if n.is_multiple_of(gop) {
        vec![SPS_1080P.to_vec(), PPS.to_vec(), slice(true, slice_len, n as u8)]
    } else {
        vec![slice(false, slice_len, n as u8)]
    }
}

/// Packetizes one access unit: NAL units that fit together go in STAP-A,
/// larger ones in FU-A of at most `mtu` payload bytes.
pub fn packetize(nalus: &[Vec<u8>], ts: u32, seq: &mut u16, mtu: usize) -> Vec<Pkt> {
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let mut stap: Vec<&Vec<u8>> = Vec::new();
    let flush = |stap: &mut Vec<&Vec<u8>>, payloads: &mut Vec<Vec<u8>>| {
        match stap.len() {
            0 => {}
            1 => payloads.push(stap[0].clone()),
            _ => {
                let nri = stap.iter().map(|n| n[0] & 0x60).max().unwrap_or(0);
                let mut p = vec![nri | 24];
                for n in stap.iter() {
                    p.extend_from_slice(&(n.len() as u16).to_be_bytes());
                    p.extend_from_slice(n);
                }
                payloads.push(p);
            }
        }
        stap.clear();
    };
    for nalu in nalus {
        if nalu.len() + 3 <= mtu / 2 {
            stap.push(nalu);
            continue;
        }
        flush(&mut stap, &mut payloads);
        if nalu.len() <= mtu {
            payloads.push(nalu.clone());
            continue;
        }
        let header = nalu[0];
        let body = &nalu[1..];
        let chunks: Vec<&[u8]> = body.chunks(mtu - 2).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut fu = vec![(header & 0xe0) | 28, header & 0x1f];
            if i == 0 {
                fu[1] |= 0x80;
            }
            if i == chunks.len() - 1 {
                fu[1] |= 0x40;
            }
            fu.extend_from_slice(chunk);
            payloads.push(fu);
        }
    }
    flush(&mut stap, &mut payloads);
    let n = payloads.len();
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, payload)| {
            let p = Pkt {
                seq: *seq,
                ts,
                marker: i == n - 1,
                payload,
            };
            *seq = seq.wrapping_add(1);
            p
        })
        .collect()
}

/// `frames` access units at 30 fps from RTP timestamp `ts0`.
pub fn stream(frames: usize, gop: usize, slice_len: usize, seq0: u16, ts0: u32) -> Vec<Pkt> {
    let mut seq = seq0;
    (0..frames)
        .flat_map(|n| {
            let ts = ts0.wrapping_add(3000 * n as u32);
            packetize(&access_unit(n, gop, slice_len), ts, &mut seq, 1200)
        })
        .collect()
}

/// The avc1 sample bytes the bridge should produce for `nalus`.
pub fn length_prefixed(nalus: &[Vec<u8>]) -> Vec<u8> {
    nalus
        .iter()
        .flat_map(|n| {
            (n.len() as u32)
                .to_be_bytes()
                .into_iter()
                .chain(n.iter().copied())
        })
        .collect()
}

pub mod checker;
pub mod http;
pub mod room;
