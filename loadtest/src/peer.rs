//! One simulated WebRTC peer: a str0m `Rtc` in RTP mode plus what it does
//! with media — a publisher looping the encoded layers, or a viewer
//! measuring what arrives. Sans-IO: the shard thread feeds it datagrams and
//! time, and sends what it returns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Simulcast, SimulcastLayer};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, Rtc, RtcConfig};

use crate::error::Error;
use crate::media::{
    AUDIO_FRAME_MS, Cursor, FPS, FrameTag, MediaSet, RIDS, TS_PER_AUDIO_FRAME, TS_PER_FRAME, VIDEO_CLOCK,
    find_tag, is_keyframe_payload,
};
use crate::rtp::RtpHeader;
use crate::stats::{Histogram, Jitter, SeqTracker};

/// The least time a viewer must have been receiving for its bitrate to count.
pub const MIN_RATE_SECS: f64 = 1.0;
/// A gap without a new video frame longer than this is a freeze.
pub const FREEZE: Duration = Duration::from_millis(300);
const SEND_LOG_SLOTS: usize = 1024;

/// When each publisher sent each recent frame, readable from any thread.
pub struct SendLog {
    frames: Vec<AtomicU32>,
    nanos: Vec<AtomicU64>,
}

impl Default for SendLog {
    fn default() -> Self {
        SendLog {
            frames: (0..3 * SEND_LOG_SLOTS)
                .map(|_| AtomicU32::new(u32::MAX))
                .collect(),
            nanos: (0..3 * SEND_LOG_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl SendLog {
    fn slot(layer: usize, frame: u32) -> usize {
        layer.min(2) * SEND_LOG_SLOTS + frame as usize % SEND_LOG_SLOTS
    }

    pub fn record(&self, layer: usize, frame: u32, nanos: u64) {
        let s = SendLog::slot(layer, frame);
        self.nanos[s].store(nanos, Ordering::Relaxed);
        self.frames[s].store(frame, Ordering::Release);
    }

    pub fn lookup(&self, layer: usize, frame: u32) -> Option<u64> {
        let s = SendLog::slot(layer, frame);
        (self.frames[s].load(Ordering::Acquire) == frame).then(|| self.nanos[s].load(Ordering::Relaxed))
    }
}

/// Process-wide state shared by every shard: the clock origin, the
/// publishers' send logs and the live counters behind the progress line.
pub struct Shared {
    pub epoch: Instant,
    pub send_logs: Vec<SendLog>,
    pub progress: Progress,
}

impl Shared {
    pub fn new(publishers: usize) -> Shared {
        Shared {
            epoch: Instant::now(),
            send_logs: (0..publishers).map(|_| SendLog::default()).collect(),
            progress: Progress::default(),
        }
    }

    pub fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }
}

/// Live counters for the progress line.
#[derive(Default)]
pub struct Progress {
    pub posted: AtomicU64,
    pub answered: AtomicU64,
    pub connected: AtomicU64,
    pub media: AtomicU64,
    pub failed: AtomicU64,
    pub left: AtomicU64,
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub publishers_sending: AtomicU64,
}

/// One DTLS certificate for every peer of a run: generating a key pair per
/// peer was a large share of a join's client-side cost.
pub fn dtls_cert() -> Result<DtlsCert, Error> {
    str0m::crypto::from_feature_flags().install_process_default();
    str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .ok_or_else(|| Error::Rtc("DTLS certificate generation failed".into()))
}

/// The str0m configuration every simulated peer uses: RTP mode, Opus and H.264.
pub fn rtc_config(cert: &DtlsCert) -> RtcConfig {
    RtcConfig::new()
        .set_dtls_cert(cert.clone())
        // One validated DTLS configuration for every peer (see `dtls`).
        .set_crypto_provider(wave_dtls::crypto_provider())
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_h264(true)
}

/// A WHIP offer: sendonly Opus and 3-layer simulcast H.264.
pub fn publisher_offer(
    cert: &DtlsCert,
    local: SocketAddr,
    now: Instant,
) -> Result<(Rtc, String, SdpPendingOffer, Mid, Mid), Error> {
    let mut rtc = rtc_config(cert).build(now);
    rtc.add_local_candidate(Candidate::host(local, "udp").map_err(|e| Error::Rtc(e.to_string()))?);
    let mut api = rtc.sdp_api();
    let audio = api.add_media(
        MediaKind::Audio,
        Direction::SendOnly,
        Some("lt".into()),
        Some("a".into()),
        None,
    );
    let mut sim = Simulcast::new();
    for rid in RIDS {
        sim.add_send_layer(SimulcastLayer::new(rid));
    }
    let video = api.add_media(
        MediaKind::Video,
        Direction::SendOnly,
        Some("lt".into()),
        Some("v".into()),
        Some(sim),
    );
    let (offer, pending) = api.apply().ok_or_else(|| Error::Rtc("no offer".into()))?;
    Ok((rtc, offer.to_sdp_string(), pending, audio, video))
}

/// A WHEP offer: recvonly Opus and H.264.
pub fn viewer_offer(
    cert: &DtlsCert,
    local: SocketAddr,
    now: Instant,
) -> Result<(Rtc, String, SdpPendingOffer), Error> {
    let mut rtc = rtc_config(cert).build(now);
    rtc.add_local_candidate(Candidate::host(local, "udp").map_err(|e| Error::Rtc(e.to_string()))?);
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().ok_or_else(|| Error::Rtc("no offer".into()))?;
    Ok((rtc, offer.to_sdp_string(), pending))
}

/// A viewer for a server that offers (Janus's subscriptions): answers
/// `offer` with the same codecs; returns the peer and the answer.
pub fn viewer_answer(
    cert: &DtlsCert,
    local: SocketAddr,
    now: Instant,
    offer: &str,
) -> Result<(Rtc, String), Error> {
    let mut rtc = rtc_config(cert).build(now);
    rtc.add_local_candidate(Candidate::host(local, "udp").map_err(|e| Error::Rtc(e.to_string()))?);
    let offer =
        SdpOffer::from_sdp_string(offer).map_err(|e| Error::Rtc(format!("offer does not parse: {e}")))?;
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| Error::Rtc(format!("offer rejected: {e}")))?;
    let answer = answer.to_sdp_string();
    kick(&mut rtc, now)?;
    Ok((rtc, answer))
}

/// Gives str0m its first time: its ICE agent schedules no checks before
/// one. (Against WAVE the answer's ICE restart handling does that; against
/// Janus the first timeout otherwise came back as "never" and no check
/// was ever sent.)
pub fn kick(rtc: &mut Rtc, now: Instant) -> Result<(), Error> {
    rtc.handle_input(str0m::Input::Timeout(now))
        .map_err(|e| Error::Rtc(e.to_string()))
}

/// Applies the server's SDP answer.
pub fn accept_answer(rtc: &mut Rtc, pending: SdpPendingOffer, answer: &str) -> Result<(), Error> {
    let answer =
        SdpAnswer::from_sdp_string(answer).map_err(|e| Error::Rtc(format!("answer does not parse: {e}")))?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| Error::Rtc(format!("answer rejected: {e}")))
}

fn pt_of(rtc: &Rtc, codec: Codec) -> Option<Pt> {
    rtc.codec_config()
        .params()
        .iter()
        .find(|p| {
            p.spec().codec == codec && (codec != Codec::H264 || p.spec().format.packetization_mode == Some(1))
        })
        .map(|p| p.pt())
}

/// Where a peer's media goes when it does not use its own 127/8 address
/// (`--local-ip`): str0m's address (shared by the shard's peers) and the
/// server's, which tells the shard whose datagram came in.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// The first UDP host candidate of an SDP (the server's address).
pub fn host_candidate(sdp: &str) -> Option<SocketAddr> {
    sdp.lines().find_map(|l| {
        let f: Vec<&str> = l.strip_prefix("a=candidate:")?.split_whitespace().collect();
        let (proto, ip, port, typ) = (f.get(2)?, f.get(4)?, f.get(5)?, f.get(7)?);
        (proto.eq_ignore_ascii_case("udp") && *typ == "host")
            .then(|| Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?)))?
    })
}

