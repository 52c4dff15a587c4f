//! `/metrics`: allocations, relayed packets and bytes, auth failures,
//! denied peers in Prometheus text.

use crate::common;

use common::*;

#[tokio::test]
async fn metrics_count_what_clients_did() {
    let server = start(config_allowing_loopback()).await;
    let mut c = Client::udp(server.addrs.udp, "alice").await;
    let relay = c.allocate().await;
    let peer = Peer::bind("127.0.0.2").await;
    assert!(is_success(&c.channel_bind(0x4000, peer.addr()).await));
    c.send_channel_data(0x4000, &[7; 100]).await;
    peer.recv().await;
    peer.send(relay, &[8; 50]).await;
    c.recv().await;
    let denied = c.create_permission(&["10.0.0.1:1".parse().unwrap()]).await;
    assert_eq!(error_code(&denied), Some(403));
    let mut bad = Client::udp(server.addrs.udp, "bob").await;
    bad.password = "wrong".into();
    let _ = bad.try_allocate().await;

    assert_eq!(
        wait_metric(&server, "turn_packets_relayed_total", |v| v >= 2).await,
        2
    );
    assert_eq!(server.metric("turn_bytes_relayed_total").await, 150);
    assert_eq!(server.metric("turn_allocations").await, 1);
    assert!(server.metric("turn_auth_failures_total").await >= 1);
    assert_eq!(server.metric("turn_denied_peers_total").await, 1);
    let text = server.metrics().await;
    assert!(text.starts_with("HTTP/1.1 200 OK"));
    assert!(text.contains("# TYPE turn_allocations gauge"));
    server.stop().await;
}
