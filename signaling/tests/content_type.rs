//! POST with a content type other than application/sdp: 415 + Accept-Post, no session.
use crate::common;

use common::*;
use hyper::StatusCode;

#[tokio::test]
async fn wrong_content_type_is_415_with_accept_post() {
    let srv = start(config()).await;
    for path in ["/whip/live", "/whep/live"] {
        for ct in [Some("text/plain"), Some("application/json"), None] {
            let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
            let r = srv.send("POST", path, &headers, OFFER).await;
            assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path} {ct:?}");
            assert_eq!(r.header("accept-post"), Some("application/sdp"));
            r.problem();
        }
    }
    assert!(srv.node.calls().is_empty());
    assert!(srv.sessions.is_empty());
}
