//! Who may moderate, and whose allowance a message spends: moderator
//! actions need a moderator's or streamer's token for that room (or an
//! explicit `--open-moderation` on an open node), and a user's rate limit
//! is shared by all of its connections to a node.

use crate::common;

use std::time::{Duration, SystemTime};

use common::chat::{ChatClient, SECRET, token};
use common::node::{Http, Node, Resp};
use hyper::StatusCode;

async fn ban(http: &Http, node: &Node, room: &str, auth: Option<&str>) -> Resp {
    http.post_json(
        &node.url(&format!("/v1/moderation/{room}/actions")),
        r#"{"action":"timeout","identity":"troll","seconds":5}"#,
        auth,
    )
    .await
}

#[tokio::test]
async fn only_moderator_and_streamer_tokens_for_the_room_may_moderate() {
    let n = Node::start(&["--auth-secret", SECRET]);
    let http = Http::default();

    let forged = {
        let mut c =
            signaling::auth::Claims::new("live", "mallory", Duration::from_secs(60), SystemTime::now());
        c.role = Some(signaling::auth::Role::Moderator);
        signaling::auth::issue_claims(b"not the node's secret", &c)
    };
    let expired = {
        let then = SystemTime::now() - Duration::from_secs(3600);
        let mut c = signaling::auth::Claims::new("live", "old-mod", Duration::from_secs(60), then);
        c.role = Some(signaling::auth::Role::Moderator);
        signaling::auth::issue_claims(SECRET.as_bytes(), &c)
    };
    let refused: [(&str, Option<String>, StatusCode, &str); 6] = [
        ("no token", None, StatusCode::UNAUTHORIZED, ""),
        ("forged", Some(forged), StatusCode::UNAUTHORIZED, ""),
        ("expired", Some(expired), StatusCode::UNAUTHORIZED, "expired"),
        (
            "viewer",
            Some(token("live", "bob", false, None)),
            StatusCode::FORBIDDEN,
            "streamer or moderator",
        ),
        (
            "anonymous role",
            Some(token("live", "anon", false, Some("anonymous"))),
            StatusCode::FORBIDDEN,
            "streamer or moderator",
        ),
        (
            "moderator of another room",
            Some(token("other", "mod", false, Some("moderator"))),
            StatusCode::FORBIDDEN,
            "streamer or moderator",
        ),
    ];
    for (what, tok, status, reason) in &refused {
        let r = ban(&http, &n, "live", tok.as_deref()).await;
        assert_eq!(r.status, *status, "{what}: {}", r.body);
        assert!(!r.body.is_empty(), "{what}: a reason");
        assert!(r.body.contains(reason), "{what}: {}", r.body);
    }
    for (what, tok) in [
        ("moderator", token("live", "mod", false, Some("moderator"))),
        ("streamer (publisher)", token("live", "alice", true, None)),
        (
            "moderator of every room",
            token("*", "admin", false, Some("moderator")),
        ),
    ] {
        let r = ban(&http, &n, "live", Some(&tok)).await;
        assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.body);
    }
}

#[tokio::test]
async fn an_open_node_refuses_moderation_unless_told_otherwise() {
    let http = Http::default();
    let closed = Node::start(&[]);
    let r = ban(&http, &closed, "live", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.body.contains("--auth-secret"), "{}", r.body);

    let open = Node::start(&["--open-moderation"]);
    let r = ban(&http, &open, "live", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn two_connections_of_one_viewer_share_its_rate_limit() {
    let n = Node::start(&["--auth-secret", SECRET]);
    let tok = token("r", "bob", false, None);
    let mut first = ChatClient::connect(&n, "r", Some(&tok)).await.unwrap();
    let mut second = ChatClient::connect(&n, "r", Some(&tok)).await.unwrap();
    assert_eq!(first.welcome["rate"], 10.0);
    // 10 from each socket at once: 20 attempts against one 10/s allowance.
    for i in 0..10 {
        first.say(&format!("a{i}")).await;
        second.say(&format!("b{i}")).await;
    }
    // Each socket is answered for each of its own sends: a refusal, or
    // its message coming back through the room.
    let mut accepted = 0;
    for (c, prefix) in [(&mut first, "a"), (&mut second, "b")] {
        let (mut own, mut refused) = (0, 0);
        while own + refused < 10 {
            let f = c.next().await.expect("frame");
            match f["type"].as_str() {
                Some("error") => {
                    assert_eq!(f["code"], "rate_limited", "{f}");
                    refused += 1;
                }
                Some("message") if f["text"].as_str().unwrap().starts_with(prefix) => own += 1,
                _ => {}
            }
        }
        accepted += own;
    }
    // Per connection this would be 20; the allowance refills 10/s while the
    // 20 sends are in flight, hence a little slack above 10.
    assert!(
        (10..=12).contains(&accepted),
        "{accepted} of 20 passed one viewer's 10/s"
    );
}
