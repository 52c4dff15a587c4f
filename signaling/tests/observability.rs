//! /healthz, /metrics (HTTP counters + the node's text) and /v1/rooms.
use crate::common;

use common::*;
use hyper::StatusCode;

#[tokio::test]
async fn healthz_is_ok() {
    let srv = start(config()).await;
    let r = srv.get("/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "ok");
}

#[tokio::test]
async fn metrics_count_requests_and_include_the_node() {
    let srv = start(config()).await;
    srv.create("whip", "live", None).await;
    srv.send("POST", "/whip/live", &[("content-type", "text/plain")], "x")
        .await;
    srv.get("/healthz").await;

    let r = srv.get("/metrics").await;

    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let lines: Vec<&str> = r.body.lines().collect();
    for want in [
        "wave_http_requests_total{route=\"whip\",status=\"201\"} 1",
        "wave_http_requests_total{route=\"whip\",status=\"415\"} 1",
        "wave_http_requests_total{route=\"healthz\",status=\"200\"} 1",
        "wave_http_sessions 1",
        "wave_test_node_calls 1",
    ] {
        assert!(lines.contains(&want), "missing {want} in\n{}", r.body);
    }
}

#[tokio::test]
async fn rooms_list_and_one_room() {
    let srv = start(config()).await;
    let (location, _) = srv.create("whip", "live", None).await;
    srv.create("whep", "live", None).await;
    srv.create("whep", "other", None).await;

    let r = srv.get("/v1/rooms").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let names: Vec<&str> = v["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["live", "other"]);

    let r = srv.get("/v1/rooms/live").await;
    assert_eq!(r.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["publishers"][0]["session"], session_of(&location).as_str());
    assert_eq!(v["viewers"].as_array().unwrap().len(), 1);

    assert_eq!(srv.get("/v1/rooms/empty").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        srv.get("/v1/rooms/bad%20name").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn rooms_need_a_token_on_a_secured_node() {
    let srv = start(secured()).await;
    assert_eq!(srv.get("/v1/rooms").await.status, StatusCode::UNAUTHORIZED);
    let room_token = format!("Bearer {}", token("live", "ops", false, true));
    let any_token = format!("Bearer {}", token("*", "ops", false, false));
    let get = |path: &'static str, auth: String| {
        let srv = &srv;
        async move {
            srv.send("GET", path, &[("authorization", &auth)], "")
                .await
                .status
        }
    };
    assert_eq!(get("/v1/rooms", room_token.clone()).await, StatusCode::FORBIDDEN);
    assert_eq!(get("/v1/rooms", any_token.clone()).await, StatusCode::OK);
    assert_eq!(
        get("/v1/rooms/live", room_token).await,
        StatusCode::NOT_FOUND,
        "allowed, but empty"
    );
    assert_eq!(
        srv.get("/healthz").await.status,
        StatusCode::OK,
        "healthz stays open"
    );
    assert_eq!(
        srv.get("/metrics").await.status,
        StatusCode::OK,
        "metrics stay open"
    );
}
