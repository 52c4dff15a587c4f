//! A str0m WHIP publisher over real UDP for the LL-HLS tests (RFC 6184
//! STAP-A/FU-A, IDRs on the node's PLIs, sender reports from str0m): H.264
//! from a real encoder (openh264 via hls-bridge's wrapper: slices a
//! decoder accepts), real 1080p SPS/PPS with filler slices, or a stream
//! that never has a keyframe; plus Opus-shaped audio packets.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hls_bridge::transcode::video::{H264Encoder, Picture, avcc_nal_units};
use hyper::StatusCode;
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Event, Rtc};

use super::node::{Http, Node};
use super::rtc_io;

/// RFC 6184: NAL units that fit go together in a STAP-A, larger ones in FU-A.
pub fn packetize(nalus: &[Vec<u8>], mtu: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let small: Vec<&Vec<u8>> = nalus.iter().filter(|n| n.len() < 200).collect();
    if small.len() > 1 {
        let mut stap = vec![24u8];
        for n in &small {
            stap.extend_from_slice(&(n.len() as u16).to_be_bytes());
            stap.extend_from_slice(n);
        }
        out.push(stap);
    }
    for n in nalus.iter().filter(|n| n.len() >= 200 || small.len() == 1) {
        if n.len() <= mtu {
            out.push(n.clone());
            continue;
        }
        let chunks: Vec<&[u8]> = n[1..].chunks(mtu - 2).collect();
        for (i, c) in chunks.iter().enumerate() {
            let mut fu = vec![(n[0] & 0xe0) | 28, n[0] & 0x1f];
            if i == 0 {
                fu[1] |= 0x80;
            }
            if i + 1 == chunks.len() {
                fu[1] |= 0x40;
            }
            fu.extend_from_slice(c);
            out.push(fu);
        }
    }
    out
}

/// What the publisher's video track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Video {
    /// openh264 pictures of `size`, changeable while running.
    Encoded,
    /// P slices only: no SPS, no PPS, no IDR, whatever the node asks.
    NoKeyframe,
    /// A 1080p High-profile SPS/PPS as a real encoder writes them, with
    /// filler slices: packaging never decodes, so this is enough for
    /// delivery tests and costs no encoder time.
    Synthetic1080p,
}

/// The [`Video::Synthetic1080p`] SPS (level 4.0) and PPS.
const SPS_1080P: [u8; 26] = [
    103, 100, 0, 40, 172, 217, 64, 120, 2, 39, 229, 132, 0, 0, 3, 0, 4, 0, 0, 3, 0, 240, 60, 96, 198, 88,
];
const PPS_1080P: [u8; 5] = [104, 235, 236, 178, 44];

/// A running publisher.
pub struct LivePublisher {
    /// Media flows while set.
    pub sending: Arc<AtomicBool>,
    /// Keyframe requests (PLI/FIR) the node sent.
    pub keyframes: Arc<AtomicU64>,
    /// Picture size `width << 16 | height` for [`Video::Encoded`].
    pub size: Arc<AtomicU64>,
    /// The WHIP session resource (for DELETE).
    pub location: String,
}

impl LivePublisher {
    pub fn set_size(&self, width: u64, height: u64) {
        self.size.store(width << 16 | height, Ordering::Relaxed);
    }
}

fn pt(rtc: &Rtc, mid: Mid) -> Pt {
    rtc.media(mid).unwrap().remote_pts()[0]
}

/// Publishes H.264 (one layer) and audio to `room` at 15 fps.
pub async fn publish(node: &Node, http: &Http, room: &str, video_mode: Video) -> LivePublisher {
    publish_with(node, http, room, video_mode, None).await
}

