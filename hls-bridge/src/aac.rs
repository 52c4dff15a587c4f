//! The AudioSpecificConfig of an AAC source (ISO/IEC 14496-3 §1.6.2.1),
//! read as far as a passed-through AAC rendition needs it: object type,
//! sample rate (the track's timescale), channels, samples per access unit.

use std::io;

use bitstream_io::{BigEndian, BitRead, BitReader};

use crate::Error;
use crate::fmp4::AacConfig;

/// Longest AudioSpecificConfig taken: the parts read here fit in 8 bytes;
/// extensions (SBR/PS signalling, ELD) stay well under 64.
pub const MAX_CONFIG: usize = 64;

/// ISO/IEC 14496-3 Table 1.18, `samplingFrequencyIndex` 0–12.
const RATES: [u32; 13] = [
    96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025, 8_000, 7_350,
];

/// What an AAC stream's configuration says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioSpecificConfig {
    /// 2 = AAC-LC, 5 = SBR (HE-AAC), 29 = PS (HE-AAC v2), …
    pub object_type: u8,
    /// The core decoder's rate: one tick of the track's timescale per sample.
    pub sample_rate: u32,
    /// `channelConfiguration` 1–7 as channels (7 is 7.1: 8).
    pub channels: u8,
    /// Samples (at `sample_rate`) per access unit: 1024, or 960.
    pub frame_length: u32,
    /// The bytes as the source sent them (they go into `esds` unchanged).
    pub raw: Vec<u8>,
}

impl AudioSpecificConfig {
    /// Parses `raw`; refuses what a player could not be told in `mp4a`: a
    /// reserved rate index, channel configuration 0 (a program config
    /// element), object types other than the AAC family (1–4, 5, 6, 17,
    /// 29 on an AAC core).
    pub fn parse(raw: &[u8]) -> Result<Self, Error> {
        if raw.len() < 2 {
            return Err(Error::AudioConfig("AudioSpecificConfig shorter than 2 bytes"));
        }
        if raw.len() > MAX_CONFIG {
            return Err(Error::AudioConfig("AudioSpecificConfig longer than 64 bytes"));
        }
        let short = |_: io::Error| Error::AudioConfig("AudioSpecificConfig ends early");
        let mut r = BitReader::endian(raw, BigEndian);
        let object_type = read_object_type(&mut r).map_err(short)?;
        let sample_rate = read_rate(&mut r).map_err(short)??;
        let channel_config: u8 = r.read(4).map_err(short)?;
        let mut core = object_type;
        if matches!(object_type, 5 | 29) {
            // Explicit SBR/PS: the output rate, then the core's object type.
            // Access units hold 1024 samples of the core: the core's rate is
            // the timescale.
            let _extension_rate = read_rate(&mut r).map_err(short)??;
            core = read_object_type(&mut r).map_err(short)?;
        }
        if !matches!(core, 1..=4 | 6 | 17) {
            return Err(Error::AudioConfig("not an AAC object type"));
        }
        // GASpecificConfig: frameLengthFlag.
        let frame_length = if r.read_bit().map_err(short)? { 960 } else { 1024 };
        let channels = match channel_config {
            0 => {
                return Err(Error::AudioConfig(
                    "channel configuration 0 (program config element)",
                ));
            }
            1..=6 => channel_config,
            7 => 8,
            _ => return Err(Error::AudioConfig("reserved channel configuration")),
        };
        if sample_rate == 0 || sample_rate > 96_000 {
            return Err(Error::AudioConfig("sample rate out of range"));
        }
        Ok(Self {
            object_type,
            sample_rate,
            channels,
            frame_length,
            raw: raw.to_vec(),
        })
    }

    /// The largest raw access unit: 6,144 bits per channel (ISO/IEC
    /// 14496-3 §4.5.3.2), doubled for an SBR/PS extension's payload.
    pub fn max_frame_bytes(&self) -> usize {
        let sbr = if matches!(self.object_type, 5 | 29) { 2 } else { 1 };
        6144 / 8 * usize::from(self.channels) * sbr
    }

