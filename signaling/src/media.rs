//! The narrow interface the HTTP front door needs from a media node.
//!
//! `signaling` knows nothing of the node: the `sfu` crate implements
//! [`MediaNode`] and hands it to [`crate::serve`].

use std::future::Future;

pub use wave_vocab::{
    IcePatch, IceRestartAnswer, LayerPref, MediaError, PublisherInfo, RoomId, RoomInfo, SessionId, TrackInfo,
    ViewerInfo,
};

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
    /// The room's publishers are on another node, reached over the relay:
    /// the node this one is fed from (the origin, or a node between).
    pub origin: Option<Origin>,
}

/// An RTSP pull (`POST /v1/ingest/{room}`), already checked for auth.
#[derive(Clone)]
pub struct PullRequest {
    pub room: RoomId,
    /// The pull's id (its URL's last segment).
    pub id: SessionId,
    /// `rtsp://…`, credentials included: never logged nor answered.
    pub url: String,
    /// RTP interleaved on the RTSP connection (`true`) or over UDP.
    pub tcp: bool,
    pub identity: Option<String>,
    /// The token's `exp`: the pull ends then; `None` on an open node.
    pub until: Option<std::time::SystemTime>,
}

/// Another node a room is fed from over the relay (the one holding its
/// publishers, or a relay nearer to it), as the registry lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub node: String,
    /// Its QUIC relay endpoint.
    pub relay_addr: String,
    /// SHA-256 of its relay certificate, lowercase hex.
    pub fingerprint: String,
    /// The relay certificate's fingerprint of the node the publishers are
    /// on (the same as `fingerprint` when the parent is that node): it
    /// names the stream fed ([`relay::Topic`]'s origin).
    pub source: String,
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
    /// How a room crosses this node's relay links (`/v1/rooms/{room}`'s
    /// `relay`); `Null` on a node that does not relay.
    fn room_links(&self, room: &RoomId) -> impl Future<Output = serde_json::Value> + Send {
        let _ = room;
        std::future::ready(serde_json::Value::Null)
    }
    /// Whether every part of the node runs (`false`: a media worker died;
    /// `/healthz` answers 503).
    fn healthy(&self) -> bool {
        true
    }
    /// Relay certificate fingerprints (lowercase hex) of nodes whose link
    /// just died or could not be dialled: left out of relay trees for now.
    fn unreachable_relays(&self) -> Vec<String> {
        Vec::new()
    }
    /// Starts an RTSP pull into a room as its publisher; it connects,
    /// plays and retries on its own until stopped or `until`. In a
    /// cluster the pull is room state: once this returns every node
    /// answers for it.
    fn start_pull(&self, req: PullRequest) -> impl Future<Output = Result<(), MediaError>> + Send {
        let _ = req;
        std::future::ready(Err(MediaError::Unprocessable(
            "this node does not pull RTSP".into(),
        )))
    }
    /// A pull's state as JSON, wherever in the cluster it runs; `None`
    /// when `room` has no pull `id`.
    fn pull(&self, room: &RoomId, id: &SessionId) -> impl Future<Output = Option<serde_json::Value>> + Send {
        let _ = (room, id);
        std::future::ready(None)
    }
    /// Stops and forgets a pull, wherever in the cluster it runs; `false`
    /// when `room` has no pull `id`, an error when that cannot be known.
    fn stop_pull(
        &self,
        room: &RoomId,
        id: &SessionId,
    ) -> impl Future<Output = Result<bool, MediaError>> + Send {
        let _ = (room, id);
        std::future::ready(Ok(false))
    }
    /// The pulls into `room` (`/v1/rooms/{room}`'s `ingest`), by id.
    fn room_pulls(&self, room: &RoomId) -> impl Future<Output = Vec<serde_json::Value>> + Send {
        let _ = room;
        std::future::ready(Vec::new())
    }
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
