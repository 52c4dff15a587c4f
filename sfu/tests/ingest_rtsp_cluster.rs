//! RTSP pulls as cluster room state, against real binaries on one NATS
//! server and a gst-rtsp-server camera: a pull started at one node is
//! read, listed and deleted at another (the delete stops it where it
//! runs); a pull whose node crashes is adopted by a live node, where a
//! WHEP viewer sees the camera again; a node stopping with SIGTERM leaves
//! its pulls to the others the same way.

use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::Value;
use str0m::media::MediaKind;

use crate::common::chat::{cluster_node, metric, room_json, token, wait_for_view};
use crate::common::nats::NatsServer;
use crate::common::node::{Http, Node};
use crate::common::rtsp::{Camera, assert_receives, free_port};
use crate::common::viewer::watch;

/// `POST /v1/ingest/{room}` at `at` with `camera`'s URL (credentials
/// included): the pull's path.
async fn start(http: &Http, at: &Node, room: &str, camera: &Camera, auth: &str) -> String {
    let body = format!(
        r#"{{"url": "{}", "transport": "tcp"}}"#,
        camera.url("admin:hunter2@")
    );
    let created = http
        .post_json(&at.url(&format!("/v1/ingest/{room}")), &body, Some(auth))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert!(!created.body.contains("hunter2"), "{}", created.body);
    created.header("location").expect("Location").to_owned()
}

/// Polls `GET location` at `at` until the pull plays on `on` (at most
/// `secs`): the answer.
async fn playing_on(http: &Http, at: &Node, location: &str, auth: &str, on: &str, secs: u64) -> Value {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, v) = http.get_json(&at.url(location), auth).await;
        if v["state"] == "playing" && v["node"] == on {
            return v;
        }
        assert!(
            Instant::now() < until,
            "{location} at {}: {status} {v}",
            at.url("")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn publishers(room: &Option<Value>) -> usize {
    room.as_ref()
        .and_then(|r| r["publishers"].as_array())
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_started_at_one_node_is_read_listed_and_deleted_at_another() {
    let nats = NatsServer::start();
    let camera = Camera::start(free_port(), "aac", "320x240");
    let a = cluster_node(&nats, "a", "127.0.0.51");
    let b = cluster_node(&nats, "b", "127.0.0.52");
    let http = Http::default();
    wait_for_view(&http, &[&a, &b], 2).await;
    let room = "cam-cluster";
    let auth = token(room, "cam-operator", true, None);

    let location = start(&http, &a, room, &camera, &auth).await;
    // b answers for the pull a runs, from its record.
    let state = playing_on(&http, &b, &location, &auth, "a", 15).await;
    assert_eq!(state["room"], room);
    assert_eq!(state["url"], format!("rtsp://***@127.0.0.1:{}/cam", camera.port));
    assert_eq!(state["transport"], "tcp");
    assert!(state["updated"].as_u64().is_some_and(|t| t > 0), "{state}");
    assert!(!state.to_string().contains("hunter2"), "{state}");

    // `/v1/rooms/{room}` at b lists it (b has no peer of the room).
    let listing = room_json(&http, &b, room).await.expect("the room at b");
    let ingest = listing["ingest"].as_array().expect("an ingest array");
    assert_eq!(ingest.len(), 1, "{listing}");
    assert_eq!(
        (&ingest[0]["node"], &ingest[0]["state"]),
        (&"a".into(), &"playing".into())
    );
    assert!(location.ends_with(ingest[0]["id"].as_str().unwrap()));
    assert!(!listing.to_string().contains("hunter2"), "{listing}");
    assert_eq!(
        publishers(&room_json(&http, &a, room).await),
        1,
        "the pull publishes at a"
    );

    // DELETE at b stops the pull at a: its source leaves the room there.
    let bearer = format!("Bearer {auth}");
    let t0 = Instant::now();
    let deleted = http
        .send(
            Method::DELETE,
            &b.url(&location),
            &[("authorization", &bearer)],
            "",
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    while publishers(&room_json(&http, &a, room).await) > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "the pull still publishes at a"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("DELETE at b stopped the pull at a in {:?}", t0.elapsed());
    for at in [&a, &b] {
        let (status, v) = http.get_json(&at.url(&location), &auth).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{}: {v}", at.url(""));
    }
    let again = http
        .send(
            Method::DELETE,
            &a.url(&location),
            &[("authorization", &bearer)],
            "",
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(metric(&http, &a, "wave_ingest_rtsp_pulls").await, 0.0);
    assert_eq!(metric(&http, &a, "wave_ingest_rtsp_playing").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_whose_node_dies_or_stops_is_adopted_and_viewers_see_the_camera_again() {
    let nats = NatsServer::start();
    let camera = Camera::start(free_port(), "aac", "320x240");
    let mut a = cluster_node(&nats, "a", "127.0.0.53");
    let b = cluster_node(&nats, "b", "127.0.0.54");
    let http = Http::default();
    wait_for_view(&http, &[&a, &b], 2).await;
    let room = "cam-adopted";
    let auth = token(room, "cam-operator", true, None);

    let location = start(&http, &a, room, &camera, &auth).await;
    playing_on(&http, &b, &location, &auth, "a", 15).await;
    // A viewer at b, fed from a over the relay.
    let viewer_auth = token(room, "viewer", false, None);
    let viewer = watch(&b, &http, room, Some(&viewer_auth)).await;
    assert_receives(&viewer, MediaKind::Video, 0, 30, Duration::from_secs(10)).await;

    // a crashes: once it has left the registry b adopts the pull (the
    // credentials come with the record) and plays it into the room.
    let t0 = Instant::now();
    a.child.kill().unwrap();
    let _ = a.child.wait();
    let state = playing_on(&http, &b, &location, &auth, "b", 15).await;
    let adopted = t0.elapsed();
    eprintln!("b plays the pull of the killed node a after {adopted:?}");
    assert!(!state.to_string().contains("hunter2"), "{state}");
    assert_eq!(metric(&http, &b, "wave_ingest_rtsp_adopted_total").await, 1.0);
    let listing = room_json(&http, &b, room).await.expect("the room at b");
    assert_eq!(publishers(&Some(listing.clone())), 1, "{listing}");
    assert_eq!(listing["ingest"][0]["node"], "b", "{listing}");

    // The viewer that watched through a sees the camera again, from a
    // keyframe; so does a new one.
    let (video, keyframes) = (viewer.packets(MediaKind::Video).len(), viewer.keyframes());
    assert_receives(&viewer, MediaKind::Video, video, 60, Duration::from_secs(10)).await;
    assert!(viewer.keyframes() > keyframes, "no keyframe after the adoption");
    let late = watch(&b, &http, room, Some(&viewer_auth)).await;
    assert_receives(&late, MediaKind::Video, 0, 30, Duration::from_secs(10)).await;
    assert_receives(&late, MediaKind::Audio, 0, 25, Duration::from_secs(5)).await;
    eprintln!("viewers at b decode again {:?} after the kill", t0.elapsed());

    // A node stopping (SIGTERM) leaves its pulls to the others too.
    let c = cluster_node(&nats, "c", "127.0.0.55");
    wait_for_view(&http, &[&b, &c], 2).await;
    let mut b = b;
    let t1 = Instant::now();
    b.terminate();
    playing_on(&http, &c, &location, &auth, "c", 15).await;
    eprintln!("c plays the pull of the stopped node b after {:?}", t1.elapsed());
    let watcher = watch(&c, &http, room, Some(&viewer_auth)).await;
    assert_receives(&watcher, MediaKind::Video, 0, 30, Duration::from_secs(10)).await;
}
