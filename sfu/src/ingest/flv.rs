//! FLV tag bodies as RTMP carries them (video and audio messages): H.264
//! (the AVCDecoderConfigurationRecord, then length-prefixed NAL units) and
//! AAC (the AudioSpecificConfig, then raw access units). Everything else,
//! Enhanced RTMP's FourCC headers included, is refused with its name.

use super::Refusal;

/// FLV video codec id of AVC (FLV spec 10.1, `CodecID`).
const CODEC_AVC: u8 = 7;
/// FLV `SoundFormat` of AAC.
const SOUND_AAC: u8 = 10;
/// Enhanced RTMP: the top bit of a video tag's first byte announces an
/// `ExVideoTagHeader` with a FourCC; `SoundFormat` 9 an `ExAudioTagHeader`.
const EX_VIDEO_HEADER: u8 = 0x80;
const SOUND_EX_HEADER: u8 = 9;

/// H.264 decoder configuration (ISO/IEC 14496-15 §5.3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    /// Bytes of each NAL unit's length prefix (1, 2 or 4).
    pub length_size: usize,
    pub sps: Vec<Vec<u8>>,
    pub pps: Vec<Vec<u8>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Video<'a> {
    Config(AvcConfig),
    /// One access unit: its NAL units, length-prefixed.
    Frame {
        keyframe: bool,
        /// PTS − DTS in milliseconds.
        composition_ms: i32,
        data: &'a [u8],
    },
    /// End of sequence, or a video info / command frame: nothing to decode.
    Nothing,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Audio<'a> {
    /// AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1).
    Config(&'a [u8]),
    Frame(&'a [u8]),
}

pub fn video(tag: &[u8]) -> Result<Video<'_>, Refusal> {
    let Some(&first) = tag.first() else {
        return Err(Refusal::Malformed("empty video message"));
    };
    if first & EX_VIDEO_HEADER != 0 {
        let fourcc = tag
            .get(1..5)
            .map_or_else(|| "?".to_owned(), |f| String::from_utf8_lossy(f).into_owned());
        return Err(Refusal::Codec(format!("Enhanced RTMP video {fourcc:?}")));
    }
    let frame_type = first >> 4;
    let codec = first & 0x0f;
    if frame_type == 5 {
        return Ok(Video::Nothing);
    }
    if codec != CODEC_AVC {
        return Err(Refusal::Codec(format!("FLV video codec id {codec}")));
    }
    let (Some(&packet_type), Some(cts)) = (tag.get(1), tag.get(2..5)) else {
        return Err(Refusal::Malformed("short AVC video message"));
    };
    let body = &tag[5..];
    match packet_type {
        0 => avc_config(body).map(Video::Config),
        1 => {
            // SI24: sign-extended from 24 bits.
            let cts = i32::from_be_bytes([cts[0], cts[1], cts[2], 0]) >> 8;
            Ok(Video::Frame {
                keyframe: frame_type == 1,
                composition_ms: cts,
                data: body,
            })
        }
        2 => Ok(Video::Nothing),
        _ => Err(Refusal::Malformed("unknown AVC packet type")),
    }
}

pub fn audio(tag: &[u8]) -> Result<Audio<'_>, Refusal> {
    let Some(&first) = tag.first() else {
        return Err(Refusal::Malformed("empty audio message"));
    };
    let format = first >> 4;
    if format == SOUND_EX_HEADER {
        return Err(Refusal::Codec("Enhanced RTMP audio".into()));
    }
    if format != SOUND_AAC {
        return Err(Refusal::Codec(format!("FLV sound format {format}")));
    }
    match tag.get(1) {
        Some(0) => Ok(Audio::Config(&tag[2..])),
        Some(1) => Ok(Audio::Frame(&tag[2..])),
        _ => Err(Refusal::Malformed("unknown AAC packet type")),
    }
}

