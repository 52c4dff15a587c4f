//! Every video codec a publisher may negotiate reaches viewers: H.264 (with
//! simulcast switches), and VP9 and AV1 passed through.

use crate::common;

use std::time::Duration;

use common::sim::Sim;
use common::{assert_continuous, frames, of_kind};
use signaling::LayerPref;
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
