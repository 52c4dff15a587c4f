//! WHEP layer extension: POST {session}/layer with JSON → node.set_layer → 200.
use crate::common;

use common::*;
use hyper::StatusCode;
use signaling::LayerPref;

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test]
async fn layer_post_reaches_the_node() {
    let srv = start(config()).await;
    let (location, _) = srv.create("whep", "live", None).await;
    let id = session_of(&location);
    let url = format!("{location}/layer");

    for (body, want) in [
        (r#"{"maxLayer":"high"}"#, Some(LayerPref::High)),
        (r#"{"mediaId":"1","rid":"q"}"#, Some(LayerPref::Rid("q".into()))),
        ("{}", None),
    ] {
        let r = srv.send("POST", &url, &[JSON], body).await;
        assert_eq!(r.status, StatusCode::OK, "{body}");
        let calls = srv.node.calls();
        assert!(
            matches!(calls.last(), Some(Call::SetLayer(s, l)) if *s == id && *l == want),
            "{body}: {calls:?}"
        );
    }
}

#[tokio::test]
async fn bad_layer_requests_are_400() {
    let srv = start(config()).await;
    let (location, _) = srv.create("whep", "live", None).await;
    let url = format!("{location}/layer");
    for body in ["{", "[1]", r#"{"maxLayer":"ultra!"}"#, ""] {
        let r = srv.send("POST", &url, &[JSON], body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        r.problem();
    }
    let r = srv
        .send("POST", &url, &[("content-type", "text/plain")], "{}")
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(srv.node.calls().len(), 1, "only the POST reached the node");
}

#[tokio::test]
async fn unknown_or_whip_session_is_404() {
    let srv = start(config()).await;
    let r = srv
        .send(
            "POST",
            "/whep/live/00000000000000000000000000000000/layer",
            &[JSON],
            "{}",
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let (location, _) = srv.create("whip", "live", None).await;
    let id = session_of(&location);
    let r = srv
        .send("POST", &format!("/whep/live/{id}/layer"), &[JSON], "{}")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
