//! One ingest as the engine's source sees it (Sans-IO): H.264 access
//! units and audio frames in, RTP packets of an H.264 and an Opus track
//! out, each stream with the sender report its clock gives; AAC access
//! units also go out as they came, for LL-HLS. An RTMP
//! publish feeds it FLV messages (`handle_video`, `handle_audio`); an RTSP
//! pull the frames `retina` depacketized (`handle_h264_config`,
//! `handle_h264`, `handle_audio_config`, `handle_audio_frame`). Time
//! comes in: `now` for arrival, and the NTP time of the first frame from
//! the driver.

use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::{Ext, MediaPacket};

use super::audio::{OpusPacket, ToOpus};
pub use super::flv::AvcConfig;
use super::flv::{self, Audio, Video};
use super::{Refusal, h264};
use crate::engine::{INGEST_AUDIO_PT, INGEST_VIDEO_PT, IngestAac, IngestItem, IngestPacket, SenderReport};

/// RTP payload budget: a 1,200-byte payload keeps the SRTP datagram under
/// every path MTU WebRTC meets (libwebrtc uses the same order).
const MAX_PAYLOAD: usize = 1200;
/// Largest video message taken: a 4K keyframe at a high bitrate is a few
/// MiB; RTMP's own limit is 16 MiB.
pub const MAX_VIDEO_MESSAGE: usize = 8 << 20;
/// Largest AAC access unit: 6,144 bits per channel (ISO/IEC 14496-3
/// §4.5.3.2) for 8 channels is 6 KiB.
const MAX_AUDIO_MESSAGE: usize = 8 << 10;
/// NAL units in one access unit (as the LL-HLS depacketizer bounds them).
const MAX_UNITS: usize = 4096;
/// How often each stream carries a sender report.
const REPORT_EVERY: Duration = Duration::from_secs(1);

pub struct Source {
    /// NTP time (RFC 5905, 32.32) of the first message and its timestamp.
    epoch: Option<(u64, u32)>,
    ntp_at_start: u64,
    avc: Option<AvcConfig>,
    audio: Option<ToOpus>,
    video_seq: u64,
    audio_seq: u64,
    /// Last sender report per stream (video, Opus), by FLV timestamp.
    reported: [Option<u32>; 2],
    out: Vec<IngestItem>,
    scratch: Vec<Vec<u8>>,
    opus: Vec<OpusPacket>,
}

impl Source {
    /// `ntp_now` is the wall clock (NTP 32.32) at the first message.
    pub fn new(ntp_now: u64) -> Source {
        Source {
            epoch: None,
            ntp_at_start: ntp_now,
            avc: None,
            audio: None,
            video_seq: 0,
            audio_seq: 0,
            reported: [None; 2],
            out: Vec::new(),
            scratch: Vec::new(),
            opus: Vec::new(),
        }
    }

    /// One RTMP video message at `ts_ms`.
    pub fn handle_video(&mut self, now: Instant, ts_ms: u32, tag: &[u8]) -> Result<(), Refusal> {
        if tag.len() > MAX_VIDEO_MESSAGE {
            return Err(Refusal::Oversized("video message"));
        }
        match flv::video(tag)? {
            Video::Config(c) => {
                self.handle_h264_config(c);
                Ok(())
            }
            Video::Nothing => Ok(()),
            Video::Frame {
                composition_ms, data, ..
            } => {
                let pts = i64::from(ts_ms) + i64::from(composition_ms);
                // RFC 6184 §5.1: 90 kHz, the presentation time.
                self.handle_h264(now, ts_ms, (pts * 90) as u32, data)
            }
        }
    }

    /// One RTMP audio message at `ts_ms`.
    pub fn handle_audio(&mut self, now: Instant, ts_ms: u32, tag: &[u8]) -> Result<(), Refusal> {
        if tag.len() > MAX_AUDIO_MESSAGE {
            return Err(Refusal::Oversized("audio message"));
        }
        match flv::audio(tag)? {
            Audio::Config(asc) => {
                self.handle_audio_config(ToOpus::aac(asc)?);
                Ok(())
            }
            Audio::Frame(frame) => self.handle_audio_frame(now, ts_ms, frame),
        }
    }

    /// The SPS, PPS and NAL unit length size of the H.264 that follows.
    pub fn handle_h264_config(&mut self, config: AvcConfig) {
        self.avc = Some(config);
    }

