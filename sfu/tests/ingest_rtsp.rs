//! RTSP pull (`POST /v1/ingest/{room}`) against the real binary: a
//! gst-rtsp-server camera (H.264 + AAC, or + PCMU over UDP) reaches a
//! WHEP viewer, and its AAC reaches LL-HLS unchanged (44.1 kHz, no
//! Opus -> AAC transcoder); the pull survives the camera's restart; `DELETE` ends it;
//! a token's `exp` ends it; cameras that answer garbage or nothing fail
//! with a reason while other rooms play on; bad tokens and bodies are
//! refused.

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::Value;
use str0m::media::MediaKind;

use crate::common::chat::metric;
use crate::common::hls::probe_aac;
use crate::common::node::{Http, Node, Resp, cli_token};
use crate::common::rtsp::{Camera, assert_receives, bad_camera, free_port, pull};
use crate::common::viewer::watch;

const SECURED: [&str; 2] = ["--auth-secret", "s3cret"];

fn publish(room: &str, extra: &[&str]) -> String {
    let mut args = vec!["--room", room, "--identity", "cam-operator", "--publish"];
    args.extend_from_slice(extra);
    cli_token(&args)
}

fn state(v: &Value) -> &str {
    v["state"].as_str().unwrap_or("")
}

/// `POST /v1/ingest/{room}`: the response.
async fn start_pull(http: &Http, node: &Node, room: &str, token: Option<&str>, body: &str) -> Resp {
    http.post_json(&node.url(&format!("/v1/ingest/{room}")), body, token)
        .await
}