/// A peer and its role, owned by one shard thread.
pub struct Peer {
    /// The peer's identity in its shard (a 127/8 address), and its media
    /// address unless `route` says otherwise.
    pub local: SocketAddr,
    pub route: Option<Route>,
    pub rtc: Rtc,
    pub role: Role,
    /// When str0m next wants `Input::Timeout`.
    pub next_timeout: Instant,
    /// Set when the peer stopped (ICE gave up, str0m error); it is then dropped.
    pub dead: bool,
}

pub enum Role {
    Publisher(Box<Publisher>),
    Viewer(Box<Viewer>),
}

/// A publisher: loops the encoded layers and the Opus tone in real time.
pub struct Publisher {
    pub index: u32,
    pub media: Arc<MediaSet>,
    audio_mid: Mid,
    video_mid: Mid,
    video_pt: Option<Pt>,
    audio_pt: Option<Pt>,
    cursors: [Cursor; 3],
    audio: Cursor,
    start: Option<Instant>,
    force_key: [bool; 3],
    pub stats: PublisherStats,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PublisherStats {
    pub index: u32,
    pub connected: bool,
    pub frames: u64,
    pub packets: u64,
    pub keyframe_requests: u64,
    pub error: Option<String>,
}

impl Publisher {
    pub fn new(index: u32, media: Arc<MediaSet>, audio_mid: Mid, video_mid: Mid, seed: u64) -> Publisher {
        // Per-stream origins from the seed (RFC 3550 §5.1), sequence numbers below 2^15.
        let s = |k: u64| {
            seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(k as u32 * 13)
                ^ k
        };
        let cursor = |k: u64, step| Cursor::new(s(k) & 0x7fff, (s(k) >> 16) as u32, step);
        Publisher {
            index,
            media,
            audio_mid,
            video_mid,
            video_pt: None,
            audio_pt: None,
            cursors: [
                cursor(1, TS_PER_FRAME),
                cursor(2, TS_PER_FRAME),
                cursor(3, TS_PER_FRAME),
            ],
            audio: cursor(4, TS_PER_AUDIO_FRAME),
            start: None,
            force_key: [false; 3],
            stats: PublisherStats {
                index,
                ..PublisherStats::default()
            },
        }
    }

