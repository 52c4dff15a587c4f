//! The crate's error type.

use crate::TrackId;

/// Everything the bridge refuses. Bad input from the network ends here,
/// never in a panic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A packet or report for a track that was never added.
    #[error("unknown track {0}")]
    UnknownTrack(TrackId),
    /// `add_track` twice with the same id.
    #[error("track {0} already exists")]
    DuplicateTrack(TrackId),
    /// An RTP payload that is not a valid RFC 6184 / RFC 7587 payload.
    #[error("track {track}: malformed {codec} payload: {reason}")]
    MalformedPayload {
        track: TrackId,
        codec: &'static str,
        reason: &'static str,
    },
    /// A sequence parameter set we cannot parse.
    #[error("malformed SPS: {0}")]
    MalformedSps(String),
    /// The MP4 box encoder failed (a value out of range for its field).
    #[error("fMP4 encoding: {0}")]
    Mp4(#[from] mp4_atom::Error),
    /// A segmenter setting out of range.
    #[error("HLS config: {0}")]
    Config(&'static str),
    /// A fragment whose sample sizes do not add up to its data.
    #[error("fragment: samples describe {described} bytes, data has {actual}")]
    FragmentSize { described: u64, actual: u64 },
    /// An audio track configuration the init segment cannot describe.
    #[error("audio config: {0}")]
    AudioConfig(&'static str),
    /// A codec library (libopus, FDK AAC, openh264) refused an operation.
    #[error("{codec}: {reason}")]
    Codec { codec: &'static str, reason: String },
    /// Encoding a thumbnail image failed.
    #[error("image: {0}")]
    Image(String),
}
