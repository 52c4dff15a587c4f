//! Garbage, empty and oversized bodies: 400/400/413, and the node never sees them.
use crate::common;

use common::*;
use hyper::StatusCode;
use signaling::HttpConfig;

const SDP: (&str, &str) = ("content-type", "application/sdp");

#[tokio::test]
async fn garbage_sdp_is_400() {
    let srv = start(config()).await;
    for body in [
        "hello world",
        "{\"sdp\": \"v=0\"}",
        "o=- 0 0 IN IP4 0.0.0.0\r\nv=0\r\n",
    ] {
        let r = srv.send("POST", "/whip/live", &[SDP], body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(r.problem()["detail"].as_str().unwrap().contains("v=0"));
    }
    let r = srv
        .send("POST", "/whip/live", &[SDP], vec![0xff, 0xfe, 0x00])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(srv.node.calls().is_empty());
}

#[tokio::test]
async fn empty_body_is_400() {
    let srv = start(config()).await;
    for body in ["", "\r\n  "] {
        let r = srv.send("POST", "/whep/live", &[SDP], body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.problem()["detail"].as_str().unwrap().contains("empty"));
    }
    assert!(srv.node.calls().is_empty());
}

#[tokio::test]
async fn oversized_body_is_413() {
    let srv = start(HttpConfig {
        max_body_bytes: 4096,
        ..config()
    })
    .await;
    let mut big = String::from("v=0\r\n");
    while big.len() <= 4096 {
        big.push_str("a=x-padding:0123456789abcdef0123456789abcdef\r\n");
    }
    let r = srv.send("POST", "/whip/live", &[SDP], big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    r.problem();
    assert!(srv.node.calls().is_empty());
}

#[tokio::test]
async fn default_limit_is_64_kib() {
    let srv = start(config()).await;
    let mut body = OFFER.to_owned();
    body.push_str(&"a=x-padding:0123456789abcdef0123456789abcdef\r\n".repeat(64 * 1024 / 46 + 1));
    assert!(body.len() > 64 * 1024);
    let r = srv.send("POST", "/whip/live", &[SDP], body).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = srv.post_offer("/whip/live", None).await;
    assert_eq!(r.status, StatusCode::CREATED, "the server keeps serving");
}

/// A body over the limit is read and dropped before the 413 goes out: the
/// client that is still sending sees the 413 (not a reset), and the
/// connection stays usable for its next request.
#[tokio::test]
async fn an_oversized_body_is_drained_so_the_413_arrives_and_the_connection_lives() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = start(HttpConfig {
        max_body_bytes: 4096,
        ..config()
    })
    .await;
    let stream = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let big = vec![b'a'; 2 << 20];
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST /whip/live HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/sdp\r\ncontent-length: {}\r\n\r\n",
            big.len()
        );
        wr.write_all(head.as_bytes()).await?;
        wr.write_all(&big).await?;
        wr.write_all(b"POST /whip/live HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/sdp\r\ncontent-length: 5\r\n\r\nhello")
            .await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while String::from_utf8_lossy(&seen).matches("HTTP/1.1 ").count() < 2 {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), read).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(matches!(got, Ok(Ok(()))), "{got:?} after:\n{text}");
    writer.await.unwrap().expect("the whole body was accepted");
    let statuses: Vec<&str> = text.matches("HTTP/1.1 ").map(|_| "").collect();
    assert_eq!(statuses.len(), 2, "{text}");
    let first = text.find("HTTP/1.1 413").expect("a 413 first");
    let second = text.find("HTTP/1.1 400").expect("then the next request's 400");
    assert!(first < second, "{text}");
    assert!(srv.node.calls().is_empty());
}
