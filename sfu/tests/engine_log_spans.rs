//! Operators read a peer's log lines with its room and session attached:
//! the engine logs control-plane work inside a `peer` span.

use crate::common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::sim::Sim;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn peer_lines_carry_room_session_and_role() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let (publisher_session, viewer_session) = tracing::subscriber::with_default(subscriber, || {
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

    let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
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
