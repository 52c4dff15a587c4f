//! Bearer tokens: 401 + WWW-Authenticate when missing/invalid/expired, 403 without the grant.
use crate::common;

use std::time::{Duration, SystemTime};

use common::*;
use hyper::StatusCode;

fn assert_401(r: &Reply) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
    assert!(
        r.header("www-authenticate").unwrap().starts_with("Bearer"),
        "{r:?}"
    );
    r.problem();
}

#[tokio::test]
async fn missing_token_is_401_with_challenge() {
    let srv = start(secured()).await;
    assert_401(&srv.post_offer("/whip/live", None).await);
    assert_401(&srv.post_offer("/whep/live", None).await);
    assert!(srv.node.calls().is_empty());
}

#[tokio::test]
async fn bearer_undefined_counts_as_missing() {
    let srv = start(secured()).await;
    let r = srv
        .send(
            "POST",
            "/whip/live",
            &[
                ("content-type", "application/sdp"),
                ("authorization", "Bearer undefined"),
            ],
            OFFER,
        )
        .await;
    assert_401(&r);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"wave\""));
}

#[tokio::test]
async fn invalid_and_forged_tokens_are_401() {
    let srv = start(secured()).await;
    assert_401(&srv.post_offer("/whip/live", Some("not-a-jwt")).await);
    let forged = signaling::auth::issue(
        b"another-secret",
        "live",
        "mallory",
        true,
        true,
        Duration::from_secs(60),
        SystemTime::now(),
    );
    let r = srv.post_offer("/whip/live", Some(&forged)).await;
    assert_401(&r);
    assert!(r.header("www-authenticate").unwrap().contains("invalid_token"));
}

#[tokio::test]
async fn expired_token_is_401() {
    let srv = start(secured()).await;
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let expired = signaling::auth::issue(
        SECRET,
        "live",
        "alice",
        true,
        true,
        Duration::from_secs(60),
        an_hour_ago,
    );
    let r = srv.post_offer("/whip/live", Some(&expired)).await;
    assert_401(&r);
    assert!(r.problem()["detail"].as_str().unwrap().contains("expired"));
}

#[tokio::test]
async fn wrong_room_or_grant_is_403() {
    let srv = start(secured()).await;
    let other_room = token("other", "alice", true, true);
    let viewer = token("live", "bob", false, true);
    let publisher = token("live", "alice", true, false);
    for (path, tok) in [
        ("/whip/live", &other_room),
        ("/whip/live", &viewer),
        ("/whep/live", &publisher),
    ] {
        let r = srv.post_offer(path, Some(tok)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("insufficient_scope")
        );
        r.problem();
    }
    assert!(srv.node.calls().is_empty());
}

#[tokio::test]
async fn valid_token_passes_identity_to_the_node() {
    let srv = start(secured()).await;
    let (_, _) = srv
        .create("whip", "live", Some(&token("live", "alice", true, false)))
        .await;
    let (_, _) = srv
        .create("whep", "live", Some(&token("*", "bob", false, true)))
        .await;
    let calls = srv.node.calls();
    let [Call::Publish(p), Call::Play(v)] = &calls[..] else {
        panic!("{calls:?}")
    };
    assert_eq!(p.identity.as_deref(), Some("alice"));
    assert_eq!(v.identity.as_deref(), Some("bob"));
}

#[tokio::test]
async fn patch_and_delete_need_the_owners_token() {
    let srv = start(secured()).await;
    let alice = token("live", "alice", true, false);
    let mallory = token("live", "mallory", true, false);
    let (location, etag) = srv.create("whip", "live", Some(&alice)).await;
    let frag = trickle(&[HOST_CANDIDATE]);

    assert_401(&srv.patch(&location, &[("if-match", &etag)], &frag).await);
    assert_401(&srv.send("DELETE", &location, &[], "").await);
    let bad = format!("Bearer {mallory}");
    let r = srv
        .send("DELETE", &location, &[("authorization", &bad)], "")
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let good = format!("Bearer {alice}");
    let r = srv
        .patch(&location, &[("if-match", &etag), ("authorization", &good)], &frag)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = srv
        .send("DELETE", &location, &[("authorization", &good)], "")
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn preflight_needs_no_token() {
    let srv = start(secured()).await;
    let r = srv
        .send(
            "OPTIONS",
            "/whip/live",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}
