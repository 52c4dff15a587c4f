//! A WHEP viewer receives a WHIP publisher's audio and video through the engine.

use crate::common;

use std::time::Duration;

use common::sim::Sim;
use common::{assert_continuous, frames, of_kind};
use str0m::media::MediaKind;

#[test]
fn viewer_receives_audio_and_video_starting_at_a_keyframe() {
    let mut sim = Sim::new();
    let _publisher = sim.publish("room1", 1);
    sim.run(Duration::from_millis(500));
    let viewer = sim.play("room1", None);
    sim.run(Duration::from_secs(3));

    let got = &sim.client(viewer).received;
    let audio = of_kind(got, MediaKind::Audio);
    let video = of_kind(got, MediaKind::Video);
    assert!(audio.len() > 100, "audio packets: {}", audio.len());
    assert!(video.len() > 50, "video packets: {}", video.len());
    assert_continuous(&audio);
    assert_continuous(&video);
    let f = frames(got);
    assert!(f[0].3, "first forwarded frame must be a keyframe: {:?}", f[0]);
    assert!(f.iter().all(|x| x.0 == 1), "all frames from the publisher");
    // Consecutive frames: nothing dropped once started. A layer switch may
    // repeat the capture instant (the new layer's keyframe of the same frame).
    for w in f.windows(2) {
        let next = w[1].2 == w[0].2 + 1;
        let switch_same_instant = w[1].1 != w[0].1 && w[1].2 == w[0].2 && w[1].3;
        assert!(next || switch_same_instant, "frame gap in {:?}", &w);
    }
}

#[test]
fn viewer_before_publisher_gets_media_when_it_arrives() {
    let mut sim = Sim::new();
    let viewer = sim.play("early", None);
    sim.run(Duration::from_millis(500));
    let _publisher = sim.publish("early", 3);
    sim.run(Duration::from_secs(2));
    let got = &sim.client(viewer).received;
    let f = frames(got);
    assert!(f.len() > 20, "frames: {}", f.len());
    assert!(f[0].3);
    // Its audio too: str0m reports the publisher's tracks after it joined
    // the room, and the audio track's subscribers were then left empty.
    let audio = of_kind(got, MediaKind::Audio);
    assert!(audio.len() > 50, "audio packets: {}", audio.len());
    assert_continuous(&audio);
}