    /// When the next frame (audio or video) is due.
    pub fn next_due(&self) -> Option<Instant> {
        let start = self.start?;
        let video =
            start + Duration::from_nanos(u64::from(self.cursors[0].frame) * 1_000_000_000 / u64::from(FPS));
        let audio = start + Duration::from_millis(u64::from(self.audio.frame) * AUDIO_FRAME_MS);
        Some(video.min(audio))
    }

    /// Writes every frame due by `now`, recording in `lateness_us` how far
    /// behind its schedule each frame was written.
    pub fn write_due(&mut self, rtc: &mut Rtc, shared: &Shared, now: Instant, lateness_us: &mut Histogram) {
        let Some(start) = self.start else { return };
        let (Some(vpt), Some(apt)) = (self.video_pt, self.audio_pt) else {
            return;
        };
        let mut api = rtc.direct_api();
        // Audio.
        loop {
            let due = start + Duration::from_millis(u64::from(self.audio.frame) * AUDIO_FRAME_MS);
            if due > now {
                break;
            }
            lateness_us.record(now.duration_since(due).as_micros() as u64);
            let n = self.media.audio.len();
            let payload = self.media.audio[self.audio.pos].clone();
            let (seq, ts) = self.audio.advance(1, n);
            if let Some(s) = api.stream_tx_by_mid(self.audio_mid, None) {
                s.write_rtp(RtpWrite::new(apt, SeqNo::from(seq), ts, now, payload).nackable(true));
                self.stats.packets += 1;
            }
        }
        // Video, all layers on the same frame clock.
        loop {
            let due = start
                + Duration::from_nanos(u64::from(self.cursors[0].frame) * 1_000_000_000 / u64::from(FPS));
            if due > now {
                break;
            }
            lateness_us.record(now.duration_since(due).as_micros() as u64);
            let sent_at = shared.nanos(now);
            for (layer, rid) in RIDS.iter().enumerate() {
                let track = &self.media.video[layer];
                let c = &mut self.cursors[layer];
                if std::mem::take(&mut self.force_key[layer]) {
                    c.pos = track.next_keyframe(c.pos);
                }
                let frame = &track.frames[c.pos];
                let tag = FrameTag {
                    publisher: self.index,
                    layer,
                    keyframe: frame.keyframe,
                    frame: c.frame,
                };
                let count = frame.packet_count();
                let (seq, ts) = c.advance(count, track.frames.len());
                let Some(s) = api.stream_tx_by_mid(self.video_mid, Some((*rid).into())) else {
                    continue;
                };
                if let Some(log) = shared.send_logs.get(self.index as usize) {
                    log.record(layer, tag.frame, sent_at);
                }
                let first: Arc<[u8]> = Arc::from(frame.first_packet(tag));
                for (i, payload) in std::iter::once(first)
                    .chain(frame.rest.iter().cloned())
                    .enumerate()
                {
                    let w = RtpWrite::new(vpt, SeqNo::from(seq + i as u64), ts, now, payload)
                        .marker(i + 1 == count)
                        .nackable(true);
                    s.write_rtp(w);
                }
                self.stats.packets += count as u64;
            }
            self.stats.frames += 1;
        }
    }

