//! A burst of POSTs from one address: 429 + Retry-After once the bucket is empty.
use crate::common;

use common::*;
use hyper::StatusCode;
use signaling::{HttpConfig, RateLimit};

#[tokio::test]
async fn post_burst_is_429_with_retry_after() {
    let limit = RateLimit {
        burst: 3,
        per_second: 0.1,
    };
    let srv = start(HttpConfig {
        post_rate_limit: Some(limit),
        ..config()
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(srv.post_offer("/whip/live", None).await);
    }
    let codes: Vec<u16> = statuses.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(codes, [201, 201, 201, 429, 429]);
    let r = &statuses[3];
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=11).contains(&secs), "{secs}");
    r.problem();
    assert_eq!(srv.node.calls().len(), 3);
    // Non-POST requests are not limited.
    assert_eq!(srv.get("/healthz").await.status, StatusCode::OK);
}

/// Behind a trusted proxy each client has its own bucket, named by
/// `X-Forwarded-For`; the same header from an untrusted peer is ignored.
#[tokio::test]
async fn x_forwarded_for_keys_the_limit_only_from_a_trusted_proxy() {
    let limit = RateLimit {
        burst: 2,
        per_second: 0.1,
    };
    async fn codes(srv: &TestServer, client: &str) -> Vec<u16> {
        let mut codes = Vec::new();
        for _ in 0..3 {
            let headers = [("content-type", "application/sdp"), ("x-forwarded-for", client)];
            codes.push(
                srv.send("POST", "/whip/live", &headers, OFFER)
                    .await
                    .status
                    .as_u16(),
            );
        }
        codes
    }
    // The test's client is the proxy, on loopback.
    let proxied = start(HttpConfig {
        post_rate_limit: Some(limit),
        trusted_proxies: "127.0.0.1/32".parse().unwrap(),
        ..config()
    })
    .await;
    assert_eq!(codes(&proxied, "203.0.113.5").await, [201, 201, 429]);
    assert_eq!(codes(&proxied, "203.0.113.6").await, [201, 201, 429]);
    // A client cannot pose as another by writing the header itself: the
    // proxy appends the address it saw (.5, out of tokens).
    assert_eq!(codes(&proxied, "203.0.113.9, 203.0.113.5").await, [429, 429, 429]);

    let direct = start(HttpConfig {
        post_rate_limit: Some(limit),
        ..config()
    })
    .await;
    assert_eq!(codes(&direct, "203.0.113.5").await, [201, 201, 429]);
    assert_eq!(codes(&direct, "203.0.113.6").await, [429, 429, 429]);
}
