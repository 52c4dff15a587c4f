//! Garbage at the media port is dropped and counted; good peers keep working.

use crate::common;

use std::net::UdpSocket;

use common::node::{Http, Node, publish_offer};
use hyper::{Method, StatusCode};

#[tokio::test]
async fn garbage_datagrams_do_not_disturb_the_node() {
    let node = Node::start(&[]);
    let http = Http::default();
    let created = http.post_sdp(&node.url("/whip/g"), &publish_offer(), None).await;
    assert_eq!(created.status, StatusCode::CREATED);

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed = 0x1234_5678_u32;
    for i in 0..2_000u32 {
        // xorshift: reproducible noise of every first byte (STUN, DTLS, RTP ranges) and length.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let len = (seed % 1400) as usize + (i % 2) as usize;
        let mut buf: Vec<u8> = (0..len)
            .map(|j| (seed.rotate_left(j as u32 % 31) & 0xff) as u8)
            .collect();
        if let Some(b) = buf.first_mut() {
            *b = (i % 256) as u8;
        }
        for addr in &node.media {
            sock.send_to(&buf, addr).unwrap();
        }
        if i % 50 == 49 {
            // Paced so the node's socket buffers never overflow (a small
            // `net.core.rmem_max` and a busy machine): what the kernel
            // drops the node cannot count.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
    // A STUN binding request with a made-up username.
    let mut stun = vec![0x00, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[7; 12]);
    stun.extend_from_slice(&[0x00, 0x06, 0x00, 0x08]);
    stun.extend_from_slice(b"nope:abc");
    sock.send_to(&stun, node.media[0]).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    assert_eq!(
        http.send(Method::GET, &node.url("/healthz"), &[], "")
            .await
            .status,
        StatusCode::OK
    );
    let metrics = http.send(Method::GET, &node.url("/metrics"), &[], "").await.body;
    let dropped = wave_metrics::value(&metrics, "wave_udp_dropped_total").expect("counter on /metrics");
    assert!(dropped >= 2_000.0, "dropped {dropped}");
    let again = http.post_sdp(&node.url("/whip/g2"), &publish_offer(), None).await;
    assert_eq!(again.status, StatusCode::CREATED);
    let rooms = http.send(Method::GET, &node.url("/v1/rooms"), &[], "").await.body;
    assert!(rooms.contains("\"g\"") && rooms.contains("\"g2\""), "{rooms}");
}
