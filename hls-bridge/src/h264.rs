//! H.264 over RTP (RFC 6184): single NAL unit, STAP-A and FU-A packets
//! become access units of length-prefixed NAL units (the `avc1` sample
//! format, ISO/IEC 14496-15), plus the SPS facts the playlists need.
//!
//! WebRTC H.264 has no B-frames (constrained baseline / baseline / main
//! without reordering as sent by browsers and openh264), so an access unit's
//! decode time equals its presentation time: the RTP timestamp.

use std::collections::VecDeque;

use h264_reader::nal::sps::{SeqParameterSet, SpsError};
use h264_reader::nal::{Nal as _, RefNal};

use crate::Error;

pub(crate) const NAL_IDR: u8 = 5;
pub(crate) const NAL_SPS: u8 = 7;
pub(crate) const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;
/// RFC 6184 §5.4 aggregation and fragmentation payload types.
const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// One decodable picture: every NAL unit with one RTP timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    /// Unwrapped 90 kHz RTP timestamp: PTS and DTS (no B-frames).
    pub timestamp: i64,
    /// Contains an IDR slice.
    pub keyframe: bool,
    /// NAL units, each prefixed by its 4-byte big-endian length; access
    /// unit delimiters removed, in-band SPS/PPS kept.
    pub data: Vec<u8>,
    /// The last SPS in this access unit, if any.
    pub sps: Option<Vec<u8>>,
    /// The last PPS in this access unit, if any.
    pub pps: Option<Vec<u8>>,
}

/// Counters of what the depacketizer dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct H264Stats {
    pub packets: u64,
    pub access_units: u64,
    /// FU-A fragments dropped: a start without an end, a middle or end
    /// without a start.
    pub broken_fragments: u64,
    /// Access units dropped: incomplete, or while waiting for an IDR.
    pub dropped_access_units: u64,
    /// Payloads that are not valid RFC 6184 (or use STAP-B/MTAP/FU-B).
    pub malformed: u64,
    /// Access units dropped because they outgrew [`MAX_ACCESS_UNIT_BYTES`]
    /// or [`MAX_ACCESS_UNIT_NALUS`] (a timestamp that stays and no marker).
    pub oversized_access_units: u64,
    /// Bytes held right now for the access unit being built and its FU-A
    /// reassembly: never more than [`MAX_ACCESS_UNIT_BYTES`].
    pub buffered_bytes: u64,
}

/// Largest access unit kept, all NAL units together: far above any WebRTC
/// keyframe (a 4K IDR is a few hundred KiB to 2 MiB), small enough that a
/// publisher that never ends an access unit cannot grow memory.
pub const MAX_ACCESS_UNIT_BYTES: usize = 8 << 20;

/// Most NAL units in one access unit: slices, parameter sets and SEI of a
/// real picture number in the tens; each held NAL unit costs an allocation.
pub const MAX_ACCESS_UNIT_NALUS: usize = 4096;

/// Depacketizes one H.264 RTP stream. Feed packets in sequence order with
/// [`H264Depacketizer::push`] (saying whether packets were lost just
/// before), drain access units with [`H264Depacketizer::poll`].
///
/// After any loss the current access unit is dropped, and so is every
/// following one until an access unit with an IDR arrives whole.
#[derive(Debug)]
pub struct H264Depacketizer {
    au: Option<AuBuilder>,
    fu: Option<Vec<u8>>,
    need_idr: bool,
    out: VecDeque<AccessUnit>,
    stats: H264Stats,
}

#[derive(Debug)]
struct AuBuilder {
    timestamp: i64,
    nalus: Vec<Vec<u8>>,
    /// Sum of the NAL units' lengths.
    bytes: usize,
    broken: bool,
    /// Outgrew the bounds: nothing more is kept until the next access unit.
    oversized: bool,
}

impl AuBuilder {
    /// Whether `more` bytes still fit beside what is held.
    fn fits(&self, more: usize) -> bool {
        self.bytes.saturating_add(more) <= MAX_ACCESS_UNIT_BYTES && self.nalus.len() < MAX_ACCESS_UNIT_NALUS
    }

    fn push_nalu(&mut self, nalu: &[u8], stats: &mut H264Stats) {
        if self.oversized {
            return;
        }
        if !self.fits(nalu.len()) {
            self.overflow(stats);
            return;
        }
        self.bytes += nalu.len();
        self.nalus.push(nalu.to_vec());
    }