    /// One access unit (length-prefixed NAL units) decoded at `ts_ms`
    /// (the source's clock in ms), presented at `rtp_ts` (90 kHz).
    pub fn handle_h264(&mut self, now: Instant, ts_ms: u32, rtp_ts: u32, data: &[u8]) -> Result<(), Refusal> {
        let Some(avc) = &self.avc else {
            return Err(Refusal::NotAnnounced("H.264 before its AVC configuration"));
        };
        if data.len() > MAX_VIDEO_MESSAGE {
            return Err(Refusal::Oversized("video access unit"));
        }
        let units = flv::nal_units(data, avc.length_size, MAX_UNITS)?;
        if units.is_empty() {
            return Ok(());
        }
        self.scratch.clear();
        h264::packetize(&units, &avc.sps, &avc.pps, MAX_PAYLOAD, &mut self.scratch);
        let report = self.report(0, ts_ms, rtp_ts, 90);
        let last = self.scratch.len().saturating_sub(1);
        for (i, payload) in self.scratch.drain(..).enumerate() {
            self.out.push(IngestItem::Rtp(IngestPacket {
                video: true,
                packet: MediaPacket {
                    pt: INGEST_VIDEO_PT,
                    seq: self.video_seq,
                    rtp_ts,
                    arrival: now,
                    marker: i == last,
                    ext: Ext::default(),
                    payload: Arc::from(payload),
                },
                report: if i == 0 { report } else { None },
            }));
            self.video_seq += 1;
        }
        Ok(())
    }

    /// The decoder of the audio that follows.
    pub fn handle_audio_config(&mut self, decoder: ToOpus) {
        self.audio = Some(decoder);
    }

    /// One audio frame at `ts_ms` (the source's clock in ms).
    pub fn handle_audio_frame(&mut self, now: Instant, ts_ms: u32, frame: &[u8]) -> Result<(), Refusal> {
        let Some(audio) = &self.audio else {
            return Err(Refusal::NotAnnounced("audio before its configuration"));
        };
        if frame.len() > MAX_AUDIO_MESSAGE {
            return Err(Refusal::Oversized("audio frame"));
        }
        if let Some(config) = audio.audio_specific_config().cloned() {
            // The access unit as it came, before the Opus made from it.
            // Each unit carries its clock: LL-HLS may start after the first.
            let report = Some(self.clock(ts_ms, ts_ms, 1));
            self.out.push(IngestItem::Aac(IngestAac {
                config,
                ts_ms,
                data: frame.to_vec(),
                report,
            }));
        }
        let Some(audio) = &mut self.audio else {
            return Ok(());
        };
        let mut opus = std::mem::take(&mut self.opus);
        audio.handle_frame(ts_ms, frame, &mut opus);
        for p in opus.drain(..) {
            let report = self.report(1, ts_ms, p.rtp_ts, 48);
            self.out.push(IngestItem::Rtp(IngestPacket {
                video: false,
                packet: MediaPacket {
                    pt: INGEST_AUDIO_PT,
                    seq: self.audio_seq,
                    rtp_ts: p.rtp_ts,
                    arrival: now,
                    marker: false,
                    ext: Ext::default(),
                    payload: Arc::from(p.payload),
                },
                report,
            }));
            self.audio_seq += 1;
        }
        self.opus = opus;
        Ok(())
    }

    /// The packets (and AAC access units) made since the last call.
    pub fn take_packets(&mut self) -> Vec<IngestItem> {
        std::mem::take(&mut self.out)
    }

    /// Audio frames that did not decode (skipped, concealed by silence).
    pub fn audio_errors(&self) -> u64 {
        self.audio.as_ref().map_or(0, ToOpus::errors)
    }

    /// A sender report for stream `index` once per [`REPORT_EVERY`]: the
    /// RTP timestamp `rtp_ts` (at `khz`; the AAC units' clock is the FLV
    /// ms, 1 kHz) was captured at the wall-clock time of the first message
    /// plus the FLV time since.
    fn report(&mut self, index: usize, ts_ms: u32, rtp_ts: u32, khz: u32) -> Option<SenderReport> {
        let due = self.reported[index]
            .is_none_or(|last| ts_ms.wrapping_sub(last) >= REPORT_EVERY.as_millis() as u32);
        if !due {
            return None;
        }
        self.reported[index] = Some(ts_ms);
        Some(self.clock(ts_ms, rtp_ts, khz))
    }

