//! Synthetic media, encoded once and looped: H.264 in three simulcast
//! layers (a moving test pattern through openh264) and an Opus tone.
//!
//! Every video frame starts with an RTP packet that carries a SEI
//! "user data unregistered" NAL unit (H.264 D.2.7) naming the publisher,
//! the layer and a frame number that never repeats. Viewers in the same
//! process read it to learn which layer they receive and to look up the
//! instant the frame was sent (end-to-end forwarding latency).

use std::sync::Arc;

use openh264::encoder::{BitRate, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, RateControlMode};
use openh264::formats::YUVBuffer;
use openh264::{OpenH264API, Timestamp};

use crate::error::Error;

/// Video frame rate and RTP clock.
pub const FPS: u32 = 30;
pub const VIDEO_CLOCK: u32 = 90_000;
pub const TS_PER_FRAME: u32 = VIDEO_CLOCK / FPS;
/// Audio: 20 ms Opus frames on the 48 kHz RTP clock.
pub const AUDIO_FRAME_MS: u64 = 20;
pub const TS_PER_AUDIO_FRAME: u32 = 960;
/// Largest RTP payload written (fits a 1,200-byte datagram with headers and SRTP tag).
pub const MAX_PAYLOAD: usize = 1100;
/// Simulcast rids, low to high, as browsers and the node use them.
pub const RIDS: [&str; 3] = ["q", "h", "f"];
/// Layer sizes, low to high.
pub const SIZES: [(usize, usize); 3] = [(320, 180), (640, 360), (1280, 720)];

/// The SEI payload's UUID (16 bytes, no zero byte so no emulation prevention is needed).
pub const SEI_UUID: [u8; 16] = *b"WAVE-loadtest-v1";
/// Tag bytes after the UUID: 7 bits in each byte, high bit set (never zero).
const TAG_LEN: usize = 8;
/// NAL type 6, payload type 5, payload size, UUID, tag, rbsp trailing bits.
const SEI_LEN: usize = 3 + 16 + TAG_LEN + 1;

/// What the first packet of a frame says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTag {
    pub publisher: u32,
    pub layer: usize,
    pub keyframe: bool,
    /// Frame number on the publisher's timeline (never repeats across loops).
    pub frame: u32,
}

impl FrameTag {
    fn encode(&self) -> [u8; TAG_LEN] {
        let p = self.publisher & 0x3fff;
        let f = self.frame & 0x0fff_ffff;
        let lk = (self.layer as u8 & 0x3) | if self.keyframe { 0x4 } else { 0 };
        [
            0x80 | (p >> 7) as u8,
            0x80 | (p & 0x7f) as u8,
            0x80 | lk,
            0x80 | (f >> 21) as u8,
            0x80 | ((f >> 14) & 0x7f) as u8,
            0x80 | ((f >> 7) & 0x7f) as u8,
            0x80 | (f & 0x7f) as u8,
            0x80,
        ]
    }

    fn decode(b: &[u8]) -> Option<FrameTag> {
        if b.len() < TAG_LEN || b[..TAG_LEN].iter().any(|x| x & 0x80 == 0) {
            return None;
        }
        let v = |i: usize| u32::from(b[i] & 0x7f);
        Some(FrameTag {
            publisher: (v(0) << 7) | v(1),
            layer: (v(2) & 0x3) as usize,
            keyframe: v(2) & 0x4 != 0,
            frame: (v(3) << 21) | (v(4) << 14) | (v(5) << 7) | v(6),
        })
    }
}

fn sei_nal() -> [u8; SEI_LEN] {
    let mut s = [0u8; SEI_LEN];
    s[0] = 0x06; // NRI 0, type 6 (SEI)
    s[1] = 5; // user_data_unregistered
    s[2] = (16 + TAG_LEN) as u8;
    s[3..19].copy_from_slice(&SEI_UUID);
    s[SEI_LEN - 1] = 0x80;
    s
}

