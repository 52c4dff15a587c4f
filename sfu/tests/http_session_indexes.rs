//! The real node forgets every session it served: after publishers and
//! viewers (spread over both workers) leave with DELETE, `/metrics` shows
//! no entry left in the workers' tables (`wave_engine_index_entries`) nor
//! in the node's session tables (`wave_session_index_entries`), round
//! after round.

use crate::common;

use std::time::{Duration, Instant};

use common::chat::metric;
use common::node::{Http, Node};
use common::publisher::{Video, publish};
use common::viewer::watch;
use hyper::{Method, StatusCode};
use str0m::media::MediaKind;

async fn delete(http: &Http, node: &Node, location: &str) {
    let r = http.send(Method::DELETE, &node.url(location), &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "DELETE {location}: {}", r.body);
}

/// Waits (2 s at most) for `name` to read `want`.
async fn settles(http: &Http, node: &Node, name: &str, want: f64) -> f64 {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let v = metric(http, node, name).await;
        if v == want || Instant::now() > until {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ended_sessions_leave_no_entry_in_the_node() {
    let node = Node::start(&[]);
    let http = Http::default();
    for round in 0..2 {
        let publisher = publish(&node, &http, "indexes", Video::Synthetic1080p).await;
        let mut viewers = Vec::new();
        for _ in 0..3 {
            viewers.push(watch(&node, &http, "indexes", None).await);
        }
        for v in &viewers {
            assert!(
                v.wait_for(MediaKind::Video, 0, 20, Duration::from_secs(5)).await,
                "round {round}: a viewer gets video"
            );
        }
        assert!(metric(&http, &node, "wave_engine_index_entries").await > 0.0);
        assert_eq!(
            metric(&http, &node, "wave_session_index_entries").await,
            4.0 * 2.0
        );

        for v in &viewers {
            delete(&http, &node, &v.location).await;
        }
        delete(&http, &node, &publisher.location).await;
        for name in ["wave_engine_index_entries", "wave_session_index_entries"] {
            assert_eq!(
                settles(&http, &node, name, 0.0).await,
                0.0,
                "round {round}: {name} after every session ended"
            );
        }
    }
}
