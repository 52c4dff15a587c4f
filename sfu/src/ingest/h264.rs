//! RFC 6184 packetization (packetization-mode 1) of one access unit:
//! single NAL unit packets, FU-A fragments for units larger than the
//! payload budget, and a STAP-A carrying the SPS and PPS in front of every
//! IDR that does not bring its own (an RTMP encoder sends them once, in
//! the AVC configuration; a viewer joining later needs them in-band).

/// NAL unit types (H.264 Table 7-1) and RFC 6184 payload types.
const IDR: u8 = 5;
const SPS: u8 = 7;
const AUD: u8 = 9;
const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// Appends the RTP payloads of one access unit to `out`; each payload
/// is at most `max` bytes. Access unit delimiters are dropped (RFC 6184
/// leaves them to the receiver, and WebRTC decoders do not need them).
pub fn packetize(units: &[&[u8]], sps: &[Vec<u8>], pps: &[Vec<u8>], max: usize, out: &mut Vec<Vec<u8>>) {
    let idr = units.iter().any(|u| u[0] & 0x1f == IDR);
    let has_sps = units.iter().any(|u| u[0] & 0x1f == SPS);
    if idr && !has_sps {
        let sets: Vec<&[u8]> = sps.iter().chain(pps).map(Vec::as_slice).collect();
        let stap_len = 1 + sets.iter().map(|u| 2 + u.len()).sum::<usize>();
        if stap_len <= max {
            let mut stap = Vec::with_capacity(stap_len);
            // F = 0; NRI the highest of the aggregated units (RFC 6184 §5.7.1).
            let nri = sets.iter().map(|u| u[0] & 0x60).max().unwrap_or(0x60);
            stap.push(nri | STAP_A);
            for u in &sets {
                stap.extend_from_slice(&(u.len() as u16).to_be_bytes());
                stap.extend_from_slice(u);
            }
            out.push(stap);
        } else {
            for u in sets {
                single_or_fragments(u, max, out);
            }
        }
    }
    for u in units {
        if u[0] & 0x1f != AUD {
            single_or_fragments(u, max, out);
        }
    }
}

fn single_or_fragments(unit: &[u8], max: usize, out: &mut Vec<Vec<u8>>) {
    if unit.len() <= max {
        out.push(unit.to_vec());
        return;
    }
    // RFC 6184 §5.8: FU indicator (F, NRI, 28), FU header (S, E, type).
    let header = unit[0];
    let body = &unit[1..];
    let chunk = max - 2;
    let n = body.len().div_ceil(chunk);
    for (k, part) in body.chunks(chunk).enumerate() {
        let mut p = Vec::with_capacity(part.len() + 2);
        p.push((header & 0xe0) | FU_A);
        let mut fu = header & 0x1f;
        if k == 0 {
            fu |= 0x80;
        }
        if k + 1 == n {
            fu |= 0x40;
        }
        p.push(fu);
        p.extend_from_slice(part);
        out.push(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idr_gets_its_parameter_sets_and_large_units_are_fragmented() {
        let sps = vec![vec![0x67, 1, 2]];
        let pps = vec![vec![0x68, 3]];
        let idr: Vec<u8> = std::iter::once(0x65).chain((0..250).map(|i| i as u8)).collect();
        let mut out = Vec::new();
        packetize(&[&[0x09, 0xf0], &idr], &sps, &pps, 100, &mut out);
        assert_eq!(out[0], vec![0x78, 0, 3, 0x67, 1, 2, 0, 2, 0x68, 3]);
        // 250 body bytes in 98-byte fragments: 3 FU-As, start and end marked.
        assert_eq!(out.len(), 4);
        assert_eq!(&out[1][..2], &[0x7c, 0x85]);
        assert_eq!(&out[2][..2], &[0x7c, 0x05]);
        assert_eq!(&out[3][..2], &[0x7c, 0x45]);
        let body: Vec<u8> = out[1..].iter().flat_map(|p| p[2..].to_vec()).collect();
        assert_eq!(body, idr[1..]);

        // An inter frame: one single NAL unit packet, no parameter sets.
        out.clear();
        packetize(&[&[0x41, 9, 9]], &sps, &pps, 100, &mut out);
        assert_eq!(out, vec![vec![0x41, 9, 9]]);
    }
}
