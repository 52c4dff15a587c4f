//! A publisher that reconnects (new WHIP session, same room) resumes for
//! existing viewers without renegotiation, and their streams stay continuous.

use crate::common;

use std::time::Duration;

use common::sim::Sim;
use common::{assert_continuous, assert_vp8_continuous, frames, of_kind};
use str0m::media::MediaKind;

#[test]
fn viewers_continue_across_a_publisher_reconnect() {
    let mut sim = Sim::new();
    let first = sim.publish("re", 1);
    sim.run(Duration::from_millis(500));
    let v = sim.play("re", None);
    sim.run(Duration::from_secs(2));
    sim.delete(first);
    sim.run(Duration::from_millis(700));
    let _second = sim.publish("re", 2);
    sim.run(Duration::from_secs(2));

    let got = &sim.client(v).received;
    let f = frames(got);
    let tags: Vec<u8> = f.iter().map(|x| x.0).collect();
    let switch = tags
        .iter()
        .position(|t| *t == 2)
        .expect("frames from the new publisher");
    assert!(tags[..switch].iter().all(|t| *t == 1) && tags[switch..].iter().all(|t| *t == 2));
    assert!(
        f[switch].3,
        "the new publisher's first frame forwarded is a keyframe"
    );
    assert_continuous(&of_kind(got, MediaKind::Video));
    assert_continuous(&of_kind(got, MediaKind::Audio));
    assert_vp8_continuous(got);
}
