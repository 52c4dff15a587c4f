//! Garbage, empty and oversized bodies: 400/400/413, and the node never sees them.
use crate::common;

use common::*;
use hyper::StatusCode;
use signaling::HttpConfig;

const SDP: (&str, &str) = ("content-type", "application/sdp");

#[tokio::test]
async fn garbage_sdp_is_400() {
    let srv = start(config()).await;
    for body in [
        "hello world",
        "{\"sdp\": \"v=0\"}",
        "o=- 0 0 IN IP4 0.0.0.0\r\nv=0\r\n",
    ] {
        let r = srv.send("POST", "/whip/live", &[SDP], body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(r.problem()["detail"].as_str().unwrap().contains("v=0"));
    }
    let r = srv
        .send("POST", "/whip/live", &[SDP], vec![0xff, 0xfe, 0x00])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(srv.node.calls().is_empty());
}

#[tokio::test]
async fn empty_body_is_400() {
    let srv = start(config()).await;
    for body in ["", "\r\n  "] {
        let r = srv.send("POST", "/whep/live", &[SDP], body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.problem()["detail"].as_str().unwrap().contains("empty"));
    }
    assert!(srv.node.calls().is_empty());
}

#[tokio::test]
async fn oversized_body_is_413() {
    let srv = start(HttpConfig {
        max_body_bytes: 4096,
        ..config()
    })
    .await;
    let mut big = String::from("v=0\r\n");
    while big.len() <= 4096 {
        big.push_str("a=x-padding:0123456789abcdef0123456789abcdef\r\n");
    }
    let r = srv.send("POST", "/whip/live", &[SDP], big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    r.problem();
    assert!(srv.node.calls().is_empty());
}

#[tokio::test]
async fn default_limit_is_64_kib() {
    let srv = start(config()).await;
    let mut body = OFFER.to_owned();
    body.push_str(&"a=x-padding:0123456789abcdef0123456789abcdef\r\n".repeat(64 * 1024 / 46 + 1));
    assert!(body.len() > 64 * 1024);
    let r = srv.send("POST", "/whip/live", &[SDP], body).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = srv.post_offer("/whip/live", None).await;
    assert_eq!(r.status, StatusCode::CREATED, "the server keeps serving");
}