    /// Drops what is held (its memory too) and ignores the rest of this
    /// access unit; it is counted once and dropped at its end.
    fn overflow(&mut self, stats: &mut H264Stats) {
        if !self.oversized {
            stats.oversized_access_units += 1;
        }
        self.oversized = true;
        self.broken = true;
        self.nalus = Vec::new();
        self.bytes = 0;
    }
}

impl Default for H264Depacketizer {
    fn default() -> Self {
        Self {
            au: None,
            fu: None,
            need_idr: true,
            out: VecDeque::new(),
            stats: H264Stats::default(),
        }
    }
}

impl H264Depacketizer {
    /// Takes one RTP packet's payload. `lost_before` says packets were lost
    /// between the previous packet pushed and this one.
    pub fn push(
        &mut self,
        timestamp: i64,
        marker: bool,
        payload: &[u8],
        lost_before: bool,
    ) -> Result<(), &'static str> {
        self.stats.packets += 1;
        if lost_before {
            // The lost packets may have ended the current access unit or
            // started this one: both are suspect.
            if self.fu.take().is_some() {
                self.stats.broken_fragments += 1;
            }
            if let Some(au) = &mut self.au {
                au.broken = true;
            }
        }
        if self.au.as_ref().is_some_and(|au| au.timestamp != timestamp) {
            if self.fu.take().is_some() {
                self.stats.broken_fragments += 1;
                if let Some(au) = &mut self.au {
                    au.broken = true;
                }
            }
            self.finish();
        }
        let au = self.au.get_or_insert_with(|| AuBuilder {
            timestamp,
            nalus: Vec::new(),
            bytes: 0,
            broken: lost_before,
            oversized: false,
        });
        let result = parse_payload(payload, au, &mut self.fu, &mut self.stats);
        if result.is_err() {
            self.stats.malformed += 1;
            au.broken = true;
        }
        if marker {
            if self.fu.take().is_some() {
                self.stats.broken_fragments += 1;
                if let Some(au) = &mut self.au {
                    au.broken = true;
                }
            }
            self.finish();
        }
        result
    }

    /// The next complete access unit.
    pub fn poll(&mut self) -> Option<AccessUnit> {
        self.out.pop_front()
    }

    pub fn stats(&self) -> H264Stats {
        let au = self.au.as_ref().map_or(0, |au| au.bytes);
        let fu = self.fu.as_ref().map_or(0, Vec::len);
        H264Stats {
            buffered_bytes: (au + fu) as u64,
            ..self.stats
        }
    }

    /// Waiting for an IDR: at the start, after loss or after [`Self::resync`].
    pub fn waiting_for_idr(&self) -> bool {
        self.need_idr
    }

    /// Drops everything up to the next IDR (e.g. the stream's parameters
    /// changed and the consumer needs a fresh start).
    pub fn resync(&mut self) {
        self.need_idr = true;
    }

    fn finish(&mut self) {
        let Some(au) = self.au.take() else { return };
        if au.broken || au.nalus.is_empty() {
            self.stats.dropped_access_units += 1;
            self.need_idr = true;
            return;
        }
        let keyframe = au.nalus.iter().any(|n| nal_type(n) == NAL_IDR);
        if self.need_idr && !keyframe {
            self.stats.dropped_access_units += 1;
            return;
        }
        self.need_idr = false;
        let mut sps = None;
        let mut pps = None;
        let mut data = Vec::with_capacity(au.nalus.iter().map(|n| n.len() + 4).sum());
        for nalu in &au.nalus {
            match nal_type(nalu) {
                NAL_AUD => continue,
                NAL_SPS => sps = Some(nalu.clone()),
                NAL_PPS => pps = Some(nalu.clone()),
                _ => {}
            }
            // An access unit is bounded by MAX_ACCESS_UNIT_BYTES, so each
            // of its NAL units fits a u32.
            data.extend_from_slice(&(nalu.len() as u32).to_be_bytes());
            data.extend_from_slice(nalu);
        }
        self.stats.access_units += 1;
        self.out.push_back(AccessUnit {
            timestamp: au.timestamp,
            keyframe,
            data,
            sps,
            pps,
        });
    }
}

fn nal_type(nalu: &[u8]) -> u8 {
    nalu.first().map_or(0, |b| b & 0x1f)
}

