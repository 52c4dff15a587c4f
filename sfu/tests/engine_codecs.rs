//! Every video codec a publisher may negotiate reaches viewers: H.264 (with
//! simulcast switches), and VP9 and AV1 passed through. A viewer without
//! the room's video codec is refused, or warned about and counted.

use crate::common;

use std::time::Duration;

use common::logs::capture_logs;
use common::sim::Sim;
use common::{assert_continuous, frames, of_kind};
use signaling::{LayerPref, MediaError};
use str0m::format::Codec;
use str0m::media::MediaKind;

/// Publishes `codec` (one layer, or three with `simulcast`), adds a viewer,
/// and checks it gets that codec from a keyframe on with nothing missing.
fn viewer_gets(codec: Codec, simulcast: bool, layer: Option<LayerPref>) -> (Sim, u32) {
    let mut sim = Sim::new();
    sim.video_codec = codec;
    sim.simulcast = simulcast;
    let _publisher = sim.publish("codecs", 9);
    sim.run(Duration::from_millis(400));
    let viewer = sim.play("codecs", layer);
    sim.run(Duration::from_secs(2));

    let got = &sim.client(viewer).received;
    let video = of_kind(got, MediaKind::Video);
    assert!(video.len() > 40, "{codec}: video packets {}", video.len());
    assert!(
        video.iter().all(|r| r.codec == Some(codec)),
        "{codec}: payload types"
    );
    assert_continuous(&video);
    assert_continuous(&of_kind(got, MediaKind::Audio));
    let f = frames(got);
    assert!(f.len() > 40, "{codec}: frames {}", f.len());
    assert!(f[0].3, "{codec}: first frame is not a keyframe: {:?}", f[0]);
    assert!(f.iter().all(|x| x.0 == 9), "{codec}: frames from the publisher");
    for w in f.windows(2) {
        assert_eq!(w[1].2, w[0].2 + 1, "{codec}: frame gap {w:?}");
    }
    (sim, viewer)
}

#[test]
fn vp9_single_layer_passes_through() {
    viewer_gets(Codec::Vp9, false, None);
}

#[test]
fn av1_single_layer_passes_through() {
    viewer_gets(Codec::Av1, false, None);
}

#[test]
fn h264_single_layer_passes_through() {
    viewer_gets(Codec::H264, false, None);
}

#[test]
fn h264_simulcast_switches_up_on_a_keyframe() {
    let (mut sim, viewer) = viewer_gets(Codec::H264, true, Some(LayerPref::Low));
    assert!(
        frames(&sim.client(viewer).received).iter().all(|f| f.1 == 0),
        "low layer only"
    );

    sim.set_layer(viewer, Some(LayerPref::High));
    sim.run(Duration::from_secs(3));

    let got = &sim.client(viewer).received;
    let f = frames(got);
    let first_high = f
        .iter()
        .position(|x| x.1 == 2)
        .expect("switched to the high layer");
    assert!(
        f[first_high].3,
        "switch landed on a non-keyframe: {:?}",
        f[first_high]
    );
    assert!(
        f[first_high..].iter().all(|x| x.1 == 2),
        "stayed on the high layer"
    );
    assert_continuous(&of_kind(got, MediaKind::Video));
}

