//! HTTP/2 with prior knowledge (h2c) on the same listener as HTTP/1.1.
use crate::common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::test]
async fn h2_prior_knowledge_post_works() {
    let srv = start(config()).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = Request::post(srv.url("/whip/live"))
        .header("content-type", "application/sdp")
        .body(Full::new(Bytes::from_static(OFFER.as_bytes())))
        .unwrap();

    let resp = client.request(req).await.unwrap();

    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(
        resp.headers()
            .get("location")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("/whip/live/")
    );
    assert!(resp.headers().get("access-control-expose-headers").is_some());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, ANSWER.as_bytes());
}
