//! Issue 16 item 1 against the real `sfu` binary: on a node with
//! `--auth-secret`, LL-HLS, DASH and thumbnails need a subscribe grant for
//! the room as `?token=` (what `sfu token --subscribe` prints); the
//! playlists then carry signed tokens into every URI, never the JWT, and a
//! player that follows them plays. `--public-hls` opens HLS explicitly.

use crate::common;

use std::time::{Duration, Instant};

use common::checker;
use common::node::{Http, Node, cli_token};
use common::publisher::{Video, publish_with};
use hyper::{Method, StatusCode};

const FAST: [&str; 4] = ["--hls-segment-ms", "1000", "--hls-part-ms", "200"];

/// Polls the multivariant playlist with `query` until it is 200.
async fn multivariant(http: &Http, node: &Node, room: &str, query: &str) -> String {
    let url = node.url(&format!("/hls/{room}/index.m3u8{query}"));
    let t0 = Instant::now();
    loop {
        let r = http.send(Method::GET, &url, &[], "").await;
        if r.status == StatusCode::OK {
            return r.body;
        }
        assert!(
            r.status == StatusCode::NOT_FOUND && t0.elapsed() < Duration::from_secs(20),
            "{url}: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn first_uri(playlist: &str) -> &str {
    playlist
        .lines()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .expect("a variant")
}

#[tokio::test]
async fn a_secured_node_serves_hls_only_to_subscribers() {
    let mut args = FAST.to_vec();
    args.extend(["--auth-secret", "s3cret"]);
    let node = Node::start(&args);
    let http = Http::default();
    let room = "vip";
    let publisher_token = cli_token(&["--room", room, "--identity", "ann", "--publish"]);
    let _p = publish_with(&node, &http, room, Video::Encoded, Some(&publisher_token)).await;
    let viewer = cli_token(&["--room", room, "--identity", "bob", "--subscribe"]);
    let text = multivariant(&http, &node, room, &format!("?token={viewer}")).await;
    assert!(!text.contains(&viewer), "the JWT is not copied into playlists");

    // Without a grant: 401; with a token that does not grant this room's
    // subscribe: 403. On every HLS path, before the room is even looked up.
    let elsewhere = cli_token(&["--room", "other", "--identity", "bob", "--subscribe"]);
    let forged = cli_token(&["--room", room, "--identity", "bob", "--subscribe"]).replace('.', ".x");
    for path in [
        format!("/hls/{room}/index.m3u8"),
        format!("/hls/{room}/manifest.mpd"),
        format!("/hls/{room}/thumbnail.jpg"),
        format!("/hls/{room}/{}", first_uri(&text).split('?').next().unwrap()),
        "/hls/nosuchroom/index.m3u8".to_string(),
    ] {
        let r = http.send(Method::GET, &node.url(&path), &[], "").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}: {}", r.body);
        for bad in [&publisher_token, &elsewhere, &forged] {
            let r = http
                .send(Method::GET, &node.url(&format!("{path}?token={bad}")), &[], "")
                .await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.body);
        }
    }

    // With one: every URI the playlists name works as written.
    let base = node.url(&format!("/hls/{room}/"));
    let uri = first_uri(&text);
    assert!(uri.contains("?token="), "{uri}");
    let r = http.send(Method::GET, &format!("{base}{uri}"), &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.body);
    let (m, violations) = checker::check_media(&r.body);
    assert!(violations.is_empty(), "{violations:?}");
    let dir = format!(
        "{base}{}",
        uri.split('?').next().unwrap().trim_end_matches("index.m3u8")
    );
    let map = m
        .segments
        .iter()
        .find_map(|s| s.map.clone())
        .expect("an EXT-X-MAP");
    let part = m
        .segments
        .last()
        .unwrap()
        .parts
        .last()
        .expect("a part")
        .uri
        .clone();
    for file in [&map, &part] {
        assert!(file.contains("?token="), "{file}");
        let (status, _, bytes) = http.get_bytes(&format!("{dir}{file}")).await;
        assert_eq!(status, StatusCode::OK, "{file}");
        assert!(!bytes.is_empty());
        let bare = file.split('?').next().unwrap();
        let (status, _, _) = http.get_bytes(&format!("{dir}{bare}")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bare}");
    }
    let mpd = http
        .send(
            Method::GET,
            &format!("{base}manifest.mpd?token={viewer}"),
            &[],
            "",
        )
        .await;
    assert_eq!(mpd.status, StatusCode::OK, "{}", mpd.body);
    assert!(mpd.body.contains("token=") && !mpd.body.contains(&viewer));
    let (status, _, _) = http
        .get_bytes(&format!("{base}thumbnail.jpg?token={viewer}"))
        .await;
    assert_ne!(status, StatusCode::UNAUTHORIZED);
    assert_ne!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn public_hls_opens_hls_on_a_secured_node() {
    let mut args = FAST.to_vec();
    args.extend(["--auth-secret", "s3cret", "--public-hls"]);
    let node = Node::start(&args);
    let http = Http::default();
    let room = "open";
    let publisher_token = cli_token(&["--room", room, "--identity", "ann", "--publish"]);
    let _p = publish_with(&node, &http, room, Video::Encoded, Some(&publisher_token)).await;
    let text = multivariant(&http, &node, room, "").await;
    assert!(!text.contains("token="), "{text}");
}
