//! A draining node refuses new sessions (503 + Retry-After, `/healthz` 503)
//! and keeps serving the open ones.
use crate::common;

use common::*;
use hyper::StatusCode;

#[tokio::test]
async fn draining_refuses_new_sessions_and_keeps_open_ones() {
    let srv = start(config()).await;
    let (session, etag) = srv.create("whip", "live", None).await;
    assert_eq!(srv.get("/healthz").await.status, StatusCode::OK);

    srv.drain.start();

    let health = srv.get("/healthz").await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health.body, "draining");
    assert_eq!(health.header("retry-after"), Some("3"));
    for path in ["/whip/live", "/whep/live", "/whip/other"] {
        let r = srv.post_offer(path, None).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(r.header("retry-after"), Some("3"), "{path}");
        r.problem();
    }
    assert_eq!(srv.sessions.len(), 1, "no session was created while draining");
    let r = srv
        .patch(&session, &[("if-match", &etag)], &trickle(&[HOST_CANDIDATE]))
        .await;
    assert_eq!(
        r.status,
        StatusCode::NO_CONTENT,
        "the open session still takes trickle"
    );
    assert_eq!(srv.send("DELETE", &session, &[], "").await.status, StatusCode::OK);
    assert!(srv.sessions.is_empty());
}
