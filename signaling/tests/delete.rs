//! DELETE ends a session: 200 (If-Match ignored), then 404 for DELETE, PATCH and GET.
use crate::common;

use common::*;
use hyper::StatusCode;

#[tokio::test]
async fn delete_then_404() {
    let srv = start(config()).await;
    let (location, etag) = srv.create("whip", "live", None).await;

    let r = srv
        .send("DELETE", &location, &[("if-match", "\"not-the-tag\"")], "")
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let calls = srv.node.calls();
    assert!(matches!(calls.last(), Some(Call::Delete(id)) if *id == session_of(&location)));
    assert!(srv.sessions.is_empty());
    assert_eq!(
        srv.send("DELETE", &location, &[], "").await.status,
        StatusCode::NOT_FOUND
    );
    let r = srv
        .patch(&location, &[("if-match", &etag)], &trickle(&[HOST_CANDIDATE]))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(srv.get(&location).await.status, StatusCode::NOT_FOUND);
    assert_eq!(srv.node.calls().len(), 2, "POST and one DELETE reached the node");
}

#[tokio::test]
async fn a_session_the_node_ended_is_404() {
    let srv = start(config()).await;
    let (location, _) = srv.create("whep", "live", None).await;
    srv.sessions.ended(&session_of(&location));
    assert_eq!(
        srv.send("DELETE", &location, &[], "").await.status,
        StatusCode::NOT_FOUND
    );
}