/// Finds the load tester's tag in an RTP payload (single NAL or STAP-A).
pub fn find_tag(payload: &[u8]) -> Option<FrameTag> {
    let sei = |n: &[u8]| -> Option<FrameTag> {
        if n.len() >= SEI_LEN && n[0] & 0x1f == 6 && n[1] == 5 && n[3..19] == SEI_UUID {
            FrameTag::decode(&n[19..])
        } else {
            None
        }
    };
    match payload.first()? & 0x1f {
        6 => sei(payload),
        24 => stap_units(payload).find_map(sei),
        _ => None,
    }
}

/// The NAL units of a STAP-A payload.
fn stap_units(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = payload.get(1..).unwrap_or_default();
    std::iter::from_fn(move || {
        if rest.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let unit = rest.get(2..2 + len)?;
        rest = &rest[2 + len..];
        Some(unit)
    })
}

/// True when an RTP payload carries (the start of) an IDR slice (RFC 6184).
pub fn is_keyframe_payload(payload: &[u8]) -> bool {
    match payload.first().map(|b| b & 0x1f) {
        Some(5) => true,
        Some(24) => stap_units(payload).any(|n| n.first().is_some_and(|b| b & 0x1f == 5)),
        Some(28) => payload.get(1).is_some_and(|b| b & 0x80 != 0 && b & 0x1f == 5),
        _ => false,
    }
}

/// One encoded frame, packetized; the first packet's tag bytes are patched per send.
#[derive(Debug, Clone)]
pub struct Frame {
    pub keyframe: bool,
    /// The first packet (a STAP-A or single SEI packet); tag at `tag_at`.
    pub first: Vec<u8>,
    pub tag_at: usize,
    /// The other packets, shared with every send.
    pub rest: Vec<Arc<[u8]>>,
}

impl Frame {
    pub fn packet_count(&self) -> usize {
        1 + self.rest.len()
    }

    /// The first packet with `tag` written into its SEI.
    pub fn first_packet(&self, tag: FrameTag) -> Vec<u8> {
        let mut p = self.first.clone();
        p[self.tag_at..self.tag_at + TAG_LEN].copy_from_slice(&tag.encode());
        p
    }
}

