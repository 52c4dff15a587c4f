//! Simulcast layer switches happen only at a keyframe of the target layer,
//! and the viewer's stream stays continuous across them.

use crate::common;

use std::time::Duration;

use common::sim::Sim;
use common::{assert_continuous, assert_vp8_continuous, frames, layers_seen, of_kind};
use signaling::LayerPref;
use str0m::media::MediaKind;

/// Each change of layer in the frame sequence lands on a keyframe.
fn assert_switches_on_keyframes(f: &[(u8, usize, u32, bool)]) {
    for w in f.windows(2) {
        if w[0].1 != w[1].1 {
            assert!(
                w[1].3,
                "switch {} -> {} not at a keyframe: {:?}",
                w[0].1, w[1].1, w
            );
        }
    }
}

#[test]
fn switch_up_and_down_only_on_keyframes_and_stay_continuous() {
    let mut sim = Sim::new();
    let _p = sim.publish("sc", 1);
    sim.run(Duration::from_millis(500));
    let v = sim.play("sc", Some(LayerPref::Low));
    sim.run(Duration::from_secs(2));
    assert_eq!(
        layers_seen(&frames(&sim.client(v).received)),
        vec![0],
        "starts on the low layer"
    );

    sim.set_layer(v, Some(LayerPref::High));
    sim.run(Duration::from_secs(2));
    sim.set_layer(v, Some(LayerPref::Mid));
    sim.run(Duration::from_secs(2));
    sim.set_layer(v, Some(LayerPref::Low));
    sim.run(Duration::from_secs(2));

    let got = &sim.client(v).received;
    let f = frames(got);
    assert_eq!(layers_seen(&f), vec![0, 2, 1, 0]);
    assert_switches_on_keyframes(&f);
    assert_continuous(&of_kind(got, MediaKind::Video));
    assert_continuous(&of_kind(got, MediaKind::Audio));
    assert_vp8_continuous(got);
}

#[test]
fn a_paused_layer_moves_the_viewer_to_one_still_sent_at_a_keyframe() {
    let mut sim = Sim::new();
    let p = sim.publish("pause", 1);
    sim.run(Duration::from_millis(500));
    let v = sim.play("pause", Some(LayerPref::Low));
    sim.run(Duration::from_secs(2));
    assert_eq!(layers_seen(&frames(&sim.client(v).received)), vec![0]);

    // The publisher's encoder stops its low layer (as Chrome does when a
    // layer is disabled): the viewer moves to the lowest layer still sent.
    sim.stop_layer(p, 0);
    sim.run(Duration::from_secs(4));
    let got = &sim.client(v).received;
    let f = frames(got);
    assert_eq!(layers_seen(&f), vec![0, 1]);
    assert_switches_on_keyframes(&f);
    assert_continuous(&of_kind(got, MediaKind::Video));
}
