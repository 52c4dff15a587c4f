//! Opus → AAC-LC: what a player decodes from the bridge's AAC rendition.
//! A 1 kHz tone goes through libopus, the transcoder and the fMP4 writer,
//! and comes back out of two AAC decoders (FDK's and ffmpeg's) as 1 kHz,
//! at the right time; `ffprobe` reads the init segment + fragment.

use crate::common;

use std::io::Cursor;

use common::media::{
    dominant_frequency, ffmpeg_tool, left, opus_lookahead, opus_packets, tone, with_audio_entry,
};
use hls_bridge::fmp4::{self, Sample, TrackConfig};
use hls_bridge::transcode::aac::{AacAccessUnit, AacTranscoderConfig, OpusToAac};

/// Where the tone's RTP timeline starts (any value far from 0).
const START: i64 = 7_000_000;

/// `seconds` of input: silence for the first half second, then a 1 kHz tone.
fn transcode_tone(seconds: usize) -> (OpusToAac, Vec<AacAccessUnit>) {
    let mut pcm = vec![0i16; 24_000 * 2];
    pcm.extend(tone(1000.0, 0, 48_000 * seconds - 24_000, 12_000.0));
    let mut t = OpusToAac::new(AacTranscoderConfig::default()).unwrap();
    for (i, packet) in opus_packets(&pcm).iter().enumerate() {
        t.handle_opus(START + i as i64 * 960, packet).unwrap();
    }
    t.finish().unwrap();
    let aus = std::iter::from_fn(|| t.poll_access_unit()).collect();
    (t, aus)
}

/// Decodes raw AAC access units with FDK's decoder, configured from the
/// transcoder's AudioSpecificConfig like a player configures from `esds`.
fn fdk_decode(asc: &[u8], aus: &[AacAccessUnit]) -> Vec<i16> {
    let mut dec = fdk_aac::dec::Decoder::new(fdk_aac::dec::Transport::Raw);
    dec.config_raw(asc).unwrap();
    let mut out = Vec::new();
    let mut frame = vec![0i16; 2048 * 8];
    for au in aus {
        assert_eq!(
            dec.fill(&au.data).unwrap(),
            au.data.len(),
            "whole access unit taken"
        );
        dec.decode_frame(&mut frame).unwrap();
        let n = dec.decoded_frame_size();
        assert_eq!(n, 2048, "1024 stereo samples per access unit");
        out.extend_from_slice(&frame[..n]);
    }
    out
}

/// The first sample (timeline time) where the tone is clearly on.
fn onset(first_timestamp: i64, pcm: &[i16]) -> i64 {
    let l = left(pcm);
    let i = l.iter().position(|x| x.abs() > 6_000.0).unwrap();
    first_timestamp + i as i64
}

#[test]
fn tone_survives_opus_to_aac() {
    let (t, aus) = transcode_tone(2);
    assert_eq!(t.aac_config().codec_string(), "mp4a.40.2");
    // Contiguous 1024-sample access units.
    for w in aus.windows(2) {
        assert_eq!(w[1].timestamp - w[0].timestamp, 1024);
    }
    let pcm = fdk_decode(&t.aac_config().audio_specific_config, &aus);
    assert_eq!(pcm.len(), aus.len() * 2048);
    assert_eq!(dominant_frequency(&left(&pcm)[48_000..72_000]), 1000.0);
}

/// init + one fragment of every access unit, as an LL-HLS part would carry.
fn cmaf_file(t: &OpusToAac, aus: &[AacAccessUnit]) -> Vec<u8> {
    let mut file = fmp4::init_segment(&TrackConfig::Aac(t.aac_config().clone())).unwrap();
    let samples: Vec<Sample> = aus
        .iter()
        .map(|au| Sample {
            duration: 1024,
            size: au.data.len() as u32,
            keyframe: true,
        })
        .collect();
    let data: Vec<u8> = aus.iter().flat_map(|au| au.data.iter().copied()).collect();
    // The segmenter maps the timeline to tfdt; any origin before the first unit works.
    let base = (aus[0].timestamp - START + 48_000) as u64;
    file.extend(fmp4::fragment(1, base, &samples, &data).unwrap());
    file
}

#[test]
fn aac_fmp4_parses_back_and_plays_in_ffmpeg() {
    let (t, aus) = transcode_tone(2);
    let file = cmaf_file(&t, &aus);

    // mp4parse (Firefox): mp4a with an esds carrying our AudioSpecificConfig.
    with_audio_entry(&file, |a| {
        assert_eq!(a.codec_type, mp4parse::CodecType::AAC);
        let mp4parse::AudioCodecSpecific::ES_Descriptor(esds) = &a.codec_specific else {
            panic!("no esds");
        };
        assert_eq!(esds.audio_object_type, Some(2));
        assert_eq!(esds.audio_sample_rate, Some(48_000));
        assert_eq!(esds.audio_channel_count, Some(2));
        assert_eq!(
            esds.decoder_specific_data.iter().copied().collect::<Vec<u8>>(),
            [0x11, 0x90]
        );
    });

    // `mp4` reads the fragment's samples.
    let reader = mp4::Mp4Reader::read_header(Cursor::new(file.clone()), file.len() as u64).unwrap();
    let trun = reader.moofs[0].trafs[0].trun.as_ref().unwrap();
    assert_eq!(trun.sample_count as usize, aus.len());

    // ffprobe and ffmpeg's own AAC decoder.
    let dir = std::env::temp_dir().join(format!("wave-aac-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("aac.mp4");
    std::fs::write(&path, &file).unwrap();
    let probe = ffmpeg_tool(
        "ffprobe",
        &["-show_streams", "-of", "default=noprint_wrappers=1"],
        &path,
    );
    let probe = String::from_utf8(probe).unwrap();
    for line in ["codec_name=aac", "profile=LC", "channels=2", "sample_rate=48000"] {
        assert!(probe.lines().any(|l| l == line), "{line} not in:\n{probe}");
    }
    let raw = ffmpeg_tool("ffmpeg", &["-f", "s16le", "-ac", "2", "-ar", "48000", "-"], &path);
    let pcm: Vec<i16> = raw
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert_eq!(pcm.len(), aus.len() * 2048);
    assert_eq!(dominant_frequency(&left(&pcm)[48_000..72_000]), 1000.0);
    // Timing: ffmpeg's output starts at the first access unit's timestamp.
    // The tone starts 0.5 s into the input, libopus delays it by its
    // lookahead, and the timestamps already absorb FDK's encoder delay.
    // (FDK's own decoder adds output delay of its own, so timing is
    // checked here.)
    let expected = START + 24_000 + opus_lookahead() as i64;
    let got = onset(aus[0].timestamp, &pcm);
    assert!(
        (got - expected).abs() < 120,
        "tone at {got}, expected {expected} (encoder delay {})",
        t.encoder_delay()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
