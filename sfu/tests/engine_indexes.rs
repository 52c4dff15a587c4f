//! A session that ends leaves nothing behind in the engine: every table a
//! publisher, a viewer (here or on another worker) or an ingest source adds
//! an entry to is empty again once they are gone, whether they said goodbye
//! (DELETE) or vanished (idle timeout). A node that has served many
//! sessions then holds no more than a fresh one.

use crate::common;

use std::time::Duration;

use common::sim::Sim;
use sfu::engine::{Command, IngestOpen, PEER_IDLE_TIMEOUT};
use signaling::{RoomId, SessionId};
use str0m::format::Codec;

fn entries(sim: &Sim) -> (u64, u64) {
    let second = sim.second.as_ref().map_or(0, |e| e.index_entries());
    (sim.engine.index_entries(), second)
}

#[test]
fn deleted_sessions_leave_no_entry_on_either_worker() {
    let mut sim = Sim::with_second_engine();
    let (empty, _) = entries(&sim);
    assert_eq!(empty, 0, "a fresh engine holds nothing");
    for round in 0..3 {
        let p = sim.publish("ix", 1);
        sim.run(Duration::from_millis(300));
        let here = sim.play("ix", None);
        let there = sim.play_on_second("ix", None);
        sim.run(Duration::from_secs(1));
        assert!(
            !sim.client(there).received.is_empty(),
            "round {round}: the viewer on the second worker gets media"
        );
        let (a, b) = entries(&sim);
        assert!(a > 0 && b > 0, "round {round}: sessions are indexed ({a}, {b})");

        sim.delete(there);
        sim.delete(here);
        sim.delete(p);
        sim.run(Duration::from_millis(500));
        assert_eq!(
            entries(&sim),
            (0, 0),
            "round {round}: every table is empty once the sessions are gone"
        );
        assert_eq!(sim.engine.stats().rooms, 0);
    }
}

#[test]
fn vanished_peers_are_forgotten_after_the_idle_timeout() {
    let mut sim = Sim::new();
    let p = sim.publish("gone", 1);
    sim.run(Duration::from_millis(300));
    let v = sim.play("gone", None);
    sim.run(Duration::from_secs(1));
    assert!(sim.engine.index_entries() > 0);
    // Both stop sending without a word (a closed laptop).
    sim.forget(v);
    sim.forget(p);
    sim.run(PEER_IDLE_TIMEOUT + Duration::from_secs(2));
    assert_eq!(sim.engine.peer_count(), 0, "both timed out");
    assert_eq!(sim.engine.index_entries(), 0, "and left no entry");
}

#[test]
fn an_ingest_source_leaves_no_entry() {
    let mut sim = Sim::new();
    let session = SessionId::random();
    let open = IngestOpen {
        room: RoomId::parse("ingest-ix").unwrap(),
        session: session.clone(),
        identity: None,
    };
    sim.send_command(Command::Ingest(open)).expect("ingest opens");
    // The ingest sends H.264: a viewer without it would be refused.
    sim.video_codec = Codec::H264;
    let v = sim.play("ingest-ix", None);
    sim.run(Duration::from_millis(500));
    assert!(sim.engine.index_entries() > 0);
    sim.delete(v);
    sim.send_command(Command::Delete { session })
        .expect("ingest closes");
    sim.run(Duration::from_millis(100));
    assert_eq!(sim.engine.index_entries(), 0);
}