fn avc_config(b: &[u8]) -> Result<AvcConfig, Refusal> {
    let bad = Refusal::Malformed("bad AVCDecoderConfigurationRecord");
    if b.len() < 7 || b[0] != 1 {
        return Err(bad);
    }
    let length_size = usize::from(b[4] & 0x03) + 1;
    if length_size == 3 {
        return Err(bad);
    }
    let mut at = 5;
    let sets = |count_mask: u8, at: &mut usize| -> Option<Vec<Vec<u8>>> {
        let n = b.get(*at)? & count_mask;
        *at += 1;
        let mut out = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let len = usize::from(u16::from_be_bytes([*b.get(*at)?, *b.get(*at + 1)?]));
            let unit = b.get(*at + 2..*at + 2 + len)?;
            if unit.is_empty() {
                return None;
            }
            out.push(unit.to_vec());
            *at += 2 + len;
        }
        Some(out)
    };
    let sps = sets(0x1f, &mut at).ok_or(Refusal::Malformed("bad SPS in the AVC configuration"))?;
    let pps = sets(0xff, &mut at).ok_or(Refusal::Malformed("bad PPS in the AVC configuration"))?;
    if sps.is_empty() || pps.is_empty() {
        return Err(Refusal::Malformed("AVC configuration without SPS or PPS"));
    }
    Ok(AvcConfig {
        length_size,
        sps,
        pps,
    })
}

/// The NAL units of a length-prefixed access unit; `Err` when a length
/// runs past the end or there are more than `max` units.
pub fn nal_units(data: &[u8], length_size: usize, max: usize) -> Result<Vec<&[u8]>, Refusal> {
    let mut units = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let Some(prefix) = rest.get(..length_size) else {
            return Err(Refusal::Malformed("truncated NAL unit length"));
        };
        let len = prefix.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
        let Some(unit) = rest.get(length_size..length_size + len) else {
            return Err(Refusal::Malformed("NAL unit longer than its message"));
        };
        if !unit.is_empty() {
            units.push(unit);
        }
        if units.len() > max {
            return Err(Refusal::Oversized("NAL units in one access unit"));
        }
        rest = &rest[length_size + len..];
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_record() -> Vec<u8> {
        let sps = [0x67, 0x64, 0x00, 0x1f, 0xac];
        let pps = [0x68, 0xeb, 0xe3];
        let mut b = vec![1, 0x64, 0x00, 0x1f, 0xff, 0xe1, 0, sps.len() as u8];
        b.extend_from_slice(&sps);
        b.extend_from_slice(&[1, 0, pps.len() as u8]);
        b.extend_from_slice(&pps);
        b
    }

    #[test]
    fn reads_the_avc_configuration_and_frames() {
        let mut tag = vec![0x17, 0, 0, 0, 0];
        tag.extend(config_record());
        let Video::Config(c) = video(&tag).unwrap() else {
            panic!("a configuration")
        };
        assert_eq!(c.length_size, 4);
        assert_eq!(c.sps, vec![vec![0x67, 0x64, 0x00, 0x1f, 0xac]]);
        assert_eq!(c.pps, vec![vec![0x68, 0xeb, 0xe3]]);

        // A B-frame-free inter frame, composition offset -2 ms (SI24).
        let frame = [0x27, 1, 0xff, 0xff, 0xfe, 0, 0, 0, 2, 0x41, 0x9a];
        assert_eq!(
            video(&frame).unwrap(),
            Video::Frame {
                keyframe: false,
                composition_ms: -2,
                data: &[0, 0, 0, 2, 0x41, 0x9a]
            }
        );
        assert_eq!(
            nal_units(&[0, 0, 0, 2, 0x41, 0x9a, 0, 0, 0, 1, 0x06], 4, 16).unwrap(),
            vec![&[0x41, 0x9a][..], &[0x06][..]]
        );
    }

    #[test]
    fn refuses_other_codecs_and_bad_lengths() {
        // Enhanced RTMP HEVC: IsExHeader, FourCC "hvc1".
        assert!(matches!(video(b"\x90hvc1\x00"), Err(Refusal::Codec(c)) if c.contains("hvc1")));
        // Legacy HEVC (codec id 12) and VP6 (4).
        assert!(matches!(video(&[0x1c, 0, 0, 0, 0]), Err(Refusal::Codec(_))));
        assert!(matches!(video(&[0x14, 0, 0, 0, 0]), Err(Refusal::Codec(_))));
        // MP3 audio.
        assert!(matches!(audio(&[0x2f, 0xff]), Err(Refusal::Codec(_))));
        assert!(matches!(
            video(&[0x17, 0, 0, 0, 0, 1, 2]),
            Err(Refusal::Malformed(_))
        ));
        assert!(nal_units(&[0, 0, 0, 9, 0x41], 4, 16).is_err());
        assert!(nal_units(&[0, 0, 0], 4, 16).is_err());
        assert!(nal_units(&[0, 1, 0x41, 0, 1, 0x41, 0, 1, 0x41], 2, 2).is_err());
        assert!(video(&[]).is_err() && audio(&[]).is_err() && audio(&[0xaf]).is_err());
    }
}
