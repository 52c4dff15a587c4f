//! Bearer tokens: HS256 JWTs that grant publishing and/or subscribing in a room.
//!
//! The `sfu token` subcommand calls [`issue`]; every WHIP/WHEP request on a
//! node with a secret goes through [`verify_with`] and [`Claims::allows`].
//! Time is an input: both take `now`, so tests never sleep.
//!
//! Besides signature and `exp` (RFC 7519 §4.1.4, no leeway), a token is
//! refused before its `nbf` (§4.1.5) or when its `iat` (§4.1.6) lies in the
//! future, both with [`CLOCK_SKEW`] of leeway for the issuer's clock; when
//! the node names an audience its `aud` (§4.1.3) must include it; and a
//! token for one room may not live longer than [`TokenPolicy::max_ttl`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::media::RoomId;

/// The `room` claim that grants every room.
pub const ANY_ROOM: &str = "*";

/// How far ahead of this node's clock an issuer's clock may run: `nbf` and
/// `iat` up to this far in the future are accepted.
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);

/// The longest lifetime (`exp - iat`) of a token for one room by default;
/// tokens for [`ANY_ROOM`] (services, operators) are not bounded.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a node asks of a token beyond its signature and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    /// The `aud` a token must carry (one of its values when it is an
    /// array); `None` ignores `aud`.
    pub audience: Option<String>,
    /// The longest `exp - iat` of a token for one room; `None`: unbounded.
    pub max_ttl: Option<Duration>,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        TokenPolicy {
            audience: None,
            max_ttl: Some(DEFAULT_MAX_TTL),
        }
    }
}

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// A room name, or [`ANY_ROOM`].
    pub room: String,
    /// The holder's identity, handed to the node with each session.
    pub sub: String,
    /// May publish over WHIP.
    #[serde(default)]
    pub publish: bool,
    /// May watch over WHEP.
    #[serde(default)]
    pub subscribe: bool,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issue time, seconds since the Unix epoch.
    pub iat: u64,
    /// The holder's chat role; absent means [`Role::Streamer`] for a
    /// publishing token and [`Role::Viewer`] otherwise ([`Claims::chat_role`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The audience: the node (or cluster) this token is meant for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// `aud`: one string or an array of them (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::One(a) => a == wanted,
            Audience::Many(all) => all.iter().any(|a| a == wanted),
        }
    }
}

/// Who someone is in a room's chat: it sets their message rate and whether
/// they may moderate. Anonymous members (open nodes only) carry no token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Streamer,
    Moderator,
    Viewer,
    Anonymous,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Streamer => "streamer",
            Role::Moderator => "moderator",
            Role::Viewer => "viewer",
            Role::Anonymous => "anonymous",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "streamer" => Some(Role::Streamer),
            "moderator" => Some(Role::Moderator),
            "viewer" => Some(Role::Viewer),
            "anonymous" => Some(Role::Anonymous),
            _ => None,
        }
    }

    /// Streamers and moderators may ban, time out and delete.
    pub fn moderates(self) -> bool {
        matches!(self, Role::Streamer | Role::Moderator)
    }
}

/// The right a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    Publish,
    Subscribe,
}

/// Why a token was refused. None of these carries the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header (or Eyevinn's `Bearer undefined`).
    #[error("missing bearer token")]
    Missing,
    /// Not a JWT, wrong algorithm, bad signature or missing claims.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `exp` is at or before now.
    #[error("token expired")]
    Expired,
    /// `nbf` or `iat` is in the future (beyond [`CLOCK_SKEW`]).
    #[error("token not valid yet")]
    NotYetValid,
    /// `aud` is absent or does not name this node's audience.
    #[error("token is for another audience")]
    WrongAudience,
    /// `exp - iat` is longer than the node allows for a one-room token.
    #[error("token lifetime {ttl_secs}s is longer than the {max_secs}s this node allows")]
    TooLong { ttl_secs: u64, max_secs: u64 },
    /// A valid token that does not grant this room or this right.
    #[error("token does not grant {grant:?} in room {room}")]
    Forbidden { room: RoomId, grant: Grant },
}

/// Signs a token for `identity` in `room` (or [`ANY_ROOM`]) valid for `ttl` from `now`.
pub fn issue(
    secret: &[u8],
    room: &str,
    identity: &str,
    publish: bool,
    subscribe: bool,
    ttl: Duration,
    now: SystemTime,
) -> String {
    let mut claims = Claims::new(room, identity, ttl, now);
    claims.publish = publish;
    claims.subscribe = subscribe;
    issue_claims(secret, &claims)
}

/// Signs `claims` as they are (for a token with a [`Role`]).
pub fn issue_claims(secret: &[u8], claims: &Claims) -> String {
    // Invariant: an HMAC key always matches the HS256 header and `Claims`
    // always serialises, so encoding cannot fail.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 encoding of plain claims cannot fail")
}