/// Splits an Annex B byte stream into NAL units.
pub fn annex_b_units(stream: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= stream.len() {
        if stream[i] == 0 && stream[i + 1] == 0 && stream[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut units = Vec::with_capacity(starts.len());
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(stream.len(), |n| n - 3);
        // A 4-byte start code leaves one zero byte at the end of the previous unit.
        while end > s && stream[end - 1] == 0 && k + 1 < starts.len() {
            end -= 1;
        }
        if end > s {
            units.push(&stream[s..end]);
        }
    }
    units
}

/// Packetizes one access unit (RFC 6184, packetization-mode 1): a STAP-A
/// with the SEI tag and as many whole NAL units as fit, then single NAL
/// unit packets, or FU-A fragments for units larger than `max`.
pub fn packetize(units: &[&[u8]], max: usize) -> Frame {
    let sei = sei_nal();
    let mut first = vec![0x18u8]; // STAP-A, NRI filled below
    let mut nri = 0u8;
    let push_unit = |buf: &mut Vec<u8>, u: &[u8], nri: &mut u8| {
        buf.extend_from_slice(&(u.len() as u16).to_be_bytes());
        buf.extend_from_slice(u);
        *nri = (*nri).max(u[0] & 0x60);
    };
    push_unit(&mut first, &sei, &mut nri);
    let tag_at = 1 + 2 + 19;
    let mut i = 0;
    while i < units.len() && first.len() + 2 + units[i].len() <= max {
        push_unit(&mut first, units[i], &mut nri);
        i += 1;
    }
    first[0] |= nri;
    let mut rest: Vec<Arc<[u8]>> = Vec::new();
    for u in &units[i..] {
        if u.len() <= max {
            rest.push(Arc::from(*u));
            continue;
        }
        let header = u[0];
        let body = &u[1..];
        let chunk = max - 2;
        let n = body.len().div_ceil(chunk);
        for (k, part) in body.chunks(chunk).enumerate() {
            let mut p = Vec::with_capacity(part.len() + 2);
            p.push((header & 0xe0) | 28);
            let mut fu = header & 0x1f;
            if k == 0 {
                fu |= 0x80;
            }
            if k + 1 == n {
                fu |= 0x40;
            }
            p.push(fu);
            p.extend_from_slice(part);
            rest.push(Arc::from(p));
        }
    }
    let keyframe = units.iter().any(|u| u[0] & 0x1f == 5);
    Frame {
        keyframe,
        first,
        tag_at,
        rest,
    }
}

/// A moving test pattern: diagonal gradient, a sliding bright bar and a box.
fn pattern(width: usize, height: usize, t: usize) -> YUVBuffer {
    let mut yuv = vec![0u8; width * height * 3 / 2];
    let (y_plane, uv) = yuv.split_at_mut(width * height);
    let bar = (t * width / 60) % width;
    let bx = (t * 7) % width.saturating_sub(width / 8).max(1);
    let by = (t * 3) % height.saturating_sub(height / 8).max(1);
    for y in 0..height {
        for x in 0..width {
            let mut v = (((x + y + 2 * t) / 4) % 128) as u8 + 48;
            if x.abs_diff(bar) < width / 40 + 1 {
                v = 235;
            }
            if (bx..bx + width / 8).contains(&x) && (by..by + height / 8).contains(&y) {
                v = 16;
            }
            y_plane[y * width + x] = v;
        }
    }
    let (u_plane, v_plane) = uv.split_at_mut(width * height / 4);
    let cw = width / 2;
    for (i, u) in u_plane.iter_mut().enumerate() {
        *u = (112 + ((i % cw + t) / 8) % 32) as u8;
    }
    for (i, v) in v_plane.iter_mut().enumerate() {
        *v = (144 - ((i / cw) / 8) % 32) as u8;
    }
    YUVBuffer::from_vec(yuv, width, height)
}

/// One layer's looped frames.
#[derive(Debug, Clone)]
pub struct Track {
    pub frames: Vec<Frame>,
    /// Positions of keyframes in `frames` (the first is 0).
    pub keyframes: Vec<usize>,
    pub bytes: usize,
}

impl Track {
    /// The keyframe at or after `pos` (wrapping to 0).
    pub fn next_keyframe(&self, pos: usize) -> usize {
        self.keyframes.iter().copied().find(|&k| k >= pos).unwrap_or(0)
    }

    /// Average bitrate of the loop, payload bytes only.
    pub fn bitrate(&self) -> u64 {
        if self.frames.is_empty() {
            return 0;
        }
        (self.bytes as u64 * 8 * u64::from(FPS)) / self.frames.len() as u64
    }
}

/// Everything a publisher sends, shared by all publishers.
#[derive(Debug)]
pub struct MediaSet {
    pub video: [Track; 3],
    /// Opus packets, 20 ms each.
    pub audio: Vec<Arc<[u8]>>,
}

/// Encodes `frames` frames (a keyframe every `gop`) at the three layer
/// sizes and `bitrates`, and one second of a 440 Hz Opus tone.
pub fn encode(frames: usize, gop: usize, bitrates: [u32; 3]) -> Result<MediaSet, Error> {
    let mut video = Vec::with_capacity(3);
    for (layer, &(w, h)) in SIZES.iter().enumerate() {
        let config = EncoderConfig::new()
            .bitrate(BitRate::from_bps(bitrates[layer]))
            .max_frame_rate(FrameRate::from_hz(FPS as f32))
            // Rate control needs frame skipping; a skipped frame is left out of the loop.
            .skip_frames(true)
            .rate_control_mode(RateControlMode::Bitrate)
            .intra_frame_period(IntraFramePeriod::from_num_frames(gop as u32));
        let mut enc = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| Error::Media(format!("openh264: {e}")))?;
        let mut track = Track {
            frames: Vec::with_capacity(frames),
            keyframes: Vec::new(),
            bytes: 0,
        };
        // One GOP is encoded first and thrown away, so the rate control has
        // settled on the target bitrate when the looped frames start.
        let warmup = gop.max(1);
        for t in 0..warmup + frames {
            if t % gop.max(1) == 0 || t == warmup {
                enc.force_intra_frame();
            }
            let yuv = pattern(w, h, t);
            let stream = enc
                .encode_at(&yuv, Timestamp::from_millis(t as u64 * 1000 / u64::from(FPS)))
                .map_err(|e| Error::Media(format!("openh264 encode: {e}")))?
                .to_vec();
            if t < warmup {
                continue;
            }
            let units = annex_b_units(&stream);
            // A frame the rate control skipped has no slice: leave it out.
            if !units.iter().any(|u| matches!(u[0] & 0x1f, 1 | 5)) {
                continue;
            }
            let frame = packetize(&units, MAX_PAYLOAD);
            if track.frames.is_empty() && !frame.keyframe {
                // The loop must start with a keyframe; ask again.
                enc.force_intra_frame();
                continue;
            }
            if frame.keyframe {
                track.keyframes.push(track.frames.len());
            }
            track.bytes += frame.first.len() + frame.rest.iter().map(|p| p.len()).sum::<usize>();
            track.frames.push(frame);
        }
        if track.keyframes.first() != Some(&0) {
            return Err(Error::Media(format!(
                "layer {layer}: the loop does not start with a keyframe"
            )));
        }
        video.push(track);
    }
    let mut opus = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Audio)
        .map_err(|e| Error::Media(format!("opus: {e}")))?;
    let _ = opus.set_bitrate(opus::Bitrate::Bits(32_000));
    let mut audio = Vec::with_capacity(50);
    for n in 0..50usize {
        let pcm: Vec<i16> = (0..TS_PER_AUDIO_FRAME as usize)
            .map(|i| {
                let t = (n * TS_PER_AUDIO_FRAME as usize + i) as f32 / 48_000.0;
                (f32::sin(2.0 * std::f32::consts::PI * 440.0 * t) * 8000.0) as i16
            })
            .collect();
        let pkt = opus
            .encode_vec(&pcm, 1500)
            .map_err(|e| Error::Media(format!("opus encode: {e}")))?;
        audio.push(Arc::from(pkt));
    }
    let video: [Track; 3] = video
        .try_into()
        .map_err(|_| Error::Media("three layers".into()))?;
    Ok(MediaSet { video, audio })
}

