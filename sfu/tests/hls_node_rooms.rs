//! Issue 4, tests 3 (ffprobe part) and 4 against the real `sfu` binary: a
//! str0m publisher sends openh264-encoded H.264 over real UDP and every
//! playlist the node serves over real HTTP goes through hls-bridge's
//! conformance checker (C1–C12, C16–C18, reload invariants).
//!
//! - The AAC-LC rendition (default audio group, `mp4a.40.2` in every
//!   variant's CODECS) next to Opus; `ffprobe` reads H.264 and AAC.
//! - Thumbnails: JPEG and PNG of the latest IDR, 404 before one exists.
//! - A publisher that leaves: EXT-X-ENDLIST everywhere, then the room's HLS
//!   state is gone after `--hls-linger`.
//! - A publisher that never sends a keyframe: valid playlists, no video.
//! - A resolution change: EXT-X-DISCONTINUITY and a new EXT-X-MAP.
//! - `--hls-ladder`: a single-layer publisher gets two transcoded variants.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::checker::{self, Media, Reloads};
use common::node::{Http, Node};
use common::publisher::{LivePublisher, Video, publish};
use hyper::{Method, StatusCode};

/// Segments of 1 s, parts of 200 ms: the tests see many of each quickly.
const FAST: [&str; 4] = ["--hls-segment-ms", "1000", "--hls-part-ms", "200"];

/// The checker's view of one room, kept across reloads.
#[derive(Default)]
struct Conformance {
    reloads: BTreeMap<String, Reloads>,
    checked_inits: std::collections::BTreeSet<String>,
}

/// One pass over a room: the multivariant playlist, every media playlist
/// it names, their init sections and newest segment. Returns the
/// multivariant playlist and the media playlists by URI, and panics with
/// every violation found.
async fn check_room(
    http: &Http,
    node: &Node,
    room: &str,
    c: &mut Conformance,
) -> (String, BTreeMap<String, Media>) {
    let base = node.url(&format!("/hls/{room}/"));
    let mv = http
        .send(Method::GET, &format!("{base}index.m3u8"), &[], "")
        .await;
    assert_eq!(mv.status, StatusCode::OK, "{}", mv.body);
    assert_eq!(mv.header("content-type"), Some("application/vnd.apple.mpegurl"));
    let mut uris: Vec<String> = mv
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_owned)
        .collect();
    uris.extend(
        mv.body
            .lines()
            .filter(|l| l.starts_with("#EXT-X-MEDIA:"))
            .filter_map(|l| {
                let a = checker::attributes(l.trim_start_matches("#EXT-X-MEDIA:"));
                a.get("URI").cloned()
            }),
    );
    uris.sort();
    uris.dedup();
    let mut violations = Vec::new();
    let mut media = BTreeMap::new();
    for uri in uris {
        let r = http.send(Method::GET, &format!("{base}{uri}"), &[], "").await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.body);
        let (m, errs) = checker::check_media(&r.body);
        violations.extend(errs.into_iter().map(|e| format!("{uri}: {e}")));
        if !m.endlist || c.reloads.contains_key(&uri) {
            let errs = c.reloads.entry(uri.clone()).or_default().check(&m);
            violations.extend(errs.into_iter().map(|e| format!("{uri} reload: {e}")));
        }
        let dir = format!("{base}{}", uri.trim_end_matches("index.m3u8"));
        for map in m.segments.iter().filter_map(|s| s.map.clone()) {
            let key = format!("{uri} {map}");
            if c.checked_inits.insert(key) {
                let (status, _, bytes) = http.get_bytes(&format!("{dir}{map}")).await;
                assert_eq!(status, StatusCode::OK, "{uri}: {map}");
                violations.extend(
                    checker::check_init(&bytes)
                        .into_iter()
                        .map(|e| format!("{uri} {map}: {e}")),
                );
            }
        }
        if let Some(seg) = m.complete().last().and_then(|s| s.uri.clone()) {
            let (status, _, bytes) = http.get_bytes(&format!("{dir}{seg}")).await;
            assert_eq!(status, StatusCode::OK, "{uri}: {seg}");
            if let Err(e) = checker::check_fragments(&bytes) {
                violations.push(format!("{uri} {seg}: {e}"));
            }
        }
        media.insert(uri, m);
    }
    violations.extend(checker::check_multivariant(&mv.body, &media));
    assert!(violations.is_empty(), "{room}: {violations:#?}\n{}", mv.body);
    (mv.body, media)
}

