//! What the embedder (the `sfu` binary) tells the HTTP front door.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::auth::TokenPolicy;
use crate::forwarded::TrustedProxies;
use crate::media::RoomId;
use crate::ratelimit::{ConnectionLimit, RateLimit};

/// Settings for [`crate::serve`].
#[derive(Clone)]
pub struct HttpConfig {
    /// HS256 secret for bearer tokens. `None` runs the node open: no
    /// `Authorization` is required (the embedder must then bind loopback only).
    pub auth_secret: Option<Vec<u8>>,
    /// STUN/TURN servers advertised with `Link: <url>; rel="ice-server"` on every 201.
    pub ice_servers: Vec<IceServer>,
    /// Per-session servers (for example time-limited TURN REST credentials),
    /// advertised after `ice_servers`.
    pub ice_server_source: Option<Arc<dyn IceServerSource>>,
    /// Largest accepted request body (SDP offer, sdpfrag, layer JSON). Default 64 KiB.
    pub max_body_bytes: usize,
    /// Token bucket per client (an IPv4 address or an IPv6 /64) for POSTs
    /// (session creation, layer changes, moderation). `None` disables it.
    pub post_rate_limit: Option<RateLimit>,
    /// Caps on concurrent HTTP connections per client and in total; a
    /// connection over either is answered 503 and closed.
    pub connection_limit: ConnectionLimit,
    /// What a bearer token must carry besides a valid signature
    /// (audience, longest lifetime).
    pub token_policy: TokenPolicy,
    /// Absolute prefix for `Location` (for example `https://sfu.example.com`).
    /// `None` (default) sends the relative path `/whip/{room}/{session}`,
    /// which RFC 9110 §10.2.2 allows.
    pub public_base_url: Option<String>,
    /// How long a request body may take to arrive. Default 10 s.
    pub body_timeout: Duration,
    /// How long in-flight requests may run after shutdown is signalled. Default 1 s.
    pub shutdown_grace: Duration,
    /// Chat, moderation and presence (`/v1/chat/{room}`).
    pub chat: crate::chat::ChatConfig,
    /// hls.js's `dist` directory, served under `/vendor/hls.js/` for the
    /// demo page's HLS player. `None` (default): 404 with a hint.
    pub hlsjs_dir: Option<PathBuf>,
    /// HTTPS: the listener's certificate, reloaded when its files change.
    /// `None` (default): plain HTTP (and h2c).
    pub tls: Option<Arc<crate::tls::ReloadingCert>>,
    /// Reverse proxies whose `X-Forwarded-For` names the client
    /// ([`crate::forwarded`]). Empty (default): the TCP peer is the client.
    pub trusted_proxies: TrustedProxies,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            auth_secret: None,
            ice_servers: Vec::new(),
            ice_server_source: None,
            max_body_bytes: 64 * 1024,
            post_rate_limit: Some(RateLimit::default()),
            connection_limit: ConnectionLimit::default(),
            token_policy: TokenPolicy::default(),
            public_base_url: None,
            body_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(1),
            chat: crate::chat::ChatConfig::default(),
            hlsjs_dir: None,
            tls: None,
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("auth_secret", &self.auth_secret.as_ref().map(|_| "<redacted>"))
            .field("ice_servers", &self.ice_servers)
            .field("ice_server_source", &self.ice_server_source.is_some())
            .field("max_body_bytes", &self.max_body_bytes)
            .field("post_rate_limit", &self.post_rate_limit)
            .field("connection_limit", &self.connection_limit)
            .field("token_policy", &self.token_policy)
            .field("public_base_url", &self.public_base_url)
            .field("body_timeout", &self.body_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("chat", &self.chat)
            .field("hlsjs_dir", &self.hlsjs_dir)
            .field("tls", &self.tls.is_some())
            .field("trusted_proxies", &self.trusted_proxies)
            .finish()
    }
}

/// One STUN or TURN server as the client's `RTCIceServer` sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:host:port`, `turn:host:port?transport=udp`, `turns:...` (RFC 7064/7065).
    pub urls: Vec<String>,
    pub username: Option<String>,
    /// A TURN password; sent with `credential-type="password"`.
    pub credential: Option<String>,
}

impl fmt::Debug for IceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field("credential", &self.credential.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Produces ICE servers per session, e.g. TURN REST credentials that expire.
pub trait IceServerSource: Send + Sync + 'static {
    /// Servers for a new session in `room` held by `identity` (the token's
    /// `sub`, `None` on an open node), created at `now`.
    fn ice_servers(&self, room: &RoomId, identity: Option<&str>, now: SystemTime) -> Vec<IceServer>;
}
