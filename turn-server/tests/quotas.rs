//! Quotas and capacity: 486 per user and per client IP, 508 when the server
//! is full or out of relay ports.

use crate::common;

use common::*;

#[tokio::test]
async fn per_user_quota_gets_486() {
    let mut cfg = config();
    cfg.server.user_quota = 2;
    let server = start(cfg).await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut c = Client::udp(server.addrs.udp, "alice").await;
        c.allocate().await;
        clients.push(c);
    }
    let mut third = Client::udp(server.addrs.udp, "alice").await;
    assert_eq!(error_code(&third.try_allocate().await), Some(486));
    // Another user is unaffected; freeing one lets alice allocate again.
    Client::udp(server.addrs.udp, "bob").await.allocate().await;
    assert!(is_success(&clients[0].refresh(0).await));
    third.allocate().await;
    server.stop().await;
}

#[tokio::test]
async fn per_ip_quota_gets_486() {
    let mut cfg = config();
    cfg.server.ip_quota = 1;
    let server = start(cfg).await;
    let from = |ip: &str| format!("{ip}:0").parse().unwrap();
    Client::udp_from(from("127.0.0.2"), server.addrs.udp, "a")
        .await
        .allocate()
        .await;
    let mut same_ip = Client::udp_from(from("127.0.0.2"), server.addrs.udp, "b").await;
    assert_eq!(error_code(&same_ip.try_allocate().await), Some(486));
    Client::udp_from(from("127.0.0.3"), server.addrs.udp, "c")
        .await
        .allocate()
        .await;
    server.stop().await;
}

#[tokio::test]
async fn full_server_gets_508() {
    let mut cfg = config();
    cfg.server.max_allocations = 1;
    let server = start(cfg).await;
    Client::udp(server.addrs.udp, "a").await.allocate().await;
    let mut c = Client::udp(server.addrs.udp, "b").await;
    assert_eq!(error_code(&c.try_allocate().await), Some(508));
    server.stop().await;
}

#[tokio::test]
async fn exhausted_relay_ports_get_508() {
    let mut cfg = config();
    // One port, held by someone else: nothing can be bound.
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    cfg.relay_ports = (port, port);
    let server = start(cfg).await;
    let mut c = Client::udp(server.addrs.udp, "a").await;
    assert_eq!(error_code(&c.try_allocate().await), Some(508));
    assert_eq!(wait_metric(&server, "turn_allocations", |v| v == 0).await, 0);
    drop(holder);
    c.allocate().await;
    server.stop().await;
}

#[tokio::test]
async fn permission_table_is_bounded() {
    let mut cfg = config();
    cfg.server.max_permissions = 2;
    let server = start(cfg).await;
    let mut c = Client::udp(server.addrs.udp, "a").await;
    c.allocate().await;
    let peer = |i: u8| std::net::SocketAddr::from(([8, 8, 8, i], 53));
    assert!(is_success(&c.create_permission(&[peer(1), peer(2)]).await));
    assert_eq!(error_code(&c.create_permission(&[peer(3)]).await), Some(508));
    // Refreshing existing ones still works.
    assert!(is_success(&c.create_permission(&[peer(1)]).await));
    server.stop().await;
}
