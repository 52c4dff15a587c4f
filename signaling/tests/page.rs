//! The demo page and its assets are served with their content types.
use crate::common;

use common::*;
use hyper::StatusCode;

#[tokio::test]
async fn page_and_assets_are_served() {
    let srv = start(config()).await;

    let r = srv.get("/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(r.body.contains("<script src=\"/app.js\">") && r.body.contains("/style.css"));
    assert!(r.body.contains("<script src=\"/hls-player.js\">") && r.body.contains("id=\"hls-video\""));

    let r = srv.get("/app.js").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert!(
        r.body
            .contains("window.wave = { publish, watch, setLayer, stop, stats")
    );

    let r = srv.get("/hls-player.js").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert!(
        r.body
            .contains("Object.assign(window.wave, { playHls, stopHls, hlsStats })")
    );

    let r = srv.get("/style.css").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));

    let r = srv.send("HEAD", "/", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
}
