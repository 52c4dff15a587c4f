//! Media transcoding the bridge does itself, each piece Sans-IO (frames in,
//! frames out, timestamps carried through, no clock):
//!
//! - [`aac`]: Opus → AAC-LC for the rendition Apple players require.
//! - [`ladder`]: an ABR ladder from a single H.264 layer (off by default).
//! - [`video`]: openh264 decode/encode of access units, I420 scaling.

pub mod aac;
pub mod ladder;
pub mod video;
