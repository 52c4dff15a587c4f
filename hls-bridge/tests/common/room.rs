//! A simulated room on simulated time: an H.264 simulcast publisher (real
//! SPS/PPS written for each layer's resolution, RFC 6184 packetization)
//! that answers keyframe requests on its next frame, an Opus publisher
//! (20 ms packets), RTCP sender reports, and the bridge + packager the node
//! would drive.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use hls_bridge::{
    AudioCodec, Bridge, BridgeConfig, HlsConfig, Packager, RoomSnapshot, RtpPacket, SenderReport, TrackId,
    TrackKind,
};

use super::{PPS, packetize, slice};

pub const AUDIO: TrackId = TrackId(100);
/// Wall clock (since the UNIX epoch) of the simulation's start.
pub const WALL0: Duration = Duration::from_secs(1_795_267_745);
/// RFC 5905: NTP era 0 starts 2,208,988,800 s before the UNIX epoch.
const NTP_UNIX: u64 = 2_208_988_800;

/// Writes bits MSB first; ue(v) per H.264 §9.1.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u8,
    n: u8,
}

impl Bits {
    fn bit(&mut self, b: bool) {
        self.acc = (self.acc << 1) | u8::from(b);
        self.n += 1;
        if self.n == 8 {
            self.out.push(self.acc);
            self.acc = 0;
            self.n = 0;
        }
    }
    fn bits(&mut self, v: u32, count: u8) {
        for i in (0..count).rev() {
            self.bit(v >> i & 1 == 1);
        }
    }
    fn ue(&mut self, v: u32) {
        let x = v + 1;
        let len = 32 - x.leading_zeros() as u8;
        self.bits(0, len - 1);
        self.bits(x, len);
    }
    fn finish(mut self) -> Vec<u8> {
        self.bit(true); // rbsp_stop_one_bit
        while self.n != 0 {
            self.bit(false);
        }
        self.out
    }
}

/// A constrained-baseline SPS (as WebRTC encoders write) for `width` x
/// `height`, with frame cropping when the size is not a multiple of 16
/// and emulation prevention applied.
pub fn sps(width: u32, height: u32) -> Vec<u8> {
    let mut b = Bits::default();
    b.bits(66, 8); // profile_idc: baseline
    b.bits(0xe0, 8); // constraint_set0..2
    b.bits(31, 8); // level 3.1
    b.ue(0); // seq_parameter_set_id
    b.ue(0); // log2_max_frame_num_minus4
    b.ue(2); // pic_order_cnt_type
    b.ue(1); // max_num_ref_frames
    b.bit(false); // gaps_in_frame_num_value_allowed_flag
    let (mbw, mbh) = (width.div_ceil(16), height.div_ceil(16));
    b.ue(mbw - 1);
    b.ue(mbh - 1);
    b.bit(true); // frame_mbs_only_flag
    b.bit(true); // direct_8x8_inference_flag
    let (crop_r, crop_b) = ((mbw * 16 - width) / 2, (mbh * 16 - height) / 2);
    b.bit(crop_r + crop_b > 0);
    if crop_r + crop_b > 0 {
        b.ue(0);
        b.ue(crop_r);
        b.ue(0);
        b.ue(crop_b);
    }
    b.bit(false); // vui_parameters_present_flag
    let rbsp = b.finish();
    let mut nal = vec![0x67];
    let mut zeros = 0;
    for byte in rbsp {
        if zeros >= 2 && byte <= 3 {
            nal.push(3);
            zeros = 0;
        }
        zeros = if byte == 0 { zeros + 1 } else { 0 };
        nal.push(byte);
    }
    nal
}

/// One simulcast layer of the publisher.
pub struct Layer {
    pub id: TrackId,
    pub layer: u8,
    pub width: u32,
    pub height: u32,
    /// Bytes per delta frame (an IDR is five times larger).
    pub frame_bytes: usize,
    pub seq: u16,
    pub ts0: u32,
    pub frame: u64,
    /// Frames per second, on exact timestamps (an encoder's clock).
    pub fps: u64,
    pub wants_idr: bool,
    /// Never send an IDR (a broken encoder).
    pub never_idr: bool,
    pub stopped: bool,
}

pub struct Room {
    pub t0: Instant,
    pub now: Instant,
    pub bridge: Bridge,
    pub packager: Packager,
    pub layers: Vec<Layer>,
    pub audio: bool,
    audio_seq: u16,
    audio_ts0: u32,
    audio_packets: u64,
    /// The capture clock runs this far ahead of arrival (network delay).
    pub delay: Duration,
    pub snapshots: Vec<RoomSnapshot>,
    pub keyframe_requests: Vec<(Duration, TrackId)>,
}

/// The three layers Chrome sends for a 720p camera.
pub fn ladder() -> Vec<(u32, u32, usize)> {
    vec![(320, 180, 400), (640, 360, 1200), (1280, 720, 3500)]
}

