//! Floods of unauthenticated Allocates against the real binary: they are
//! rate limited, allocate nothing, keep memory bounded, and legitimate
//! clients are still served.

use crate::common;

use common::*;
use stun_types::message::{Message, MessageClass, MessageType, MessageWriteVec, TransactionId};
use stun_types::prelude::*;
use turn_types::attribute::RequestedTransport;
use turn_types::message::ALLOCATE;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn unauthenticated_allocate_flood_is_bounded_and_service_continues() {
    let (guard, line) = spawn_server_binary([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--realm",
        REALM,
        "--auth-secret",
        SECRET,
        "--relay-ports",
        "20000-29999",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let field = |key: &str| -> std::net::SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .expect("listening line")
            .parse()
            .unwrap()
    };
    let addr = field("udp=");
    let metrics_addr = field("metrics=");
    let pid = guard.0.id();

    // Warm up, then measure.
    let mut probe = Client::udp(addr, "probe").await;
    probe.allocate().await;
    let before = rss_kib(pid);

    // 40,000 Allocates from 200 sockets on 20 source IPs, no credentials.
    let mut senders = Vec::new();
    for ip in 0..20u8 {
        for _ in 0..10 {
            let sock = std::net::UdpSocket::bind(("127.0.1.".to_owned() + &(ip + 1).to_string(), 0)).unwrap();
            senders.push(sock);
        }
    }
    tokio::task::spawn_blocking(move || {
        for i in 0..40_000u32 {
            let mut w = Message::builder(
                MessageType::from_class_method(MessageClass::Request, ALLOCATE),
                TransactionId::from(u128::from(i) + 1),
                MessageWriteVec::new(),
            );
            w.add_attribute(&RequestedTransport::new(RequestedTransport::UDP))
                .unwrap();
            let bytes = w.finish();
            let _ = senders[i as usize % senders.len()].send_to(&bytes, addr);
        }
    })
    .await
    .unwrap();

    // Still serving: a new client allocates and the probe refreshes.
    let mut fresh = Client::udp(addr, "fresh").await;
    fresh.allocate().await;
    assert!(is_success(&probe.refresh(600).await));

    let after = rss_kib(pid);
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB under the flood"
    );
    let text = http_get(metrics_addr).await;
    let metric = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap()
    };
    assert_eq!(
        metric("turn_allocations"),
        2,
        "only the two real clients allocated"
    );
    assert!(
        metric("turn_rate_limited_total") > 0,
        "the flood hit the rate limit"
    );
    assert!(metric("turn_limiter_tracked_ips") <= 64);
    drop(guard);
}

async fn http_get(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    out
}