    pub fn on_event(&mut self, rtc: &Rtc, shared: &Shared, now: Instant, event: &Event) {
        match event {
            Event::Connected => {
                self.start = Some(now);
                self.stats.connected = true;
                self.audio_pt = pt_of(rtc, Codec::Opus);
                self.video_pt = rtc
                    .media(self.video_mid)
                    .and_then(|m| {
                        m.remote_pts().iter().copied().find(|pt| {
                            rtc.codec_config().params().iter().any(|p| {
                                p.pt() == *pt
                                    && p.spec().codec == Codec::H264
                                    && p.spec().format.packetization_mode == Some(1)
                            })
                        })
                    })
                    .or_else(|| pt_of(rtc, Codec::H264));
                shared.progress.publishers_sending.fetch_add(1, Ordering::Relaxed);
            }
            Event::KeyframeRequest(r) => {
                self.stats.keyframe_requests += 1;
                match r
                    .rid
                    .as_ref()
                    .and_then(|rid| RIDS.iter().position(|x| *x == &**rid))
                {
                    Some(i) => self.force_key[i] = true,
                    None => self.force_key = [true; 3],
                }
            }
            _ => {}
        }
    }
}

/// A viewer and what it measured.
///
/// Every viewer is a full str0m peer until its first keyframe. After that a
/// viewer that asked for the low layer and is not sampled as `full` is
/// header-counted: its SRTP media packets no
/// longer go to str0m (no decryption, depacketising or NACKs) but are
/// counted from their cleartext RTP header; STUN, DTLS and RTCP still do, so
/// ICE consent and the session stay alive.
pub struct Viewer {
    pub stats: ViewerStats,
    posted: Instant,
    /// Stays a full str0m peer for the whole run (latency, NACK repair).
    full: bool,
    /// Counting media from headers (set at the first keyframe unless `full`).
    header_counted: bool,
    /// Length of the datagram being fed to str0m, to learn `trailer`.
    datagram_len: usize,
    /// SRTP bytes after the payload (auth tag), learned from full packets.
    trailer: Option<usize>,
    audio_pt: Option<Pt>,
    video_pt: Option<u8>,
    video: SeqTracker,
    audio: SeqTracker,
    video_ssrc: Option<u32>,
    audio_ssrc: Option<u32>,
    jitter: Jitter,
    last_ts: Option<u32>,
    last_frame_at: Option<Instant>,
    /// (RTP timestamp, send instant in epoch nanos) of the frame being received.
    frame_sent: Option<(u32, u64)>,
    /// RTP timestamp of the first keyframe; `live` once a later one came.
    first_key_ts: Option<u32>,
    /// Forwarding latency counts from the second keyframe on: a viewer may
    /// start on a cached group up to 1 s old, whose frames measure their
    /// age at the join, not forwarding.
    live: bool,
    first_media_at: Option<Instant>,
    last_media_at: Option<Instant>,
}

/// What one viewer saw, from its POST to its end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ViewerStats {
    pub id: u32,
    pub room: String,
    pub layer_asked: Option<usize>,
    /// Milliseconds from the POST to each join step.
    pub answer_ms: Option<f64>,
    pub ice_ms: Option<f64>,
    pub dtls_ms: Option<f64>,
    pub first_packet_ms: Option<f64>,
    pub first_keyframe_ms: Option<f64>,
    pub error: Option<String>,
    pub packets: u64,
    pub bytes_per_layer: [u64; 3],
    pub packets_per_layer: [u64; 3],
    pub video_expected: u64,
    pub video_lost: u64,
    pub audio_expected: u64,
    pub audio_lost: u64,
    pub jitter_ms: f64,
    pub frames: u64,
    pub freezes: u64,
    pub freeze_ms: f64,
    pub layer: Option<usize>,
    pub layer_switches: u64,
    /// Media counted from RTP headers after the first keyframe (no SRTP,
    /// no NACK, no latency tag): loss is before retransmission.
    pub header_counted: bool,
    /// Seconds between the first and last media packet.
    pub media_secs: f64,
    /// Seconds from the first media packet to the viewer's end (the run's
    /// end, its leave or its failure): the interval its bitrate is over.
    pub receive_secs: f64,
    pub left: bool,
}