/// [`verify_with`] under the default [`TokenPolicy`].
pub fn verify(secret: &[u8], token: &str, now: SystemTime) -> Result<Claims, AuthError> {
    verify_with(secret, &TokenPolicy::default(), token, now)
}

/// Checks signature, algorithm, `exp`, `nbf`, `iat`, and `policy`'s
/// audience and longest lifetime; returns the claims of a usable token.
pub fn verify_with(
    secret: &[u8],
    policy: &TokenPolicy,
    token: &str,
    now: SystemTime,
) -> Result<Claims, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    // Times and audience are checked below against the injected clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp"]);
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret), &validation)
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
    let claims = data.claims;
    let now = unix_secs(now);
    if claims.exp <= now {
        return Err(AuthError::Expired);
    }
    let latest = now.saturating_add(CLOCK_SKEW.as_secs());
    if claims.iat > latest || claims.nbf.is_some_and(|nbf| nbf > latest) {
        return Err(AuthError::NotYetValid);
    }
    if let Some(wanted) = &policy.audience
        && !claims.aud.as_ref().is_some_and(|aud| aud.contains(wanted))
    {
        return Err(AuthError::WrongAudience);
    }
    let ttl_secs = claims.exp.saturating_sub(claims.iat);
    if let Some(max) = policy.max_ttl
        && claims.room != ANY_ROOM
        && ttl_secs > max.as_secs()
    {
        return Err(AuthError::TooLong {
            ttl_secs,
            max_secs: max.as_secs(),
        });
    }
    Ok(claims)
}

impl Claims {
    /// Claims for `identity` in `room` valid for `ttl` from `now`, granting nothing yet.
    pub fn new(room: &str, identity: &str, ttl: Duration, now: SystemTime) -> Claims {
        let iat = unix_secs(now);
        Claims {
            room: room.to_owned(),
            sub: identity.to_owned(),
            publish: false,
            subscribe: false,
            exp: iat.saturating_add(ttl.as_secs()),
            iat,
            role: None,
            nbf: None,
            aud: None,
        }
    }

    /// Whether these claims allow `grant` in `room`.
    pub fn allows(&self, room: &RoomId, grant: Grant) -> bool {
        let room_ok = self.room == ANY_ROOM || self.room == room.as_str();
        let grant_ok = match grant {
            Grant::Publish => self.publish,
            Grant::Subscribe => self.subscribe,
        };
        room_ok && grant_ok
    }

    /// Whether these claims let their holder into `room`'s chat: any grant
    /// or an explicit role, for that room or every room.
    pub fn allows_chat(&self, room: &RoomId) -> bool {
        let room_ok = self.room == ANY_ROOM || self.room == room.as_str();
        room_ok && (self.publish || self.subscribe || self.role.is_some())
    }

