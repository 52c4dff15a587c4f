//! A str0m WHEP viewer over real UDP: counts the RTP packets of each kind
//! it receives, and the H.264 keyframe starts among them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hyper::StatusCode;
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, RtcConfig};
use tokio::net::UdpSocket;

use super::node::{Http, Node};

/// What a [`watch`] viewer received so far.
#[derive(Default)]
pub struct Watched {
    pub video: AtomicU64,
    pub audio: AtomicU64,
    pub keyframes: AtomicU64,
}

/// Opens a WHEP session for `room` at `node` on `ip` and receives until
/// the test ends; the counts fill as media arrives.
pub async fn watch(node: &Node, http: &Http, ip: &str, room: &str, token: &str) -> Arc<Watched> {
    let socket = UdpSocket::bind(format!("{ip}:0")).await.unwrap();
    let local = socket.local_addr().unwrap();
    let mut rtc = RtcConfig::new()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_h264(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    let resp = http
        .post_sdp(
            &node.url(&format!("/whep/{room}")),
            &offer.to_sdp_string(),
            Some(token),
        )
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    let answer = SdpAnswer::from_sdp_string(&resp.body).unwrap();
    rtc.sdp_api().accept_answer(pending, answer).unwrap();

    let watched = Arc::new(Watched::default());
    let counts = watched.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let timeout = loop {
                match rtc.poll_output() {
                    Ok(Output::Timeout(t)) => break t,
                    Ok(Output::Transmit(t)) => {
                        let _ = socket.send_to(&t.contents, t.destination).await;
                    }
                    Ok(Output::Event(Event::RtpPacket(p))) => {
                        let kind = rtc
                            .codec_config()
                            .params()
                            .iter()
                            .find(|c| c.pt() == p.header.payload_type)
                            .map(|c| c.spec().codec);
                        match kind {
                            Some(str0m::format::Codec::H264) => {
                                counts.video.fetch_add(1, Ordering::Relaxed);
                                if str0m::format::detect_h264_nalu(&p.payload, 7) {
                                    counts.keyframes.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Some(str0m::format::Codec::Opus) => {
                                counts.audio.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                    }
                    Ok(Output::Event(_)) => {}
                    Err(_) => return,
                }
            };
            if !rtc.is_alive() {
                return;
            }
            let wait = timeout
                .saturating_duration_since(Instant::now())
                .max(std::time::Duration::from_millis(1));
            tokio::select! {
                r = socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r
                        && let Ok(rx) = Receive::new(Protocol::Udp, from, local, &buf[..n])
                    {
                        let _ = rtc.handle_input(Input::Receive(Instant::now(), rx));
                    }
                }
                _ = tokio::time::sleep(wait) => {
                    let _ = rtc.handle_input(Input::Timeout(Instant::now()));
                }
            }
        }
    });
    watched
}
