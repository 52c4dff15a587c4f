//! The fMP4 the bridge writes, parsed back by two independent parsers:
//! `mp4` (reads fragmented files: moov + moof/traf/trun) and Mozilla's
//! `mp4parse` (Firefox's parser: avcC and dOps).

use crate::common;

use std::io::Cursor;

use common::{PPS, SPS_1080P};
use hls_bridge::fmp4::{self, OpusConfig, Sample, TrackConfig};
use hls_bridge::h264::AvcConfig;

fn avc() -> TrackConfig {
    TrackConfig::Avc(AvcConfig::new(SPS_1080P.to_vec(), PPS.to_vec()).unwrap())
}

/// Two fragments of 3 video samples (IDR first) at 30 fps.
fn video_file() -> Vec<u8> {
    let mut file = fmp4::init_segment(&avc()).unwrap();
    file.extend(fmp4::segment_type().unwrap());
    for (i, base) in [(1u32, 0u64), (2, 9000)] {
        let sizes = [100u32, 20, 30];
        let samples: Vec<Sample> = sizes
            .iter()
            .enumerate()
            .map(|(n, &size)| Sample {
                duration: 3000,
                size,
                keyframe: i == 1 && n == 0,
            })
            .collect();
        let data: Vec<u8> = (0..sizes.iter().sum::<u32>()).map(|b| b as u8).collect();
        file.extend(fmp4::fragment(i, base, &samples, &data).unwrap());
    }
    file
}

#[test]
fn video_init_and_fragments_parse_back() {
    let file = video_file();
    let size = file.len() as u64;
    let reader = mp4::Mp4Reader::read_header(Cursor::new(file), size).unwrap();
    assert!(reader.is_fragmented());
    assert_eq!(reader.moofs.len(), 2);
    for (i, moof) in reader.moofs.iter().enumerate() {
        assert_eq!(moof.mfhd.sequence_number, i as u32 + 1);
        assert_eq!(moof.trafs.len(), 1);
        let traf = &moof.trafs[0];
        assert_eq!(traf.tfhd.track_id, fmp4::TRACK_ID);
        // default-base-is-moof (ISO/IEC 14496-12 §8.8.7.1)
        assert_ne!(traf.tfhd.flags & 0x02_0000, 0);
        assert_eq!(
            traf.tfdt.as_ref().unwrap().base_media_decode_time,
            9000 * i as u64
        );
        let trun = traf.trun.as_ref().unwrap();
        assert_eq!(trun.sample_count, 3);
        assert_eq!(trun.sample_durations, vec![3000; 3]);
        assert_eq!(trun.sample_sizes, vec![100, 20, 30]);
    }
    let track = reader.tracks().get(&fmp4::TRACK_ID).unwrap();
    assert_eq!(track.timescale(), 90_000);
    assert_eq!((track.width(), track.height()), (1920, 1080));
    assert_eq!(track.sample_count(), 6);
    let avcc = &track.trak.mdia.minf.stbl.stsd.avc1.as_ref().unwrap().avcc;
    assert_eq!(avcc.avc_profile_indication, 100);
    assert_eq!(avcc.avc_level_indication, 40);
    assert_eq!(avcc.sequence_parameter_sets[0].bytes, SPS_1080P);
    assert_eq!(avcc.picture_parameter_sets[0].bytes, PPS);
    // Sync flags per sample (ISO/IEC 14496-12 §8.8.3.1 is_non_sync bit).
    let flags = &reader.moofs[0].trafs[0].trun.as_ref().unwrap().sample_flags;
    assert_eq!(
        flags.iter().map(|f| f & 0x1_0000 == 0).collect::<Vec<_>>(),
        [true, false, false]
    );
    // `mp4` 0.14 ignores trun data offsets, so check them by hand: each
    // moof's data offset points at the first byte of its mdat payload.
    let file = video_file();
    let moofs: Vec<usize> = file
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"moof")
        .map(|(i, _)| i - 4)
        .collect();
    assert_eq!(moofs.len(), 2);
    for (moof_start, moof) in moofs.iter().zip(&reader.moofs) {
        let offset = moof.trafs[0].trun.as_ref().unwrap().data_offset.unwrap() as usize;
        let moof_size = u32::from_be_bytes(file[*moof_start..moof_start + 4].try_into().unwrap()) as usize;
        assert_eq!(offset, moof_size + 8);
        assert_eq!(
            &file[moof_start + moof_size + 4..moof_start + moof_size + 8],
            b"mdat"
        );
        assert_eq!(file[moof_start + offset..moof_start + offset + 4], [0, 1, 2, 3]);
    }
}