fn parse_payload(
    payload: &[u8],
    au: &mut AuBuilder,
    fu: &mut Option<Vec<u8>>,
    stats: &mut H264Stats,
) -> Result<(), &'static str> {
    let Some(&first) = payload.first() else {
        return Err("empty payload");
    };
    if au.oversized {
        // Already dropped and counted; the rest of it is not kept.
        *fu = None;
        return Ok(());
    }
    if first & 0x80 != 0 {
        return Err("forbidden_zero_bit set");
    }
    match first & 0x1f {
        1..=23 => {
            au.push_nalu(payload, stats);
            Ok(())
        }
        STAP_A => {
            // RFC 6184 §5.7.1: [NALU size u16][NALU] ...
            let mut rest = &payload[1..];
            if rest.is_empty() {
                return Err("empty STAP-A");
            }
            while !rest.is_empty() {
                let [a, b, tail @ ..] = rest else {
                    return Err("truncated STAP-A size");
                };
                let size = usize::from(u16::from_be_bytes([*a, *b]));
                if size == 0 || size > tail.len() {
                    return Err("STAP-A size out of range");
                }
                au.push_nalu(&tail[..size], stats);
                rest = &tail[size..];
            }
            Ok(())
        }
        FU_A => {
            // RFC 6184 §5.8: FU indicator, FU header (S E R type), fragment.
            let [indicator, header, fragment @ ..] = payload else {
                return Err("truncated FU-A");
            };
            let start = header & 0x80 != 0;
            let end = header & 0x40 != 0;
            if start {
                if fu.take().is_some() {
                    stats.broken_fragments += 1;
                    au.broken = true;
                }
                if !au.fits(fragment.len() + 1) {
                    au.overflow(stats);
                    return Ok(());
                }
                let mut nalu = Vec::with_capacity(fragment.len() * 8 + 1);
                nalu.push((indicator & 0xe0) | (header & 0x1f));
                nalu.extend_from_slice(fragment);
                *fu = Some(nalu);
            } else {
                let Some(nalu) = fu.as_mut() else {
                    // A middle or end whose start we never saw.
                    stats.broken_fragments += 1;
                    au.broken = true;
                    return Ok(());
                };
                // The reassembly counts toward its access unit's bound.
                if !au.fits(nalu.len() + fragment.len()) {
                    *fu = None;
                    au.overflow(stats);
                    return Ok(());
                }
                nalu.extend_from_slice(fragment);
            }
            if end && let Some(nalu) = fu.take() {
                au.bytes += nalu.len();
                au.nalus.push(nalu);
            }
            Ok(())
        }
        _ => Err("unsupported packetization (STAP-B, MTAP or FU-B)"),
    }
}

/// What the playlists and the init segment need from an SPS/PPS pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    pub sps: Vec<u8>,
    pub pps: Vec<u8>,
    pub profile_idc: u8,
    pub constraint_flags: u8,
    pub level_idc: u8,
    pub width: u32,
    pub height: u32,
}

impl AvcConfig {
    pub fn new(sps: Vec<u8>, pps: Vec<u8>) -> Result<Self, Error> {
        let info = parse_sps(&sps)?;
        if pps.is_empty() {
            return Err(Error::MalformedSps("empty PPS".into()));
        }
        Ok(Self {
            sps,
            pps,
            profile_idc: info.profile_idc,
            constraint_flags: info.constraint_flags,
            level_idc: info.level_idc,
            width: info.width,
            height: info.height,
        })
    }

    /// RFC 6381 `avc1.PPCCLL`, e.g. `avc1.42e01f`.
    pub fn codec_string(&self) -> String {
        format!(
            "avc1.{:02x}{:02x}{:02x}",
            self.profile_idc, self.constraint_flags, self.level_idc
        )
    }
}

/// The SPS fields the bridge uses (ITU-T H.264 §7.3.2.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpsInfo {
    pub profile_idc: u8,
    pub constraint_flags: u8,
    pub level_idc: u8,
    pub width: u32,
    pub height: u32,
}

