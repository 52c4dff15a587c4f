//! A str0m WHEP viewer over real UDP: receives a room's audio and video and
//! keeps each RTP packet's kind, sequence number, timestamp and arrival,
//! for assertions on what reached it (continuity across a relay's
//! re-parent, media still flowing through an outage).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use str0m::Event;
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind};

use super::node::{Http, Node};
use super::rtc_io;

/// One received RTP packet.
#[derive(Debug, Clone, Copy)]
pub struct Got {
    pub kind: MediaKind,
    /// An H.264 packet carrying an SPS (a keyframe's start).
    pub keyframe: bool,
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    pub at: Instant,
}

/// A running viewer; dropping it leaves its task running until the node
/// ends the session.
pub struct LiveViewer {
    pub got: Arc<Mutex<Vec<Got>>>,
    pub location: String,
    /// While set, the viewer asks for a keyframe (PLI) every 50 ms.
    pub pli: Arc<AtomicBool>,
    /// PLIs it sent.
    pub plis: Arc<AtomicU64>,
}

impl LiveViewer {
    /// Packets of `kind` received so far.
    pub fn packets(&self, kind: MediaKind) -> Vec<Got> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.kind == kind)
            .copied()
            .collect()
    }

    /// Keyframe starts received so far.
    pub fn keyframes(&self) -> usize {
        self.got.lock().unwrap().iter().filter(|g| g.keyframe).count()
    }

    /// Waits until `n` more packets of `kind` than `after` arrived (`wait` at most).
    pub async fn wait_for(&self, kind: MediaKind, after: usize, n: usize, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if self.packets(kind).len() >= after + n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// Watches `room` at `node` over WHEP (audio and video, receive only).
pub async fn watch(node: &Node, http: &Http, room: &str, token: Option<&str>) -> LiveViewer {
    watch_with(node, http, room, token, &[Codec::H264]).await
}

/// [`watch`] offering these video codecs.
pub async fn watch_with(
    node: &Node,
    http: &Http,
    room: &str,
    token: Option<&str>,
    video: &[Codec],
) -> LiveViewer {
    let (socket, local, mut rtc) = rtc_io::client_with(video).await;
    let mut api = rtc.sdp_api();
    let audio = api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let resp = http
        .post_sdp(&node.url(&format!("/whep/{room}")), &offer.to_sdp_string(), token)
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    let location = resp.header("location").expect("WHEP Location").to_string();
    let answer = SdpAnswer::from_sdp_string(&resp.body).unwrap();
    rtc.sdp_api().accept_answer(pending, answer).unwrap();
    let audio_pts = rtc
        .media(audio)
        .map(|m| m.remote_pts().to_vec())
        .unwrap_or_default();
    let got: Arc<Mutex<Vec<Got>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let (pli, plis) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let (ask, asked) = (pli.clone(), plis.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        let mut last_pli = Instant::now();
        loop {
            let video = sink
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|g| g.kind == MediaKind::Video)
                .map(|g| g.ssrc);
            if let Some(ssrc) = video
                && ask.load(Ordering::Relaxed)
                && last_pli.elapsed() >= Duration::from_millis(50)
                && let Some(rx) = rtc.direct_api().stream_rx(&ssrc.into())
            {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                asked.fetch_add(1, Ordering::Relaxed);
                last_pli = Instant::now();
            }
            let on_event = |_: &str0m::Rtc, e: Event| {
                if let Event::RtpPacket(p) = e {
                    let kind = if audio_pts.contains(&p.header.payload_type) {
                        MediaKind::Audio
                    } else {
                        MediaKind::Video
                    };
                    sink.lock().unwrap().push(Got {
                        kind,
                        keyframe: kind == MediaKind::Video && str0m::format::detect_h264_nalu(&p.payload, 7),
                        ssrc: *p.header.ssrc,
                        seq: p.header.sequence_number,
                        ts: p.header.timestamp,
                        at: Instant::now(),
                    });
                }
            };
            let Some(timeout) = rtc_io::drain(&mut rtc, &socket, on_event).await else {
                return;
            };
            let wake = if ask.load(Ordering::Relaxed) {
                timeout.min(last_pli + Duration::from_millis(50))
            } else {
                timeout
            };
            rtc_io::input(&mut rtc, &socket, local, &mut buf, wake).await;
        }
    });
    LiveViewer {
        got,
        location,
        pli,
        plis,
    }
}
