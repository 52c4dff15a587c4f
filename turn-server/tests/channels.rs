//! ChannelBind and ChannelData both ways; Send and Data indications.

use crate::common;

use common::*;

#[tokio::test]
async fn channel_data_flows_both_ways() {
    let server = start(config_allowing_loopback()).await;
    let mut c = Client::udp(server.addrs.udp, "alice").await;
    let relay = c.allocate().await;
    let peer = Peer::bind("127.0.0.2").await;
    assert!(is_success(&c.channel_bind(0x4000, peer.addr()).await));

    c.send_channel_data(0x4000, b"to peer").await;
    let (data, from) = peer.recv().await;
    assert_eq!(data, b"to peer");
    assert_eq!(from, relay, "the peer sees the relayed address");

    peer.send(relay, b"to client").await;
    assert_eq!(
        c.recv().await,
        Incoming::ChannelData {
            channel: 0x4000,
            data: b"to client".to_vec()
        }
    );
    // Rebinding the same pair refreshes it.
    assert!(is_success(&c.channel_bind(0x4000, peer.addr()).await));
    server.stop().await;
}

#[tokio::test]
async fn send_and_data_indications_flow_both_ways() {
    let server = start(config_allowing_loopback()).await;
    let mut c = Client::udp(server.addrs.udp, "alice").await;
    let relay = c.allocate().await;
    let peer = Peer::bind("127.0.0.2").await;
    assert!(is_success(&c.create_permission(&[peer.addr()]).await));

    c.send_indication(peer.addr(), b"via send").await;
    let (data, from) = peer.recv().await;
    assert_eq!((data.as_slice(), from), (b"via send".as_slice(), relay));

    peer.send(relay, b"via data").await;
    let (from, data) = c.recv_data_indication().await;
    assert_eq!((from, data.as_slice()), (peer.addr(), b"via data".as_slice()));
    server.stop().await;
}

#[tokio::test]
async fn channel_bind_rejects_bad_numbers_and_conflicts() {
    let server = start(config_allowing_loopback()).await;
    let mut c = Client::udp(server.addrs.udp, "alice").await;
    c.allocate().await;
    let p1 = Peer::bind("127.0.0.2").await;
    let p2 = Peer::bind("127.0.0.3").await;

    for bad in [0x3FFF, 0x5000, 0x7FFF] {
        assert_eq!(
            error_code(&c.channel_bind(bad, p1.addr()).await),
            Some(400),
            "{bad:#x}"
        );
    }
    assert!(is_success(&c.channel_bind(0x4FFF, p1.addr()).await));
    // The channel is taken by p1; p1 already has a channel.
    assert_eq!(error_code(&c.channel_bind(0x4FFF, p2.addr()).await), Some(400));
    assert_eq!(error_code(&c.channel_bind(0x4001, p1.addr()).await), Some(400));
    server.stop().await;
}
