//! A viewer that leaves stops costing anything: nothing is forwarded for it.

use crate::common;

use std::time::Duration;

use common::sim::Sim;

#[test]
fn nothing_is_forwarded_after_the_last_viewer_leaves() {
    let mut sim = Sim::new();
    let _p = sim.publish("lv", 1);
    sim.run(Duration::from_millis(500));
    let a = sim.play("lv", None);
    let b = sim.play("lv", None);
    sim.run(Duration::from_secs(2));
    let forwarded = sim.engine.stats().rtp_forwarded;
    assert!(forwarded > 100, "forwarded {forwarded}");

    sim.delete(a);
    sim.run(Duration::from_secs(1));
    let one = sim.engine.stats().rtp_forwarded;
    sim.run(Duration::from_secs(1));
    let rate_one = sim.engine.stats().rtp_forwarded - one;
    assert!(rate_one > 0, "the remaining viewer still gets media");

    sim.delete(b);
    sim.run(Duration::from_millis(100));
    let after = sim.engine.stats().rtp_forwarded;
    sim.run(Duration::from_secs(2));
    assert_eq!(
        sim.engine.stats().rtp_forwarded,
        after,
        "no forwarding without viewers"
    );
    assert_eq!(sim.engine.peer_count(), 1, "only the publisher remains");
    assert_eq!(sim.engine.stats().viewers, 0);
}
