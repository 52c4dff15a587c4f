//! An open node (no secret) answers this machine only: a request for a
//! non-loopback `Host` (DNS rebinding) is 403, a state-changing request from
//! a page whose `Origin` is not loopback is 403 and changes nothing, and
//! foreign pages cannot read answers. (A secured node keeps open CORS: `cors.rs`.)
use crate::common;

use common::*;
use hyper::StatusCode;

#[tokio::test]
async fn a_rebound_host_is_refused_on_every_route() {
    let srv = start(config()).await;
    for host in [
        "attacker.example",
        "attacker.example:8080",
        "192.0.2.1",
        "0.0.0.0:8080",
    ] {
        for (method, path) in [
            ("POST", "/whip/live"),
            ("GET", "/v1/rooms"),
            ("GET", "/hls/live/index.m3u8"),
        ] {
            let r = srv
                .send(
                    method,
                    path,
                    &[("host", host), ("content-type", "application/sdp")],
                    OFFER,
                )
                .await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {path} Host: {host}");
            assert!(r.problem()["detail"].as_str().unwrap().contains("loopback"));
        }
    }
    assert!(srv.node.calls().is_empty(), "{:?}", srv.node.calls());
    for host in ["localhost:8080", "127.0.0.1", "[::1]:8080", "app.localhost"] {
        let r = srv
            .send(
                "POST",
                "/whip/live",
                &[("host", host), ("content-type", "application/sdp")],
                OFFER,
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "Host: {host}");
    }
}

#[tokio::test]
async fn a_foreign_page_cannot_change_anything() {
    let srv = start(config()).await;
    let (location, _) = srv.create("whip", "live", None).await;
    let calls = srv.node.calls().len();
    for origin in [
        "https://attacker.example",
        "null",
        "http://localhost.attacker.example",
    ] {
        let sdp = [("content-type", "application/sdp"), ("origin", origin)];
        let replies = [
            srv.send("POST", "/whep/live", &sdp, OFFER).await,
            srv.send("DELETE", &location, &[("origin", origin)], "").await,
            srv.send(
                "PATCH",
                &location,
                &[
                    ("content-type", "application/trickle-ice-sdpfrag"),
                    ("if-match", "*"),
                    ("origin", origin),
                ],
                trickle(&[HOST_CANDIDATE]),
            )
            .await,
            srv.send(
                "POST",
                "/v1/moderation/live/actions",
                &[("content-type", "application/json"), ("origin", origin)],
                r#"{"action":"ban","target":"x"}"#,
            )
            .await,
            srv.send(
                "GET",
                "/v1/chat/live",
                &[
                    ("origin", origin),
                    ("connection", "Upgrade"),
                    ("upgrade", "websocket"),
                    ("sec-websocket-version", "13"),
                    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ],
                "",
            )
            .await,
        ];
        for r in &replies {
            assert_eq!(r.status, StatusCode::FORBIDDEN, "Origin: {origin}: {r:?}");
            assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
        }
    }
    assert_eq!(srv.node.calls().len(), calls, "nothing reached the node");
    assert_eq!(srv.sessions.len(), 1);
    // Reading is allowed, but the foreign page's browser gets no CORS grant.
    let r = srv
        .send("GET", "/v1/rooms", &[("origin", "https://attacker.example")], "")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("access-control-allow-origin"), None);
    // A page served from loopback works as before.
    let r = srv
        .send(
            "POST",
            "/whep/live",
            &[
                ("content-type", "application/sdp"),
                ("origin", "http://localhost:8080"),
            ],
            OFFER,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:8080")
    );
    let r = srv
        .send("DELETE", &location, &[("origin", "http://127.0.0.1:5173")], "")
        .await;
    assert_eq!(r.status, StatusCode::OK);
}
