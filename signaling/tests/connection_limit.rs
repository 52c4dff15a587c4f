//! Concurrent HTTP connections are capped per client and in total: one over
//! a cap is answered 503 and closed, and counted; closing one makes room.
use crate::common;

use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;
use signaling::{ConnectionLimit, HttpConfig};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// What the server sends on a fresh connection before closing it (or
/// nothing within 300 ms: it is waiting for a request).
async fn greeting(addr: std::net::SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(300), stream.read_to_end(&mut buf)).await;
    (stream, String::from_utf8_lossy(&buf).into_owned())
}

#[tokio::test]
async fn connections_over_a_cap_get_503_and_close() {
    let srv = start(HttpConfig {
        // The test's client is on loopback, which is spared by default.
        connection_limit: ConnectionLimit {
            per_client: 3,
            total: 100,
            loopback_exempt: false,
        },
        ..config()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (stream, said) = greeting(srv.addr).await;
        assert_eq!(said, "", "a connection within the cap waits for its request");
        held.push(stream);
    }
    let (_, said) = greeting(srv.addr).await;
    assert!(said.starts_with("HTTP/1.1 503 "), "{said:?}");
    assert!(said.to_ascii_lowercase().contains("retry-after: 1"), "{said:?}");

    // Closing one makes room again (the server notices the close first).
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (stream, said) = greeting(srv.addr).await;
        if said.is_empty() {
            held.push(stream);
            break;
        }
        assert!(Instant::now() < deadline, "no room after a close: {said:?}");
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    let page = loop {
        let r = srv.get("/metrics").await;
        if r.status == StatusCode::OK {
            break r.body;
        }
        assert!(Instant::now() < deadline, "{r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let refused = page
        .lines()
        .find(|l| l.starts_with("wave_http_connections_refused_total{cap=\"per_client\"}"))
        .unwrap();
    assert!(!refused.ends_with(" 0"), "{refused}");
}

#[tokio::test]
async fn the_total_cap_holds_across_clients() {
    let srv = start(HttpConfig {
        connection_limit: ConnectionLimit {
            per_client: 100,
            total: 2,
            loopback_exempt: true,
        },
        ..config()
    })
    .await;
    let (_a, said) = greeting(srv.addr).await;
    assert_eq!(said, "");
    let (_b, said) = greeting(srv.addr).await;
    assert_eq!(said, "");
    let (_, said) = greeting(srv.addr).await;
    assert!(said.starts_with("HTTP/1.1 503 "), "{said:?}");
}
