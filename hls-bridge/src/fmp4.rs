//! CMAF fMP4 (ISO/IEC 23000-19): an init segment per track configuration
//! and `moof`+`mdat` fragments for parts. One track per file: every
//! rendition is its own media playlist.
//!
//! Boxes are encoded with `mp4-atom`; this module decides what goes in
//! them (HLS §3.1.2, checklist C17): `ftyp` with `iso6`, durations 0 in
//! the init, `mvex`/`trex`, `tfdt` in every `traf`, `default-base-is-moof`.

use mp4_atom::{
    Audio, Avc1, Avcc, Codec, Dinf, Dops, Dref, Encode, Esds, FourCC, Ftyp, Hdlr, Mdhd, Mdia, Mfhd, Minf,
    Moof, Moov, Mp4a, Mvex, Mvhd, Opus, Smhd, Stbl, Stco, Stsd, Styp, Tfdt, Tfhd, Tkhd, Traf, Trak, Trex,
    Trun, TrunEntry, Url, Visual, Vmhd,
    esds::{DecoderConfig, DecoderSpecific, EsDescriptor, SLConfig},
};

use crate::Error;
use crate::h264::AvcConfig;

/// The track id inside every file the bridge writes.
pub const TRACK_ID: u32 = 1;
/// Video media timescale: the RTP clock (RFC 6184 §8.2.1).
pub const VIDEO_TIMESCALE: u32 = 90_000;
/// Opus media timescale: always 48 kHz (RFC 7587 §4.1, Opus-in-ISOBMFF §4.3).
pub const OPUS_TIMESCALE: u32 = 48_000;

/// ISO/IEC 14496-12 §8.8.3.1 sample flags.
const FLAGS_SYNC: u32 = 0x0200_0000; // depends_on = 2 (does not depend on others)
const FLAGS_NON_SYNC: u32 = 0x0101_0000; // depends_on = 1, is_non_sync_sample

/// What a track's init segment describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackConfig {
    Avc(AvcConfig),
    Opus(OpusConfig),
    Aac(AacConfig),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusConfig {
    pub channels: u8,
    /// Samples (48 kHz) the decoder discards at the start (RFC 7845 §4.2).
    pub pre_skip: u16,
}

impl TrackConfig {
    pub fn timescale(&self) -> u32 {
        match self {
            TrackConfig::Avc(_) => VIDEO_TIMESCALE,
            TrackConfig::Opus(_) => OPUS_TIMESCALE,
            TrackConfig::Aac(aac) => aac.sample_rate,
        }
    }

    /// The RFC 6381 string for CODECS. `opus` is what hls.js and Chromium
    /// take; Safari MSE wants `Opus` (reference §7): the playlist layer
    /// chooses per variant.
    pub fn codec_string(&self) -> String {
        match self {
            TrackConfig::Avc(c) => c.codec_string(),
            TrackConfig::Opus(_) => "opus".to_string(),
            TrackConfig::Aac(aac) => aac.codec_string(),
        }
    }
}

/// One sample of a fragment; its bytes are in the fragment's data, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// In the track's timescale.
    pub duration: u32,
    pub size: u32,
    /// A sync sample (IDR for video; every Opus packet).
    pub keyframe: bool,
}