impl ViewerStats {
    /// The layer most of the video bytes came from.
    pub fn main_layer(&self) -> Option<usize> {
        let (i, b) = self.bytes_per_layer.iter().enumerate().max_by_key(|(_, b)| **b)?;
        (*b > 0).then_some(i)
    }

    pub fn loss(&self) -> f64 {
        let e = self.video_expected + self.audio_expected;
        if e == 0 {
            return 0.0;
        }
        (self.video_lost + self.audio_lost) as f64 / e as f64
    }

    pub fn joined(&self) -> bool {
        self.first_keyframe_ms.is_some()
    }

    /// Received video bitrate, kbit/s, over the time from the viewer's first
    /// media packet to its end; `None` when that is shorter than
    /// `MIN_RATE_SECS`. (Over first to last packet, a viewer that got its
    /// first keyframe burst and then nothing showed the burst's bytes over
    /// a fraction of a millisecond: 395,865 kbit/s in a 2,000-viewer run.)
    pub fn kbps(&self) -> Option<f64> {
        (self.receive_secs >= MIN_RATE_SECS)
            .then(|| self.bytes_per_layer.iter().sum::<u64>() as f64 * 8.0 / self.receive_secs / 1000.0)
    }
}

impl Viewer {
    /// `full`: stays a full str0m peer after its first keyframe.
    pub fn new(id: u32, room: String, layer_asked: Option<usize>, posted: Instant, full: bool) -> Viewer {
        Viewer {
            stats: ViewerStats {
                id,
                room,
                layer_asked,
                ..ViewerStats::default()
            },
            posted,
            full,
            header_counted: false,
            datagram_len: 0,
            trailer: None,
            audio_pt: None,
            video_pt: None,
            video: SeqTracker::default(),
            audio: SeqTracker::default(),
            video_ssrc: None,
            audio_ssrc: None,
            jitter: Jitter::default(),
            last_ts: None,
            last_frame_at: None,
            frame_sent: None,
            first_key_ts: None,
            live: false,
            first_media_at: None,
            last_media_at: None,
        }
    }

    fn ms_since_post(&self, at: Instant) -> Option<f64> {
        Some(at.saturating_duration_since(self.posted).as_secs_f64() * 1000.0)
    }

