//! Each MediaError becomes its status, with Retry-After where the client should come back.
use crate::common;

use common::*;
use hyper::StatusCode;
use signaling::MediaError;

#[tokio::test]
async fn media_errors_map_to_statuses() {
    let srv = start(config()).await;
    let cases = [
        (MediaError::BadRequest("two video m-lines".into()), 400, None),
        (MediaError::Unprocessable("no supported codec".into()), 422, None),
        (
            MediaError::NotAcceptable("the room's video is H264; the offer has VP8".into()),
            406,
            None,
        ),
        (MediaError::NotFound, 404, None),
        (MediaError::NoPublisher(room("live")), 409, Some(2)),
        (
            MediaError::RoomFull {
                room: room("live"),
                retry_after_secs: 7,
            },
            429,
            Some(7),
        ),
        (MediaError::Overloaded { retry_after_secs: 3 }, 503, Some(3)),
        (
            MediaError::Upstream("node a cannot be reached over the relay".into()),
            503,
            Some(2),
        ),
        (MediaError::Internal("worker gone".into()), 500, None),
    ];
    for (err, status, retry_after) in cases {
        let reason = err.to_string();
        srv.node.fail_next(err);
        let r = srv.post_offer("/whep/live", None).await;
        assert_eq!(r.status.as_u16(), status, "{reason}");
        assert_eq!(
            r.header("retry-after").map(|v| v.parse::<u32>().unwrap()),
            retry_after,
            "{reason}"
        );
        assert_eq!(r.problem()["detail"], reason.as_str());
        assert_eq!(r.header("location"), None);
    }
    assert!(srv.sessions.is_empty(), "no session for a refused offer");
    assert_eq!(
        srv.post_offer("/whep/live", None).await.status,
        StatusCode::CREATED
    );
}