/// The init segment (`ftyp` + `moov`) for one track.
pub fn init_segment(config: &TrackConfig) -> Result<Vec<u8>, Error> {
    let ftyp = Ftyp {
        major_brand: FourCC::new(b"iso6"),
        minor_version: 0,
        compatible_brands: vec![FourCC::new(b"iso6"), FourCC::new(b"cmfc"), FourCC::new(b"mp41")],
    };
    let (hdlr, minf_header, codec, width, height, volume) = match config {
        TrackConfig::Avc(avc) => {
            let w = u16::try_from(avc.width).map_err(|_| Error::MalformedSps("width over 65535".into()))?;
            let h = u16::try_from(avc.height).map_err(|_| Error::MalformedSps("height over 65535".into()))?;
            let avc1 = Avc1 {
                visual: Visual {
                    data_reference_index: 1,
                    width: w,
                    height: h,
                    horizresolution: 72.into(),
                    vertresolution: 72.into(),
                    frame_count: 1,
                    compressor: "".into(),
                    depth: 24,
                },
                avcc: Avcc {
                    configuration_version: 1,
                    avc_profile_indication: avc.profile_idc,
                    profile_compatibility: avc.constraint_flags,
                    avc_level_indication: avc.level_idc,
                    length_size: 4,
                    sequence_parameter_sets: vec![avc.sps.clone()],
                    picture_parameter_sets: vec![avc.pps.clone()],
                    ext: None,
                },
                btrt: None,
                colr: None,
                pasp: None,
                taic: None,
                fiel: None,
                spatial: Default::default(),
            };
            (
                Hdlr {
                    handler: FourCC::new(b"vide"),
                    name: "VideoHandler".into(),
                },
                (Some(Vmhd::default()), None),
                avc1.into(),
                w,
                h,
                0,
            )
        }
        TrackConfig::Opus(opus) => {
            let entry = Opus {
                audio: Audio {
                    data_reference_index: 1,
                    channel_count: u16::from(opus.channels),
                    sample_size: 16,
                    sample_rate: 48000.into(),
                },
                dops: Dops {
                    output_channel_count: opus.channels,
                    pre_skip: opus.pre_skip,
                    input_sample_rate: 48000,
                    output_gain: 0,
                    channel_mapping: None,
                },
                btrt: None,
            };
            (
                Hdlr {
                    handler: FourCC::new(b"soun"),
                    name: "SoundHandler".into(),
                },
                (None, Some(Smhd::default())),
                entry.into(),
                0,
                0,
                1,
            )
        }
        TrackConfig::Aac(aac) => (
            Hdlr {
                handler: FourCC::new(b"soun"),
                name: "SoundHandler".into(),
            },
            (None, Some(Smhd::default())),
            aac_sample_entry(aac)?,
            0,
            0,
            1,
        ),
    };
    let moov = Moov {
        mvhd: Mvhd {
            timescale: 1000,
            duration: 0,
            rate: 1.into(),
            volume: 1.into(),
            next_track_id: TRACK_ID + 1,
            ..Default::default()
        },
        mvex: Some(Mvex {
            mehd: None,
            trex: vec![Trex {
                track_id: TRACK_ID,
                default_sample_description_index: 1,
                ..Default::default()
            }],
        }),
        trak: vec![Trak {
            tkhd: Tkhd {
                track_id: TRACK_ID,
                duration: 0,
                enabled: true,
                in_movie: true,
                volume: volume.into(),
                width: width.into(),
                height: height.into(),
                ..Default::default()
            },
            mdia: Mdia {
                mdhd: Mdhd {
                    timescale: config.timescale(),
                    duration: 0,
                    language: "und".into(),
                    ..Default::default()
                },
                hdlr,
                minf: Minf {
                    vmhd: minf_header.0,
                    smhd: minf_header.1,
                    dinf: Dinf {
                        dref: Dref {
                            entries: vec![Url::default().into()],
                        },
                    },
                    stbl: Stbl {
                        stsd: Stsd { codecs: vec![codec] },
                        stco: Some(Stco::default()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            },
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut out = Vec::with_capacity(1024);
    ftyp.encode(&mut out)?;
    moov.encode(&mut out)?;
    Ok(out)
}

/// An AAC track (ISO/IEC 14496-3) as the `mp4a` sample entry describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AacConfig {
    /// The AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1), from the encoder.
    pub audio_specific_config: Vec<u8>,
    pub channels: u8,
    /// Also the media timescale: one tick per sample.
    pub sample_rate: u32,
    /// Bits per second, for the `esds` DecoderConfigDescriptor.
    pub bitrate: u32,
}

impl AacConfig {
    /// The MPEG-4 audio object type, the first 5 bits of the
    /// AudioSpecificConfig (2 = AAC-LC); 0 if it is empty.
    pub fn audio_object_type(&self) -> u8 {
        self.audio_specific_config.first().map_or(0, |b| b >> 3)
    }

    /// RFC 6381 §3.3: `mp4a.40.<audio object type>`, e.g. `mp4a.40.2`.
    pub fn codec_string(&self) -> String {
        format!("mp4a.40.{}", self.audio_object_type())
    }
}

/// `mp4a` with an `esds` (ISO/IEC 14496-14 §3.1.2): ES descriptor with
/// objectTypeIndication 0x40 (MPEG-4 audio) and streamType 5 (audio), the
/// AudioSpecificConfig as DecoderSpecificInfo.
fn aac_sample_entry(aac: &AacConfig) -> Result<Codec, Error> {
    const OBJECT_TYPE_MPEG4_AUDIO: u8 = 0x40;
    const STREAM_TYPE_AUDIO: u8 = 0x05;
    let asc = &aac.audio_specific_config;
    if asc.len() < 2 {
        return Err(Error::AudioConfig("AudioSpecificConfig shorter than 2 bytes"));
    }
    // A raw AAC frame holds at most 6144 bits per channel (ISO/IEC 14496-3 §4.5.3.2).
    let buffer_size = 6144 / 8 * u32::from(aac.channels);
    Ok(Mp4a {
        audio: Audio {
            data_reference_index: 1,
            channel_count: u16::from(aac.channels),
            sample_size: 16,
            sample_rate: u16::try_from(aac.sample_rate)
                .map_err(|_| Error::AudioConfig("sample rate above 65535"))?
                .into(),
        },
        esds: Esds {
            es_desc: EsDescriptor {
                es_id: TRACK_ID as u16,
                dec_config: DecoderConfig {
                    object_type_indication: OBJECT_TYPE_MPEG4_AUDIO,
                    stream_type: STREAM_TYPE_AUDIO,
                    up_stream: 0,
                    buffer_size_db: {
                        let [_, a, b, c] = buffer_size.to_be_bytes();
                        [a, b, c].into()
                    },
                    max_bitrate: aac.bitrate,
                    avg_bitrate: aac.bitrate,
                    dec_specific: Some(DecoderSpecific {
                        profile: asc[0] >> 3,
                        freq_index: ((asc[0] & 0x07) << 1) | (asc[1] >> 7),
                        chan_conf: (asc[1] >> 3) & 0x0f,
                        raw: asc.clone(),
                    }),
                },
                sl_config: SLConfig {},
                ..Default::default()
            },
        },
        btrt: None,
        taic: None,
    }
    .into())
}

/// The `styp` that opens a full segment (CMAF §7.3.2.2); a segment is this
/// followed by its parts' fragments.
pub fn segment_type() -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(24);
    Styp {
        major_brand: FourCC::new(b"msdh"),
        minor_version: 0,
        compatible_brands: vec![FourCC::new(b"msdh"), FourCC::new(b"cmfs")],
    }
    .encode(&mut out)?;
    Ok(out)
}

/// One `moof` + `mdat`: a part, or a piece of a segment.
/// `base_decode_time` is the first sample's decode time in the track's
/// timescale (`tfdt`); `data` holds the samples' bytes back to back.
pub fn fragment(
    sequence_number: u32,
    base_decode_time: u64,
    samples: &[Sample],
    data: &[u8],
) -> Result<Vec<u8>, Error> {
    let described: u64 = samples.iter().map(|s| u64::from(s.size)).sum();
    if described != data.len() as u64 {
        return Err(Error::FragmentSize {
            described,
            actual: data.len() as u64,
        });
    }
    let mut moof = Moof {
        mfhd: Mfhd { sequence_number },
        traf: vec![Traf {
            tfhd: Tfhd {
                track_id: TRACK_ID,
                default_base_is_moof: true,
                ..Default::default()
            },
            tfdt: Some(Tfdt {
                base_media_decode_time: base_decode_time,
            }),
            trun: vec![Trun {
                data_offset: Some(0),
                samples: samples
                    .iter()
                    .map(|s| TrunEntry {
                        duration: Some(s.duration),
                        size: Some(s.size),
                        flags: Some(if s.keyframe { FLAGS_SYNC } else { FLAGS_NON_SYNC }),
                        cts: None,
                    })
                    .collect::<Vec<_>>()
                    .into(),
            }],
            ..Default::default()
        }],
    };
    // The data offset is relative to the moof (default-base-is-moof) and
    // points past the mdat header; the moof's size does not depend on the
    // offset's value, so measure once and encode again.
    let mut probe = Vec::new();
    moof.encode(&mut probe)?;
    let mdat_size = u32::try_from(data.len() + 8).map_err(|_| Error::FragmentSize {
        described,
        actual: data.len() as u64,
    })?;
    let offset = i32::try_from(probe.len() + 8).map_err(|_| Error::FragmentSize {
        described,
        actual: data.len() as u64,
    })?;
    moof.traf[0].trun[0].data_offset = Some(offset);
    let mut out = Vec::with_capacity(probe.len() + data.len() + 8);
    moof.encode(&mut out)?;
    out.extend_from_slice(&mdat_size.to_be_bytes());
    out.extend_from_slice(b"mdat");
    out.extend_from_slice(data);
    Ok(out)
}
