//! GET is 2xx without a body, WHEP HEAD is 200 + application/sdp, other methods 405 + Allow,
//! unknown paths 404, bad room names 400.
use crate::common;

use common::*;
use hyper::StatusCode;

#[tokio::test]
async fn get_on_endpoint_and_session_is_2xx_and_empty() {
    let srv = start(config()).await;
    for path in ["/whip/live", "/whep/live"] {
        let r = srv.get(path).await;
        assert!(r.status.is_success(), "{path}: {r:?}");
        assert!(r.body.is_empty());
    }
    let (location, _) = srv.create("whip", "live", None).await;
    let r = srv.get(&location).await;
    assert!(r.status.is_success());
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn head_on_whep_endpoint_is_200_sdp() {
    let srv = start(config()).await;
    let r = srv.send("HEAD", "/whep/live", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/sdp"));
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn unsupported_methods_are_405_with_allow() {
    let srv = start(config()).await;
    let (location, _) = srv.create("whep", "live", None).await;
    for (method, path) in [
        ("PUT", "/whip/live".to_owned()),
        ("DELETE", "/whep/live".to_owned()),
        ("PUT", location.clone()),
        ("POST", location.clone()),
        ("GET", format!("{location}/layer")),
        ("POST", "/healthz".to_owned()),
    ] {
        let r = srv.send(method, &path, &[], "").await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        let allow = r.header("allow").unwrap();
        assert!(!allow.contains(method), "{method} {path}: {allow}");
        r.problem();
    }
}

#[tokio::test]
async fn unknown_paths_are_404_problems() {
    let srv = start(config()).await;
    for path in ["/nope", "/whip", "/whip/live/abc/def/ghi", "/v2/rooms"] {
        let r = srv.get(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        r.problem();
    }
}

#[tokio::test]
async fn bad_room_names_are_400() {
    let srv = start(config()).await;
    let long = format!("/whip/{}", "a".repeat(65));
    for path in [
        "/whip/bad%20room",
        "/whep/r%C3%A9union",
        long.as_str(),
        "/whip/a*b",
    ] {
        let r = srv.post_offer(path, None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        assert!(r.problem()["detail"].as_str().unwrap().contains("room"));
    }
    assert!(srv.node.calls().is_empty());
}
