//! Media transcoding the bridge does itself, each piece Sans-IO (frames in,
//! frames out, timestamps carried through, no clock):
//!
//! - [`aac`]: Opus → AAC-LC for the rendition Apple players require.

pub mod aac;