    pub fn on_event(
        &mut self,
        rtc: &Rtc,
        shared: &Shared,
        latency: &mut Histogram,
        now: Instant,
        event: Event,
    ) {
        match event {
            Event::IceConnectionStateChange(state) if state.is_connected() && self.stats.ice_ms.is_none() => {
                self.stats.ice_ms = self.ms_since_post(now);
            }
            Event::Connected => {
                self.stats.dtls_ms = self.ms_since_post(now);
                self.audio_pt = pt_of(rtc, Codec::Opus);
                shared.progress.connected.fetch_add(1, Ordering::Relaxed);
            }
            Event::RtpPacket(p) => {
                let at = p.timestamp;
                self.stats.packets += 1;
                if self.stats.first_packet_ms.is_none() {
                    self.stats.first_packet_ms = self.ms_since_post(at);
                    shared.progress.media.fetch_add(1, Ordering::Relaxed);
                }
                self.first_media_at.get_or_insert(at);
                self.last_media_at = Some(at);
                let ssrc = *p.header.ssrc;
                if Some(p.header.payload_type) == self.audio_pt {
                    if self.audio_ssrc.replace(ssrc).is_some_and(|s| s != ssrc) {
                        self.fold_audio();
                    }
                    self.audio.record(*p.seq_no);
                    return;
                }
                if self.video_ssrc.replace(ssrc).is_some_and(|s| s != ssrc) {
                    self.fold_video();
                }
                self.video.record(*p.seq_no);
                self.video_pt = Some(*p.header.payload_type);
                self.jitter.update(rtp_arrival(shared, at), p.header.timestamp);
                // What SRTP adds after the payload, for header counting.
                // (the least seen: padding or an RTX prefix only add to it).
                let trailer = self
                    .datagram_len
                    .saturating_sub(p.header.header_len + p.payload.len());
                self.trailer = Some(self.trailer.map_or(trailer, |t| t.min(trailer)));
                if is_keyframe_payload(&p.payload) {
                    if self.stats.first_keyframe_ms.is_none() {
                        self.stats.first_keyframe_ms = self.ms_since_post(at);
                    }
                    match self.first_key_ts {
                        None => self.first_key_ts = Some(p.header.timestamp),
                        Some(ts) if ts != p.header.timestamp => self.live = true,
                        Some(_) => {}
                    }
                }
                if let Some(tag) = find_tag(&p.payload) {
                    if self.stats.layer.is_some_and(|l| l != tag.layer) {
                        self.stats.layer_switches += 1;
                    }
                    self.stats.layer = Some(tag.layer);
                    self.frame_sent = shared
                        .send_logs
                        .get(tag.publisher as usize)
                        .and_then(|l| l.lookup(tag.layer, tag.frame))
                        .map(|n| (p.header.timestamp, n));
                }
                if let Some(layer) = self.stats.layer {
                    self.stats.bytes_per_layer[layer] += p.payload.len() as u64;
                    self.stats.packets_per_layer[layer] += 1;
                }
                if let Some((ts, sent)) = self.frame_sent
                    && ts == p.header.timestamp
                    && self.live
                {
                    let recv = shared.nanos(at);
                    latency.record(recv.saturating_sub(sent) / 1000);
                }
                self.frame_clock(p.header.timestamp, at);
                // Header counting starts once the viewer has its first keyframe
                // on the layer it asked for, and only for the lowest layer: a
                // header-counted viewer sends no transport feedback, and with a
                // bandwidth estimate a server moved such viewers off higher
                // layers (40 s run, high: 15 header-counted averaged 659 kbit/s
                // against 1,073 for the full ones) where the header, which
                // carries no layer, cannot see it.
                if !self.full
                    && self.stats.first_keyframe_ms.is_some()
                    && self.stats.layer_asked == Some(0)
                    && self.stats.layer == Some(0)
                {
                    self.header_counted = true;
                    self.stats.header_counted = true;
                }
            }
            _ => {}
        }
    }

    /// Counts a new frame when `ts` is ahead of the last one, and a freeze
    /// when it came more than `FREEZE` after the previous frame.
    fn frame_clock(&mut self, ts: u32, at: Instant) {
        let newer = self
            .last_ts
            .is_none_or(|l| ts != l && ts.wrapping_sub(l) < u32::MAX / 2);
        if newer {
            if let Some(last) = self.last_frame_at {
                let gap = at.saturating_duration_since(last);
                if gap > FREEZE {
                    self.stats.freezes += 1;
                    self.stats.freeze_ms += gap.as_secs_f64() * 1000.0;
                }
            }
            self.last_ts = Some(ts);
            self.last_frame_at = Some(at);
            self.stats.frames += 1;
        }
    }

    /// Whether media for this viewer is counted from headers, not fed to str0m.
    pub fn header_counted(&self) -> bool {
        self.header_counted
    }

    /// Notes the size of the datagram about to go to str0m.
    pub fn set_datagram_len(&mut self, len: usize) {
        self.datagram_len = len;
    }

