//! Long-term credentials (RFC 8489 §9.2): the TURN REST API scheme, static
//! users, and stateless nonces.
//!
//! Nonces carry their own issue time and an HMAC over it and the client IP,
//! so the server keeps no per-nonce state at all: a flood of unauthenticated
//! requests cannot grow memory, and validity is checked by recomputing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// TURN REST API credentials as served to clients
/// (draft-uberti-behave-turn-rest-00 §2.2).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestCredentials {
    /// `<expiry unix seconds>:<user>`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: String,
    /// Seconds the credentials are valid for.
    pub ttl: u64,
    /// TURN URIs to try (`turn:host:port?transport=udp`, ...).
    pub uris: Vec<String>,
}

/// Issues REST credentials for `user`, valid for `ttl_secs` from `unix_now`.
pub fn rest_credentials(
    secret: &str,
    user: &str,
    ttl_secs: u64,
    unix_now: u64,
    uris: Vec<String>,
) -> RestCredentials {
    let username = format!("{}:{user}", unix_now.saturating_add(ttl_secs));
    let password = rest_password(secret, &username);
    RestCredentials {
        username,
        password,
        ttl: ttl_secs,
        uris,
    }
}

/// The REST API password for a username: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &str, username: &str) -> String {
    let mut mac = HmacSha1::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// What a username resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The quota key: the user part of a REST username, or the static user.
    pub user: String,
    /// The password to derive the long-term key from.
    pub password: String,
    /// REST expiry in unix seconds; `None` for static users.
    pub expires: Option<u64>,
}

/// Why a username cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Not a static user and not a well-formed REST username.
    UnknownUser,
    /// A REST username whose expiry has passed.
    Expired,
}

/// Credential sources: the REST shared secret and static users.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Shared secret of the TURN REST API; `None` disables REST usernames.
    pub rest_secret: Option<String>,
    /// Static `user -> password`.
    pub users: BTreeMap<String, String>,
}

impl Credentials {
    /// Resolves a username. Expiry is reported but checked by the caller,
    /// which only enforces it at Allocate (long calls must keep refreshing).
    pub fn lookup(&self, username: &str) -> Result<Identity, AuthError> {
        if let Some(password) = self.users.get(username) {
            return Ok(Identity {
                user: username.to_owned(),
                password: password.clone(),
                expires: None,
            });
        }
        let Some(secret) = &self.rest_secret else {
            return Err(AuthError::UnknownUser);
        };
        let (expiry, user) = match username.split_once(':') {
            Some((expiry, user)) => (expiry, user),
            None => (username, ""),
        };
        let expires: u64 = expiry.parse().map_err(|_| AuthError::UnknownUser)?;
        Ok(Identity {
            user: if user.is_empty() {
                username.to_owned()
            } else {
                user.to_owned()
            },
            password: rest_password(secret, username),
            expires: Some(expires),
        })
    }
}

/// Stateless nonces: `<issued unix secs, 16 hex>` + 24 hex chars of
/// HMAC-SHA1(key, issued || client ip).
#[derive(Clone)]
pub struct NonceIssuer {
    key: [u8; 32],
    lifetime_secs: u64,
}

/// Outcome of checking a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Ours but too old, or not ours at all (another key, another client IP,
    /// garbage): RFC 8489 §9.2.4 answers both with 438 and a fresh nonce.
    Stale,
}

const NONCE_TS_LEN: usize = 16;
const NONCE_MAC_LEN: usize = 24;

impl NonceIssuer {
    pub fn new(key: [u8; 32], lifetime_secs: u64) -> Self {
        Self { key, lifetime_secs }
    }

    pub fn issue(&self, unix_now: u64, client: IpAddr) -> String {
        let mut out = String::with_capacity(NONCE_TS_LEN + NONCE_MAC_LEN);
        let _ = write!(out, "{unix_now:016x}");
        out.push_str(&self.mac_hex(unix_now, client));
        out
    }

    pub fn check(&self, nonce: &str, unix_now: u64, client: IpAddr) -> NonceCheck {
        if nonce.len() != NONCE_TS_LEN + NONCE_MAC_LEN || !nonce.is_ascii() {
            return NonceCheck::Stale;
        }
        let (ts, mac) = nonce.split_at(NONCE_TS_LEN);
        let Ok(issued) = u64::from_str_radix(ts, 16) else {
            return NonceCheck::Stale;
        };
        let expected = self.mac_hex(issued, client);
        if !constant_time_eq(expected.as_bytes(), mac.as_bytes()) {
            return NonceCheck::Stale;
        }
        // Issued in the future means our clock stepped back; accept it
        // rather than lock every client out.
        if unix_now.saturating_sub(issued) >= self.lifetime_secs {
            return NonceCheck::Stale;
        }
        NonceCheck::Valid
    }

    fn mac_hex(&self, issued: u64, client: IpAddr) -> String {
        let mut mac = HmacSha1::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(&issued.to_be_bytes());
        match client.to_canonical() {
            IpAddr::V4(ip) => mac.update(&ip.octets()),
            IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        let bytes = mac.finalize().into_bytes();
        let mut out = String::with_capacity(NONCE_MAC_LEN);
        for b in &bytes[..NONCE_MAC_LEN / 2] {
            let _ = write!(out, "{b:02x}");
        }
        out
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_password_matches_coturn_scheme() {
        // Known answer of coturn's --use-auth-secret scheme,
        // base64(HMAC-SHA1(secret, username)), computed outside this code:
        // printf '1700000000:alice' | openssl dgst -sha1 -hmac secret -binary | base64
        assert_eq!(
            rest_password("secret", "1700000000:alice"),
            "d8soP47RbdIKLDUOpnJPVQyq5Ts="
        );
        assert_ne!(
            rest_password("secret", "1700000001:alice"),
            "d8soP47RbdIKLDUOpnJPVQyq5Ts="
        );
    }

    #[test]
    fn rest_lookup_splits_expiry_and_user() {
        let c = Credentials {
            rest_secret: Some("s".into()),
            users: BTreeMap::new(),
        };
        let id = c.lookup("1700000000:alice").unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(id.expires, Some(1_700_000_000));
        assert_eq!(id.password, rest_password("s", "1700000000:alice"));
        assert_eq!(c.lookup("alice:1"), Err(AuthError::UnknownUser));
    }

    #[test]
    fn static_users_win_and_rest_can_be_off() {
        let mut users = BTreeMap::new();
        users.insert("bob".to_owned(), "pw".to_owned());
        let c = Credentials {
            rest_secret: None,
            users,
        };
        assert_eq!(c.lookup("bob").unwrap().password, "pw");
        assert_eq!(c.lookup("1:bob"), Err(AuthError::UnknownUser));
    }

    #[test]
    fn nonces_expire_and_bind_to_key_and_ip() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let n = NonceIssuer::new([7; 32], 600);
        let nonce = n.issue(1000, ip);
        assert_eq!(n.check(&nonce, 1000, ip), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, 1599, ip), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, 1600, ip), NonceCheck::Stale);
        assert_eq!(
            n.check(&nonce, 1000, "192.0.2.2".parse().unwrap()),
            NonceCheck::Stale
        );
        assert_eq!(
            NonceIssuer::new([8; 32], 600).check(&nonce, 1000, ip),
            NonceCheck::Stale
        );
        assert_eq!(n.check("garbage", 1000, ip), NonceCheck::Stale);
        assert_eq!(n.check("é", 1000, ip), NonceCheck::Stale);
    }
}