#[test]
fn init_segment_is_cmaf_shaped() {
    let init = fmp4::init_segment(&avc()).unwrap();
    // ftyp iso6 first, then moov; no sample data (C17).
    assert_eq!(&init[4..12], b"ftypiso6");
    let ctx = mp4parse::read_mp4(&mut Cursor::new(&init)).unwrap();
    assert_eq!(ctx.tracks.len(), 1);
    let track = &ctx.tracks[0];
    assert_eq!(track.track_type, mp4parse::TrackType::Video);
    assert_eq!(track.timescale.map(|t| t.0), Some(90_000));
    assert!(track.duration.is_none_or(|d| d.0 == 0));
    let stsd = track.stsd.as_ref().unwrap();
    let mp4parse::SampleEntry::Video(v) = &stsd.descriptions[0] else {
        panic!("not a video sample entry");
    };
    assert_eq!(v.codec_type, mp4parse::CodecType::H264);
    assert_eq!((v.width, v.height), (1920, 1080));
    assert!(ctx.mvex.is_some());
    assert!(!init.windows(4).any(|w| w == b"mdat"));
    assert!(!init.windows(4).any(|w| w == b"avc3"));
}

#[test]
fn opus_init_carries_dops() {
    let init = fmp4::init_segment(&TrackConfig::Opus(OpusConfig {
        channels: 2,
        pre_skip: 312,
    }))
    .unwrap();
    let head = common::media::with_audio_entry(&init, |a| {
        assert_eq!(a.codec_type, mp4parse::CodecType::Opus);
        let mp4parse::AudioCodecSpecific::OpusSpecificBox(dops) = &a.codec_specific else {
            panic!("no dOps");
        };
        // RFC 7845 §5.1 OpusHead, rebuilt by mp4parse from the dOps it read.
        let mut head = Vec::new();
        mp4parse::serialize_opus_header(dops, &mut head).unwrap();
        head
    });
    assert_eq!(&head[..8], b"OpusHead");
    assert_eq!(head[9], 2, "channels");
    assert_eq!(u16::from_le_bytes([head[10], head[11]]), 312, "pre-skip");
    assert_eq!(
        u32::from_le_bytes([head[12], head[13], head[14], head[15]]),
        48_000
    );
}

#[test]
fn opus_fragment_parses_back() {
    let mut file = fmp4::init_segment(&TrackConfig::Opus(OpusConfig {
        channels: 2,
        pre_skip: 312,
    }))
    .unwrap();
    let samples = vec![
        Sample {
            duration: 960,
            size: 10,
            keyframe: true,
        };
        17
    ];
    file.extend(fmp4::fragment(7, 48_000 * 10, &samples, &[0xfc; 170]).unwrap());
    let size = file.len() as u64;
    let reader = mp4::Mp4Reader::read_header(Cursor::new(file), size).unwrap();
    let trun = reader.moofs[0].trafs[0].trun.as_ref().unwrap();
    assert_eq!(trun.sample_count, 17);
    assert_eq!(trun.sample_durations.iter().sum::<u32>(), 17 * 960);
    assert_eq!(
        reader.moofs[0].trafs[0]
            .tfdt
            .as_ref()
            .unwrap()
            .base_media_decode_time,
        480_000
    );
}

#[test]
fn fragment_refuses_sizes_that_do_not_add_up() {
    let s = Sample {
        duration: 1,
        size: 5,
        keyframe: true,
    };
    assert!(fmp4::fragment(1, 0, &[s], &[0; 4]).is_err());
    assert!(fmp4::fragment(1, 0, &[], &[]).is_ok());
}