/// Parses an SPS NAL unit (with its one-byte NAL header), emulation
/// prevention bytes included, through h264-reader (§7.3.2.1.1, VUI too).
pub fn parse_sps(nalu: &[u8]) -> Result<SpsInfo, Error> {
    if nal_type(nalu) != NAL_SPS {
        return Err(Error::MalformedSps("not an SPS NAL unit".into()));
    }
    let nal = RefNal::new(nalu, &[], true);
    let syntax = |e: SpsError| Error::MalformedSps(format!("{e:?}"));
    let sps = SeqParameterSet::from_bits(nal.rbsp_bits()).map_err(syntax)?;
    let (width, height) = sps.pixel_dimensions().map_err(syntax)?;
    // A picture no encoder sends: refused before it sizes any buffer.
    let in_range = |v: u32| (1..=16384).contains(&v);
    if !in_range(width) || !in_range(height) {
        return Err(Error::MalformedSps(format!("{width}x{height} out of range")));
    }
    Ok(SpsInfo {
        profile_idc: sps.profile_idc.into(),
        constraint_flags: sps.constraint_flags.into(),
        level_idc: sps.level_idc,
        width,
        height,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes bits MSB first; for building SPSs in tests.
    #[derive(Default)]
    pub(crate) struct BitWriter {
        bytes: Vec<u8>,
        bits: usize,
    }

    impl BitWriter {
        pub(crate) fn bit(&mut self, b: bool) {
            if self.bits.is_multiple_of(8) {
                self.bytes.push(0);
            }
            if b {
                let last = self.bytes.len() - 1;
                self.bytes[last] |= 0x80 >> (self.bits % 8);
            }
            self.bits += 1;
        }
        pub(crate) fn bits(&mut self, v: u32, n: u32) {
            for i in (0..n).rev() {
                self.bit((v >> i) & 1 == 1);
            }
        }
        pub(crate) fn ue(&mut self, v: u32) {
            let x = v + 1;
            let len = 32 - x.leading_zeros();
            self.bits(0, len - 1);
            self.bits(x, len);
        }
        pub(crate) fn finish(mut self) -> Vec<u8> {
            self.bit(true); // rbsp_stop_one_bit
            self.bytes
        }
    }

    /// A constrained-baseline SPS (profile 66, level 3.1) for `w`x`h`,
    /// with cropping when the size is not a multiple of 16.
    pub(crate) fn sps(w: u32, h: u32) -> Vec<u8> {
        let mut b = BitWriter::default();
        b.bits(66, 8);
        b.bits(0xe0, 8);
        b.bits(31, 8);
        b.ue(0); // sps id
        b.ue(0); // log2_max_frame_num - 4
        b.ue(2); // poc type 2
        b.ue(1); // max refs
        b.bit(false);
        let (mw, mh) = (w.div_ceil(16), h.div_ceil(16));
        b.ue(mw - 1);
        b.ue(mh - 1);
        b.bit(true); // frame_mbs_only
        b.bit(true); // direct_8x8
        let (cr, cb) = (mw * 16 - w, mh * 16 - h);
        b.bit(cr > 0 || cb > 0);
        if cr > 0 || cb > 0 {
            b.ue(0);
            b.ue(cr / 2);
            b.ue(0);
            b.ue(cb / 2);
        }
        b.bit(false); // vui
        let mut nalu = vec![0x67];
        nalu.extend(b.finish());
        nalu
    }

    pub(crate) const PPS: [u8; 4] = [0x68, 0xce, 0x3c, 0x80];

    #[test]
    fn sps_sizes_and_codec_string() {
        for (w, h) in [(1280, 720), (640, 360), (320, 180), (1920, 1080), (16, 16)] {
            let c = AvcConfig::new(sps(w, h), PPS.to_vec()).unwrap();
            assert_eq!((c.width, c.height), (w, h));
            assert_eq!(c.codec_string(), "avc1.42e01f");
        }
    }

    #[test]
    fn sps_high_profile_from_the_wild() {
        // A 1080p High-profile SPS (level 4.0) as written by a real encoder,
        // with an emulation prevention byte.
        let sps = [
            103, 100, 0, 40, 172, 217, 64, 120, 2, 39, 229, 132, 0, 0, 3, 0, 4, 0, 0, 3, 0, 240, 60, 96, 198,
            88,
        ];
        let info = parse_sps(&sps).unwrap();
        assert_eq!((info.width, info.height), (1920, 1080));
        assert_eq!(
            AvcConfig::new(sps.to_vec(), vec![0x68, 1])
                .unwrap()
                .codec_string(),
            "avc1.640028"
        );
    }

    #[test]
    fn a_refused_sps_names_the_field() {
        // Cut after level_idc: the id is missing.
        let err = parse_sps(&[0x67, 66, 0xe0, 31]).unwrap_err().to_string();
        assert!(err.contains("seq_parameter_set_id"), "{err}");
        // 1,025 macroblocks wide is 16,400 pixels: wider than any encoder writes.
        let err = parse_sps(&sps(16_384 + 16, 16)).unwrap_err().to_string();
        assert!(err.contains("out of range"), "{err}");
    }

    #[test]
    fn sps_garbage_is_an_error_not_a_panic() {
        assert!(parse_sps(&[]).is_err());
        assert!(parse_sps(&[0x67]).is_err());
        assert!(parse_sps(&[0x67, 66, 0, 31, 0, 0, 0, 0, 0]).is_err());
        for n in 0..64u8 {
            let mut v = vec![0x67];
            v.extend((0..n).map(|i| i.wrapping_mul(37) ^ 0x5a));
            let _ = parse_sps(&v);
        }
    }
}
