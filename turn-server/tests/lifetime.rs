//! Allocation lifetimes: refresh, refresh to zero, expiry.

use crate::common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn refresh_to_zero_deletes_the_allocation() {
    let server = start(config_allowing_loopback()).await;
    let mut c = Client::udp(server.addrs.udp, "alice").await;
    let relay = c.allocate().await;
    let peer = Peer::bind("127.0.0.2").await;
    assert!(is_success(&c.channel_bind(0x4000, peer.addr()).await));

    let resp = c.refresh(1200).await;
    assert!(is_success(&resp));
    assert_eq!(lifetime(&resp), 1200);

    let resp = c.refresh(0).await;
    assert!(is_success(&resp));
    assert_eq!(lifetime(&resp), 0);
    assert_eq!(error_code(&c.refresh(600).await), Some(437));
    assert_eq!(wait_metric(&server, "turn_allocations", |v| v == 0).await, 0);

    // The relay no longer forwards; a new allocation works.
    peer.send(relay, b"anyone?").await;
    c.send_channel_data(0x4000, b"gone").await;
    assert!(peer.recv_within(Duration::from_millis(200)).await.is_none());
    c.allocate().await;
    server.stop().await;
}

#[tokio::test]
async fn lifetime_is_capped_at_the_maximum() {
    let server = start(config()).await;
    let mut c = Client::udp(server.addrs.udp, "alice").await;
    c.allocate().await;
    assert_eq!(lifetime(&c.refresh(86_400).await), 3600);
    server.stop().await;
}

#[tokio::test]
async fn allocations_expire_without_refresh() {
    let mut cfg = config_allowing_loopback();
    cfg.server.default_lifetime = Duration::from_secs(1);
    let server = start(cfg).await;
    let mut c = Client::udp(server.addrs.udp, "alice").await;
    let resp = c.try_allocate().await;
    assert_eq!(lifetime(&resp), 1);
    assert_eq!(wait_metric(&server, "turn_allocations", |v| v == 1).await, 1);

    // The sweeper removes it once its lifetime has passed.
    assert_eq!(wait_metric(&server, "turn_allocations", |v| v == 0).await, 0);
    assert_eq!(error_code(&c.refresh(600).await), Some(437));
    server.stop().await;
}
