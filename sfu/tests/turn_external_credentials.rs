//! `sfu serve --turn-url URL --turn-secret S`: without an embedded server the
//! node advertises an external one (turn-server, coturn) on every 201, with
//! fresh REST credentials that server can verify from the shared secret.

use crate::common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::node::{Http, Node, play_offer, publish_offer};
use hyper::StatusCode;

#[tokio::test]
async fn external_turn_is_advertised_with_rest_credentials_for_the_shared_secret() {
    let node = Node::start(&[
        "--turn-url",
        "turn:turn.example.com:3478?transport=udp",
        "--turn-secret",
        "shared-secret",
        "--turn-ttl",
        "10m",
    ]);
    let http = Http::default();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();

    let mut usernames = Vec::new();
    for (path, offer) in [("/whip/ext", publish_offer()), ("/whep/ext", play_offer())] {
        let r = http.post_sdp(&node.url(path), &offer, None).await;
        assert_eq!(r.status, StatusCode::CREATED, "{path}: {}", r.body);
        let link = r
            .headers
            .get_all("link")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|l| l.starts_with("<turn:turn.example.com:3478?transport=udp>; rel=\"ice-server\""))
            .unwrap_or_else(|| panic!("{path}: no TURN link in {:?}", r.headers))
            .to_owned();
        let username = param(&link, "username");
        let expiry: u64 = username.split(':').next().unwrap().parse().unwrap();
        assert!(
            expiry > now && expiry <= now + 601,
            "{path}: expiry {expiry}, now {now}"
        );
        assert_eq!(
            param(&link, "credential"),
            turn_server::auth::rest_password("shared-secret", &username),
            "{path}: the password the TURN server derives from the shared secret"
        );
        assert!(link.contains("credential-type=\"password\""), "{link}");
        usernames.push(username);
    }
    assert_ne!(usernames[0], usernames[1], "fresh credentials per session");
}

fn param(link: &str, name: &str) -> String {
    let key = format!("; {name}=\"");
    let start = link.find(&key).unwrap_or_else(|| panic!("no {name} in {link}")) + key.len();
    link[start..start + link[start..].find('"').unwrap()].to_owned()
}