/// A browser-like WHIP offer: VP8 first, then VP9 and the H.264 profiles
/// (Chromium's default order), audio and video sendonly.
fn browser_offer(h264: bool) -> String {
    use str0m::media::Direction;
    use str0m::{Rtc, RtcConfig};
    let mut config = RtcConfig::new()
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .enable_vp9(true);
    if h264 {
        config = config.enable_h264(true);
    }
    let mut rtc: Rtc = config.build(std::time::Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(
        MediaKind::Audio,
        Direction::SendOnly,
        Some("s".into()),
        Some("a".into()),
        None,
    );
    api.add_media(
        MediaKind::Video,
        Direction::SendOnly,
        Some("s".into()),
        Some("v".into()),
        None,
    );
    let (offer, _pending) = api.apply().unwrap();
    offer.to_sdp_string()
}

/// The answer's video payload types in order, each with its rtpmap and fmtp.
fn answered_video(answer: &str) -> Vec<(String, String)> {
    let video = &answer[answer.find("m=video").expect("video m-line")..];
    let mline = video.lines().next().unwrap();
    let pts: Vec<&str> = mline.split_whitespace().skip(3).collect();
    pts.iter()
        .map(|pt| {
            let find = |prefix: &str| {
                video
                    .lines()
                    .find_map(|l| {
                        l.trim_end()
                            .strip_prefix(&format!("{prefix}{pt} "))
                            .map(str::to_owned)
                    })
                    .unwrap_or_default()
            };
            (find("a=rtpmap:"), find("a=fmtp:"))
        })
        .collect()
}

fn publish_answer(offer: String) -> String {
    use sfu::engine::{Command, Engine, EngineConfig, Reply};
    use signaling::{RoomId, SessionId};
    let now = std::time::Instant::now();
    let config = EngineConfig {
        candidates: vec![common::sim::ENGINE_ADDR.parse().unwrap()],
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config, now).unwrap();
    let reply = engine
        .handle_command(
            now,
            Command::Publish {
                room: RoomId::parse("codecs").unwrap(),
                session: SessionId::random(),
                identity: None,
                offer,
            },
        )
        .expect("offer accepted");
    let Reply::Answer(answer) = reply else {
        panic!("no answer: {reply:?}");
    };
    answer
}

#[test]
fn whip_answer_puts_h264_first_when_offered() {
    let answer = publish_answer(browser_offer(true));
    let video = answered_video(&answer);
    let (rtpmap, fmtp) = &video[0];
    assert!(rtpmap.starts_with("H264/90000"), "first codec {video:?}");
    assert!(fmtp.contains("packetization-mode=1"), "first codec {video:?}");
    assert!(
        fmtp.contains("profile-level-id=42e01f") || fmtp.contains("profile-level-id=42001f"),
        "first codec is not constrained baseline: {video:?}"
    );
    // VP8 stays in the answer (after H.264) for a sender that prefers it.
    assert!(video.iter().any(|(m, _)| m.starts_with("VP8/")), "{video:?}");
}

#[test]
fn whip_answer_keeps_vp8_for_a_vp8_only_offer() {
    let answer = publish_answer(browser_offer(false));
    let video = answered_video(&answer);
    assert!(video[0].0.starts_with("VP8/90000"), "{video:?}");
    assert!(!video.iter().any(|(m, _)| m.starts_with("H264/")), "{video:?}");
}

/// Publishes one H.264 layer to `room` and lets it send for a while.
fn h264_room(room: &str, also_offer: Vec<Codec>) -> Sim {
    let mut sim = Sim::new();
    sim.simulcast = false;
    sim.video_codec = Codec::H264;
    sim.also_offer = also_offer;
    sim.publish(room, 9);
    sim.run(Duration::from_millis(400));
    sim.also_offer = Vec::new();
    sim
}

/// A WHEP offer without the room's video codec is refused (406 over
/// HTTP), naming both, and leaves nothing behind; an offer with it among
/// others gets it.
#[test]
fn a_viewer_without_the_rooms_video_codec_is_refused() {
    let mut sim = h264_room("refuse", Vec::new());
    let before = sim.engine.index_entries();

    sim.video_codec = Codec::Vp8;
    sim.also_offer = vec![Codec::Vp9, Codec::Av1];
    let refused = sim
        .try_play("refuse")
        .expect_err("a VP8/VP9/AV1 viewer of an H.264 room");
    assert!(matches!(refused, MediaError::NotAcceptable(_)), "{refused:?}");
    assert_eq!(
        refused.to_string(),
        "not acceptable: the room's video is H264; the offer has VP8, VP9, AV1"
    );
    assert_eq!(sim.engine.index_entries(), before, "a refused viewer left state");

    sim.also_offer = vec![Codec::H264];
    let viewer = sim.try_play("refuse").expect("an H.264 + VP8 viewer");
    sim.run(Duration::from_secs(2));
    let got = &sim.client(viewer).received;
    let video = of_kind(got, MediaKind::Video);
    assert!(video.len() > 40, "video packets {}", video.len());
    assert!(video.iter().all(|r| r.codec == Some(Codec::H264)));
    assert!(frames(got).first().is_some_and(|f| f.3), "starts on a keyframe");
    assert_eq!(sim.engine.stats().viewer_codec_mismatch, 0);
}

/// A VP8-only viewer waits in a room; an H.264 publisher arrives: one
/// warning naming both codec sets, one count, audio still flows. When a
/// VP8 publisher takes over, the viewer gets its video.
#[test]
fn a_later_publisher_the_viewer_cannot_decode_is_warned_and_counted() {
    let ((viewer, publisher, audio, video, after), log) = capture_logs(|| {
        let mut sim = Sim::new();
        sim.simulcast = false;
        sim.video_codec = Codec::Vp8;
        let viewer = sim.play("later", None);
        sim.run(Duration::from_millis(300));
        sim.video_codec = Codec::H264;
        let h264 = sim.publish("later", 1);
        sim.run(Duration::from_secs(2));
        assert_eq!(sim.engine.stats().viewer_codec_mismatch, 1);
        let got = &sim.client(viewer).received;
        let (audio, video) = (
            of_kind(got, MediaKind::Audio).len(),
            of_kind(got, MediaKind::Video).len(),
        );
        let sessions = (
            sim.client(viewer).session.to_string(),
            sim.client(h264).session.to_string(),
        );

        // Not stuck: the H.264 publisher leaves, a VP8 one arrives.
        sim.delete(h264);
        sim.video_codec = Codec::Vp8;
        sim.publish("later", 2);
        sim.run(Duration::from_secs(2));
        assert_eq!(sim.engine.stats().viewer_codec_mismatch, 1);
        let after: Vec<_> = frames(&sim.client(viewer).received)
            .into_iter()
            .filter(|f| f.0 == 2)
            .collect();
        (sessions.0, sessions.1, audio, video, after)
    });
    assert!(audio > 40, "audio packets {audio}");
    assert_eq!(video, 0, "H.264 packets reached a VP8-only viewer");
    assert!(after.len() > 40, "VP8 frames after the switch: {}", after.len());
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("none of its publisher's video codecs"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    for needle in [
        viewer.as_str(),
        publisher.as_str(),
        "publisher_video=H264",
        "viewer_video=VP8",
    ] {
        assert!(warned[0].contains(needle), "{needle} not in {}", warned[0]);
    }
}

/// A publisher that offered VP8 and H.264 sends H.264: a VP8-only viewer
/// already there is told on its first packet (not before), once.
#[test]
fn a_publisher_sending_a_codec_the_viewer_lacks_is_caught_on_its_packets() {
    let mut sim = Sim::new();
    sim.simulcast = false;
    sim.video_codec = Codec::Vp8;
    let early = sim.play("sent", None);
    sim.video_codec = Codec::H264;
    sim.also_offer = vec![Codec::Vp8];
    sim.publish("sent", 3);
    sim.also_offer = Vec::new();
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.engine.stats().viewer_codec_mismatch, 1);
    assert!(of_kind(&sim.client(early).received, MediaKind::Video).is_empty());

    // Now the room's codec is known: a new VP8-only viewer is refused.
    sim.video_codec = Codec::Vp8;
    let refused = sim.try_play("sent").expect_err("VP8-only viewer");
    assert!(
        refused
            .to_string()
            .contains("the room's video is H264; the offer has VP8"),
        "{refused}"
    );
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.engine.stats().viewer_codec_mismatch, 1);
}