    /// The chat role: the explicit one, else streamer for a publisher.
    pub fn chat_role(&self) -> Role {
        match self.role {
            Some(role) => role,
            None if self.publish => Role::Streamer,
            None => Role::Viewer,
        }
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn room(s: &str) -> RoomId {
        RoomId::parse(s).unwrap()
    }

    #[test]
    fn issued_token_verifies_with_its_claims() {
        let token = issue(
            SECRET,
            "live",
            "alice",
            true,
            false,
            Duration::from_secs(60),
            at(1_000),
        );
        let claims = verify(SECRET, &token, at(1_030)).unwrap();
        assert_eq!(
            claims,
            Claims {
                room: "live".into(),
                sub: "alice".into(),
                publish: true,
                subscribe: false,
                exp: 1_060,
                iat: 1_000,
                role: None,
                nbf: None,
                aud: None,
            }
        );
    }

    #[test]
    fn expired_token_is_refused_at_exp() {
        let token = issue(
            SECRET,
            "live",
            "alice",
            true,
            true,
            Duration::from_secs(60),
            at(1_000),
        );
        assert_eq!(verify(SECRET, &token, at(1_059)).map(|c| c.exp), Ok(1_060));
        assert_eq!(verify(SECRET, &token, at(1_060)), Err(AuthError::Expired));
    }

    #[test]
    fn wrong_secret_or_garbage_is_invalid() {
        let token = issue(
            SECRET,
            "live",
            "alice",
            true,
            true,
            Duration::from_secs(60),
            at(1_000),
        );
        assert!(matches!(
            verify(b"other", &token, at(1_000)),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            verify(SECRET, "undefined", at(1_000)),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            verify(SECRET, "a.b.c", at(1_000)),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn tampered_payload_is_invalid() {
        let token = issue(
            SECRET,
            "live",
            "alice",
            false,
            true,
            Duration::from_secs(60),
            at(1_000),
        );
        let other = issue(
            SECRET,
            "*",
            "mallory",
            true,
            true,
            Duration::from_secs(60),
            at(1_000),
        );
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = other.split('.').nth(1).unwrap();
        assert!(matches!(
            verify(SECRET, &parts.join("."), at(1_000)),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn token_without_exp_is_invalid() {
        #[derive(Serialize)]
        struct NoExp {
            room: &'static str,
            sub: &'static str,
            iat: u64,
        }
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &NoExp {
                room: "live",
                sub: "a",
                iat: 1,
            },
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(matches!(
            verify(SECRET, &token, at(1_000)),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn none_algorithm_is_refused() {
        // header {"alg":"none","typ":"JWT"}, a valid payload, no signature
        let token = issue(
            SECRET,
            "live",
            "alice",
            true,
            true,
            Duration::from_secs(60),
            at(1_000),
        );
        let payload = token.split('.').nth(1).unwrap();
        let forged = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(matches!(
            verify(SECRET, &forged, at(1_000)),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn grants_match_room_and_right() {
        let claims = |room: &str, publish, subscribe| Claims {
            room: room.into(),
            sub: "a".into(),
            publish,
            subscribe,
            exp: 2,
            iat: 1,
            role: None,
            nbf: None,
            aud: None,
        };
        assert!(claims("live", true, false).allows(&room("live"), Grant::Publish));
        assert!(!claims("live", true, false).allows(&room("live"), Grant::Subscribe));
        assert!(!claims("live", true, true).allows(&room("other"), Grant::Publish));
        assert!(claims("*", false, true).allows(&room("other"), Grant::Subscribe));
        assert!(!claims("*", false, false).allows(&room("other"), Grant::Publish));
    }

    fn signed(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    #[test]
    fn nbf_and_iat_in_the_future_are_refused() {
        let now = at(10_000);
        let nbf = |nbf: u64| {
            signed(&serde_json::json!({
                "room": "live", "sub": "a", "subscribe": true,
                "iat": 10_000, "nbf": nbf, "exp": 10_600,
            }))
        };
        assert_eq!(verify(SECRET, &nbf(10_600 - 1), now), Err(AuthError::NotYetValid));
        assert_eq!(verify(SECRET, &nbf(10_031), now), Err(AuthError::NotYetValid));
        assert!(verify(SECRET, &nbf(10_030), now).is_ok(), "within the clock skew");
        assert!(verify(SECRET, &nbf(9_000), now).is_ok());
        let future_iat = issue(
            SECRET,
            "live",
            "a",
            false,
            true,
            Duration::from_secs(600),
            at(10_100),
        );
        assert_eq!(verify(SECRET, &future_iat, now), Err(AuthError::NotYetValid));
        let skewed = issue(
            SECRET,
            "live",
            "a",
            false,
            true,
            Duration::from_secs(600),
            at(10_020),
        );
        assert!(verify(SECRET, &skewed, now).is_ok());
    }

    #[test]
    fn the_audience_is_checked_when_the_node_names_one() {
        let policy = TokenPolicy {
            audience: Some("wave-eu".into()),
            ..TokenPolicy::default()
        };
        let with = |aud: serde_json::Value| {
            signed(&serde_json::json!({
                "room": "live", "sub": "a", "subscribe": true,
                "iat": 1_000, "exp": 1_600, "aud": aud,
            }))
        };
        let now = at(1_000);
        assert!(verify_with(SECRET, &policy, &with("wave-eu".into()), now).is_ok());
        assert!(verify_with(SECRET, &policy, &with(serde_json::json!(["x", "wave-eu"])), now).is_ok());
        assert_eq!(
            verify_with(SECRET, &policy, &with("wave-us".into()), now),
            Err(AuthError::WrongAudience)
        );
        let none = issue(SECRET, "live", "a", false, true, Duration::from_secs(60), now);
        assert_eq!(
            verify_with(SECRET, &policy, &none, now),
            Err(AuthError::WrongAudience)
        );
        assert!(
            verify(SECRET, &with("wave-us".into()), now).is_ok(),
            "no audience configured"
        );
    }

    #[test]
    fn one_room_tokens_live_at_most_the_max_ttl() {
        let now = at(1_000);
        let day = Duration::from_secs(24 * 3600);
        let long = issue(
            SECRET,
            "live",
            "a",
            true,
            false,
            day + Duration::from_secs(1),
            now,
        );
        assert_eq!(
            verify(SECRET, &long, now),
            Err(AuthError::TooLong {
                ttl_secs: 86_401,
                max_secs: 86_400
            })
        );
        assert!(verify(SECRET, &issue(SECRET, "live", "a", true, false, day, now), now).is_ok());
        let service = issue(SECRET, ANY_ROOM, "ops", true, true, 30 * day, now);
        assert!(
            verify(SECRET, &service, now).is_ok(),
            "`*` tokens are not bounded"
        );
        let unbounded = TokenPolicy {
            max_ttl: None,
            ..TokenPolicy::default()
        };
        assert!(verify_with(SECRET, &unbounded, &long, now).is_ok());
    }
}
