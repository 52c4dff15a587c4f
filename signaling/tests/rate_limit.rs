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
