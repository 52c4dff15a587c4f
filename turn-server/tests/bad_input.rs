//! Bad input: truncated, oversized and garbage datagrams, wrong
//! MESSAGE-INTEGRITY, unknown comprehension-required attributes (420),
//! unknown methods (400), garbage on TCP. The server answers what it can,
//! drops the rest, and keeps serving.

use crate::common;

use common::*;
use stun_types::attribute::{RawAttribute, UnknownAttributes};
use stun_types::message::{BINDING, Message, Method};
use stun_types::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn still_serving(server: &TestServer) {
    let mut c = Client::udp(server.addrs.udp, "probe").await;
    assert!(is_success(&c.request(BINDING, false, |_, _| {}).await));
    c.allocate().await;
}

#[tokio::test]
async fn truncated_oversized_and_garbage_datagrams_are_dropped() {
    let server = start(config()).await;
    let mut c = Client::udp(server.addrs.udp, "x").await;
    let good = c.build(BINDING, 7u128.into(), false, |_, _| {});
    let mut cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        good[..10].to_vec(),
        good[..good.len() - 1].to_vec(),
        vec![0xff; 1500],
        vec![0x40, 0x00, 0xff, 0xff, 1, 2, 3], // ChannelData claiming 64 KiB
        vec![0u8; 65_000],
    ];
    // Header claiming more attribute bytes than present.
    let mut lying = good.clone();
    lying[2] = 0x0f;
    cases.push(lying);
    // Trailing garbage after a complete message.
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[1, 2, 3, 4]);
    cases.push(trailing);
    for case in &cases {
        c.send_raw(case).await;
    }
    assert!(
        c.recv_within(std::time::Duration::from_millis(200))
            .await
            .is_none()
    );
    assert!(wait_metric(&server, "turn_malformed_total", |v| v >= 6).await >= 6);
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn wrong_message_integrity_gets_401() {
    let server = start(config()).await;
    let mut d = Client::udp(server.addrs.udp, "bob").await;
    let first = d.request(turn_types::message::ALLOCATE, false, |_, _| {}).await;
    d.take_nonce(&first);
    let txid = 99u128.into();
    let mut req = d.build(turn_types::message::ALLOCATE, txid, true, |w, _| {
        w.add_attribute(&turn_types::attribute::RequestedTransport::new(17))
            .unwrap();
    });
    // Flip a bit inside the HMAC (before the 8-byte FINGERPRINT), then fix
    // the FINGERPRINT so only the integrity is wrong.
    let mi = req.len() - 8 - 4;
    req[mi] ^= 1;
    let fp_at = req.len() - 8;
    let crc = fingerprint(&req[..fp_at], (req.len() - 20) as u16);
    req[fp_at + 4..].copy_from_slice(&crc);
    d.send_raw(&req).await;
    let resp = d.response(txid).await;
    assert_eq!(error_code(&resp), Some(401));
    still_serving(&server).await;
    server.stop().await;
}

/// RFC 8489 §14.7: CRC-32 of the message up to FINGERPRINT, XOR 0x5354554E,
/// with the header length covering the FINGERPRINT attribute.
fn fingerprint(before: &[u8], total_len: u16) -> [u8; 4] {
    let mut data = before.to_vec();
    data[2..4].copy_from_slice(&total_len.to_be_bytes());
    let mut crc = 0xffff_ffffu32;
    for &b in &data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    (!crc ^ 0x5354_554e).to_be_bytes()
}

#[tokio::test]
async fn unknown_comprehension_required_attributes_get_420() {
    let server = start(config()).await;
    let mut c = Client::udp(server.addrs.udp, "x").await;
    let unknown = stun_types::attribute::AttributeType::new(0x7f01);
    let resp = c
        .request(BINDING, false, |w, _| {
            w.add_attribute(&RawAttribute::new(unknown, &[1, 2, 3, 4]))
                .unwrap();
        })
        .await;
    assert_eq!(error_code(&resp), Some(420));
    let msg = Message::from_bytes(&resp).unwrap();
    assert!(
        msg.attribute::<UnknownAttributes>()
            .unwrap()
            .has_attribute(unknown)
    );
    // Comprehension-optional unknowns are ignored.
    let optional = stun_types::attribute::AttributeType::new(0xc0de);
    let resp = c
        .request(BINDING, false, |w, _| {
            w.add_attribute(&RawAttribute::new(optional, &[0; 4])).unwrap();
        })
        .await;
    assert!(is_success(&resp));
    server.stop().await;
}

#[tokio::test]
async fn unknown_methods_get_400() {
    let server = start(config()).await;
    let mut c = Client::udp(server.addrs.udp, "x").await;
    let resp = c.request(Method::new(0x0123), false, |_, _| {}).await;
    assert_eq!(error_code(&resp), Some(400));
    server.stop().await;
}

#[tokio::test]
async fn garbage_on_tcp_closes_that_connection_only() {
    let server = start(config()).await;
    let mut conn = tokio::net::TcpStream::connect(server.addrs.tcp).await.unwrap();
    conn.write_all(&[0xff; 64]).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "server closed the connection");
    let mut c = Client::tcp(server.addrs.tcp, "y").await;
    c.allocate().await;
    still_serving(&server).await;
    server.stop().await;
}
