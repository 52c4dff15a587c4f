//! TURN over TCP: allocate, channel data (padded) and indications both
//! ways; closing the connection deletes its allocation.

use crate::common;

use common::*;

#[tokio::test]
async fn tcp_client_relays_both_ways() {
    let server = start(config_allowing_loopback()).await;
    let mut c = Client::tcp(server.addrs.tcp, "alice").await;
    let relay = c.allocate().await;
    let peer = Peer::bind("127.0.0.2").await;
    assert!(is_success(&c.channel_bind(0x4001, peer.addr()).await));

    // 5 bytes: padded to 8 on the stream, delivered as 5 to the peer.
    c.send_channel_data(0x4001, b"hello").await;
    let (data, from) = peer.recv().await;
    assert_eq!((data.as_slice(), from), (b"hello".as_slice(), relay));
    peer.send(relay, b"world!!").await;
    assert_eq!(
        c.recv().await,
        Incoming::ChannelData {
            channel: 0x4001,
            data: b"world!!".to_vec()
        }
    );

    let other = Peer::bind("127.0.0.3").await;
    assert!(is_success(&c.create_permission(&[other.addr()]).await));
    c.send_indication(other.addr(), b"ind").await;
    assert_eq!(other.recv().await.0, b"ind");
    other.send(relay, b"data").await;
    assert_eq!(c.recv_data_indication().await, (other.addr(), b"data".to_vec()));
    server.stop().await;
}

#[tokio::test]
async fn closing_the_connection_deletes_the_allocation() {
    let mut cfg = config();
    cfg.server.user_quota = 1;
    let server = start(cfg).await;
    let mut c = Client::tcp(server.addrs.tcp, "alice").await;
    c.allocate().await;
    assert_eq!(wait_metric(&server, "turn_allocations", |v| v == 1).await, 1);
    drop(c);
    assert_eq!(wait_metric(&server, "turn_allocations", |v| v == 0).await, 0);
    // The quota slot is free again.
    Client::tcp(server.addrs.tcp, "alice").await.allocate().await;
    server.stop().await;
}
