//! ICE restart PATCH: If-Match "*" + new credentials → 200 sdpfrag + new ETag.
use crate::common;

use common::*;
use hyper::StatusCode;
use signaling::{IcePatch, MediaError};

const RESTART: &str = "a=ice-ufrag:nUfr\r\na=ice-pwd:newclientpasswordnewcli\r\n\
    m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
    a=candidate:1 1 udp 2122260223 192.0.2.10 50003 typ host\r\n";

#[tokio::test]
async fn restart_returns_new_credentials_and_etag() {
    let srv = start(config()).await;
    let (location, old_etag) = srv.create("whip", "live", None).await;

    let r = srv.patch(&location, &[("if-match", "*")], RESTART).await;

    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/trickle-ice-sdpfrag"));
    let new_etag = r.header("etag").unwrap().to_owned();
    assert_ne!(new_etag, old_etag);
    assert_eq!(
        r.body,
        "a=ice-lite\r\na=ice-ufrag:sNew\r\na=ice-pwd:servernewpasswordservernew\r\n\
         m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
         a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\na=end-of-candidates\r\n"
    );
    let calls = srv.node.calls();
    let Some(Call::Patch(
        _,
        IcePatch::Restart {
            ufrag,
            pwd,
            candidates,
        },
    )) = calls.last()
    else {
        panic!("{calls:?}")
    };
    assert_eq!(
        (ufrag.as_str(), pwd.as_str()),
        ("nUfr", "newclientpasswordnewcli")
    );
    assert_eq!(candidates.len(), 1);

    // The old tag is stale now; the new one works, and the new ufrag is trickle.
    let r = srv.patch(&location, &[("if-match", &old_etag)], RESTART).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let r = srv.patch(&location, &[("if-match", &new_etag)], RESTART).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn failed_restart_keeps_the_old_session() {
    let srv = start(config()).await;
    let (location, etag) = srv.create("whip", "live", None).await;
    srv.node
        .fail_next(MediaError::Unprocessable("ICE restart not supported".into()));

    let r = srv.patch(&location, &[("if-match", "*")], RESTART).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.header("etag"), None);

    // Same tag, same credentials: still a trickle on the old ICE session.
    let r = srv
        .patch(&location, &[("if-match", &etag)], &trickle(&[HOST_CANDIDATE]))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn restart_without_if_match_is_428() {
    let srv = start(config()).await;
    let (location, _) = srv.create("whep", "live", None).await;
    let r = srv.patch(&location, &[], RESTART).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_REQUIRED);
}
