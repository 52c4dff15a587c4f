//! A valid WHIP POST creates a session: 201, answer, Location, ETag, Link, Accept-Patch.
use crate::common;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use hyper::StatusCode;
use signaling::{HttpConfig, IceServer, IceServerSource, RoomId};

#[tokio::test]
async fn whip_post_creates_a_session_with_all_headers() {
    let config = HttpConfig {
        ice_servers: vec![
            IceServer {
                urls: vec!["stun:stun.example.net".into()],
                username: None,
                credential: None,
            },
            IceServer {
                urls: vec!["turn:turn.example.net?transport=udp".into()],
                username: Some("user".into()),
                credential: Some("pass".into()),
            },
        ],
        ..config()
    };
    let srv = start(config).await;

    let r = srv.post_offer("/whip/live", None).await;

    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("content-type"), Some("application/sdp"));
    assert_eq!(r.body, ANSWER);
    let location = r.header("location").unwrap();
    assert!(location.starts_with("/whip/live/"), "{location}");
    let id = session_of(location);
    let etag = r.header("etag").unwrap();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "strong quoted etag: {etag}"
    );
    assert_eq!(r.header("accept-patch"), Some("application/trickle-ice-sdpfrag"));
    assert_eq!(
        r.all("link"),
        [
            "<stun:stun.example.net>; rel=\"ice-server\"",
            "<turn:turn.example.net?transport=udp>; rel=\"ice-server\"; username=\"user\"; credential=\"pass\"; \
             credential-type=\"password\"",
        ]
    );

    let calls = srv.node.calls();
    let [Call::Publish(req)] = &calls[..] else {
        panic!("{calls:?}")
    };
    assert_eq!(req.room, room("live"));
    assert_eq!(req.session, id);
    assert_eq!(req.offer, OFFER);
    assert_eq!(req.identity, None);
    assert_eq!(srv.sessions.len(), 1);
}

#[tokio::test]
async fn each_post_gets_its_own_location_and_etag() {
    let srv = start(config()).await;
    let (loc_a, etag_a) = srv.create("whip", "live", None).await;
    let (loc_b, etag_b) = srv.create("whip", "live", None).await;
    assert_ne!(loc_a, loc_b);
    assert_ne!(etag_a, etag_b);
}

#[tokio::test]
async fn public_base_url_makes_location_absolute() {
    let config = HttpConfig {
        public_base_url: Some("https://sfu.example.com/".into()),
        ..config()
    };
    let srv = start(config).await;
    let (location, _) = srv.create("whip", "live", None).await;
    assert!(
        location.starts_with("https://sfu.example.com/whip/live/"),
        "{location}"
    );
}

#[tokio::test]
async fn content_type_parameters_are_accepted() {
    let srv = start(config()).await;
    let r = srv
        .send(
            "POST",
            "/whip/live",
            &[("content-type", "application/SDP; charset=utf-8")],
            OFFER,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
}

struct TurnRest;

impl IceServerSource for TurnRest {
    fn ice_servers(&self, room: &RoomId, identity: Option<&str>, now: SystemTime) -> Vec<IceServer> {
        let expiry = now.duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
        vec![IceServer {
            urls: vec!["turn:127.0.0.1:3478".into()],
            username: Some(format!("{expiry}:{}@{room}", identity.unwrap_or("anon"))),
            credential: Some("hmac".into()),
        }]
    }
}

#[tokio::test]
async fn per_session_ice_servers_come_after_static_ones() {
    let config = HttpConfig {
        auth_secret: Some(SECRET.to_vec()),
        ice_servers: vec![IceServer {
            urls: vec!["stun:127.0.0.1:3478".into()],
            username: None,
            credential: None,
        }],
        ice_server_source: Some(Arc::new(TurnRest)),
        ..config()
    };
    let srv = start(config).await;

    let r = srv
        .post_offer("/whip/live", Some(&token("live", "alice", true, false)))
        .await;

    assert_eq!(r.status, StatusCode::CREATED);
    let links = r.all("link");
    assert_eq!(links.len(), 2, "{links:?}");
    assert_eq!(links[0], "<stun:127.0.0.1:3478>; rel=\"ice-server\"");
    assert!(
        links[1].starts_with("<turn:127.0.0.1:3478>; rel=\"ice-server\"; username=\""),
        "{}",
        links[1]
    );
    assert!(
        links[1].contains(":alice@live\"; credential=\"hmac\"; credential-type=\"password\""),
        "{}",
        links[1]
    );
}
