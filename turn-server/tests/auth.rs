//! Long-term authentication: 401 with REALM and NONCE, 438 stale nonce,
//! wrong MESSAGE-INTEGRITY, 441 wrong credentials, REST expiry checked at
//! Allocate only, static users.

use crate::common;

use std::time::Duration;

use common::*;
use stun_types::attribute::{Nonce, Realm};
use stun_types::message::Message;
use stun_types::prelude::*;
use turn_types::attribute::RequestedTransport;
use turn_types::message::ALLOCATE;

fn udp_allocate(w: &mut stun_types::message::MessageWriteVec, _: stun_types::message::TransactionId) {
    w.add_attribute(&RequestedTransport::new(RequestedTransport::UDP))
        .unwrap();
}

#[tokio::test]
async fn unauthenticated_requests_get_401_with_realm_and_nonce() {
    let server = start(config()).await;
    let mut c = Client::udp(server.addrs.udp, "alice").await;
    let resp = c.request(ALLOCATE, false, udp_allocate).await;
    assert_eq!(error_code(&resp), Some(401));
    let msg = Message::from_bytes(&resp).unwrap();
    assert_eq!(msg.attribute::<Realm>().unwrap().realm(), REALM);
    assert!(!msg.attribute::<Nonce>().unwrap().nonce().is_empty());
    assert_eq!(wait_metric(&server, "turn_allocations", |v| v == 0).await, 0);
    server.stop().await;
}

#[tokio::test]
async fn stale_or_foreign_nonces_get_438_and_a_fresh_nonce_works() {
    let mut cfg = config();
    cfg.server.nonce_lifetime = Duration::from_secs(1);
    let server = start(cfg).await;
    let other = start(config()).await;

    // A nonce issued by another server instance is not ours: 438.
    let mut c = Client::udp(other.addrs.udp, "alice").await;
    let challenge = c.request(ALLOCATE, false, udp_allocate).await;
    c.take_nonce(&challenge);
    c.server = server.addrs.udp;
    let resp = c.request(ALLOCATE, true, udp_allocate).await;
    assert_eq!(error_code(&resp), Some(438));
    assert!(c.take_nonce(&resp), "438 carries a new nonce");

    // Our own nonce, once its lifetime has passed: 438.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = c.request(ALLOCATE, true, udp_allocate).await;
    assert_eq!(error_code(&resp), Some(438));
    c.take_nonce(&resp);
    let resp = c.request(ALLOCATE, true, udp_allocate).await;
    assert!(is_success(&resp), "fresh nonce: {:?}", error_code(&resp));
    other.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn wrong_password_gets_401_and_counts_as_auth_failure() {
    let server = start(config()).await;
    let mut c = Client::udp(server.addrs.udp, "alice").await;
    c.password = "not-the-password".into();
    let resp = c.authed(ALLOCATE, udp_allocate).await;
    assert_eq!(error_code(&resp), Some(401));
    // Unknown REST-looking usernames fail the same way.
    c.username = "not-a-timestamp:alice".into();
    assert_eq!(error_code(&c.authed(ALLOCATE, udp_allocate).await), Some(401));
    assert!(wait_metric(&server, "turn_auth_failures_total", |v| v >= 2).await >= 2);
    assert_eq!(server.metric("turn_allocations").await, 0);
    server.stop().await;
}

#[tokio::test]
async fn another_users_valid_credentials_on_an_allocation_get_441() {
    let server = start(config()).await;
    let mut c = Client::udp(server.addrs.udp, "alice").await;
    c.allocate().await;
    let (username, password) = rest_user("mallory");
    c.username = username;
    c.password = password;
    assert_eq!(error_code(&c.refresh(600).await), Some(441));
    server.stop().await;
}

#[tokio::test]
async fn rest_expiry_is_checked_at_allocate_only() {
    let server = start(config()).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Already expired: refused at Allocate.
    let expired = turn_server::rest_credentials(SECRET, "late", 0, now - 10, vec![]);
    let mut c = Client::udp(server.addrs.udp, "late").await;
    c.username = expired.username;
    c.password = expired.password;
    assert_eq!(error_code(&c.authed(ALLOCATE, udp_allocate).await), Some(401));

    // Valid for one second: the allocation outlives the credentials.
    let short = turn_server::rest_credentials(SECRET, "caller", 1, now, vec![]);
    let mut c = Client::udp(server.addrs.udp, "caller").await;
    c.username = short.username;
    c.password = short.password;
    c.allocate().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = c.refresh(600).await;
    assert!(is_success(&resp), "refresh after TTL: {:?}", error_code(&resp));
    server.stop().await;
}

#[tokio::test]
async fn static_users_authenticate() {
    let mut cfg = config();
    cfg.server.credentials.users.insert("static".into(), "pw".into());
    let server = start(cfg).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut c = Client::new(Conn::Udp(sock), server.addrs.udp, "static".into(), "pw".into());
    c.allocate().await;
    server.stop().await;
}
