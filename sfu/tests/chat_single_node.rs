//! Chat on one real `sfu` node with the in-process bus: fan-out, history,
//! moderation, presence, and every kind of bad input.

use crate::common;

use std::time::{Duration, SystemTime};

use common::chat::{ChatClient, SECRET, token};
use common::node::{Http, Node, publish_offer};
use hyper::{Method, StatusCode};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

fn node() -> Node {
    Node::start(&["--auth-secret", SECRET, "--chat-banned-words", "darn,heck"])
}

async fn moderate(http: &Http, node: &Node, room: &str, tok: &str, body: &str) -> common::node::Resp {
    let auth = format!("Bearer {tok}");
    http.send(
        Method::POST,
        &node.url(&format!("/v1/moderation/{room}/actions")),
        &[("authorization", &auth), ("content-type", "application/json")],
        body,
    )
    .await
}

#[tokio::test]
async fn chat_history_moderation_and_presence_on_the_in_process_bus() {
    let n = node();
    let http = Http::default();
    let mut alice = ChatClient::connect(&n, "live", Some(&token("live", "alice", true, None)))
        .await
        .unwrap();
    assert_eq!(alice.welcome["identity"], "alice");
    assert_eq!(alice.welcome["role"], "streamer");
    assert_eq!(alice.welcome["rate"], 50.0);
    let mut bob = ChatClient::connect(&n, "live", Some(&token("live", "bob", false, None)))
        .await
        .unwrap();
    assert_eq!(bob.welcome["role"], "viewer");

    for i in 0..5 {
        alice.say(&format!("hello {i}")).await;
    }
    let mut ids = Vec::new();
    for i in 0..5 {
        let m = bob.next_of("message").await;
        assert_eq!(m["text"], format!("hello {i}"));
        assert_eq!(m["sender"]["identity"], "alice");
        assert_eq!(m["sender"]["role"], "streamer");
        assert_eq!(m["id"].as_str().unwrap().len(), 16);
        assert!(m["ts"].as_u64().unwrap() > 1_600_000_000_000);
        ids.push(m["id"].as_str().unwrap().to_owned());
    }

    // A moderator deletes one message: clients are told, history forgets it.
    let moderator = token("live", "mod", false, Some("moderator"));
    let r = moderate(
        &http,
        &n,
        "live",
        &moderator,
        &format!(r#"{{"action":"delete","id":"{}"}}"#, ids[1]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let d = bob.next_of("delete").await;
    assert_eq!(d["id"], ids[1]);
    let carol = ChatClient::connect(&n, "live", Some(&token("live", "carol", false, None)))
        .await
        .unwrap();
    let texts: Vec<&str> = carol
        .history
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["hello 0", "hello 2", "hello 3", "hello 4"]);

    // Presence: three chat members, then a publisher.
    let p = bob.presence_until(|p| p["chat"] == 3).await;
    assert_eq!(p["chat_roles"]["streamer"], 1);
    let w = http
        .post_sdp(
            &n.url("/whip/live"),
            &publish_offer(),
            Some(&token("live", "alice", true, None)),
        )
        .await;
    assert_eq!(w.status, StatusCode::CREATED, "{}", w.body);
    let p = bob
        .presence_until(|p| p["publishers"].as_array().is_some_and(|a| a.len() == 1))
        .await;
    assert_eq!(p["publishers"][0], "alice");
    let auth = format!("Bearer {}", token("live", "bob", false, None));
    let room = http
        .send(
            Method::GET,
            &n.url("/v1/rooms/live"),
            &[("authorization", &auth)],
            "",
        )
        .await;
    let room: Value = serde_json::from_str(&room.body).unwrap();
    assert_eq!(room["presence"]["chat"], 3, "{room}");
    assert_eq!(room["presence"]["publishers"][0], "alice");

    // A viewer cannot moderate.
    let r = moderate(
        &http,
        &n,
        "live",
        &token("live", "bob", false, None),
        r#"{"action":"ban","identity":"alice"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Timeout mutes, ban disconnects and keeps out.
    let r = moderate(
        &http,
        &n,
        "live",
        &moderator,
        r#"{"action":"timeout","identity":"bob","seconds":60}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(bob.next_of("error").await["code"], "timed_out");
    bob.say("am I muted?").await;
    assert_eq!(bob.next_of("error").await["code"], "timed_out");
    let r = moderate(
        &http,
        &n,
        "live",
        &moderator,
        r#"{"action":"ban","identity":"bob"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(bob.next_of("error").await["code"], "banned");
    assert_eq!(bob.close_code().await, Some(1008));
    let again = ChatClient::connect(&n, "live", Some(&token("live", "bob", false, None))).await;
    assert_eq!(again.err().map(|r| r.status), Some(403));
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_well_behaved_clients_lose_nothing() {
    let n = node();
    let http = Http::default();
    let mut flood = ChatClient::connect(&n, "r", Some(&token("r", "flooder", false, None)))
        .await
        .unwrap();
    let mut good = ChatClient::connect(&n, "r", Some(&token("r", "good", false, None)))
        .await
        .unwrap();

    // Malformed JSON and unknown frames: an error frame, the connection stays.
    flood.send_raw("{not json").await;
    assert_eq!(flood.next_of("error").await["code"], "bad_json");
    flood.send_raw(r#"{"type":"shout","text":"x"}"#).await;
    assert_eq!(flood.next_of("error").await["code"], "bad_frame");
    // Content rules.
    flood.say(&"x".repeat(501)).await;
    assert_eq!(flood.next_of("error").await["code"], "too_long");
    flood.say("oh DARN it").await;
    assert_eq!(flood.next_of("error").await["code"], "banned_word");
    flood.say("visit evil.com now").await;
    assert_eq!(flood.next_of("error").await["code"], "link");
    flood.send_raw(r#"{"type":"ping"}"#).await;
    assert_eq!(flood.next_of("pong").await["type"], "pong");

    // A viewer flooding 40 messages at once: 10 a second pass, the rest is refused.
    for i in 0..40 {
        flood.say(&format!("flood {i}")).await;
    }
    let mut limited = 0;
    let mut own = 0;
    while limited + own < 40 {
        let f = flood.next().await.expect("frame");
        match f["type"].as_str() {
            Some("error") => {
                assert_eq!(f["code"], "rate_limited");
                assert!(f["retry_after_ms"].as_u64().unwrap() > 0);
                limited += 1;
            }
            Some("message") => own += 1,
            _ => {}
        }
    }
    // Every attempt takes a token: the three refused for content above too.
    assert!((10..=12).contains(&(own + 3)), "{own} passed the 10/s limit");
    // Meanwhile the good client sends within its limit and loses nothing,
    // and sees exactly the flood messages that were accepted.
    for i in 0..5 {
        good.say(&format!("good {i}")).await;
    }
    let mut flood_seen = 0;
    let mut good_seen = Vec::new();
    while good_seen.len() < 5 {
        let m = good.next_of("message").await;
        match m["sender"]["identity"].as_str() {
            Some("flooder") => flood_seen += 1,
            _ => good_seen.push(m["text"].as_str().unwrap().to_owned()),
        }
    }
    assert_eq!(flood_seen, own);
    assert_eq!(good_seen, (0..5).map(|i| format!("good {i}")).collect::<Vec<_>>());

    // A frame over 8 KiB closes with 1009.
    flood.send_message(Message::text("y".repeat(20_000))).await;
    assert_eq!(flood.close_code().await, Some(1009));
    // The good client is still served.
    good.say("still here").await;
    assert_eq!(good.next_of("message").await["text"], "still here");

    // Tokens and rooms.
    let forged = {
        let mut c = signaling::auth::Claims::new("r", "mallory", Duration::from_secs(60), SystemTime::now());
        c.subscribe = true;
        signaling::auth::issue_claims(b"another secret", &c)
    };
    let r = ChatClient::connect(&n, "r", Some(&forged)).await.err().unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    let expired = {
        let then = SystemTime::now() - Duration::from_secs(3600);
        let mut c = signaling::auth::Claims::new("r", "old", Duration::from_secs(60), then);
        c.subscribe = true;
        signaling::auth::issue_claims(SECRET.as_bytes(), &c)
    };
    let r = ChatClient::connect(&n, "r", Some(&expired)).await.err().unwrap();
    assert_eq!(r.status, 401);
    assert!(r.body.contains("expired"), "{}", r.body);
    let r = ChatClient::connect(&n, "r", None).await.err().unwrap();
    assert_eq!(r.status, 401);
    let r = ChatClient::connect(&n, "other", Some(&token("r", "good", false, None)))
        .await
        .err()
        .unwrap();
    assert_eq!(r.status, 403);
    let r = ChatClient::connect(&n, "bad%20room", Some(&token("*", "good", false, None)))
        .await
        .err()
        .unwrap();
    assert_eq!(r.status, 400);
    // A plain GET is told to upgrade.
    let plain = http.send(Method::GET, &n.url("/v1/chat/r"), &[], "").await;
    assert_eq!(plain.status, StatusCode::UPGRADE_REQUIRED);
    // Bad moderation bodies.
    let m = token("r", "m", true, None);
    let r = moderate(&http, &n, "r", &m, r#"{"action":"nuke"}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = moderate(&http, &n, "r", &m, "{").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = moderate(&http, &n, "r", "garbage", r#"{"action":"ban","identity":"x"}"#).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn open_node_chat_is_anonymous_at_two_per_second() {
    let n = Node::start(&[]);
    let mut a = ChatClient::connect(&n, "open", None).await.unwrap();
    assert_eq!(a.welcome["role"], "anonymous");
    assert!(a.welcome["identity"].as_str().unwrap().starts_with("anon-"));
    assert_eq!(a.welcome["rate"], 2.0);
    for i in 0..3 {
        a.say(&format!("m{i}")).await;
    }
    // Refusals are answered at once; accepted messages come back through
    // the bus, so the two kinds may interleave.
    let (mut texts, mut errors) = (Vec::new(), Vec::new());
    while texts.len() < 2 || errors.is_empty() {
        let f = a.next().await.expect("frame");
        match f["type"].as_str() {
            Some("message") => texts.push(f["text"].as_str().unwrap().to_owned()),
            Some("error") => errors.push(f["code"].as_str().unwrap().to_owned()),
            _ => {}
        }
    }
    assert_eq!(texts, ["m0", "m1"]);
    assert_eq!(errors, ["rate_limited"]);
}
