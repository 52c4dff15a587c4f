//! The narrow interface the HTTP front door needs from a media node.
//!
//! `signaling` knows nothing of the node: the `sfu` crate implements
//! [`MediaNode`] and hands it to [`crate::serve`].

use std::fmt;
use std::future::Future;

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

/// A WHIP offer, already checked for content type, size and auth.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub room: RoomId,
    pub session: SessionId,
    /// The token's identity, or `None` on an open node.
    pub identity: Option<String>,
    pub offer: String,
}

/// A WHEP offer, already checked for content type, size and auth.
#[derive(Debug, Clone)]
pub struct PlayRequest {
    pub room: RoomId,
    pub session: SessionId,
    pub identity: Option<String>,
    pub offer: String,
    /// `?publisher=`: a publisher's identity or session id, when a room has several.
    pub publisher: Option<String>,
    /// `?layer=`: the highest simulcast layer this viewer wants.
    pub max_layer: Option<LayerPref>,
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

/// The media node as the HTTP layer sees it.
pub trait MediaNode: Send + Sync + 'static {
    /// WHIP: accept a publisher's offer, return the full answer (all candidates gathered).
    fn publish(&self, req: PublishRequest) -> impl Future<Output = Result<String, MediaError>> + Send;
    /// WHEP: accept a viewer's offer, return the full answer.
    fn play(&self, req: PlayRequest) -> impl Future<Output = Result<String, MediaError>> + Send;
    /// Trickle (returns `None`) or ICE restart (returns the new local credentials).
    fn patch(
        &self,
        session: &SessionId,
        patch: IcePatch,
    ) -> impl Future<Output = Result<Option<IceRestartAnswer>, MediaError>> + Send;
    /// Changes a viewer's maximum layer; `None` means automatic.
    fn set_layer(
        &self,
        session: &SessionId,
        layer: Option<LayerPref>,
    ) -> impl Future<Output = Result<(), MediaError>> + Send;
    /// Ends a session (str0m close: RTCP BYE + DTLS close_notify).
    fn delete(&self, session: &SessionId) -> impl Future<Output = Result<(), MediaError>> + Send;
    /// Snapshot for `/v1/rooms`, ordered by room id.
    fn rooms(&self) -> impl Future<Output = Vec<RoomInfo>> + Send;
    /// Appends the node's Prometheus text exposition to `out`.
    fn metrics(&self, out: &mut String) -> impl Future<Output = ()> + Send;
    /// Serves `/hls/...` (the node's LL-HLS); `None` answers 404. The body
    /// of the request is not read.
    fn other(
        &self,
        req: hyper::Request<()>,
    ) -> impl Future<Output = Option<hyper::Response<http_body_util::Full<bytes::Bytes>>>> + Send {
        let _ = req;
        std::future::ready(None)
    }
}
