//! A viewer that joins within a second of its layer's last keyframe starts
//! on the cached keyframe-started group at once, without asking the
//! publisher; later, or when switching layers, it asks as before. Viewers
//! already watching never see the newcomer's group again.

use crate::common;

use std::time::Duration;

use common::sim::Sim;
use common::{assert_every_frame, frames};
use signaling::LayerPref;

#[test]
fn a_joining_viewer_starts_on_the_cached_group_and_later_ones_ask_for_a_keyframe() {
    let mut sim = Sim::new();
    let p = sim.publish("cache", 1);
    // The publisher's first keyframe went out ~33 ms in; 400 ms later a
    // first viewer joins and a second one 300 ms after it.
    sim.run(Duration::from_millis(400));
    let asked = sim.client(p).keyframe_requests.len();
    let first = sim.play("cache", Some(LayerPref::Low));
    sim.run(Duration::from_millis(300));
    let second = sim.play("cache", Some(LayerPref::Low));
    sim.run(Duration::from_millis(600));
    assert_eq!(
        sim.client(p).keyframe_requests.len(),
        asked,
        "nobody asked the publisher: {:?}",
        &sim.client(p).keyframe_requests[asked..]
    );
    assert_eq!(sim.engine.stats().keyframe_cache_starts, 2);
    for v in [first, second] {
        let f = frames(&sim.client(v).received);
        assert!(f[0].3, "viewer {v} starts on a keyframe: {:?}", &f[..3]);
        assert_eq!(f[0].2, 1, "the cached group's keyframe, frame 1");
        assert_every_frame(&f);
    }

    // More than a second after the last keyframe: the cache is stale and
    // a newcomer asks the publisher.
    sim.run(Duration::from_millis(800));
    let third = sim.play("cache", Some(LayerPref::Low));
    sim.run(Duration::from_millis(500));
    assert!(
        sim.client(p).keyframe_requests.len() > asked,
        "a stale group is not replayed"
    );
    assert_eq!(sim.engine.stats().keyframe_cache_starts, 2);
    let f = frames(&sim.client(third).received);
    assert!(
        f[0].3 && f[0].2 > 40,
        "started on a fresh keyframe: {:?}",
        &f[..2]
    );
    // The first viewers saw every frame once, newcomers or not.
    for v in [first, second] {
        assert_every_frame(&frames(&sim.client(v).received));
    }
}

#[test]
fn a_layer_switch_asks_for_a_keyframe_rather_than_going_back_in_time() {
    let mut sim = Sim::new();
    let p = sim.publish("switch", 1);
    sim.run(Duration::from_millis(300));
    let v = sim.play("switch", Some(LayerPref::Low));
    sim.run(Duration::from_millis(300));
    let asked = sim.client(p).keyframe_requests.len();
    sim.set_layer(v, Some(LayerPref::High));
    sim.run(Duration::from_secs(1));
    assert!(sim.client(p).keyframe_requests.len() > asked, "the switch asked");
    let f = frames(&sim.client(v).received);
    assert!(f.iter().any(|x| x.1 == 2), "switched to the high layer");
    assert_every_frame(&f);
}
