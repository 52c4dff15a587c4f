//! Trickle PATCH: 204 without body or ETag; mDNS/TCP candidates dropped; If-Match rules.
use crate::common;

use common::*;
use hyper::StatusCode;
use signaling::{IcePatch, MediaError};

#[tokio::test]
async fn trickle_is_204_without_body_or_etag() {
    let srv = start(config()).await;
    let (location, etag) = srv.create("whip", "live", None).await;
    let frag = trickle(&[
        HOST_CANDIDATE,
        "candidate:2 1 udp 2122260223 0f1e2d3c-aaaa-bbbb-cccc-0123456789ab.local 50002 typ host",
        "candidate:3 1 tcp 1518280447 192.0.2.10 9 typ host tcptype active",
    ]) + "a=end-of-candidates\r\n";

    let r = srv.patch(&location, &[("if-match", &etag)], &frag).await;

    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), None);
    let calls = srv.node.calls();
    let Some(Call::Patch(id, patch)) = calls.last() else {
        panic!("{calls:?}")
    };
    assert_eq!(id, &session_of(&location));
    assert_eq!(
        patch,
        &IcePatch::Trickle {
            candidates: vec![HOST_CANDIDATE.to_owned()],
            end_of_candidates: true
        }
    );
}

#[tokio::test]
async fn end_of_candidates_alone_is_204() {
    let srv = start(config()).await;
    let (location, etag) = srv.create("whep", "live", None).await;
    let r = srv
        .patch(&location, &[("if-match", &etag)], "a=end-of-candidates\r\n")
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn missing_if_match_is_428_and_stale_is_412() {
    let srv = start(config()).await;
    let (location, _) = srv.create("whip", "live", None).await;
    let frag = trickle(&[HOST_CANDIDATE]);

    let r = srv.patch(&location, &[], &frag).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_REQUIRED);
    r.problem();
    let r = srv.patch(&location, &[("if-match", "\"stale\"")], &frag).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    r.problem();
    assert_eq!(srv.node.calls().len(), 1, "only the POST reached the node");
}

#[tokio::test]
async fn etag_request_header_stands_in_for_if_match() {
    // Eyevinn's WHIP client sends `ETag:` where `If-Match:` belongs.
    let srv = start(config()).await;
    let (location, etag) = srv.create("whip", "live", None).await;
    let frag = trickle(&[HOST_CANDIDATE]);
    assert_eq!(
        srv.patch(&location, &[("etag", &etag)], &frag).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        srv.patch(&location, &[("etag", "\"other\"")], &frag).await.status,
        StatusCode::PRECONDITION_FAILED
    );
}

#[tokio::test]
async fn wrong_content_type_is_415_with_accept_patch() {
    let srv = start(config()).await;
    let (location, etag) = srv.create("whip", "live", None).await;
    let r = srv
        .send(
            "PATCH",
            &location,
            &[("content-type", "application/sdp"), ("if-match", &etag)],
            trickle(&[HOST_CANDIDATE]),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.header("accept-patch"), Some("application/trickle-ice-sdpfrag"));
}

#[tokio::test]
async fn malformed_fragment_is_400() {
    let srv = start(config()).await;
    let (location, etag) = srv.create("whip", "live", None).await;
    for body in ["hello", "a=candidate:1 1 udp", "", "a=ice-ufrag:only\r\n"] {
        let r = srv.patch(&location, &[("if-match", &etag)], body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body:?}");
        r.problem();
    }
}

#[tokio::test]
async fn unknown_session_is_404() {
    let srv = start(config()).await;
    let frag = trickle(&[HOST_CANDIDATE]);
    for path in [
        "/whip/live/00000000000000000000000000000000",
        "/whip/live/not-a-session",
    ] {
        let r = srv.patch(path, &[("if-match", "*")], &frag).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
    // A WHIP session is not reachable under /whep or another room.
    let (location, etag) = srv.create("whip", "live", None).await;
    let id = session_of(&location);
    for path in [format!("/whep/live/{id}"), format!("/whip/other/{id}")] {
        let r = srv.patch(&path, &[("if-match", &etag)], &frag).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn node_refusal_is_422() {
    let srv = start(config()).await;
    let (location, etag) = srv.create("whip", "live", None).await;
    srv.node
        .fail_next(MediaError::Unprocessable("trickle not supported".into()));
    let r = srv
        .patch(&location, &[("if-match", &etag)], &trickle(&[HOST_CANDIDATE]))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.problem()["detail"]
            .as_str()
            .unwrap()
            .contains("trickle not supported")
    );
}
