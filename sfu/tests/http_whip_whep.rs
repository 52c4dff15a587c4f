//! WHIP/WHEP HTTP behaviour of the real node (reference/whip-whep.md §5 A–C).

use crate::common;

use std::time::Duration;

use common::chat::metric;
use common::node::{Http, Node, play_offer, play_offer_with, publish_offer};
use common::publisher::{Video, publish};
use common::viewer::watch_with;
use hyper::{Method, StatusCode};
use str0m::format::Codec;
use str0m::media::MediaKind;

#[tokio::test]
async fn whip_and_whep_sessions_follow_the_protocol() {
    let node = Node::start(&[]);
    let http = Http::default();

    // WHIP: 201, answer, Location, strong ETag, ICE-lite, all candidates, no rtcp-mux-only.
    let r = http
        .post_sdp(&node.url("/whip/conf"), &publish_offer(), None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(r.header("content-type").unwrap().starts_with("application/sdp"));
    let location = r.header("location").expect("Location").to_owned();
    assert!(location.starts_with("/whip/conf/"));
    let etag = r.header("etag").expect("ETag").to_owned();
    assert!(etag.starts_with('"') && !etag.starts_with("W/"));
    assert!(
        r.header("access-control-expose-headers")
            .unwrap()
            .contains("Location")
    );
    let answer = &r.body;
    for needle in [
        "a=ice-lite",
        "a=recvonly",
        "a=simulcast:recv q;h;f",
        "typ host",
        "a=end-of-candidates",
        "a=setup:passive",
    ] {
        assert!(answer.contains(needle), "answer lacks {needle}:\n{answer}");
    }
    assert!(!answer.contains("rtcp-mux-only"));

    // WHEP: 201 with a sendonly answer.
    let v = http
        .post_sdp(&node.url("/whep/conf?layer=low"), &play_offer(), None)
        .await;
    assert_eq!(v.status, StatusCode::CREATED, "{}", v.body);
    assert!(v.body.contains("a=sendonly"));
    let view = v.header("location").unwrap().to_owned();

    // GET on endpoint and session: 2xx, no body. PUT: 405 + Allow.
    let g = http.send(Method::GET, &node.url(&location), &[], "").await;
    assert!(g.status.is_success() && g.body.is_empty());
    let p = http.send(Method::PUT, &node.url(&location), &[], "").await;
    assert_eq!(p.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(p.header("allow").is_some());

    // Trickle needs If-Match: 428 without, 412 stale, 204 current.
    let frag = "a=ice-ufrag:UFRAG\r\na=ice-pwd:PWD\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 40002 typ host\r\n";
    let offer = publish_offer();
    let ufrag = offer
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .unwrap()
        .trim();
    let pwd = offer
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-pwd:"))
        .unwrap()
        .trim();
    let ct = ("content-type", "application/trickle-ice-sdpfrag");
    let r2 = http.post_sdp(&node.url("/whip/conf2"), &offer, None).await;
    let loc2 = r2.header("location").unwrap().to_owned();
    let etag2 = r2.header("etag").unwrap().to_owned();
    let trickle = frag.replace("UFRAG", ufrag).replace("PWD", pwd);
    let none = http.send(Method::PATCH, &node.url(&loc2), &[ct], &trickle).await;
    assert_eq!(none.status, StatusCode::PRECONDITION_REQUIRED);
    let stale = http
        .send(
            Method::PATCH,
            &node.url(&loc2),
            &[ct, ("if-match", "\"stale\"")],
            &trickle,
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    let ok = http
        .send(
            Method::PATCH,
            &node.url(&loc2),
            &[ct, ("if-match", &etag2)],
            &trickle,
        )
        .await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT, "{}", ok.body);
    assert!(ok.header("etag").is_none());
    let wrong_type = http
        .send(
            Method::PATCH,
            &node.url(&loc2),
            &[("content-type", "text/plain"), ("if-match", &etag2)],
            &trickle,
        )
        .await;
    assert_eq!(wrong_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // ICE restart: If-Match "*" with new credentials → 200 sdpfrag with new ones and a new ETag.
    let restart = frag
        .replace("UFRAG", "newU")
        .replace("PWD", "newpasswordnewpassword1");
    let rs = http
        .send(
            Method::PATCH,
            &node.url(&loc2),
            &[ct, ("if-match", "\"*\"")],
            &restart,
        )
        .await;
    let rs = if rs.status == StatusCode::PRECONDITION_FAILED {
        http.send(
            Method::PATCH,
            &node.url(&loc2),
            &[ct, ("if-match", "*")],
            &restart,
        )
        .await
    } else {
        rs
    };
    assert_eq!(rs.status, StatusCode::OK, "{}", rs.body);
    assert!(
        rs.header("content-type")
            .unwrap()
            .starts_with("application/trickle-ice-sdpfrag")
    );
    assert!(rs.body.contains("a=ice-ufrag:") && rs.body.contains("a=candidate:"));
    let new_etag = rs.header("etag").unwrap();
    assert_ne!(new_etag, etag2);
    let old = http
        .send(
            Method::PATCH,
            &node.url(&loc2),
            &[ct, ("if-match", &etag2)],
            &trickle,
        )
        .await;
    assert_eq!(old.status, StatusCode::PRECONDITION_FAILED);

    // /v1/rooms shows both rooms; DELETE 200 then 404; PATCH after DELETE 404.
    let rooms = http.send(Method::GET, &node.url("/v1/rooms"), &[], "").await;
    assert!(
        rooms.body.contains("\"conf\"") && rooms.body.contains("\"conf2\""),
        "{}",
        rooms.body
    );
    for loc in [&location, &view, &loc2] {
        let d = http
            .send(
                Method::DELETE,
                &node.url(loc),
                &[("if-match", "\"whatever\"")],
                "",
            )
            .await;
        assert_eq!(d.status, StatusCode::OK);
        let again = http.send(Method::DELETE, &node.url(loc), &[], "").await;
        assert_eq!(again.status, StatusCode::NOT_FOUND);
    }
    let gone = http
        .send(
            Method::PATCH,
            &node.url(&loc2),
            &[ct, ("if-match", "*")],
            &restart,
        )
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let rooms = http.send(Method::GET, &node.url("/v1/rooms"), &[], "").await;
    assert!(!rooms.body.contains("\"conf\""), "{}", rooms.body);
}

#[tokio::test]
async fn offers_the_node_cannot_serve_get_a_reason() {
    let node = Node::start(&[]);
    let http = Http::default();
    let url = node.url("/whip/bad");

    let r = http
        .send(
            Method::POST,
            &url,
            &[("content-type", "text/plain")],
            &publish_offer(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.header("accept-post"), Some("application/sdp"));

    let r = http.post_sdp(&url, "", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = http.post_sdp(&url, "v=0\r\nthis is not sdp\r\n", None).await;
    assert!(
        r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        r.status
    );
    assert!(r.header("content-type").unwrap().contains("problem+json"));

    let huge = "v=0\r\n".to_owned() + &"a=x\r\n".repeat(100_000);
    let r = http.post_sdp(&url, &huge, None).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);

    // A viewer's offer at the WHIP endpoint: recvonly is not a publication.
    let r = http.post_sdp(&url, &play_offer(), None).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(r.body.contains("recvonly"));

    // Two video tracks in one WHIP session.
    let offer = publish_offer();
    let video = &offer[offer.find("m=video").unwrap()..];
    let doubled = format!("{offer}{}", video.replace("a=mid:1", "a=mid:2"));
    let r = http.post_sdp(&url, &doubled, None).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);

    // Only codecs the node does not speak.
    let g711 = play_offer().replace("opus/48000/2", "PCMU/8000");
    let r = http.post_sdp(&node.url("/whep/bad"), &g711, None).await;
    assert!(r.status.is_client_error(), "{}: {}", r.status, r.body);

    // Unknown room characters and unknown sessions.
    let r = http
        .post_sdp(&node.url("/whip/bad%20room"), &publish_offer(), None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = http
        .send(
            Method::DELETE,
            &node.url("/whip/bad/0123456789abcdef0123456789abcdef"),
            &[],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // The node still serves a good publisher afterwards.
    let r = http.post_sdp(&url, &publish_offer(), None).await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn over_capacity_is_429_or_503_with_retry_after() {
    let node = Node::start(&["--max-peers", "2", "--max-room-peers", "1"]);
    let http = Http::default();
    assert_eq!(
        http.post_sdp(&node.url("/whip/a"), &publish_offer(), None)
            .await
            .status,
        StatusCode::CREATED
    );
    let full_room = http.post_sdp(&node.url("/whep/a"), &play_offer(), None).await;
    assert_eq!(
        full_room.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        full_room.body
    );
    assert!(full_room.header("retry-after").is_some());
    assert_eq!(
        http.post_sdp(&node.url("/whip/b"), &publish_offer(), None)
            .await
            .status,
        StatusCode::CREATED
    );
    let full_node = http.post_sdp(&node.url("/whip/c"), &publish_offer(), None).await;
    assert_eq!(
        full_node.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        full_node.body
    );
    assert!(full_node.header("retry-after").is_some());
}

/// WHEP before anyone publishes is not a 409: the node answers 201, holds
/// the viewer in the room, and sends media once a publisher arrives
/// (`engine_media_arrives` follows the packets).
#[tokio::test]
async fn whep_before_a_publisher_is_201_and_the_viewer_waits() {
    let node = Node::start(&[]);
    let http = Http::default();
    let v = http.post_sdp(&node.url("/whep/early"), &play_offer(), None).await;
    assert_eq!(v.status, StatusCode::CREATED, "{}", v.body);
    assert!(v.header("retry-after").is_none());
    assert!(v.body.contains("a=sendonly"), "{}", v.body);
    let room = http
        .send(Method::GET, &node.url("/v1/rooms/early"), &[], "")
        .await;
    assert_eq!(room.status, StatusCode::OK, "{}", room.body);
    let room: serde_json::Value = serde_json::from_str(&room.body).unwrap();
    assert_eq!(room["viewers"].as_array().map(Vec::len), Some(1), "{room}");
    assert_eq!(room["publishers"].as_array().map(Vec::len), Some(0), "{room}");
    let p = http
        .post_sdp(&node.url("/whip/early"), &publish_offer(), None)
        .await;
    assert_eq!(p.status, StatusCode::CREATED, "{}", p.body);
}

/// A WHEP offer without the video codec the room's publisher sends is
/// refused with 406 naming both, on either worker of the node: the first
/// offer goes to the worker the room is not on, which has no copy of the
/// publisher yet and asks the room's worker; the second to the room's.
/// An offer with the codec among others is answered and gets the video.
#[tokio::test]
async fn whep_without_the_rooms_video_codec_is_406_with_both_codec_sets() {
    let node = Node::start(&[]);
    let http = Http::default();
    let _publisher = publish(&node, &http, "codec", Video::Encoded).await;
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let mut codec = String::new();
    while codec != "H264" && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = http
            .send(Method::GET, &node.url("/v1/rooms/codec"), &[], "")
            .await;
        let room: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        codec = room["publishers"][0]["tracks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["kind"] == "video"))
            .and_then(|t| t["codec"].as_str())
            .unwrap_or_default()
            .to_owned();
    }
    assert_eq!(codec, "H264", "the node never saw the publisher's H.264");

    let vp8 = play_offer_with(&[Codec::Vp8, Codec::Vp9]);
    let mut viewers = Vec::new();
    for _ in 0..2 {
        let r = http.post_sdp(&node.url("/whep/codec"), &vp8, None).await;
        assert_eq!(r.status, StatusCode::NOT_ACCEPTABLE, "{}", r.body);
        assert!(r.header("content-type").unwrap().contains("problem+json"));
        assert!(r.header("location").is_none());
        let problem: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            problem["detail"], "not acceptable: the room's video is H264; the offer has VP8, VP9",
            "{problem}"
        );
        // An H.264 viewer on the emptier worker: the next offer goes to the other.
        viewers.push(watch_with(&node, &http, "codec", None, &[Codec::H264]).await);
    }

    let both = watch_with(&node, &http, "codec", None, &[Codec::H264, Codec::Vp8]).await;
    assert!(
        both.wait_for(MediaKind::Video, 0, 30, Duration::from_secs(10))
            .await,
        "an H.264 + VP8 viewer gets no video"
    );
    assert!(both.keyframes() > 0, "no keyframe reached the H.264 + VP8 viewer");
    assert_eq!(
        metric(&http, &node, "wave_viewer_codec_mismatch_total").await,
        0.0
    );
}

/// A VP8-only viewer waits in a room; an H.264 publisher arrives: the
/// viewer gets its audio, and `/metrics` counts it once.
#[tokio::test]
async fn a_viewer_that_cannot_take_a_later_publishers_video_is_counted() {
    let node = Node::start(&[]);
    let http = Http::default();
    let viewer = watch_with(&node, &http, "later", None, &[Codec::Vp8]).await;
    let _publisher = publish(&node, &http, "later", Video::Encoded).await;
    assert!(
        viewer
            .wait_for(MediaKind::Audio, 0, 30, Duration::from_secs(10))
            .await,
        "the VP8-only viewer gets no audio"
    );
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while metric(&http, &node, "wave_viewer_codec_mismatch_total").await < 1.0
        && std::time::Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(&http, &node, "wave_viewer_codec_mismatch_total").await,
        1.0
    );
    assert!(viewer.packets(MediaKind::Video).is_empty());
}