/// Polls `GET path` until `done(status, body)` holds, for at most `within`.
async fn wait_for(
    http: &Http,
    url: &str,
    within: Duration,
    done: impl Fn(StatusCode, &str) -> bool,
) -> String {
    let t0 = Instant::now();
    loop {
        let r = http.send(Method::GET, url, &[], "").await;
        if done(r.status, &r.body) {
            return r.body;
        }
        assert!(
            t0.elapsed() < within,
            "{url}: still {} after {within:?}: {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `RESOLUTION=` of every variant.
fn resolutions(mv: &str) -> Vec<String> {
    mv.lines()
        .filter(|l| l.starts_with("#EXT-X-STREAM-INF:"))
        .filter_map(|l| {
            checker::attributes(l.trim_start_matches("#EXT-X-STREAM-INF:"))
                .get("RESOLUTION")
                .cloned()
        })
        .collect()
}

fn metric(metrics: &str, name: &str) -> u64 {
    wave_metrics::value(metrics, name).unwrap_or_else(|| panic!("{name} in {metrics}")) as u64
}

/// `ffprobe`'s `codec_name,codec_type` lines for `url` (Debian's ffmpeg,
/// installed by scripts/setup.sh), bounded by `timeout`.
async fn ffprobe(url: String) -> String {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout")
            .args([
                "20",
                "ffprobe",
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name,codec_type",
            ])
            .args(["-of", "csv=p=0", &url])
            .output()
            .expect("ffprobe runs (apt package ffmpeg)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn leave(http: &Http, node: &Node, p: &LivePublisher) {
    let r = http.send(Method::DELETE, &node.url(&p.location), &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn aac_rendition_thumbnails_and_a_clean_end() {
    let mut args = FAST.to_vec();
    args.extend(["--hls-linger", "2s"]);
    let node = Node::start(&args);
    let http = Http::default();
    let room = "hls-aac";
    let base = node.url(&format!("/hls/{room}/"));
    let publisher = publish(&node, &http, room, Video::Encoded).await;

    // The AAC group appears once the transcoder has produced a part.
    let mv = wait_for(
        &http,
        &format!("{base}index.m3u8"),
        Duration::from_secs(10),
        |s, b| s == StatusCode::OK && b.contains("mp4a.40.2") && b.contains("RESOLUTION="),
    )
    .await;
    let aac = mv
        .lines()
        .find(|l| l.contains("GROUP-ID=\"aac\""))
        .expect("AAC group");
    assert!(aac.starts_with("#EXT-X-MEDIA:TYPE=AUDIO"), "{mv}");
    assert!(
        aac.contains("DEFAULT=YES") && aac.contains("CHANNELS=\"2\""),
        "{aac}"
    );
    assert!(mv.contains("GROUP-ID=\"opus\""), "Opus rendition kept: {mv}");
    let variants: Vec<&str> = mv
        .lines()
        .filter(|l| l.starts_with("#EXT-X-STREAM-INF:"))
        .collect();
    assert!(variants.iter().all(|v| v.contains("AUDIO=")), "{mv}");
    // AAC variants first (Apple needs AAC), each CODECS with mp4a.40.2.
    assert!(variants[0].contains("AUDIO=\"aac\""), "{mv}");
    for v in variants.iter().filter(|v| v.contains("AUDIO=\"aac\"")) {
        let codecs = checker::attributes(v.trim_start_matches("#EXT-X-STREAM-INF:"))["CODECS"].clone();
        assert!(
            codecs.starts_with("avc1.") && codecs.ends_with(",mp4a.40.2"),
            "{v}"
        );
    }
    // One layer, no ladder without the flag.
    assert_eq!(
        resolutions(&mv).iter().filter(|r| *r == "320x240").count(),
        2,
        "{mv}"
    );
    assert!(resolutions(&mv).iter().all(|r| r == "320x240"), "{mv}");

    let mut c = Conformance::default();
    for _ in 0..3 {
        check_room(&http, &node, room, &mut c).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    // Thumbnails of the latest IDR.
    let (status, headers, jpeg) = http.get_bytes(&format!("{base}thumbnail.jpg")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "image/jpeg");
    assert_eq!(headers["cache-control"], "public, max-age=1");
    assert_eq!(&jpeg[..3], &[0xff, 0xd8, 0xff], "JPEG SOI");
    let (status, headers, png) = http.get_bytes(&format!("{base}thumbnail.png")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(&png[1..4], b"PNG");
    let size = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!((size(16), size(20)), (320, 240), "IHDR");
    let (status, _, _) = http.get_bytes(&format!("{base}thumbnail.gif")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The legacy client: ffmpeg's HLS demuxer reads video and AAC audio.
    let streams = ffprobe(format!("{base}index.m3u8")).await;
    assert!(streams.contains("h264,video"), "{streams}");
    assert!(streams.contains("aac,audio"), "{streams}");

    // The publisher leaves: every playlist ends cleanly.
    leave(&http, &node, &publisher).await;
    let t = Instant::now();
    let media = loop {
        let (_, media) = check_room(&http, &node, room, &mut c).await;
        if media.values().all(|m| m.endlist) {
            break media;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "no ENDLIST");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        media.values().all(|m| m.hints.is_empty()),
        "no preload hint after ENDLIST"
    );
    // A blocking request on an ended playlist is answered at once.
    let uri = media.keys().next().unwrap();
    let t = Instant::now();
    let r = http
        .send(Method::GET, &format!("{base}{uri}?_HLS_msn=999999"), &[], "")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(t.elapsed() < Duration::from_secs(1));

    // After the linger the room's HLS state is gone.
    wait_for(
        &http,
        &format!("{base}index.m3u8"),
        Duration::from_secs(5),
        |s, _| s == StatusCode::NOT_FOUND,
    )
    .await;
    let (status, _, _) = http.get_bytes(&format!("{base}thumbnail.jpg")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let metrics = http.send(Method::GET, &node.url("/metrics"), &[], "").await.body;
    assert_eq!(metric(&metrics, "wave_hls_rooms"), 0);
    // A WebRTC publisher's Opus is transcoded to AAC (one transcoder), and
    // nothing is passed through.
    assert_eq!(metric(&metrics, "wave_hls_aac_transcoders_total"), 1);
    assert_eq!(metric(&metrics, "wave_hls_aac_passthrough_frames_total"), 0);
}

#[tokio::test]
async fn a_publisher_without_keyframes_gets_valid_playlists_and_no_video() {
    let node = Node::start(&FAST);
    let http = Http::default();
    let room = "hls-nokey";
    let base = node.url(&format!("/hls/{room}/"));
    let publisher = publish(&node, &http, room, Video::NoKeyframe).await;

    // Audio is packaged; video never starts.
    wait_for(
        &http,
        &format!("{base}index.m3u8"),
        Duration::from_secs(10),
        |s, b| s == StatusCode::OK && b.contains("mp4a.40.2"),
    )
    .await;
    let mut c = Conformance::default();
    for _ in 0..3 {
        let (mv, media) = check_room(&http, &node, room, &mut c).await;
        assert!(!mv.contains("RESOLUTION="), "no video variant: {mv}");
        assert!(media.keys().all(|u| !u.contains("/v0/")), "{mv}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The video playlist exists only as a 404, never as a broken playlist.
    let session = c
        .reloads
        .keys()
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let r = http
        .send(Method::GET, &format!("{base}{session}/v0/index.m3u8"), &[], "")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let (status, _, _) = http.get_bytes(&format!("{base}thumbnail.jpg")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no thumbnail before an IDR");
    // The node keeps asking for an IDR (every 500 ms while waiting).
    assert!(publisher.keyframes.load(std::sync::atomic::Ordering::Relaxed) >= 3);
}

#[tokio::test]
async fn a_resolution_change_starts_a_discontinuity_with_a_new_map() {
    let node = Node::start(&FAST);
    let http = Http::default();
    let room = "hls-resize";
    let base = node.url(&format!("/hls/{room}/"));
    let publisher = publish(&node, &http, room, Video::Encoded).await;
    wait_for(
        &http,
        &format!("{base}index.m3u8"),
        Duration::from_secs(10),
        |s, b| s == StatusCode::OK && b.contains("RESOLUTION=320x240"),
    )
    .await;
    let mut c = Conformance::default();
    check_room(&http, &node, room, &mut c).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    check_room(&http, &node, room, &mut c).await;

    publisher.set_size(256, 144);
    let t = Instant::now();
    let video = loop {
        let (mv, media) = check_room(&http, &node, room, &mut c).await;
        let (uri, m) = media
            .iter()
            .find(|(u, _)| u.contains("/v0/"))
            .expect("video playlist");
        if m.segments.iter().any(|s| s.discontinuity) && mv.contains("RESOLUTION=256x144") {
            break (uri.clone(), m.clone());
        }
        assert!(t.elapsed() < Duration::from_secs(8), "no discontinuity: {mv}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (uri, m) = video;
    let at = m.segments.iter().position(|s| s.discontinuity).unwrap();
    assert_eq!(
        m.segments[at].map.as_deref(),
        Some("init_1.mp4"),
        "{uri}: {:?}",
        m.segments[at]
    );
    assert!(
        m.segments[..at]
            .iter()
            .all(|s| s.map.as_deref() != Some("init_1.mp4"))
    );
    // A few more reloads across the change keep every invariant.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        check_room(&http, &node, room, &mut c).await;
    }
}

#[tokio::test]
async fn the_ladder_flag_adds_transcoded_variants_for_one_layer() {
    let mut args = FAST.to_vec();
    args.push("--hls-ladder");
    let node = Node::start(&args);
    let http = Http::default();
    let room = "hls-ladder";
    let base = node.url(&format!("/hls/{room}/"));
    let publisher = publish(&node, &http, room, Video::Encoded).await;
    let mv = wait_for(
        &http,
        &format!("{base}index.m3u8"),
        Duration::from_secs(15),
        |s, b| {
            s == StatusCode::OK
                && b.contains("RESOLUTION=80x60")
                && b.contains("RESOLUTION=160x120")
                && b.contains("mp4a.40.2")
        },
    )
    .await;
    // Highest first: the source, then half and quarter size, per audio group.
    let aac: Vec<String> = mv
        .lines()
        .filter(|l| l.starts_with("#EXT-X-STREAM-INF:") && l.contains("AUDIO=\"aac\""))
        .filter_map(|l| {
            checker::attributes(l.trim_start_matches("#EXT-X-STREAM-INF:"))
                .get("RESOLUTION")
                .cloned()
        })
        .collect();
    assert_eq!(aac, ["320x240", "160x120", "80x60"], "{mv}");
    let mut c = Conformance::default();
    for _ in 0..3 {
        check_room(&http, &node, room, &mut c).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    // The publisher leaves: the transcoded renditions end like the native
    // ones (EXT-X-ENDLIST, no preload hint, every reload still valid).
    // That their last frames are flushed is `engine::hls::tests`.
    leave(&http, &node, &publisher).await;
    let t = Instant::now();
    loop {
        let (_, media) = check_room(&http, &node, room, &mut c).await;
        if media.values().all(|m| m.endlist) {
            assert_eq!(media.len(), 5, "3 video variants, Opus and AAC");
            assert!(media.values().all(|m| m.hints.is_empty()));
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "no ENDLIST");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
