//! WAVE's HTTP front door: WHIP/WHEP resources, auth, REST, the demo page.
//!
//! The `sfu` crate implements [`MediaNode`] and runs [`serve`] (or
//! [`Server`], to get at the [`Sessions`] table first).
//!
//! # Routes
//!
//! | route | methods |
//! |---|---|
//! | `/whip/{room}` | `POST` offer → `201` answer; `GET` 204; `HEAD` 200; `OPTIONS` |
//! | `/whep/{room}` | same, for viewers; query parameters below |
//! | `/whip/{room}/{session}`, `/whep/{room}/{session}` | `PATCH` sdpfrag (trickle 204, restart 200), `DELETE` 200, `GET`/`HEAD` 204, `OPTIONS` |
//! | `/whep/{room}/{session}/layer` | `POST` `{"maxLayer": "low"\|"mid"\|"high"}`, `{"rid": "q"}` or `{}` (automatic) → 200 |
//! | `/healthz`, `/metrics`, `/v1/rooms`, `/v1/rooms/{room}` | `GET` (`/v1/rooms/{room}` includes `presence`) |
//! | `/v1/chat/{room}` | `GET` WebSocket upgrade: the room's chat ([`chat`]) |
//! | `/v1/moderation/{room}/actions` | `POST` a moderator action ([`chat::Action`]) |
//! | `/hls/...` | whatever the node serves there ([`MediaNode::other`]; LL-HLS in `sfu`) |
//! | `/`, `/app.js`, `/chat.js`, `/style.css` | the demo page |
//!
//! # WHEP query parameters
//!
//! - `publisher=ID`: watch this publisher (its token identity or its WHIP
//!   session id) when a room has several. Percent-encoded, at most 256 bytes.
//! - `layer=L`: the highest simulcast layer to send: `low`, `mid`, `high`
//!   (or `0`, `1`, `2`), or a rid the publisher declared (`q`, `h`, `f`).
//!   Anything else is a 400.
//!
//! For example `POST /whep/live?layer=low&publisher=alice`.
//!
//! # Policies
//!
//! - With [`HttpConfig::auth_secret`] set, every `POST`, `PATCH` and `DELETE`
//!   needs `Authorization: Bearer <jwt>` whose `room` matches (or is `*`) and
//!   whose grant matches the protocol (`publish` for WHIP, `subscribe` for
//!   WHEP): 401 + `WWW-Authenticate: Bearer` when missing, invalid or
//!   expired, 403 otherwise. `Bearer undefined` counts as missing. A session
//!   can be patched or deleted only with a token of the identity that
//!   created it. CORS preflights, `GET`, `HEAD`, `/healthz` and `/metrics`
//!   need no token; `/v1/rooms` needs a `*` token, `/v1/rooms/{room}` a token
//!   for that room.
//! - `PATCH` is always conditional (RFC 9725 §4.3.1): no `If-Match` → 428,
//!   a stale one → 412, `If-Match: "*"` matches any. Trickle without
//!   `If-Match` is not tolerated. An `ETag` request header is read as
//!   `If-Match` when `If-Match` is absent, because Eyevinn's WHIP client sends
//!   its entity tag that way.
//! - A fragment whose `a=ice-ufrag`/`a=ice-pwd` differ from the client's
//!   current ones is an ICE restart (200 + sdpfrag + new `ETag`); otherwise
//!   it is trickle (204). TCP and mDNS (`.local`) candidates are dropped.
//! - Tokens are HS256 JWTs ([`auth`]): besides signature and `exp`, `nbf`
//!   and `iat` must not lie in the future, `aud` must name
//!   [`auth::TokenPolicy::audience`] when one is set, and a one-room token
//!   may live at most [`auth::TokenPolicy::max_ttl`] (24 h by default).
//! - `DELETE` ignores entity tags.
//! - CORS: a secured node answers every page (`Access-Control-Allow-Origin`
//!   echoes `Origin`, `*` without one) and exposes
//!   `Location, ETag, Link, Accept-Patch, Accept-Post, Retry-After`.
//! - An open node answers this machine only: a `Host` that is not a
//!   loopback name or address is 403 (DNS rebinding), a state-changing
//!   request (not GET/HEAD/OPTIONS, or a WebSocket upgrade) whose `Origin`
//!   is not a loopback page is 403, and foreign pages get no CORS grant.
//! - POSTs are rate-limited per client (an IPv4 address or an IPv6 /64),
//!   429 + `Retry-After`; concurrent connections are capped per client and
//!   in total ([`HttpConfig::connection_limit`]): one over a cap is answered
//!   503 and closed.
//! - Error bodies are RFC 9457 `application/problem+json`.

pub mod auth;
pub mod bus;
pub mod chat;
pub mod cluster;
mod config;
mod drain;
pub mod forwarded;
#[doc(hidden)]
pub mod fuzzing;
mod hls_proxy;
mod http;
mod locks;
pub mod media;
pub mod metrics;
mod page;
mod ratelimit;
mod routes;
pub mod sdpfrag;
mod server;
mod sessions;
pub mod tls;

pub use config::{HttpConfig, IceServer, IceServerSource};
pub use drain::Drain;
pub use forwarded::TrustedProxies;
pub use media::{
    IcePatch, IceRestartAnswer, LayerPref, MediaError, MediaNode, Origin, PlayRequest, PublishRequest,
    PublisherInfo, PullRequest, RoomId, RoomInfo, SessionId, TrackInfo, ViewerInfo,
};
pub use ratelimit::{ConnectionLimit, RateLimit};
pub use server::{Server, serve};
pub use sessions::Sessions;