    /// The `mp4a`/`esds` description; `bitrate` 0 (unknown, variable).
    pub fn mp4a(&self) -> AacConfig {
        AacConfig {
            audio_specific_config: self.raw.clone(),
            channels: self.channels,
            sample_rate: self.sample_rate,
            bitrate: 0,
        }
    }

    /// RFC 6381: `mp4a.40.<object type>`.
    pub fn codec_string(&self) -> String {
        format!("mp4a.40.{}", self.object_type)
    }
}

fn read_object_type(r: &mut BitReader<&[u8], BigEndian>) -> io::Result<u8> {
    let t: u8 = r.read(5)?;
    if t == 31 {
        let ext: u8 = r.read(6)?;
        return Ok(32 + ext);
    }
    Ok(t)
}

fn read_rate(r: &mut BitReader<&[u8], BigEndian>) -> io::Result<Result<u32, Error>> {
    let index: u8 = r.read(4)?;
    Ok(match index {
        0..=12 => Ok(RATES[usize::from(index)]),
        15 => Ok(r.read::<u32>(24)?),
        _ => Err(Error::AudioConfig("reserved sampling frequency index")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_configurations() {
        // FFmpeg's `-c:a aac -ar 44100 -ac 2`: AAC-LC, index 4, 2 channels.
        let c = AudioSpecificConfig::parse(&[0x12, 0x10]).unwrap();
        assert_eq!(
            (c.object_type, c.sample_rate, c.channels, c.frame_length),
            (2, 44_100, 2, 1024)
        );
        assert_eq!(c.codec_string(), "mp4a.40.2");
        assert_eq!(c.max_frame_bytes(), 1536);
        // 48 kHz mono.
        let c = AudioSpecificConfig::parse(&[0x11, 0x88]).unwrap();
        assert_eq!((c.sample_rate, c.channels), (48_000, 1));
        // 960-sample frames (frameLengthFlag).
        let c = AudioSpecificConfig::parse(&[0x11, 0x94]).unwrap();
        assert_eq!(c.frame_length, 960);
        // An explicit rate (index 15): 44,100 = 0x00ac44.
        let c = AudioSpecificConfig::parse(&[0x17, 0x80, 0x56, 0x22, 0x10]).unwrap();
        assert_eq!((c.sample_rate, c.channels), (44_100, 2));
        // HE-AAC with explicit SBR: core 24 kHz (index 6), output 48 kHz
        // (index 3), core object type 2.
        let c = AudioSpecificConfig::parse(&[0x2b, 0x11, 0x88, 0x00]).unwrap();
        assert_eq!(
            (c.object_type, c.sample_rate, c.channels, c.frame_length),
            (5, 24_000, 2, 1024)
        );
        assert_eq!(c.codec_string(), "mp4a.40.5");
        // 7.1.
        assert_eq!(AudioSpecificConfig::parse(&[0x11, 0xb8]).unwrap().channels, 8);
    }

    #[test]
    fn configurations_a_player_cannot_be_told_are_refused() {
        for bad in [
            &[][..],
            &[0x12],
            // Reserved rate index 13.
            &[0x16, 0x90],
            // Channel configuration 0 (a PCE follows).
            &[0x12, 0x00],
            // Channel configuration 8 (reserved here).
            &[0x12, 0x40],
            // Object type 0 (null), 8 (CELP).
            &[0x02, 0x10],
            &[0x42, 0x10],
            // Explicit rate cut short.
            &[0x17, 0x80, 0x56],
        ] {
            assert!(AudioSpecificConfig::parse(bad).is_err(), "{bad:02x?}");
        }
        assert!(AudioSpecificConfig::parse(&[0x12; MAX_CONFIG + 1]).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len % 12)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = AudioSpecificConfig::parse(&bytes);
        }
    }
}