    /// Counts one SRTP media packet from its cleartext header: loss over
    /// extended sequence numbers, payload bytes on the last tagged layer,
    /// jitter and frames from the RTP timestamp. Returns the payload bytes.
    /// Packets of another payload type (RTX) are not counted.
    pub fn count_header(&mut self, h: &RtpHeader, len: usize, shared: &Shared, at: Instant) -> Option<usize> {
        let payload = len.saturating_sub(h.header_len + self.trailer.unwrap_or(0));
        if Some(h.payload_type) == self.audio_pt.map(|p| *p) {
            if self.audio_ssrc.replace(h.ssrc).is_some_and(|s| s != h.ssrc) {
                self.fold_audio();
            }
            self.audio.record(self.audio.extend(h.seq));
        } else if Some(h.payload_type) == self.video_pt {
            if self.video_ssrc.replace(h.ssrc).is_some_and(|s| s != h.ssrc) {
                self.fold_video();
            }
            self.video.record(self.video.extend(h.seq));
            self.jitter.update(rtp_arrival(shared, at), h.timestamp);
            if let Some(layer) = self.stats.layer {
                self.stats.bytes_per_layer[layer] += payload as u64;
                self.stats.packets_per_layer[layer] += 1;
            }
            self.frame_clock(h.timestamp, at);
        } else {
            return None;
        }
        self.stats.packets += 1;
        self.last_media_at = Some(at);
        Some(payload)
    }

    fn fold_video(&mut self) {
        self.stats.video_expected += self.video.expected();
        self.stats.video_lost += self.video.lost();
        self.video = SeqTracker::default();
    }

    fn fold_audio(&mut self) {
        self.stats.audio_expected += self.audio.expected();
        self.stats.audio_lost += self.audio.lost();
        self.audio = SeqTracker::default();
    }

    /// Closes the books at `now` (end of run or leave): a stall at the end counts as a freeze.
    pub fn finish(mut self, now: Instant) -> ViewerStats {
        self.fold_video();
        self.fold_audio();
        self.stats.jitter_ms = self.jitter.value() / f64::from(VIDEO_CLOCK) * 1000.0;
        if let Some(last) = self.last_frame_at {
            let gap = now.saturating_duration_since(last);
            if gap > FREEZE {
                self.stats.freezes += 1;
                self.stats.freeze_ms += gap.as_secs_f64() * 1000.0;
            }
        }
        if let (Some(a), Some(b)) = (self.first_media_at, self.last_media_at) {
            self.stats.media_secs = b.saturating_duration_since(a).as_secs_f64();
            self.stats.receive_secs = now.saturating_duration_since(a).as_secs_f64();
        }
        self.stats
    }
}

/// `at` in 90 kHz units since the run's epoch (the receiver clock of RFC 3550 jitter).
fn rtp_arrival(shared: &Shared, at: Instant) -> i64 {
    (at.saturating_duration_since(shared.epoch).as_nanos() * u128::from(VIDEO_CLOCK) / 1_000_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer_with_media(first: Instant, last: Instant, bytes: u64) -> Viewer {
        let mut v = Viewer::new(1, "r".into(), Some(0), first, false);
        v.first_media_at = Some(first);
        v.last_media_at = Some(last);
        v.stats.bytes_per_layer[0] = bytes;
        v
    }

    #[test]
    fn finds_the_servers_host_candidate() {
        let sdp = "v=0\r\na=candidate:2 1 udp 2015363583 fd00::2 29895 typ host\r\n\
                   a=candidate:1 1 udp 2015363327 192.0.2.2 45590 typ host\r\n";
        assert_eq!(host_candidate(sdp), Some("[fd00::2]:29895".parse().unwrap()));
        assert_eq!(host_candidate("v=0\r\n"), None);
    }

    #[test]
    fn bitrate_is_over_the_time_to_the_viewers_end() {
        let t0 = Instant::now();
        let us = Duration::from_micros;
        // A keyframe burst of 20 KB within 400 µs, then nothing: no rate
        // when the viewer ended right after it...
        let burst = viewer_with_media(t0, t0 + us(400), 20_000).finish(t0 + us(900));
        assert_eq!(burst.kbps(), None);
        assert!(burst.media_secs < 0.001);
        // ... and the bytes over the whole time it should have been receiving
        // when it ended 10 s later (16 kbit/s, not 400,000).
        let stalled = viewer_with_media(t0, t0 + us(400), 20_000).finish(t0 + Duration::from_secs(10));
        let kbps = stalled.kbps().expect("rated");
        assert!((kbps - 16.0).abs() < 1e-6, "{kbps}");
        // A steady viewer: 187.5 KB over 10 s is 150 kbit/s.
        let steady = viewer_with_media(t0, t0 + Duration::from_millis(9_990), 187_500)
            .finish(t0 + Duration::from_secs(10));
        assert!((steady.kbps().unwrap() - 150.0).abs() < 1e-6);
    }
}
