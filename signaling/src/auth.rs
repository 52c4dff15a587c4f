//! Bearer tokens: HS256 JWTs that grant publishing and/or subscribing in a room.
//!
//! The `sfu token` subcommand calls [`issue`]; every WHIP/WHEP request on a
//! node with a secret goes through [`verify`] and [`Claims::allows`].
//! Time is an input: both take `now`, so tests never sleep.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::media::RoomId;

/// The `room` claim that grants every room.
pub const ANY_ROOM: &str = "*";

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

/// Checks signature, algorithm and expiry; returns the claims of a usable token.
pub fn verify(secret: &[u8], token: &str, now: SystemTime) -> Result<Claims, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    // Expiry is checked below against the injected clock, without leeway.
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp"]);
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret), &validation)
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
    if data.claims.exp <= unix_secs(now) {
        return Err(AuthError::Expired);
    }
    Ok(data.claims)
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
        };
        assert!(claims("live", true, false).allows(&room("live"), Grant::Publish));
        assert!(!claims("live", true, false).allows(&room("live"), Grant::Subscribe));
        assert!(!claims("live", true, true).allows(&room("other"), Grant::Publish));
        assert!(claims("*", false, true).allows(&room("other"), Grant::Subscribe));
        assert!(!claims("*", false, false).allows(&room("other"), Grant::Publish));
    }
}
