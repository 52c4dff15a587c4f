//! NACK/RTX on both legs: packets lost between the publisher and the node,
//! or between the node and a viewer, are asked for again and the viewer
//! ends up with every packet of its stream.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::of_kind;
use common::sim::Sim;
use signaling::LayerPref;
use str0m::media::MediaKind;

/// Runs a publisher and one low-layer viewer, with `every`-th RTP datagram
/// lost on the chosen leg, and returns (video sequence numbers the viewer
/// got, datagrams lost).
fn run_with_loss(viewer_leg: bool, every: u64) -> (BTreeSet<u64>, u64) {
    let mut sim = Sim::new();
    let publisher = sim.publish("lossy", 1);
    sim.run(Duration::from_millis(300));
    let viewer = sim.play("lossy", Some(LayerPref::Low));
    sim.run(Duration::from_millis(700));
    let lossy = if viewer_leg { viewer } else { publisher };
    let c = sim.clients.get_mut(&lossy).unwrap();
    if viewer_leg {
        c.drop_every_to = Some(every);
    } else {
        c.drop_every_from = Some(every);
    }
    sim.run(Duration::from_secs(4));
    // Stop losing so the last NACKs are answered, then let them land.
    let c = sim.clients.get_mut(&lossy).unwrap();
    c.drop_every_to = None;
    c.drop_every_from = None;
    let dropped = c.dropped;
    sim.run(Duration::from_millis(500));

    let video = of_kind(&sim.client(viewer).received, MediaKind::Video);
    (video.iter().map(|r| r.seq).collect(), dropped)
}

fn assert_no_holes(seqs: &BTreeSet<u64>) {
    let first = *seqs.first().expect("video arrived");
    let last = *seqs.last().unwrap();
    let missing: Vec<u64> = (first..=last).filter(|s| !seqs.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} packets never repaired: {:?}",
        missing.len(),
        last - first + 1,
        &missing[..missing.len().min(20)]
    );
}

#[test]
fn viewer_leg_loss_is_repaired_by_the_node() {
    let (seqs, dropped) = run_with_loss(true, 20);
    // A low-layer viewer gets media only (~80 RTP packets/s, no BWE probe
    // padding): every 20th of 4 s is ~16 datagrams lost.
    assert!(dropped > 10, "the link lost {dropped} datagrams");
    assert!(seqs.len() > 100, "video packets: {}", seqs.len());
    assert_no_holes(&seqs);
}

#[test]
fn publisher_leg_loss_is_repaired_by_the_publisher() {
    let (seqs, dropped) = run_with_loss(false, 20);
    assert!(dropped > 20, "the link lost {dropped} datagrams");
    assert!(seqs.len() > 100, "video packets: {}", seqs.len());
    assert_no_holes(&seqs);
}
