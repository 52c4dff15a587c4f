//! With `--nats` an RTMP publish claims its room in the registry as a WHIP
//! publisher does: a WHEP viewer at another node is answered there and fed
//! from the RTMP node over the relay, and an encoder pushing the same room
//! to the other node is taken there too (that node becomes a second origin
//! of the room, as for a WHIP publisher).

use crate::common;

use std::process::Command;
use std::time::Duration;
use str0m::media::MediaKind;

use common::chat::{SECRET, metric, token, wait_for_view};
use common::nats::NatsServer;
use common::node::{Http, Node};
use common::rtmp::{FfmpegPush, RtmpClient};
use common::viewer;

#[tokio::test(flavor = "multi_thread")]
async fn an_rtmp_room_reaches_viewers_at_other_nodes_and_is_held_cluster_wide() {
    let nats = NatsServer::start();
    let node = |id: &str, ip: &str| {
        let rtmp = format!("{ip}:0");
        let flags = [
            "--auth-secret",
            SECRET,
            "--heartbeat",
            "200ms",
            "--node-ttl",
            "1s",
            "--rtmp-listen",
            &rtmp,
        ];
        Node::start_in_cluster(&nats.url(), id, ip, &flags)
    };
    let a = node("a", "127.0.0.41");
    let b = node("b", "127.0.0.42");
    let http = Http::default();
    wait_for_view(&http, &[&a, &b], 2).await;

    let room = "rtmp-relayed";
    let key = format!("{room}?token={}", token(room, "encoder", true, None));
    let _push = FfmpegPush::start(
        Command::new("ffmpeg"),
        &format!("rtmp://{}/live/{key}", a.rtmp.expect("a's RTMP listener")),
        30,
        40,
    );
    let published = common::chat::room_json(&http, &a, room);
    let started = std::time::Instant::now();
    let mut published = published.await;
    while published
        .as_ref()
        .is_none_or(|r| r["publishers"].as_array().is_none_or(Vec::is_empty))
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no RTMP publisher at a: {published:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        published = common::chat::room_json(&http, &a, room).await;
    }

    // A viewer at b: answered there, fed from a over the relay, from a
    // keyframe on.
    let t = token(room, "viewer", false, None);
    let watched = viewer::watch(&b, &http, room, Some(&t)).await;
    let started = std::time::Instant::now();
    while watched.keyframes() < 2 || watched.packets(MediaKind::Audio).len() < 100 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the viewer at b got {} video packets ({} keyframes) and {} audio packets; relay frames a sent {}",
            watched.packets(MediaKind::Video).len(),
            watched.keyframes(),
            watched.packets(MediaKind::Audio).len(),
            metric(&http, &a, "wave_relay_frames_sent_total").await,
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(watched.packets(MediaKind::Video).len() > 30);
    assert_eq!(metric(&http, &b, "wave_relay_upstream_rooms").await, 1.0);

    // The same room pushed to b (a backup encoder): taken there as well.
    let rtmp_b = b.rtmp.expect("b's RTMP listener");
    let accepted = tokio::task::spawn_blocking(move || {
        let mut c = RtmpClient::connect(rtmp_b, "live").expect("connect");
        c.publish(&key)
    })
    .await
    .unwrap();
    assert_eq!(accepted, Ok(()));
}
