//! With a secret, WHIP/WHEP need a bearer token with the right grant and room.

use crate::common;

use std::process::Command;

use common::node::{Http, Node, cli_token, play_offer, publish_offer};
use hyper::{Method, StatusCode};

#[tokio::test]
async fn tokens_gate_publish_and_play() {
    let node = Node::start(&["--auth-secret", "s3cret"]);
    let http = Http::default();
    let url = node.url("/whip/stage");

    let none = http.post_sdp(&url, &publish_offer(), None).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(none.header("www-authenticate").unwrap().starts_with("Bearer"));
    let forged = http
        .post_sdp(&url, &publish_offer(), Some("eyJhbGciOiJIUzI1NiJ9.e30.bad"))
        .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    let other_secret = Command::new(env!("CARGO_BIN_EXE_sfu"))
        .args([
            "token",
            "--secret",
            "nope",
            "--room",
            "stage",
            "--identity",
            "eve",
            "--publish",
        ])
        .output()
        .unwrap();
    let eve = String::from_utf8(other_secret.stdout).unwrap();
    assert_eq!(
        http.post_sdp(&url, &publish_offer(), Some(eve.trim()))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    let viewer = cli_token(&["--room", "stage", "--identity", "bob", "--subscribe"]);
    assert_eq!(
        http.post_sdp(&url, &publish_offer(), Some(&viewer)).await.status,
        StatusCode::FORBIDDEN
    );
    let elsewhere = cli_token(&["--room", "other", "--identity", "ann", "--publish"]);
    assert_eq!(
        http.post_sdp(&url, &publish_offer(), Some(&elsewhere))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let expired = cli_token(&["--room", "stage", "--identity", "ann", "--publish", "--ttl", "0"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        http.post_sdp(&url, &publish_offer(), Some(&expired)).await.status,
        StatusCode::UNAUTHORIZED
    );

    let publisher = cli_token(&["--room", "stage", "--identity", "ann", "--publish"]);
    let created = http.post_sdp(&url, &publish_offer(), Some(&publisher)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let watched = http
        .post_sdp(
            &node.url("/whep/stage?publisher=ann"),
            &play_offer(),
            Some(&viewer),
        )
        .await;
    assert_eq!(watched.status, StatusCode::CREATED, "{}", watched.body);

    // DELETE needs the token too.
    let loc = created.header("location").unwrap();
    assert_eq!(
        http.send(Method::DELETE, &node.url(loc), &[], "").await.status,
        StatusCode::UNAUTHORIZED
    );
    let bearer = format!("Bearer {publisher}");
    let del = http
        .send(Method::DELETE, &node.url(loc), &[("authorization", &bearer)], "")
        .await;
    assert_eq!(del.status, StatusCode::OK);
}

/// `--max-token-ttl` (24h by default) bounds what a one-room token may
/// claim; `--token-audience` requires what `sfu token --audience` writes.
#[tokio::test]
async fn token_lifetime_and_audience_are_the_nodes_to_set() {
    let http = Http::default();
    let node = Node::start(&["--auth-secret", "s3cret"]);
    let url = node.url("/whip/stage");
    let week = cli_token(&["--room", "stage", "--identity", "ann", "--publish", "--ttl", "7d"]);
    let r = http.post_sdp(&url, &publish_offer(), Some(&week)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(r.body.contains("lifetime"), "{}", r.body);
    let lenient = Node::start(&["--auth-secret", "s3cret", "--max-token-ttl", "30d"]);
    let r = http
        .post_sdp(&lenient.url("/whip/stage"), &publish_offer(), Some(&week))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    let eu = Node::start(&["--auth-secret", "s3cret", "--token-audience", "wave-eu"]);
    let url = eu.url("/whip/stage");
    let plain = cli_token(&["--room", "stage", "--identity", "ann", "--publish"]);
    let us = cli_token(&[
        "--room",
        "stage",
        "--identity",
        "ann",
        "--publish",
        "--audience",
        "wave-us",
    ]);
    for token in [&plain, &us] {
        let r = http.post_sdp(&url, &publish_offer(), Some(token)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
    let ours = cli_token(&[
        "--room",
        "stage",
        "--identity",
        "ann",
        "--publish",
        "--audience",
        "wave-eu",
    ]);
    let r = http.post_sdp(&url, &publish_offer(), Some(&ours)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[test]
fn an_open_node_refuses_to_listen_beyond_loopback() {
    let out = Command::new(env!("CARGO_BIN_EXE_sfu"))
        .args(["serve", "--http", "0.0.0.0:0"])
        .output()
        .expect("sfu runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--auth-secret"));
}