/// [`publish`] with a bearer token (a node with `--auth-secret`).
pub async fn publish_with(
    node: &Node,
    http: &Http,
    room: &str,
    video_mode: Video,
    token: Option<&str>,
) -> LivePublisher {
    let (socket, local, mut rtc) = rtc_io::client().await;
    let mut api = rtc.sdp_api();
    let audio = api.add_media(
        MediaKind::Audio,
        Direction::SendOnly,
        Some("s".into()),
        Some("a".into()),
        None,
    );
    let video = api.add_media(
        MediaKind::Video,
        Direction::SendOnly,
        Some("s".into()),
        Some("v".into()),
        None,
    );
    let (offer, pending) = api.apply().unwrap();
    let resp = http
        .post_sdp(&node.url(&format!("/whip/{room}")), &offer.to_sdp_string(), token)
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    let location = resp.header("location").expect("WHIP Location").to_string();
    let answer = SdpAnswer::from_sdp_string(&resp.body).unwrap();
    rtc.sdp_api().accept_answer(pending, answer).unwrap();

    let publisher = LivePublisher {
        sending: Arc::new(AtomicBool::new(true)),
        keyframes: Arc::new(AtomicU64::new(0)),
        size: Arc::new(AtomicU64::new(320 << 16 | 240)),
        location,
    };
    let (flag, kf, size) = (
        publisher.sending.clone(),
        publisher.keyframes.clone(),
        publisher.size.clone(),
    );
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        let mut connected = false;
        let start = Instant::now();
        let (mut next_video, mut next_audio) = (start, start);
        let (mut frame, mut vseq, mut aseq) = (0u64, 1u64, 1u64);
        let mut want_idr = true;
        let mut encoder: Option<(u64, H264Encoder)> = None;
        loop {
            let on_event = |_: &Rtc, e: Event| match e {
                Event::Connected => connected = true,
                Event::KeyframeRequest(_) => {
                    want_idr = true;
                    kf.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            };
            let Some(timeout) = rtc_io::drain(&mut rtc, &socket, on_event).await else {
                return;
            };
            let now = Instant::now();
            if connected && flag.load(Ordering::Relaxed) {
                let (vpt, apt) = (pt(&rtc, video), pt(&rtc, audio));
                if now >= next_audio {
                    next_audio += Duration::from_millis(20);
                    // TOC: CELT fullband 20 ms, stereo.
                    let mut payload = vec![(31 << 3) | 0x04];
                    payload.extend((0..80).map(|i: u8| i ^ aseq as u8));
                    if let Some(s) = rtc.direct_api().stream_tx_by_mid(audio, None) {
                        s.write_rtp(RtpWrite::new(
                            apt,
                            SeqNo::from(aseq),
                            (aseq * 960) as u32,
                            now,
                            payload,
                        ));
                    }
                    aseq += 1;
                }
                if now >= next_video {
                    next_video += Duration::from_micros(66_667);
                    let ts = frame * 6000;
                    let nalus: Vec<Vec<u8>> = match video_mode {
                        Video::NoKeyframe => {
                            let mut slice = vec![0x41];
                            slice.extend((0..1500).map(|i: u32| (i as u8) ^ frame as u8));
                            vec![slice]
                        }
                        Video::Synthetic1080p => {
                            let idr = std::mem::take(&mut want_idr);
                            let mut slice = vec![if idr { 0x65 } else { 0x41 }];
                            slice.extend(
                                (0..if idr { 6000 } else { 1500 }).map(|i: u32| (i as u8) ^ frame as u8),
                            );
                            if idr {
                                vec![SPS_1080P.to_vec(), PPS_1080P.to_vec(), slice]
                            } else {
                                vec![slice]
                            }
                        }
                        Video::Encoded => {
                            let wanted = size.load(Ordering::Relaxed);
                            if encoder.as_ref().is_none_or(|(s, _)| *s != wanted) {
                                encoder = Some((wanted, H264Encoder::new(400_000, 15.0).unwrap()));
                                want_idr = true;
                            }
                            let (w, h) = ((wanted >> 16) as usize, (wanted & 0xffff) as usize);
                            let (_, enc) = encoder.as_mut().unwrap();
                            let idr = std::mem::take(&mut want_idr);
                            match enc.encode(&Picture::test_ramp(w, h, frame), ts as i64, idr) {
                                Ok(Some(au)) => avcc_nal_units(&au.data)
                                    .unwrap()
                                    .into_iter()
                                    .map(<[u8]>::to_vec)
                                    .collect(),
                                _ => {
                                    want_idr |= idr;
                                    Vec::new()
                                }
                            }
                        }
                    };
                    let payloads = packetize(&nalus, 1100);
                    let n = payloads.len();
                    if let Some(s) = rtc.direct_api().stream_tx_by_mid(video, None) {
                        for (i, p) in payloads.into_iter().enumerate() {
                            let w = RtpWrite::new(vpt, SeqNo::from(vseq), ts as u32, now, p)
                                .marker(i + 1 == n)
                                .nackable(true);
                            s.write_rtp(w);
                            vseq += 1;
                        }
                    }
                    frame += 1;
                }
            }
            let media_due = next_audio.min(next_video);
            let wake = if connected {
                timeout.min(media_due)
            } else {
                timeout
            };
            rtc_io::input(&mut rtc, &socket, local, &mut buf, wake).await;
        }
    });
    publisher
}
