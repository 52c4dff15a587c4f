//! Media transcoding the bridge does itself, each piece Sans-IO (frames in,
//! frames out, timestamps carried through, no clock):
//!
//! - [`aac`]: Opus → AAC-LC for the rendition Apple players require.
//! - [`ladder`]: an ABR ladder from a single H.264 layer (off by default).
//! - [`video`]: openh264 decode/encode of access units, I420 scaling.

pub mod aac;
pub mod ladder;
pub mod video;

#[cfg(test)]
mod tests {
    /// The node moves transcoders into its worker threads.
    #[test]
    fn transcoders_are_send() {
        fn send<T: Send>() {}
        send::<super::aac::OpusToAac>();
        send::<super::ladder::Ladder>();
        send::<crate::thumbnail::ThumbnailCache<String>>();
    }
}
