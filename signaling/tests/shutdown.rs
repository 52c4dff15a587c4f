//! Graceful shutdown: stop accepting, let in-flight requests finish, return.
use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use hyper::StatusCode;

#[tokio::test]
async fn in_flight_request_finishes_and_serve_returns() {
    let node = Arc::new(FakeNode::default());
    *node.delay.lock().unwrap() = Duration::from_millis(300);
    let mut srv = start_with(config(), node).await;
    let addr = srv.addr;

    let (reply, stopped) = tokio::join!(srv_post(&srv), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        srv.stop_signal();
    });
    let () = stopped;
    assert_eq!(reply.status, StatusCode::CREATED, "in-flight POST completed");
    srv.stop().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

async fn srv_post(srv: &TestServer) -> Reply {
    srv.post_offer("/whip/live", None).await
}
