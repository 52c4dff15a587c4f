//! The load tester's errors.

/// Why a run (or one peer's join) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("media: {0}")]
    Media(String),
    #[error("http: {0}")]
    Http(String),
    #[error("server answered {status}: {reason}")]
    Status { status: u16, reason: String },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("webrtc: {0}")]
    Rtc(String),
    #[error("config: {0}")]
    Config(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
