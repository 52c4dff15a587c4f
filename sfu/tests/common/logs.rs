//! Log lines a test captures from the engine (it runs on the test's
//! thread in simulated time).

use std::cell::RefCell;
use std::io::Write;
use std::sync::Once;

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
pub fn capture_logs<R>(f: impl FnOnce() -> R) -> (R, String) {
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