impl Room {
    pub fn new(config: HlsConfig, layers: &[(u32, u32, usize)], audio: bool) -> Self {
        let t0 = Instant::now();
        let bridge_config = BridgeConfig {
            segment_target: config.segment_target,
            ..BridgeConfig::default()
        };
        let mut bridge = Bridge::new(bridge_config);
        let mut packager = Packager::new(config, 0x5eed, t0, WALL0).unwrap();
        let layers: Vec<Layer> = layers
            .iter()
            .enumerate()
            .map(|(i, &(width, height, frame_bytes))| {
                let id = TrackId(i as u32 + 1);
                bridge
                    .add_track(t0, id, TrackKind::H264 { layer: i as u8 })
                    .unwrap();
                packager.add_video(id, i as u8).unwrap();
                Layer {
                    id,
                    layer: i as u8,
                    width,
                    height,
                    frame_bytes,
                    seq: 1000 * (i as u16 + 1),
                    ts0: 0x1234_5678u32.wrapping_mul(i as u32 + 3),
                    frame: 0,
                    fps: 30,
                    wants_idr: true,
                    never_idr: false,
                    stopped: false,
                }
            })
            .collect();
        if audio {
            bridge
                .add_track(t0, AUDIO, TrackKind::Opus { stereo: true })
                .unwrap();
            packager
                .add_audio(AUDIO, AudioCodec::Opus { stereo: true })
                .unwrap();
        }
        Self {
            t0,
            now: t0,
            bridge,
            packager,
            layers,
            audio,
            audio_seq: 7,
            audio_ts0: 0x0abc_0000,
            audio_packets: 0,
            delay: Duration::from_millis(40),
            snapshots: Vec::new(),
            keyframe_requests: Vec::new(),
        }
    }

    /// Capture time (since the UNIX epoch) of simulated instant `at`.
    fn capture(&self, at: Instant) -> Duration {
        WALL0 + at.duration_since(self.t0) - self.delay
    }

    fn ntp(wall: Duration) -> u64 {
        ((wall.as_secs() + NTP_UNIX) << 32) | ((u64::from(wall.subsec_nanos()) << 32) / 1_000_000_000)
    }

    /// Runs the room for `duration` of simulated time in 1 ms steps.
    pub fn run(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.now += Duration::from_millis(1);
            let elapsed = self.now.duration_since(self.t0);
            let ms = elapsed.as_millis() as u64;
            for i in 0..self.layers.len() {
                // Frame n is due at n / fps s.
                let due = self.layers[i].frame * 1000 / self.layers[i].fps;
                if ms >= due && !self.layers[i].stopped {
                    self.send_frame(i);
                }
                if ms % 1000 == 500 && !self.layers[i].stopped {
                    let l = &self.layers[i];
                    let rtp = l.ts0.wrapping_add((elapsed.as_micros() as u64 * 9 / 100) as u32);
                    let report = SenderReport {
                        ntp_time: Self::ntp(self.capture(self.now)),
                        rtp_time: rtp,
                    };
                    self.bridge.handle_sender_report(l.id, report).unwrap();
                }
            }
            if self.audio {
                if ms >= self.audio_packets * 20 {
                    self.send_audio();
                }
                if ms % 1000 == 250 {
                    let rtp = self
                        .audio_ts0
                        .wrapping_add((elapsed.as_micros() as u64 * 48 / 1000) as u32);
                    let report = SenderReport {
                        ntp_time: Self::ntp(self.capture(self.now)),
                        rtp_time: rtp,
                    };
                    self.bridge.handle_sender_report(AUDIO, report).unwrap();
                }
            }
            if self.bridge.poll_timeout().is_some_and(|t| t <= self.now) {
                self.bridge.handle_timeout(self.now);
            }
            while let Some(id) = self.bridge.poll_keyframe_request() {
                self.keyframe_requests.push((elapsed, id));
                if let Some(l) = self.layers.iter_mut().find(|l| l.id == id) {
                    l.wants_idr = true;
                }
            }
            self.pump();
        }
    }

    /// Frames from the bridge into the packager, snapshots kept.
    pub fn pump(&mut self) {
        while let Some((id, frame)) = self.bridge.poll_frame() {
            let ts = match &frame {
                hls_bridge::Frame::Video { au, .. } => au.timestamp,
                hls_bridge::Frame::Audio(a) => a.timestamp,
            };
            let capture = self.bridge.capture_time(id, ts);
            self.packager.push_frame(self.now, id, &frame, capture).unwrap();
        }
        if let Some(s) = self.packager.take_snapshot() {
            self.snapshots.push(s);
        }
    }

    fn send_frame(&mut self, i: usize) {
        let now = self.now;
        let l = &mut self.layers[i];
        let idr = l.wants_idr && !l.never_idr;
        l.wants_idr = false;
        let n = l.frame;
        l.frame += 1;
        let ts = l.ts0.wrapping_add((n * 90_000 / l.fps) as u32);
        let nalus = if idr {
            vec![
                sps(l.width, l.height),
                PPS.to_vec(),
                slice(true, l.frame_bytes * 5, n as u8),
            ]
        } else {
            vec![slice(false, l.frame_bytes + (n as usize * 37) % 200, n as u8)]
        };
        let packets = packetize(&nalus, ts, &mut l.seq, 1200);
        let id = l.id;
        for p in packets {
            self.bridge
                .handle_rtp(
                    now,
                    id,
                    RtpPacket {
                        sequence_number: p.seq,
                        timestamp: p.ts,
                        marker: p.marker,
                        payload: &p.payload,
                    },
                )
                .unwrap();
        }
    }

    fn send_audio(&mut self) {
        let n = self.audio_packets;
        self.audio_packets += 1;
        // CELT FB 20 ms, stereo, code 0, then a body.
        let mut payload = vec![(31 << 3) | 0x04];
        payload.extend((0..80).map(|i| (i as u8) ^ (n as u8)));
        let seq = self.audio_seq;
        self.audio_seq = seq.wrapping_add(1);
        self.bridge
            .handle_rtp(
                self.now,
                AUDIO,
                RtpPacket {
                    sequence_number: seq,
                    timestamp: self.audio_ts0.wrapping_add((n * 960) as u32),
                    marker: false,
                    payload: &payload,
                },
            )
            .unwrap();
    }

    /// The publisher leaves: the bridge and packager end every track.
    pub fn stop(&mut self) {
        for l in &mut self.layers {
            l.stopped = true;
        }
        self.audio = false;
        self.pump();
        self.packager.end().unwrap();
        self.pump();
    }

    pub fn last(&self) -> &RoomSnapshot {
        self.snapshots.last().expect("a snapshot")
    }
}

