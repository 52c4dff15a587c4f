//! The words every WAVE crate shares: room and session ids, the simulcast
//! layer a viewer asks for, the ICE changes a PATCH carries, what a room
//! looks like in `/v1/rooms`, and why a media operation failed. Plain data
//! with no I/O, so the engine, the relay, the LL-HLS wing and the HTTP front
//! door agree on them without depending on each other.

use std::fmt;

use serde::Serialize;

/// A room name as it appears in `/whip/{room}`: 1–64 of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RoomId(String);

impl RoomId {
    /// Validates a room name taken from a URL path.
    pub fn parse(s: &str) -> Option<RoomId> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        ok.then(|| RoomId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An unguessable session id (the last path segment of a WHIP/WHEP resource URL).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    /// 128 random bits from the OS CSPRNG, hex encoded (RFC 9725 §7: unguessable URLs).
    pub fn random() -> SessionId {
        let bits: u128 = rand::random();
        SessionId(format!("{bits:032x}"))
    }

    pub fn parse(s: &str) -> Option<SessionId> {
        let ok = s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| SessionId(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which simulcast layer a viewer wants at most. `Rid` names a layer the
/// publisher declared; the index forms count from the lowest bitrate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerPref {
    Low,
    Mid,
    High,
    Rid(String),
}

impl LayerPref {
    /// `low|mid|high`, `0|1|2`, `q|h|f`-style rids are passed through as `Rid`.
    pub fn parse(s: &str) -> Option<LayerPref> {
        match s {
            "" => None,
            "low" | "0" => Some(LayerPref::Low),
            "mid" | "medium" | "1" => Some(LayerPref::Mid),
            "high" | "2" => Some(LayerPref::High),
            rid if rid.len() <= 16
                && rid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                Some(LayerPref::Rid(rid.to_owned()))
            }
            _ => None,
        }
    }
}

/// A PATCH body (RFC 8840 trickle-ice-sdpfrag), parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IcePatch {
    /// Same ufrag/pwd: more remote candidates (each an `a=candidate:` value, without `a=`).
    Trickle {
        candidates: Vec<String>,
        end_of_candidates: bool,
    },
    /// New ufrag/pwd (RFC 9725 §4.3.3): restart ICE with these credentials.
    Restart {
        ufrag: String,
        pwd: String,
        candidates: Vec<String>,
    },
}

/// What a successful ICE restart hands back for the 200 sdpfrag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceRestartAnswer {
    pub ufrag: String,
    pub pwd: String,
    /// `a=candidate:` values, without `a=`.
    pub candidates: Vec<String>,
    pub ice_lite: bool,
}

/// Why a media operation failed; each maps to one HTTP status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MediaError {
    /// SDP or fragment that does not parse: 400.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// SDP that parses but that the node cannot serve (codecs, shape): 422.
    #[error("unprocessable: {0}")]
    Unprocessable(String),
    /// A well-formed offer this room cannot serve now: a WHEP offer with
    /// none of the video codecs the room's publisher sends: 406.
    #[error("not acceptable: {0}")]
    NotAcceptable(String),
    /// No such session: 404.
    #[error("no such session")]
    NotFound,
    /// WHEP before anyone publishes, from a node that cannot hold the
    /// viewer until a publisher comes: 409 + Retry-After. WAVE's own node
    /// never answers this: it answers 201 and starts sending when a
    /// publisher arrives.
    #[error("room {0} has no publisher")]
    NoPublisher(RoomId),
    /// A room is at its limit: 429 + Retry-After.
    #[error("room {room} is full")]
    RoomFull { room: RoomId, retry_after_secs: u32 },
    /// The node is at its limit or shutting down: 503 + Retry-After.
    #[error("node over capacity")]
    Overloaded { retry_after_secs: u32 },
    /// The room's origin (another node) cannot be reached over the relay:
    /// 503 + Retry-After.
    #[error("room origin unreachable: {0}")]
    Upstream(String),
    /// A part of the node that should take the request is down (a media
    /// worker that died): 503 + Retry-After, the node is draining.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A broken invariant inside the node: 500.
    #[error("internal error: {0}")]
    Internal(String),
}

/// One publisher in `/v1/rooms`.
#[derive(Debug, Clone, Serialize)]
pub struct PublisherInfo {
    pub session: SessionId,
    pub identity: Option<String>,
    pub tracks: Vec<TrackInfo>,
}

/// One received track (or simulcast layer) of a publisher.
#[derive(Debug, Clone, Serialize)]
pub struct TrackInfo {
    pub kind: String,
    pub codec: String,
    pub rid: Option<String>,
    pub bitrate_bps: u64,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// One viewer in `/v1/rooms`.
#[derive(Debug, Clone, Serialize)]
pub struct ViewerInfo {
    pub session: SessionId,
    pub identity: Option<String>,
    pub layer: Option<String>,
    pub bitrate_bps: u64,
}

/// One room in `/v1/rooms`.
#[derive(Debug, Clone, Serialize)]
pub struct RoomInfo {
    pub room: RoomId,
    pub publishers: Vec<PublisherInfo>,
    pub viewers: Vec<ViewerInfo>,
}

/// Audio or video: what a track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MediaKind {
    Audio,
    Video,
}

/// The codecs a WAVE node forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Codec {
    Opus,
    H264,
    H265,
    Vp8,
    Vp9,
    Av1,
}

impl Codec {
    /// Every codec, in the order of its wire number (1..).
    pub const ALL: [Codec; 6] = [
        Codec::Opus,
        Codec::H264,
        Codec::H265,
        Codec::Vp8,
        Codec::Vp9,
        Codec::Av1,
    ];

    pub fn kind(self) -> MediaKind {
        match self {
            Codec::Opus => MediaKind::Audio,
            _ => MediaKind::Video,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::Opus => "opus",
            Codec::H264 => "H264",
            Codec::H265 => "H265",
            Codec::Vp8 => "VP8",
            Codec::Vp9 => "VP9",
            Codec::Av1 => "AV1",
        })
    }
}

/// One negotiated payload type of a publisher: what a viewer's payload
/// type must match for its packets to be forwarded under it. The format
/// fields are the ones that tell two payload types of one codec apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodecDesc {
    pub pt: u8,
    pub codec: Codec,
    pub clock_rate: u32,
    pub channels: Option<u8>,
    /// H.264 `packetization-mode`.
    pub packetization_mode: Option<u8>,
    /// H.264 `profile-level-id`.
    pub profile_level_id: Option<u32>,
    /// VP9 `profile-id`, AV1 `profile`.
    pub profile: Option<u32>,
}

impl CodecDesc {
    /// Whether both describe the same encoding (every field but the payload type).
    pub fn same_format(&self, other: &CodecDesc) -> bool {
        CodecDesc { pt: 0, ..*self } == CodecDesc { pt: 0, ..*other }
    }
}

/// A peer (publisher or viewer) inside one media engine, from the engine's
/// own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);
