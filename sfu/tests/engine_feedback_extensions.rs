//! Transport feedback is negotiated only where something reads it: a viewer
//! pinned to the low layer runs no bandwidth estimate, so its session has
//! no transport-wide sequence numbers; a viewer the node adapts keeps them.

use crate::common;

use std::time::Duration;

use common::frames;
use common::sim::Sim;
use signaling::LayerPref;

#[test]
fn a_pinned_viewer_gets_media_without_transport_wide_sequence_numbers() {
    let mut sim = Sim::new();
    sim.publish("fb", 1);
    sim.run(Duration::from_millis(500));
    let pinned = sim.play("fb", Some(LayerPref::Low));
    let adaptive = sim.play("fb", None);
    sim.run(Duration::from_secs(2));

    let pinned = &sim.client(pinned).received;
    assert!(frames(pinned).len() > 30, "the pinned viewer plays");
    assert!(
        pinned.iter().all(|r| r.transport_cc.is_none()),
        "a pinned viewer's packets carry no transport-wide sequence number"
    );
    let adaptive = &sim.client(adaptive).received;
    assert!(frames(adaptive).len() > 30, "the adaptive viewer plays");
    assert!(
        adaptive.iter().all(|r| r.transport_cc.is_some()),
        "an adaptive viewer's packets carry transport-wide sequence numbers"
    );
}
