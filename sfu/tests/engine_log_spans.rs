//! Operators read a peer's log lines with its room and session attached:
//! the engine logs control-plane work inside a `peer` span.

use crate::common;

use std::time::Duration;

use common::logs::capture_logs;
use common::sim::Sim;

#[test]
fn peer_lines_carry_room_session_and_role() {
    let ((publisher_session, viewer_session), log) = capture_logs(|| {
        let mut sim = Sim::new();
        let publisher = sim.publish("spans", 1);
        let viewer = sim.play("spans", None);
        sim.run(Duration::from_millis(800));
        let sessions = (
            sim.client(publisher).session.to_string(),
            sim.client(viewer).session.to_string(),
        );
        sim.delete(viewer);
        sessions
    });

    let line = |session: &str, message: &str| {
        log.lines()
            .find(|l| l.contains(session) && l.contains(message))
            .unwrap_or_else(|| panic!("no {message:?} line for {session} in:\n{log}"))
            .to_owned()
    };
    for (session, role) in [(&publisher_session, "Publish"), (&viewer_session, "Play")] {
        for message in ["peer added", "connected"] {
            let l = line(session, message);
            assert!(l.contains("peer{room=spans"), "{l}");
            assert!(l.contains(&format!("role={role}")), "{l}");
        }
    }
    let removed = line(&viewer_session, "peer removed");
    assert!(
        removed.contains("reason=\"deleted\"") || removed.contains("reason=deleted"),
        "{removed}"
    );
}
