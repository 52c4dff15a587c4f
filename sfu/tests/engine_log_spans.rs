//! Operators read a peer's log lines with its room and session attached:
//! the engine logs control-plane work inside a `peer` span.

use crate::common;

use std::cell::RefCell;
use std::io::Write;
use std::sync::Once;
use std::time::Duration;

use common::sim::Sim;

thread_local! {
    /// Where this thread's log lines go while a test captures them.
    static CAPTURED: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Writes each line into the emitting thread's capture, if it has one.
struct ThreadCapture;

impl Write for ThreadCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED.with(|c| {
            if let Some(out) = c.borrow_mut().as_mut() {
                out.extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `f` and returns what it logged on this thread. The subscriber is the
/// process-wide default, installed once: a scoped (`with_default`) one races
/// with the other tests of this binary registering the same callsites on
/// their threads, and can miss lines.
fn capture_logs<R>(f: impl FnOnce() -> R) -> (R, String) {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(|| ThreadCapture)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in the sfu tests");
    });
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let result = f();
    let log = CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (result, String::from_utf8_lossy(&log).into_owned())
}

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
