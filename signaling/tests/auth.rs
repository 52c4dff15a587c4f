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

fn signed(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// RFC 7519 §4.1.5/§4.1.6: a token whose `nbf` or `iat` lies ahead of the
/// node's clock is not usable yet; a one-room token may live at most a day.
#[tokio::test]
async fn tokens_from_the_future_or_living_too_long_are_401() {
    let srv = start(secured()).await;
    let now = unix_now();
    let claims = |iat: u64, nbf: Option<u64>, exp: u64| {
        let mut c = serde_json::json!({
            "room": "live", "sub": "ann", "publish": true, "iat": iat, "exp": exp,
        });
        if let Some(nbf) = nbf {
            c["nbf"] = nbf.into();
        }
        signed(c)
    };
    for token in [
        claims(now, Some(now + 600), now + 3_600),
        claims(now + 600, None, now + 3_600),
        claims(now, None, now + 2 * 86_400),
    ] {
        assert_401(&srv.post_offer("/whip/live", Some(&token)).await);
    }
    assert!(srv.node.calls().is_empty());
    let ok = claims(now, Some(now - 10), now + 86_400);
    assert_eq!(
        srv.post_offer("/whip/live", Some(&ok)).await.status,
        StatusCode::CREATED
    );
    let service = signed(serde_json::json!({
        "room": "*", "sub": "ops", "publish": true, "iat": now, "exp": now + 30 * 86_400,
    }));
    assert_eq!(
        srv.post_offer("/whip/other", Some(&service)).await.status,
        StatusCode::CREATED,
        "`*` tokens are not bounded"
    );
}

#[tokio::test]
async fn a_node_with_an_audience_refuses_tokens_for_others() {
    let srv = start(signaling::HttpConfig {
        token_policy: signaling::auth::TokenPolicy {
            audience: Some("wave-eu".into()),
            ..Default::default()
        },
        ..secured()
    })
    .await;
    let now = unix_now();
    let with_aud = |aud: serde_json::Value| {
        signed(serde_json::json!({
            "room": "live", "sub": "ann", "publish": true, "iat": now, "exp": now + 60, "aud": aud,
        }))
    };
    assert_401(
        &srv.post_offer("/whip/live", Some(&with_aud("wave-us".into())))
            .await,
    );
    assert_401(
        &srv.post_offer("/whip/live", Some(&token("live", "ann", true, false)))
            .await,
    );
    assert_eq!(
        srv.post_offer(
            "/whip/live",
            Some(&with_aud(serde_json::json!(["wave-us", "wave-eu"])))
        )
        .await
        .status,
        StatusCode::CREATED
    );
}