#[tokio::test]
async fn a_camera_reaches_a_whep_viewer_survives_a_restart_and_stops_on_delete() {
    let mut camera = Camera::start(free_port(), "aac", "320x240");
    let node = Node::start(&SECURED);
    let http = Http::default();
    let room = "cam1";
    let token = publish(room, &[]);
    let auth = format!("Bearer {token}");

    // Credentials in the URL: the camera does not ask for them, the node
    // never shows them.
    let body = format!(
        r#"{{"url": "{}", "transport": "tcp"}}"#,
        camera.url("admin:hunter2@")
    );
    let created = start_pull(&http, &node, room, Some(&token), &body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let location = created.header("location").expect("Location").to_owned();
    assert!(location.starts_with(&format!("/v1/ingest/{room}/")), "{location}");
    assert!(!created.body.contains("hunter2"), "{}", created.body);

    let playing = pull(&http, &node, &location, &token)
        .until(10, &["playing"])
        .await;
    assert_eq!(
        playing["url"],
        format!("rtsp://***@127.0.0.1:{}/cam", camera.port)
    );

    let viewer_token = cli_token(&["--room", room, "--identity", "viewer", "--subscribe"]);
    let viewer = watch(&node, &http, room, Some(&viewer_token)).await;
    assert_receives(&viewer, MediaKind::Video, 0, 60, Duration::from_secs(10)).await;
    // AAC transcoded to Opus: 20 ms packets.
    assert_receives(&viewer, MediaKind::Audio, 0, 50, Duration::from_secs(5)).await;
    assert!(viewer.keyframes() >= 1, "no keyframe reached the viewer");

    // LL-HLS: the camera's AAC passed through (its 44.1 kHz stereo; the
    // Opus -> AAC path would make 48 kHz), no transcoder started.
    let hls_query = format!("?token={viewer_token}");
    let aac = tokio::task::spawn_blocking({
        let base = node.url("");
        move || {
            probe_aac(
                &|path: &str| curl(&format!("{base}{path}")),
                "cam1",
                &hls_query,
                2,
            )
        }
    })
    .await
    .unwrap();
    eprintln!("LL-HLS aac rendition of an RTSP pull: {aac:?}");
    assert_eq!(
        (aac.codec.as_str(), aac.sample_rate, aac.channels),
        ("aac", 44_100, 2)
    );
    assert!(aac.frames >= 80, "{aac:?}");
    let metrics = http.send(Method::GET, &node.url("/metrics"), &[], "").await.body;
    assert!(
        metrics.lines().any(|l| l == "wave_hls_aac_transcoders_total 0"),
        "an Opus -> AAC transcoder ran: {metrics}"
    );
    assert!(metric(&http, &node, "wave_hls_aac_passthrough_frames_total").await >= 80.0);

    let (_, listing) = http
        .get_json(&node.url(&format!("/v1/rooms/{room}")), &token)
        .await;
    let pulls = listing["ingest"].as_array().expect("an ingest array");
    assert_eq!(pulls.len(), 1, "{listing}");
    assert_eq!(state(&pulls[0]), "playing");
    assert!(location.ends_with(pulls[0]["id"].as_str().unwrap()));
    assert!(!listing.to_string().contains("hunter2"));

    // The camera dies: the pull retries with a backoff and says why.
    let port = camera.port;
    drop(camera);
    let retrying = pull(&http, &node, &location, &token)
        .until(15, &["retrying"])
        .await;
    assert!(retrying["attempt"].as_u64().unwrap() >= 1, "{retrying}");
    assert!(retrying["backoff_ms"].as_u64().unwrap() >= 1000, "{retrying}");
    assert!(!retrying["reason"].as_str().unwrap().is_empty(), "{retrying}");
    assert!(
        metric(
            &http,
            &node,
            "wave_ingest_rtsp_failures_total{reason=\"dropped\"}"
        )
        .await
            >= 1.0
    );

    // It comes back: the pull plays again and the same viewer gets media.
    let seen = viewer.packets(MediaKind::Video).len();
    let keyframes = viewer.keyframes();
    camera = Camera::start(port, "aac", "320x240");
    pull(&http, &node, &location, &token)
        .until(40, &["playing"])
        .await;
    assert_receives(&viewer, MediaKind::Video, seen, 60, Duration::from_secs(10)).await;
    assert!(viewer.keyframes() > keyframes);

    // DELETE: 200, then 404; the room loses its publisher.
    let deleted = http
        .send(
            Method::DELETE,
            &node.url(&location),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    let (gone, _) = http.get_json(&node.url(&location), &token).await;
    assert_eq!(gone, StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metric(&http, &node, "wave_ingest_rtsp_playing").await, 0.0);
    drop(camera);
}

#[tokio::test]
async fn a_pcmu_camera_over_udp_is_heard_as_opus() {
    let camera = Camera::start(free_port(), "pcmu", "320x240");
    let node = Node::start(&[]);
    let http = Http::default();
    // An open node: no token.
    let body = format!(r#"{{"url": "{}", "transport": "udp"}}"#, camera.url(""));
    let created = start_pull(&http, &node, "cam2", None, &body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let location = created.header("location").unwrap().to_owned();
    let playing = pull(&http, &node, &location, "").until(10, &["playing"]).await;
    assert_eq!(playing["transport"], "udp");
    let viewer = watch(&node, &http, "cam2", None).await;
    assert_receives(&viewer, MediaKind::Audio, 0, 50, Duration::from_secs(8)).await;
    assert_receives(&viewer, MediaKind::Video, 0, 30, Duration::from_secs(5)).await;

    // G.711 has no AAC to pass through: LL-HLS transcodes its Opus to
    // AAC (48 kHz stereo), one transcoder.
    let aac = tokio::task::spawn_blocking({
        let base = node.url("");
        move || probe_aac(&|path: &str| curl(&format!("{base}{path}")), "cam2", "", 1)
    })
    .await
    .unwrap();
    assert_eq!(
        (aac.codec.as_str(), aac.sample_rate, aac.channels),
        ("aac", 48_000, 2)
    );
    let metrics = http.send(Method::GET, &node.url("/metrics"), &[], "").await.body;
    assert!(
        metrics.lines().any(|l| l == "wave_hls_aac_transcoders_total 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "wave_hls_aac_passthrough_frames_total 0"),
        "{metrics}"
    );
}

/// GET `url` with curl: the body's bytes.
fn curl(url: &str) -> Vec<u8> {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5", url])
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "GET {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test]
async fn cameras_that_answer_garbage_or_nothing_fail_with_a_reason_and_other_rooms_play_on() {
    let camera = Camera::start(free_port(), "aac", "320x240");
    let node = Node::start(&SECURED);
    let http = Http::default();

    // Refused before anything starts: no token, a viewer's token, another
    // room's token, and bodies that are not a pull.
    let body = format!(r#"{{"url": "{}"}}"#, camera.url(""));
    let no_token = start_pull(&http, &node, "ok1", None, &body).await;
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    let viewer = cli_token(&["--room", "ok1", "--identity", "v", "--subscribe"]);
    let subscribe_only = start_pull(&http, &node, "ok1", Some(&viewer), &body).await;
    assert_eq!(subscribe_only.status, StatusCode::FORBIDDEN);
    let elsewhere = start_pull(&http, &node, "ok1", Some(&publish("other", &[])), &body).await;
    assert_eq!(elsewhere.status, StatusCode::FORBIDDEN);
    let ok_token = publish("ok1", &["--ttl", "6s"]);
    for bad in [
        r#"{"url": "http://127.0.0.1/cam"}"#.to_owned(),
        format!(r#"{{"url": "{}", "transport": "sctp"}}"#, camera.url("")),
        "not json".to_owned(),
    ] {
        let r = start_pull(&http, &node, "ok1", Some(&ok_token), &bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
    }

    // A good camera into ok1, with a token that expires in 6 s.
    let ok = start_pull(&http, &node, "ok1", Some(&ok_token), &body).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    let ok_location = ok.header("location").unwrap().to_owned();

    // Garbage for every request, and a port that accepts and never answers.
    let garbage = bad_camera(Some(b"HTTP/1.1 200 OK\r\n\x00\xff\xfe garbage \x01\r\n\r\n"));
    let silent = bad_camera(None);
    let mut locations = Vec::new();
    for (room, port) in [("garbage1", garbage), ("silent1", silent)] {
        let token = publish(room, &[]);
        let body = format!(r#"{{"url": "rtsp://127.0.0.1:{port}/cam"}}"#);
        let r = start_pull(&http, &node, room, Some(&token), &body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        locations.push((r.header("location").unwrap().to_owned(), token));
    }

    pull(&http, &node, &ok_location, &ok_token)
        .until(5, &["playing"])
        .await;
    let failed = &["retrying", "failed"];
    let (location, token) = &locations[0];
    let garbage_state = pull(&http, &node, location, token).until(5, failed).await;
    assert!(
        garbage_state["reason"]
            .as_str()
            .unwrap()
            .starts_with("protocol: "),
        "{garbage_state}"
    );
    let (location, token) = &locations[1];
    let silent_state = pull(&http, &node, location, token).until(10, failed).await;
    assert!(
        silent_state["reason"].as_str().unwrap().starts_with("timeout: "),
        "{silent_state}"
    );
    assert!(
        metric(
            &http,
            &node,
            "wave_ingest_rtsp_failures_total{reason=\"protocol\"}"
        )
        .await
            >= 1.0
    );
    assert!(
        metric(
            &http,
            &node,
            "wave_ingest_rtsp_failures_total{reason=\"timeout\"}"
        )
        .await
            >= 1.0
    );

    // Meanwhile ok1 played on, untouched, until its token expired.
    let ok_lister = publish("ok1", &[]);
    let ended = pull(&http, &node, &ok_location, &ok_lister)
        .until(10, &["ended"])
        .await;
    assert_eq!(ended["reason"], "the token expired");
    let (_, listing) = http.get_json(&node.url("/v1/rooms/ok1"), &ok_lister).await;
    assert_eq!(listing["publishers"], serde_json::json!([]), "{listing}");
}
