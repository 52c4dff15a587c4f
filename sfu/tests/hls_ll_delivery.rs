//! Issue 4, test 2: LL-HLS delivery from the real `sfu` binary. A str0m
//! WHIP publisher sends H.264 (real SPS/PPS, RFC 6184 FU-A/STAP-A, IDRs on
//! the node's PLIs) and Opus over real UDP; over real HTTP we check the
//! blocking playlist reload, the preload-hinted part, a delta update and
//! the 400/503 answers, and `/metrics`.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::node::{Http, Node};
use common::publisher::{Video, publish};
use hyper::{Method, StatusCode};

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
    let publisher = publish(&node, &http, room, Video::Synthetic1080p).await;

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
        wave_metrics::value(&metrics, name).unwrap_or_else(|| panic!("{name} in {metrics}")) as u64
    };
    assert!(value("wave_hls_parts_total") > 50);
    assert_eq!(value("wave_hls_rooms"), 1);
    assert!(value("wave_hls_blocking_requests_total") >= 2);
    assert_eq!(value("wave_hls_blocking_timeouts_total"), 1);
}