/// Renders every playlist of every snapshot and runs the conformance
/// checker on each, on the reload invariants across snapshots, on the
/// multivariant playlist, and on the fMP4 files. Returns the violations.
pub fn conformance(snapshots: &[RoomSnapshot]) -> Vec<String> {
    use super::checker::{self, Reloads};
    use hls_bridge::playlist;
    use std::collections::BTreeMap;

    let mut v = Vec::new();
    let mut reloads: BTreeMap<String, Reloads> = BTreeMap::new();
    let mut checked_files: std::collections::BTreeSet<(String, String)> = Default::default();
    for snap in snapshots {
        let mut media = BTreeMap::new();
        for name in snap.renditions.keys() {
            let Some(text) = playlist::media_playlist(snap, name, false, "") else {
                continue;
            };
            let (m, errs) = checker::check_media(&text);
            v.extend(errs.into_iter().map(|e| format!("{name} v{}: {e}", snap.version)));
            v.extend(
                reloads
                    .entry(name.clone())
                    .or_default()
                    .check(&m)
                    .into_iter()
                    .map(|e| format!("{name} v{}: {e}", snap.version)),
            );
            // A delta update is a valid playlist too.
            let delta = playlist::media_playlist(snap, name, true, "").unwrap();
            let (_, errs) = checker::check_media(&delta);
            v.extend(
                errs.into_iter()
                    .map(|e| format!("{name} delta v{}: {e}", snap.version)),
            );
            // Files named by the playlist exist and are well formed.
            let r = &snap.renditions[name];
            let file = |uri: &str| r.files.get(uri).cloned();
            for s in &m.segments {
                for uri in s
                    .map
                    .iter()
                    .chain(s.uri.iter())
                    .chain(s.parts.iter().map(|p| &p.uri))
                {
                    if file(uri).is_none() {
                        v.push(format!("C15: {name}/{uri} listed but not downloadable"));
                    }
                }
                if let Some(map) = &s.map
                    && checked_files.insert((name.clone(), map.clone()))
                    && let Some(bytes) = file(map)
                {
                    v.extend(
                        checker::check_init(&bytes)
                            .into_iter()
                            .map(|e| format!("{name}/{map}: {e}")),
                    );
                }
                if let Some(uri) = &s.uri
                    && checked_files.insert((name.clone(), uri.clone()))
                    && let Some(bytes) = file(uri)
                {
                    match checker::check_fragments(&bytes) {
                        Err(e) => v.push(format!("{name}/{uri}: {e}")),
                        Ok((_, _, sync)) => {
                            let claims = r
                                .segments
                                .iter()
                                .find(|x| x.msn == s.msn)
                                .is_none_or(|x| x.independent);
                            if r.kind.is_video() && !sync && claims {
                                v.push(format!("C17: {name}/{uri} does not start with an IDR"));
                            }
                        }
                    }
                    // C12: the segment is its parts.
                    if !s.parts.is_empty() {
                        let mut joined = Vec::new();
                        for p in &s.parts {
                            joined.extend_from_slice(&file(&p.uri).unwrap_or_default());
                        }
                        if !bytes.ends_with(&joined) {
                            v.push(format!("C12: {name}/{uri} differs from its parts"));
                        }
                    }
                }
            }
            media.insert(format!("{}/{name}/index.m3u8", snap.session), m);
        }
        if let Some(text) = playlist::multivariant(snap, "") {
            v.extend(
                checker::check_multivariant(&text, &media)
                    .into_iter()
                    .map(|e| format!("multivariant v{}: {e}", snap.version)),
            );
        }
    }
    v
}
