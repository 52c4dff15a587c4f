//! What one engine hands another about a room: the seam through which a
//! room's viewers on other workers (later: other nodes) are fed from the
//! worker that receives its publishers.
//!
//! The home engine (the one with the room's publishers) announces each
//! publisher ([`Relay::Source`]) to every engine that watches the room and
//! hands it every media packet ([`Relay::Media`]); a watching engine keeps
//! a *mirror* of each source (tracks, layers, measured bitrates) and
//! forwards to its own viewers through the same code as a local publisher.
//! Keyframe requests go back ([`Relay::Keyframe`]) and the home merges them
//! with its own. Plain data, time-free: a driver moves them between
//! engines in whatever batches it likes.

use std::sync::Arc;
use std::time::Instant;

use signaling::{RoomId, SessionId};
use str0m::format::{Codec, PayloadParams};
use str0m::media::{MediaKind, Mid, Rid};
use str0m::rtp::{ExtensionValues, RtpPacket};

use super::PeerId;

/// A worker's index inside its node: where relays come from and go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub usize);

/// One media packet of a publisher as viewers are forwarded it: what the
/// per-viewer rewrite reads, nothing more. The payload is shared.
#[derive(Debug, Clone)]
pub struct RelayPacket {
    /// The publisher's payload type (mapped per viewer).
    pub pt: str0m::media::Pt,
    /// The publisher's extended sequence number.
    pub seq: u64,
    /// The publisher's RTP timestamp.
    pub rtp_ts: u32,
    /// When the home received it (str0m's packet timestamp).
    pub arrival: Instant,
    pub marker: bool,
    /// The header extensions forwarded to viewers (audio level, voice
    /// activity, video orientation).
    pub ext: ExtensionValues,
    pub payload: Arc<[u8]>,
}

impl RelayPacket {
    pub(super) fn of(packet: &RtpPacket) -> RelayPacket {
        let e = &packet.header.ext_vals;
        RelayPacket {
            pt: packet.header.payload_type,
            seq: *packet.seq_no,
            rtp_ts: packet.header.timestamp,
            arrival: packet.timestamp,
            marker: packet.header.marker,
            ext: ExtensionValues {
                audio_level: e.audio_level,
                voice_activity: e.voice_activity,
                video_orientation: e.video_orientation,
                ..ExtensionValues::default()
            },
            payload: packet.payload.clone(),
        }
    }
}

/// One track of an announced source: its kind and its layers' rids in the
/// home's order (the `layer` index of [`Relay::Media`] and [`Relay::Keyframe`]).
#[derive(Debug, Clone)]
pub struct RelayTrack {
    pub mid: Mid,
    pub kind: MediaKind,
    pub rids: Vec<Option<Rid>>,
}

/// A message between two engines about one room.
#[derive(Debug, Clone)]
pub enum Relay {
    /// Watcher → home: this engine has viewers of `room` (`true`: announce
    /// its sources and hand their media) or has none left (`false`).
    Watch { room: RoomId, watching: bool },
    /// Home → watcher: a publisher of `room` and its tracks; sent again
    /// when its tracks change.
    Source {
        room: RoomId,
        source: PeerId,
        session: SessionId,
        identity: Option<String>,
        /// The publisher's negotiated payload types, to map viewers' onto.
        params: Vec<PayloadParams>,
        tracks: Vec<RelayTrack>,
    },
    /// Home → watcher: the publisher left.
    SourceGone { room: RoomId, source: PeerId },
    /// Home → watcher: one packet of a source's track and layer (indices
    /// into the announced tracks and their rids).
    Media {
        source: PeerId,
        track: usize,
        layer: usize,
        codec: Option<Codec>,
        packet: RelayPacket,
    },
    /// Watcher → home: a viewer wants a keyframe of the source's video layer.
    Keyframe { source: PeerId, layer: usize },
}

impl Relay {
    /// Media may be dropped when a queue is full (a keyframe request
    /// follows); the rest keeps mirrors consistent and never is.
    pub fn is_media(&self) -> bool {
        matches!(self, Relay::Media { .. })
    }
}
