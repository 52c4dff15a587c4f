//! OPTIONS (preflight and plain) and the CORS headers every response carries.
use crate::common;

use common::*;
use hyper::StatusCode;

const EXPOSED: [&str; 6] = [
    "Location",
    "ETag",
    "Link",
    "Accept-Patch",
    "Accept-Post",
    "Retry-After",
];

#[tokio::test]
async fn preflight_is_204_with_allow_headers_and_no_ice_link() {
    // A secured node answers any page (the token is the gate).
    let srv = start(secured()).await;
    let (location, _) = srv
        .create("whip", "live", Some(&token("live", "ann", true, false)))
        .await;
    for (path, patch) in [
        ("/whip/live", false),
        ("/whep/live", false),
        (location.as_str(), true),
    ] {
        let r = srv
            .send(
                "OPTIONS",
                path,
                &[
                    ("origin", "https://app.example"),
                    ("access-control-request-method", "POST"),
                    ("access-control-request-headers", "authorization, content-type"),
                ],
                "",
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{path}");
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.example")
        );
        let methods = r.header("access-control-allow-methods").unwrap();
        for m in ["POST", "PATCH", "DELETE", "OPTIONS", "GET", "HEAD"] {
            assert!(methods.contains(m), "{methods}");
        }
        let headers = r
            .header("access-control-allow-headers")
            .unwrap()
            .to_ascii_lowercase();
        for h in ["authorization", "content-type", "if-match"] {
            assert!(headers.contains(h), "{headers}");
        }
        assert!(r.header("access-control-max-age").is_some());
        assert_eq!(r.header("accept-post"), Some("application/sdp"));
        if patch {
            assert_eq!(r.header("accept-patch"), Some("application/trickle-ice-sdpfrag"));
        }
        assert!(r.all("link").is_empty(), "no ice-server Link on a preflight");
    }
}

#[tokio::test]
async fn plain_options_is_200_with_accept_post_and_patch() {
    let srv = start(config()).await;
    let r = srv.send("OPTIONS", "/whip/live", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("accept-post"), Some("application/sdp"));
    assert!(r.header("allow").unwrap().contains("POST"));
    // Eyevinn's client turns trickle on only if this lists PATCH.
    assert!(
        r.header("access-control-allow-methods")
            .unwrap()
            .contains("PATCH")
    );

    let (location, _) = srv.create("whep", "live", None).await;
    let r = srv.send("OPTIONS", &location, &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("accept-patch"), Some("application/trickle-ice-sdpfrag"));
    assert!(r.header("allow").unwrap().contains("PATCH"));
}

#[tokio::test]
async fn every_response_exposes_headers() {
    let srv = start(config()).await;
    let (location, etag) = srv.create("whip", "live", None).await;
    let frag = trickle(&[HOST_CANDIDATE]);
    let replies = [
        srv.post_offer("/whep/live", None).await,
        srv.send("POST", "/whip/live", &[("content-type", "text/plain")], "x")
            .await,
        srv.patch(&location, &[("if-match", &etag)], &frag).await,
        srv.patch(&location, &[], &frag).await,
        srv.get("/whip/live").await,
        srv.send("PUT", "/whip/live", &[], "").await,
        srv.get("/nope").await,
        srv.get("/healthz").await,
        srv.get("/metrics").await,
        srv.get("/").await,
        srv.send("OPTIONS", "/whip/live", &[], "").await,
        srv.send("DELETE", &location, &[], "").await,
    ];
    for r in &replies {
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{r:?}");
        let exposed = r.header("access-control-expose-headers").unwrap();
        for h in EXPOSED {
            assert!(exposed.contains(h), "{exposed}");
        }
    }
}

/// A secured node answers any page under any name: the token is the gate.
#[tokio::test]
async fn origin_is_echoed_with_vary() {
    let srv = start(secured()).await;
    let bearer = format!("Bearer {}", token("live", "ann", true, false));
    let r = srv
        .send(
            "POST",
            "/whip/live",
            &[
                ("content-type", "application/sdp"),
                ("origin", "http://x.test"),
                ("host", "sfu.example.com"),
                ("authorization", &bearer),
            ],
            OFFER,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("access-control-allow-origin"), Some("http://x.test"));
    assert_eq!(r.header("vary"), Some("Origin"));
}