/// Where one looped stream is: position in the loop, and the RTP sequence
/// number and timestamp, which keep counting across loop boundaries.
#[derive(Debug, Clone)]
pub struct Cursor {
    pub pos: usize,
    /// Frames sent so far (the frame number of the next one).
    pub frame: u32,
    pub seq: u64,
    pub ts_base: u32,
    pub ts_step: u32,
}

impl Cursor {
    pub fn new(seq: u64, ts_base: u32, ts_step: u32) -> Cursor {
        Cursor {
            pos: 0,
            frame: 0,
            seq,
            ts_base,
            ts_step,
        }
    }

    /// The RTP timestamp of the next frame.
    pub fn ts(&self) -> u32 {
        self.ts_base.wrapping_add(self.frame.wrapping_mul(self.ts_step))
    }

    /// Consumes one frame of `packets` packets in a loop of `len` frames;
    /// returns (first sequence number, timestamp) for it.
    pub fn advance(&mut self, packets: usize, len: usize) -> (u64, u32) {
        let out = (self.seq, self.ts());
        self.seq += packets as u64;
        self.frame = self.frame.wrapping_add(1);
        self.pos = (self.pos + 1) % len.max(1);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_round_trips_and_has_no_zero_byte() {
        let tag = FrameTag {
            publisher: 9000,
            layer: 2,
            keyframe: true,
            frame: 0x0abc_def1,
        };
        let enc = tag.encode();
        assert!(enc.iter().all(|b| *b != 0));
        assert_eq!(FrameTag::decode(&enc), Some(tag));
    }

    #[test]
    fn packetizer_fragments_and_tags() {
        let sps = [0x67u8, 0x42, 0xc0, 0x1e];
        let pps = [0x68u8, 0xce, 0x3c, 0x80];
        let mut idr = vec![0x65u8];
        idr.extend((0..3000).map(|i| (i % 251) as u8 + 1));
        let frame = packetize(&[&sps, &pps, &idr], 1100);
        assert!(frame.keyframe);
        // STAP-A with SEI, SPS, PPS; the IDR in three FU-A fragments.
        assert_eq!(frame.first[0] & 0x1f, 24);
        assert_eq!(frame.rest.len(), 3);
        assert!(is_keyframe_payload(&frame.rest[0]));
        assert_eq!(frame.rest[0][1] & 0xc0, 0x80);
        assert_eq!(frame.rest[2][1] & 0xc0, 0x40);
        let body: Vec<u8> = frame.rest.iter().flat_map(|p| p[2..].to_vec()).collect();
        assert_eq!(body, idr[1..]);
        let tag = FrameTag {
            publisher: 3,
            layer: 1,
            keyframe: true,
            frame: 77,
        };
        assert_eq!(find_tag(&frame.first_packet(tag)), Some(tag));
        let units: Vec<&[u8]> = stap_units(&frame.first).collect();
        assert_eq!(units[1], sps);
        assert_eq!(units[2], pps);
    }

    #[test]
    fn annex_b_split() {
        let s = [0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 9];
        let u = annex_b_units(&s);
        assert_eq!(u, vec![&[0x67u8, 1, 2][..], &[0x68, 3][..], &[0x65, 9][..]]);
    }

    #[test]
    fn cursor_is_continuous_across_loop_boundaries() {
        let len = 4;
        let mut c = Cursor::new(65_530, u32::MAX - 5000, TS_PER_FRAME);
        let mut last: Option<(u64, u32)> = None;
        for i in 0..(3 * len) {
            let packets = 1 + i % 3;
            let (seq, ts) = c.advance(packets, len);
            if let Some((ls, lt)) = last {
                assert_eq!(ts.wrapping_sub(lt), TS_PER_FRAME, "timestamp step at frame {i}");
                assert_eq!(seq, ls + (1 + (i - 1) % 3) as u64, "sequence at frame {i}");
            }
            last = Some((seq, ts));
            assert_eq!(c.pos, (i + 1) % len);
        }
        assert_eq!(c.frame, 12);
    }

    #[test]
    fn encodes_three_layers_and_opus() {
        let m = encode(10, 5, [150_000, 500_000, 1_200_000]).unwrap();
        for t in &m.video {
            // Rate control may skip a frame; the loop starts with a keyframe.
            assert!((6..=10).contains(&t.frames.len()), "{}", t.frames.len());
            assert_eq!(t.keyframes[0], 0);
            assert!(t.frames[0].keyframe && t.frames.iter().any(|f| !f.keyframe));
            assert!(
                is_keyframe_payload(&t.frames[0].first)
                    || t.frames[0].rest.iter().any(|p| is_keyframe_payload(p))
            );
        }
        assert!(m.video[2].bytes > m.video[0].bytes);
        assert_eq!(m.audio.len(), 50);
        assert!(m.audio.iter().all(|p| !p.is_empty() && p.len() < 400));
    }
}
