//! The relay messages.

use std::sync::Arc;
use std::time::Instant;

use wave_vocab::{Codec, CodecDesc, MediaKind, RoomId, SessionId};

/// A worker's index inside its node: where in-process relays come from and go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub usize);

/// A publisher as its home engine names it (its peer id there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u64);

/// The RTP header extensions forwarded to viewers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ext {
    /// RFC 6464 audio level (-127..=0 dBov).
    pub audio_level: Option<i8>,
    pub voice_activity: Option<bool>,
    /// CVO rotation, the extension's 2-bit value (0, 1, 2, 3).
    pub video_orientation: Option<u8>,
}

/// One media packet of a publisher as viewers are forwarded it: what the
/// per-viewer rewrite reads, nothing more. The payload is shared.
#[derive(Debug, Clone)]
pub struct MediaPacket {
    /// The publisher's payload type (mapped per viewer).
    pub pt: u8,
    /// The publisher's extended sequence number.
    pub seq: u64,
    /// The publisher's RTP timestamp.
    pub rtp_ts: u32,
    /// When it arrived here (the home's receive time in-process; the
    /// receiver's clock when decoded from bytes).
    pub arrival: Instant,
    pub marker: bool,
    pub ext: Ext,
    pub payload: Arc<[u8]>,
}

/// One track of an announced source: its kind and its layers' rids in the
/// home's order (the `layer` index of [`Message::Media`] and
/// [`Message::Keyframe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackDesc {
    pub mid: String,
    pub kind: MediaKind,
    pub rids: Vec<Option<String>>,
}

/// A message between two engines about one room.
#[derive(Debug, Clone)]
pub enum Message {
    /// Watcher → home: this engine has viewers of `room` (`true`: announce
    /// its sources and hand their media) or has none left (`false`). Over a
    /// node link it names the room's stream from one origin node (that
    /// node's tag, [`crate::Topic`]); between the workers of a node, 0.
    Watch {
        room: RoomId,
        origin: u64,
        watching: bool,
    },
    /// Home → watcher: a publisher of `room` and its tracks; sent again
    /// when its tracks change.
    Source {
        room: RoomId,
        /// The tag of the node the publisher is on (over a node link; 0
        /// between workers).
        origin: u64,
        source: SourceId,
        session: SessionId,
        identity: Option<String>,
        /// The publisher's negotiated payload types, to map viewers' onto.
        codecs: Vec<CodecDesc>,
        tracks: Vec<TrackDesc>,
    },
    /// Home → watcher: the publisher left.
    SourceGone { room: RoomId, source: SourceId },
    /// Home → watcher: one packet of a source's track and layer (indices
    /// into the announced tracks and their rids).
    Media {
        source: SourceId,
        track: u8,
        layer: u8,
        codec: Option<Codec>,
        packet: MediaPacket,
    },
    /// Watcher → home: a viewer wants a keyframe of the source's video layer.
    Keyframe { source: SourceId, layer: u8 },
    /// Home → watcher, every quarter second: each layer's bitrate at the
    /// home, `None` for a layer not arriving there. A watcher ranks and
    /// picks layers from it, including layers it does not receive.
    Layers {
        source: SourceId,
        track: u8,
        rates: Vec<Option<u64>>,
    },
    /// Watcher → home over a node link: packets of a layer that did not
    /// arrive (extended sequence numbers), resent from the home's recent
    /// packets when it still has them.
    Nack {
        source: SourceId,
        track: u8,
        layer: u8,
        seqs: Vec<u64>,
    },
    /// Watcher → home: whether any viewer there needs this track's layer
    /// (its current or target layer; audio: layer 0). A layer nobody
    /// demanded is not sent over a node link.
    Demand {
        source: SourceId,
        track: u8,
        layer: u8,
        wanted: bool,
    },
    /// Watcher → home over a node link, just before a [`Message::Watch`]:
    /// the nodes (their tags) the watch comes through, nearest last. A node
    /// that finds itself, or its own parent for the room, among them
    /// refuses the watch: a relay tree has no loops.
    Hops {
        room: RoomId,
        origin: u64,
        hops: Vec<u64>,
    },
}

/// Whether a packet of `codec` starts a keyframe a decoder can start from:
/// for H.264 the packet with the SPS (sent ahead of the IDR) or the IDR.
pub fn starts_keyframe(codec: Option<Codec>, payload: &[u8]) -> bool {
    use str0m::format as f;
    match codec {
        Some(Codec::Vp8) => f::detect_vp8_keyframe(payload),
        Some(Codec::H264) => f::detect_h264_nalu(payload, 7) || f::detect_h264_keyframe(payload),
        Some(Codec::Vp9) => f::detect_vp9_keyframe(payload),
        Some(Codec::Av1) => f::detect_av1_keyframe(payload),
        Some(Codec::H265) => f::detect_h265_keyframe(payload),
        Some(Codec::Opus) | None => false,
    }
}

impl Message {
    /// Media may be dropped when a queue is full (a keyframe request
    /// follows); the rest keeps mirrors consistent and never is.
    pub fn is_media(&self) -> bool {
        matches!(self, Message::Media { .. })
    }

    /// The same message about `id` instead of its source (a gateway renumbers
    /// sources between links and workers); messages about no source are
    /// returned as they are.
    pub fn with_source(&self, id: SourceId) -> Message {
        let mut m = self.clone();
        match &mut m {
            Message::Source { source, .. }
            | Message::SourceGone { source, .. }
            | Message::Media { source, .. }
            | Message::Keyframe { source, .. }
            | Message::Layers { source, .. }
            | Message::Nack { source, .. }
            | Message::Demand { source, .. } => *source = id,
            Message::Watch { .. } | Message::Hops { .. } => {}
        }
        m
    }
}
