//! The cleartext part of an SRTP packet: SRTP (RFC 3711 §3.1) encrypts only
//! the payload, so a header-counted viewer reads payload type, sequence
//! number, timestamp and SSRC straight from the datagram, without str0m.

/// The fixed RTP header fields (RFC 3550 §5.1) and where the payload starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub payload_type: u8,
    pub marker: bool,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Bytes before the payload: fixed header, CSRCs and the extension block.
    pub header_len: usize,
}

impl RtpHeader {
    /// Parses `datagram` when it is an RTP packet: version 2 and, by the
    /// RFC 5761 §4 demultiplexing rule, not RTCP (second byte 192–223).
    /// STUN, DTLS, RTCP and truncated packets give `None`.
    pub fn parse(datagram: &[u8]) -> Option<RtpHeader> {
        let b = datagram;
        if b.len() < 12 || b[0] >> 6 != 2 || (192..=223).contains(&b[1]) {
            return None;
        }
        let csrcs = usize::from(b[0] & 0x0f);
        let mut header_len = 12 + 4 * csrcs;
        if b[0] & 0x10 != 0 {
            let ext = b.get(header_len + 2..header_len + 4)?;
            header_len += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
        }
        if header_len > b.len() {
            return None;
        }
        Some(RtpHeader {
            payload_type: b[1] & 0x7f,
            marker: b[1] & 0x80 != 0,
            seq: u16::from_be_bytes([b[2], b[3]]),
            timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            header_len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(first: u8, second: u8, seq: u16, ts: u32, ssrc: u32, rest: &[u8]) -> Vec<u8> {
        let mut p = vec![first, second];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(rest);
        p
    }

    #[test]
    fn reads_the_fixed_header() {
        let p = packet(0x80, 0x80 | 102, 65_535, 0xdead_beef, 42, &[1, 2, 3]);
        let h = RtpHeader::parse(&p).expect("rtp");
        assert_eq!(
            h,
            RtpHeader {
                payload_type: 102,
                marker: true,
                seq: 65_535,
                timestamp: 0xdead_beef,
                ssrc: 42,
                header_len: 12,
            }
        );
    }

    #[test]
    fn skips_csrcs_and_the_extension_block() {
        // Two CSRCs, then a one-byte-header extension of 2 words.
        let mut rest = vec![0; 8];
        rest.extend_from_slice(&[0xbe, 0xde, 0, 2]);
        rest.extend_from_slice(&[0; 8]);
        rest.extend_from_slice(&[9; 20]);
        let p = packet(0x80 | 0x10 | 2, 111, 7, 1, 2, &rest);
        let h = RtpHeader::parse(&p).expect("rtp");
        assert_eq!(h.header_len, 12 + 8 + 4 + 8);
        assert_eq!(p.len() - h.header_len, 20);
        // An extension that claims more than the datagram holds.
        let mut bad = packet(0x90, 111, 7, 1, 2, &[0xbe, 0xde, 0, 9]);
        bad.extend_from_slice(&[0; 8]);
        assert_eq!(RtpHeader::parse(&bad), None);
    }

    #[test]
    fn leaves_rtcp_stun_and_dtls_alone() {
        // RTCP sender report (PT 200) and receiver report (201).
        assert_eq!(RtpHeader::parse(&packet(0x80, 200, 0, 0, 0, &[])), None);
        assert_eq!(RtpHeader::parse(&packet(0x81, 201, 0, 0, 0, &[])), None);
        // STUN binding request (first byte 0), DTLS record (22).
        assert_eq!(RtpHeader::parse(&packet(0x00, 0x01, 0, 0, 0, &[0; 8])), None);
        assert_eq!(RtpHeader::parse(&packet(22, 0xfe, 0, 0, 0, &[0; 8])), None);
        // Too short for a header.
        assert_eq!(RtpHeader::parse(&[0x80, 96, 0, 1]), None);
    }
}
