//! WHEP POST: 201 with the layer extension Link; `publisher=` and `layer=` reach the node.
use crate::common;

use common::*;
use hyper::StatusCode;
use signaling::LayerPref;

#[tokio::test]
async fn whep_post_advertises_the_layer_extension() {
    let srv = start(config()).await;

    let r = srv.post_offer("/whep/live", None).await;

    assert_eq!(r.status, StatusCode::CREATED);
    assert!(r.body.contains("a=sendonly"));
    let location = r.header("location").unwrap();
    assert!(location.starts_with("/whep/live/"), "{location}");
    assert_eq!(
        r.all("link"),
        [format!(
            "<{location}/layer>; rel=\"urn:ietf:params:whep:ext:core:layer\""
        )]
    );
    assert!(r.header("etag").is_some());
}

#[tokio::test]
async fn query_parameters_pick_publisher_and_layer() {
    let srv = start(config()).await;

    let r = srv
        .post_offer("/whep/live?publisher=alice%40home&layer=low", None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = srv.post_offer("/whep/live?layer=h", None).await;
    assert_eq!(r.status, StatusCode::CREATED);

    let calls = srv.node.calls();
    let [Call::Play(a), Call::Play(b)] = &calls[..] else {
        panic!("{calls:?}")
    };
    assert_eq!(a.publisher.as_deref(), Some("alice@home"));
    assert_eq!(a.max_layer, Some(LayerPref::Low));
    assert_eq!(b.publisher, None);
    assert_eq!(b.max_layer, Some(LayerPref::Rid("h".into())));
}

#[tokio::test]
async fn a_bad_layer_is_400_before_the_node() {
    let srv = start(config()).await;
    let r = srv.post_offer("/whep/live?layer=ultra%21", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.problem()["detail"].as_str().unwrap().contains("layer"));
    assert!(srv.node.calls().is_empty());
}
