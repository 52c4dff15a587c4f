//! Issue 4, test 2: LL-HLS delivery from the real `sfu` binary. A str0m
//! WHIP publisher sends H.264 (real SPS/PPS, RFC 6184 FU-A/STAP-A, IDRs on
//! the node's PLIs) and Opus over real UDP; over real HTTP we check the
//! blocking playlist reload, the preload-hinted part, a delta update and
//! the 400/503 answers, and `/metrics`.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::node::{Http, Node};
use hyper::{Method, StatusCode};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;

/// A 1080p High-profile SPS (level 4.0) as a real encoder writes it, and its PPS.
const SPS: [u8; 26] = [
    103, 100, 0, 40, 172, 217, 64, 120, 2, 39, 229, 132, 0, 0, 3, 0, 4, 0, 0, 3, 0, 240, 60, 96, 198, 88,
];
const PPS: [u8; 5] = [104, 235, 236, 178, 44];

/// RFC 6184: NAL units that fit go together in a STAP-A, larger ones in FU-A.
fn packetize(nalus: &[Vec<u8>], mtu: usize) -> Vec<Vec<u8>> {
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

struct Publisher {
    sending: Arc<AtomicBool>,
    keyframes: Arc<AtomicU64>,
}

fn pt(rtc: &Rtc, mid: Mid) -> Pt {
    rtc.media(mid).unwrap().remote_pts()[0]
}

/// Publishes to `room`; media flows while `sending` is set.
async fn publish(node: &Node, http: &Http, room: &str) -> Publisher {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    let mut rtc = RtcConfig::new()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_h264(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
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
        .post_sdp(&node.url(&format!("/whip/{room}")), &offer.to_sdp_string(), None)
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
    let answer = SdpAnswer::from_sdp_string(&resp.body).unwrap();
    rtc.sdp_api().accept_answer(pending, answer).unwrap();

    let sending = Arc::new(AtomicBool::new(true));
    let keyframes = Arc::new(AtomicU64::new(0));
    let (flag, kf) = (sending.clone(), keyframes.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        let mut connected = false;
        let start = Instant::now();
        let (mut next_video, mut next_audio) = (start, start);
        let (mut frame, mut vseq, mut aseq) = (0u64, 1u64, 1u64);
        let mut want_idr = true;
        loop {
            // Drain str0m.
            let timeout = loop {
                match rtc.poll_output() {
                    Ok(Output::Timeout(t)) => break t,
                    Ok(Output::Transmit(t)) => {
                        let _ = socket.send_to(&t.contents, t.destination).await;
                    }
                    Ok(Output::Event(Event::Connected)) => connected = true,
                    Ok(Output::Event(Event::KeyframeRequest(_))) => {
                        want_idr = true;
                        kf.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Output::Event(_)) => {}
                    Err(_) => return,
                }
            };
            if !rtc.is_alive() {
                return;
            }
            let now = Instant::now();
            if connected && flag.load(Ordering::Relaxed) {
                let (vpt, apt) = (pt(&rtc, video), pt(&rtc, audio));
                if now >= next_audio {
                    next_audio += Duration::from_millis(20);
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
                    next_video += Duration::from_micros(33_333);
                    let idr = std::mem::take(&mut want_idr);
                    let mut slice = vec![if idr { 0x65 } else { 0x41 }];
                    slice.extend((0..if idr { 6000 } else { 1500 }).map(|i: u32| (i as u8) ^ frame as u8));
                    let nalus = if idr {
                        vec![SPS.to_vec(), PPS.to_vec(), slice]
                    } else {
                        vec![slice]
                    };
                    let payloads = packetize(&nalus, 1100);
                    let n = payloads.len();
                    if let Some(s) = rtc.direct_api().stream_tx_by_mid(video, None) {
                        for (i, p) in payloads.into_iter().enumerate() {
                            let w = RtpWrite::new(vpt, SeqNo::from(vseq), (frame * 3000) as u32, now, p)
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
            let wait = wake
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
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
    Publisher { sending, keyframes }
}

fn attr(line: &str, key: &str) -> Option<String> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    let rest = &line[at..];
    Some(match rest.strip_prefix('"') {
        Some(q) => q[..q.find('"')?].to_string(),
        None => rest.split(',').next()?.to_string(),
    })
}

#[tokio::test]
async fn blocking_reload_preload_hint_delta_update_and_400_503_against_the_node() {
    let node = Node::start(&[
        "--hls-segment-ms",
        "1000",
        "--hls-part-ms",
        "200",
        "--hls-dvr",
        "30s",
    ]);
    let http = Http::default();
    let room = "hlsroom";
    let publisher = publish(&node, &http, room).await;

    // The multivariant playlist appears once the first part exists.
    let t0 = Instant::now();
    let mv = loop {
        let r = http
            .send(
                Method::GET,
                &node.url(&format!("/hls/{room}/index.m3u8")),
                &[],
                "",
            )
            .await;
        if r.status == StatusCode::OK {
            break r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no HLS: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(mv.header("content-type"), Some("application/vnd.apple.mpegurl"));
    assert!(mv.body.contains("RESOLUTION=1920x1080"), "{}", mv.body);
    assert!(mv.body.contains("CODECS=\"avc1.640028,opus\""), "{}", mv.body);
    let video_uri = mv.body.lines().find(|l| l.ends_with("v0/index.m3u8")).unwrap();
    let playlist_url = node.url(&format!("/hls/{room}/{video_uri}"));
    let dir = playlist_url.trim_end_matches("index.m3u8").to_string();

    // Blocking reload for the hinted part: held until it exists, then the
    // playlist lists it.
    let pl = http.send(Method::GET, &playlist_url, &[], "").await;
    assert_eq!(pl.status, StatusCode::OK);
    assert!(pl.body.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=12.0,PART-HOLD-BACK=0.600,HOLD-BACK=6.0"), "{}", pl.body);
    let hint = pl
        .body
        .lines()
        .find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:TYPE=PART"))
        .unwrap();
    let hinted = attr(hint, "URI").unwrap();
    let (msn, part) = {
        let s = hinted.trim_start_matches("part_").trim_end_matches(".m4s");
        let (a, b) = s.split_once('_').unwrap();
        (a.parse::<u64>().unwrap(), b.parse::<u32>().unwrap())
    };
    let t = Instant::now();
    let (blocking_url, part_url) = (
        format!("{playlist_url}?_HLS_msn={msn}&_HLS_part={part}"),
        format!("{dir}{hinted}"),
    );
    let (blocked, part_bytes) = tokio::join!(
        http.send(Method::GET, &blocking_url, &[], ""),
        http.send(Method::GET, &part_url, &[], ""),
    );
    let held = t.elapsed();
    assert_eq!(blocked.status, StatusCode::OK);
    assert!(
        blocked.body.contains(&format!("URI=\"{hinted}\"")),
        "{}",
        blocked.body
    );
    assert_eq!(blocked.header("cache-control"), Some("public, max-age=12"));
    assert_eq!(
        part_bytes.status,
        StatusCode::OK,
        "the hinted part is served once whole"
    );
    assert_eq!(part_bytes.header("content-type"), Some("video/mp4"));
    assert!(held < Duration::from_secs(2), "held {held:?}");
    // Not hinted, not there: 404.
    let far = http
        .send(Method::GET, &format!("{dir}part_{}_0.m4s", msn + 5), &[], "")
        .await;
    assert_eq!(far.status, StatusCode::NOT_FOUND);

    // 400s.
    let last_msn: u64 = {
        let pl = http.send(Method::GET, &playlist_url, &[], "").await.body;
        let hint = pl
            .lines()
            .find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:TYPE=PART"))
            .unwrap()
            .to_string();
        attr(&hint, "URI")
            .unwrap()
            .trim_start_matches("part_")
            .split('_')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    for q in ["_HLS_part=0".to_string(), format!("_HLS_msn={}", last_msn + 3)] {
        let r = http
            .send(Method::GET, &format!("{playlist_url}?{q}"), &[], "")
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
    }

    // Delta update once the playlist is longer than the skip boundary (12 s).
    tokio::time::sleep(Duration::from_millis(14_500).saturating_sub(t0.elapsed())).await;
    let delta = http
        .send(
            Method::GET,
            &format!("{playlist_url}?_HLS_skip=YES"),
            &[("accept-encoding", "identity")],
            "",
        )
        .await;
    assert_eq!(delta.status, StatusCode::OK);
    assert!(
        delta.body.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS="),
        "{}",
        delta.body
    );
    assert!(
        publisher.keyframes.load(Ordering::Relaxed) >= 8,
        "the node asks for IDRs every segment"
    );

    // Media stops (the peer stays): a blocking request for the next segment
    // gets 503 after 3 target durations (6 s).
    publisher.sending.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pl = http.send(Method::GET, &playlist_url, &[], "").await.body;
    let hint = pl
        .lines()
        .find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:TYPE=PART"))
        .unwrap()
        .to_string();
    let next: u64 = attr(&hint, "URI")
        .unwrap()
        .trim_start_matches("part_")
        .split('_')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let t = Instant::now();
    let r = http
        .send(
            Method::GET,
            &format!("{playlist_url}?_HLS_msn={}", next + 1),
            &[],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(t.elapsed() >= Duration::from_secs(6));

    let metrics = http.send(Method::GET, &node.url("/metrics"), &[], "").await.body;
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert!(value("wave_hls_parts_total") > 50);
    assert_eq!(value("wave_hls_rooms"), 1);
    assert!(value("wave_hls_blocking_requests_total") >= 2);
    assert_eq!(value("wave_hls_blocking_timeouts_total"), 1);
}