    /// The report's mapping at `ts_ms`, due or not.
    fn clock(&mut self, ts_ms: u32, rtp_ts: u32, khz: u32) -> SenderReport {
        let (ntp0, ts0) = *self.epoch.get_or_insert((self.ntp_at_start, ts_ms));
        // The RTP timestamp is the capture time of the media (for video the
        // PTS); the report maps it back to the message's wall-clock time.
        let rtp_ms = rtp_ts.wrapping_sub(ts_ms.wrapping_mul(khz)) as i32 / khz as i32;
        let since = i64::from(ts_ms.wrapping_sub(ts0) as i32) + i64::from(rtp_ms);
        let ntp = ntp0.wrapping_add_signed((since << 32) / 1000);
        SenderReport {
            ntp_time: ntp,
            rtp_time: rtp_ts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Vec<u8> {
        let mut tag = vec![
            0x17, 0, 0, 0, 0, 1, 0x42, 0xe0, 0x1f, 0xff, 0xe1, 0, 3, 0x67, 0x42, 0x1f,
        ];
        tag.extend_from_slice(&[1, 0, 2, 0x68, 0xce]);
        tag
    }

    #[test]
    fn h264_frames_become_rtp_with_parameter_sets_before_each_idr() {
        let now = Instant::now();
        let mut s = Source::new(1 << 32);
        // Media before the configuration: the codec was not announced.
        let idr = [0x17, 1, 0, 0, 0, 0, 0, 0, 3, 0x65, 0x88, 0x84];
        assert!(matches!(
            s.handle_video(now, 0, &idr),
            Err(Refusal::NotAnnounced(_))
        ));
        s.handle_video(now, 0, &config()).unwrap();
        s.handle_video(now, 0, &idr).unwrap();
        s.handle_video(now, 33, &[0x27, 1, 0, 0, 0, 0, 0, 0, 2, 0x41, 0x9a])
            .unwrap();
        let p: Vec<IngestPacket> = s
            .take_packets()
            .into_iter()
            .map(|i| match i {
                IngestItem::Rtp(p) => p,
                IngestItem::Aac(a) => panic!("AAC from video: {a:?}"),
            })
            .collect();
        assert_eq!(p.len(), 3);
        assert_eq!(
            &p[0].packet.payload[..],
            &[0x78, 0, 3, 0x67, 0x42, 0x1f, 0, 2, 0x68, 0xce]
        );
        assert_eq!(&p[1].packet.payload[..], &[0x65, 0x88, 0x84]);
        assert_eq!(
            p.iter()
                .map(|p| (p.packet.seq, p.packet.rtp_ts, p.packet.marker))
                .collect::<Vec<_>>(),
            vec![(0, 0, false), (1, 0, true), (2, 33 * 90, true)]
        );
        let sr = p[0].report.expect("the first packet carries a report");
        assert_eq!((sr.ntp_time, sr.rtp_time), (1 << 32, 0));
        assert!(p[2].report.is_none());
    }

    #[test]
    fn aac_frames_go_out_as_they_came_before_their_opus_on_a_millisecond_clock() {
        let now = Instant::now();
        let mut s = Source::new(1 << 32);
        // AAC-LC, 44.1 kHz, stereo; then two access units FDK cannot
        // decode (no Opus from them): LL-HLS gets them as sent all the same.
        s.handle_audio(now, 0, &[0xaf, 0x00, 0x12, 0x10]).unwrap();
        s.handle_audio(now, 0, &[0xaf, 1, 0x21, 0x10, 0x04]).unwrap();
        s.handle_audio(now, 23, &[0xaf, 1, 0xde, 0xad]).unwrap();
        let items = s.take_packets();
        let aac: Vec<&IngestAac> = items
            .iter()
            .filter_map(|i| match i {
                IngestItem::Aac(a) => Some(a),
                IngestItem::Rtp(_) => None,
            })
            .collect();
        assert_eq!(aac.len(), 2);
        assert!(aac.iter().all(|a| a.config[..] == [0x12, 0x10]));
        assert_eq!((aac[0].ts_ms, &aac[0].data[..]), (0, &[0x21, 0x10, 0x04][..]));
        assert_eq!((aac[1].ts_ms, &aac[1].data[..]), (23, &[0xde, 0xad][..]));
        // The AAC stream's clock is the FLV ms, dated like the others, on
        // every unit.
        let sr = aac[0].report.expect("every unit carries a report");
        assert_eq!((sr.ntp_time, sr.rtp_time), (1 << 32, 0));
        let sr = aac[1].report.expect("every unit carries a report");
        assert_eq!((sr.ntp_time, sr.rtp_time), ((1 << 32) + (23 << 32) / 1000, 23));

        // A real AAC stream: each access unit precedes the Opus made from it.
        let encoder = fdk_aac::enc::Encoder::new(fdk_aac::enc::EncoderParams {
            bit_rate: fdk_aac::enc::BitRate::Cbr(96_000),
            sample_rate: 44_100,
            transport: fdk_aac::enc::Transport::Raw,
            channels: fdk_aac::enc::ChannelMode::Stereo,
            audio_object_type: fdk_aac::enc::AudioObjectType::Mpeg4LowComplexity,
        })
        .unwrap();
        let asc = encoder.info().unwrap().confBuf[..2].to_vec();
        let mut s = Source::new(1 << 32);
        let mut tag = vec![0xaf, 0x00];
        tag.extend_from_slice(&asc);
        s.handle_audio(now, 0, &tag).unwrap();
        let pcm: Vec<i16> = (0..2048)
            .map(|i| ((i as f64 * 0.06).sin() * 8000.0) as i16)
            .collect();
        let mut sent = Vec::new();
        for k in 0..50u32 {
            let mut out = vec![0u8; 1536];
            let done = encoder.encode(&pcm, &mut out).unwrap();
            if done.output_size == 0 {
                continue;
            }
            let mut tag = vec![0xaf, 1];
            tag.extend_from_slice(&out[..done.output_size]);
            s.handle_audio(now, k * 1024 * 1000 / 44_100, &tag).unwrap();
            sent.push(out[..done.output_size].to_vec());
        }
        assert_eq!(s.audio_errors(), 0);
        let items = s.take_packets();
        let first_opus = items.iter().position(|i| matches!(i, IngestItem::Rtp(_)));
        let first_opus = first_opus.expect("Opus for WebRTC viewers");
        assert!(matches!(items[0], IngestItem::Aac(_)) && first_opus > 0);
        let passed: Vec<Vec<u8>> = items
            .into_iter()
            .filter_map(|i| match i {
                IngestItem::Aac(a) => Some(a.data),
                IngestItem::Rtp(_) => None,
            })
            .collect();
        assert_eq!(passed, sent);

        // G.711 has no AAC to pass through.
        let mut g = Source::new(1 << 32);
        g.handle_audio_config(super::super::audio::ToOpus::g711(super::super::audio::Law::Mu).unwrap());
        for k in 0..10 {
            g.handle_audio_frame(now, k * 20, &[0xff; 160]).unwrap();
        }
        let items = g.take_packets();
        assert!(!items.is_empty() && items.iter().all(|i| matches!(i, IngestItem::Rtp(_))));
    }

    #[test]
    fn garbage_after_valid_configurations_is_refused_or_skipped_never_a_panic() {
        let now = Instant::now();
        let mut next = crate::ingest::xorshift(0x2545_f491_4f6c_dd1d);
        // AAC-LC, 44.1 kHz, stereo.
        let asc = [0xaf, 0x00, 0x12, 0x10];
        for round in 0..2000u32 {
            let mut s = Source::new(1 << 32);
            s.handle_video(now, 0, &config()).unwrap();
            s.handle_audio(now, 0, &asc).unwrap();
            let len = (next() % 900) as usize;
            let mut tag: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Mostly well-formed headers with random bodies, so the parsers
            // past them are reached.
            match round % 3 {
                0 if tag.len() >= 5 => tag[..5].copy_from_slice(&[0x27, 1, 0, 0, 0]),
                1 if tag.len() >= 2 => tag[..2].copy_from_slice(&[0xaf, 1]),
                _ => {}
            }
            let _ = s.handle_video(now, round, &tag);
            let _ = s.handle_audio(now, round * 23, &tag);
            let _ = s.take_packets();
        }
    }
}
