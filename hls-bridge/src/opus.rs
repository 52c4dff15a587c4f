//! Opus over RTP (RFC 7587): one Opus packet per RTP packet, so
//! depacketizing is reading the TOC byte (RFC 6716 §3.1) for the duration.

/// One Opus packet, which becomes one fMP4 sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusFrame {
    /// Unwrapped 48 kHz RTP timestamp.
    pub timestamp: i64,
    /// Duration in 48 kHz samples, from the TOC.
    pub duration: u32,
    /// The TOC's stereo flag.
    pub stereo: bool,
    pub data: Vec<u8>,
}

/// RFC 6716 §3.2.5: a packet holds at most 120 ms of audio.
const MAX_PACKET_DURATION: u32 = 5760;

/// Reads an Opus packet's duration (48 kHz samples) and stereo flag.
pub fn parse_toc(packet: &[u8]) -> Result<(u32, bool), &'static str> {
    let Some(&toc) = packet.first() else {
        return Err("empty Opus packet");
    };
    let config = toc >> 3;
    let stereo = toc & 0x04 != 0;
    // RFC 6716 Table 2, in 48 kHz samples.
    let frame = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => {
            let Some(&count) = packet.get(1) else {
                return Err("code 3 packet without a frame count");
            };
            u32::from(count & 0x3f)
        }
    };
    let duration = frame * frames;
    if duration == 0 || duration > MAX_PACKET_DURATION {
        return Err("Opus packet duration out of range");
    }
    Ok((duration, stereo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toc_durations() {
        // config 31 (CELT FB 20 ms), code 0, stereo
        assert_eq!(parse_toc(&[(31 << 3) | 0x04]), Ok((960, true)));
        // config 15 (hybrid FB 20 ms), code 1: two frames
        assert_eq!(parse_toc(&[(15 << 3) | 1]), Ok((1920, false)));
        // config 3 (SILK 60 ms), code 3 with 2 frames = 120 ms
        assert_eq!(parse_toc(&[(3 << 3) | 3, 2]), Ok((5760, false)));
        // 3 frames of 60 ms is over the limit
        assert!(parse_toc(&[(3 << 3) | 3, 3]).is_err());
        assert!(parse_toc(&[(16 << 3) | 3]).is_err());
        assert!(parse_toc(&[]).is_err());
        assert_eq!(parse_toc(&[16 << 3]), Ok((120, false)));
    }
}
