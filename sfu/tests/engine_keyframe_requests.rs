//! Keyframe requests from many viewers are merged and throttled per layer.

use crate::common;

use std::time::Duration;

use common::frames;
use common::sim::Sim;
use sfu::engine::KEYFRAME_THROTTLE;
use signaling::LayerPref;

#[test]
fn twenty_joining_viewers_cause_at_most_one_pli_per_layer_per_interval() {
    let mut sim = Sim::without_keyframe_cache();
    let p = sim.publish("kf", 1);
    sim.run(Duration::from_secs(1));
    let before = sim.client(p).keyframe_requests.len();
    let viewers: Vec<u32> = (0..20).map(|_| sim.play("kf", Some(LayerPref::Low))).collect();
    sim.run(Duration::from_secs(2));

    let requests = &sim.client(p).keyframe_requests[before..];
    assert!(
        !requests.is_empty(),
        "joining viewers must trigger a keyframe request"
    );
    let low: Vec<_> = requests.iter().filter(|r| r.1.as_deref() == Some("q")).collect();
    assert!(!low.is_empty());
    for w in low.windows(2) {
        assert!(
            w[1].0 - w[0].0 >= KEYFRAME_THROTTLE,
            "PLIs {:?} apart",
            w[1].0 - w[0].0
        );
    }
    assert!(
        requests.iter().all(|r| r.1.as_deref() == Some("q")),
        "only the watched layer is asked: {requests:?}"
    );
    for v in viewers {
        let f = frames(&sim.client(v).received);
        assert!(
            f.len() > 30 && f[0].3,
            "viewer {v} started at a keyframe and plays"
        );
    }
}

/// A viewer that joins while its layer is throttled waits for the end of
/// the interval, not for the engine's next periodic tick after it.
#[test]
fn a_throttled_request_goes_out_when_the_interval_ends() {
    let mut sim = Sim::without_keyframe_cache();
    let p = sim.publish("kfr", 1);
    sim.run(Duration::from_secs(1));
    let before = sim.client(p).keyframe_requests.len();
    // Viewers 40 ms apart, over more than one interval: each after the
    // first finds the layer throttled.
    for _ in 0..12 {
        sim.play("kfr", Some(LayerPref::Low));
        sim.run(Duration::from_millis(40));
    }
    sim.run(Duration::from_secs(1));

    let low: Vec<_> = sim.client(p).keyframe_requests[before..]
        .iter()
        .filter(|r| r.1.as_deref() == Some("q"))
        .map(|r| r.0)
        .collect();
    assert!(low.len() >= 2, "requests {low:?}");
    for w in low.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= KEYFRAME_THROTTLE && gap <= KEYFRAME_THROTTLE + Duration::from_millis(15),
            "a waiting request went out {gap:?} after the last (interval {KEYFRAME_THROTTLE:?})"
        );
    }
}
