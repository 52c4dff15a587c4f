//! Moderation, Sans-IO: per-sender rate limits by role, banned words and
//! links, moderator actions and the bans and timeouts they leave behind.
//! Time is an input everywhere.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::ratelimit::Bucket;

/// Above this many tracked senders in a room, full (idle) buckets are forgotten.
const PRUNE_ABOVE: usize = 10_000;

/// Messages per second each role may send (the burst is one second's worth).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoleRates {
    pub streamer: f64,
    pub moderator: f64,
    pub viewer: f64,
    pub anonymous: f64,
}

impl Default for RoleRates {
    /// The seeds' numbers: streamer 50/s, viewer 10/s, anonymous 2/s;
    /// moderators get the streamer's rate.
    fn default() -> Self {
        RoleRates {
            streamer: 50.0,
            moderator: 50.0,
            viewer: 10.0,
            anonymous: 2.0,
        }
    }
}

impl RoleRates {
    pub fn of(&self, role: Role) -> f64 {
        match role {
            Role::Streamer => self.streamer,
            Role::Moderator => self.moderator,
            Role::Viewer => self.viewer,
            Role::Anonymous => self.anonymous,
        }
    }
}

/// Token buckets per sender identity.
#[derive(Debug, Default)]
pub struct SendLimiter {
    buckets: HashMap<String, Bucket>,
}

impl SendLimiter {
    /// Takes one message from `identity`'s allowance at `rate` per second.
    pub fn check(&mut self, identity: &str, rate: f64, now: Instant) -> Result<(), Duration> {
        let burst = rate.max(1.0);
        if self.buckets.len() > PRUNE_ABOVE {
            self.buckets.retain(|_, b| !b.is_full(now, rate, burst));
        }
        if let Some(b) = self.buckets.get_mut(identity) {
            return b.take(now, rate, burst);
        }
        let mut b = Bucket::full(burst, now);
        let taken = b.take(now, rate, burst);
        self.buckets.insert(identity.to_owned(), b);
        taken
    }
}

/// Why a message was not sent; the `code` of the client's error frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Empty,
    TooLong { max: usize },
    BannedWord,
    Link,
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Empty => "empty",
            Refusal::TooLong { .. } => "too_long",
            Refusal::BannedWord => "banned_word",
            Refusal::Link => "link",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::Empty => "message text is empty".into(),
            Refusal::TooLong { max } => format!("message text is longer than {max} characters"),
            Refusal::BannedWord => "message contains a banned word".into(),
            Refusal::Link => "links are not allowed in this chat".into(),
        }
    }
}

/// Content rules for message text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextFilter {
    /// Most characters (Unicode scalar values) in one message.
    pub max_chars: usize,
    /// Words refused anywhere in a message, compared case-insensitively as
    /// whole words (letters and digits).
    pub banned_words: BTreeSet<String>,
    /// Refuse links (`scheme://`, `www.`, `name.tld`) from viewers and
    /// anonymous members; streamers and moderators may post them.
    pub block_links: bool,
}

impl Default for TextFilter {
    fn default() -> Self {
        TextFilter {
            max_chars: 500,
            banned_words: BTreeSet::new(),
            block_links: true,
        }
    }
}

/// Top-level domains that make a bare `name.tld` count as a link.
const LINK_TLDS: &[&str] = &[
    "com", "net", "org", "io", "tv", "gg", "ly", "me", "co", "info", "biz", "xyz", "app", "dev", "ru", "de",
    "uk", "cn",
];

impl TextFilter {
    /// Checks `text` from a sender with `role`; trims nothing.
    pub fn check(&self, text: &str, role: Role) -> Result<(), Refusal> {
        if text.trim().is_empty() {
            return Err(Refusal::Empty);
        }
        if text.chars().count() > self.max_chars {
            return Err(Refusal::TooLong { max: self.max_chars });
        }
        if !self.banned_words.is_empty() {
            let banned = text
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .any(|w| self.banned_words.contains(&w.to_lowercase()));
            if banned {
                return Err(Refusal::BannedWord);
            }
        }
        if self.block_links && !role.moderates() && has_link(text) {
            return Err(Refusal::Link);
        }
        Ok(())
    }
}

fn has_link(text: &str) -> bool {
    let lower = text.to_lowercase();
    if lower.contains("://") || lower.contains("www.") {
        return true;
    }
    lower.split_whitespace().any(|word| {
        let word = word.trim_matches(|c: char| !c.is_alphanumeric());
        let mut parts = word.rsplit('.');
        let tld = parts.next().unwrap_or("");
        let host = parts.next().unwrap_or("");
        // The TLD may be followed by a path: `evil.com/x`.
        let tld = tld.split('/').next().unwrap_or("");
        !host.is_empty() && LINK_TLDS.contains(&tld)
    })
}

/// A moderator's action, as `POST /v1/moderation/{room}/actions` takes it
/// and as it travels on `room.<id>.moderation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
pub enum Action {
    /// Disconnects `identity` on every node and refuses it until unbanned.
    Ban { identity: String },
    /// Lifts a ban or timeout.
    Unban { identity: String },
    /// Refuses `identity`'s messages for `seconds`.
    Timeout { identity: String, seconds: u64 },
    /// Removes message `id` from every client and from history on join.
    Delete { id: String },
}

/// Longest timeout a moderator may give.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

impl Action {
    /// Parses and checks a request body.
    pub fn parse(body: &str) -> Result<Action, String> {
        let action: Action = serde_json::from_str(body).map_err(|e| format!("bad action: {e}"))?;
        match &action {
            Action::Ban { identity } | Action::Unban { identity } | Action::Timeout { identity, .. }
                if identity.is_empty() || identity.len() > 256 =>
            {
                Err("identity must be 1-256 bytes".into())
            }
            Action::Timeout { seconds, .. } if *seconds == 0 || *seconds > MAX_TIMEOUT_SECS => {
                Err(format!("seconds must be 1-{MAX_TIMEOUT_SECS}"))
            }
            Action::Delete { id } if id.is_empty() || id.len() > 64 => Err("id must be 1-64 bytes".into()),
            _ => Ok(action),
        }
    }
}

/// A ban or timeout on one identity: until when, in Unix milliseconds
/// (`None`: until lifted). Wall-clock time because it crosses nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sanction {
    pub until_ms: Option<u64>,
    /// A ban disconnects and refuses to connect; a timeout only mutes.
    pub ban: bool,
}

impl Sanction {
    pub fn active(&self, now_ms: u64) -> bool {
        self.until_ms.is_none_or(|u| now_ms < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_follow_roles_and_refill() {
        let rates = RoleRates::default();
        let mut l = SendLimiter::default();
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(l.check("anon-1", rates.of(Role::Anonymous), t0).is_ok());
        }
        assert!(l.check("anon-1", rates.of(Role::Anonymous), t0).is_err());
        for _ in 0..10 {
            assert!(l.check("v", rates.of(Role::Viewer), t0).is_ok());
        }
        assert!(l.check("v", rates.of(Role::Viewer), t0).is_err());
        for _ in 0..50 {
            assert!(l.check("s", rates.of(Role::Streamer), t0).is_ok());
        }
        assert!(l.check("s", rates.of(Role::Streamer), t0).is_err());
        let later = t0 + Duration::from_millis(500);
        assert!(l.check("anon-1", rates.of(Role::Anonymous), later).is_ok());
        assert!(l.check("anon-1", rates.of(Role::Anonymous), later).is_err());
    }

    #[test]
    fn text_rules() {
        let f = TextFilter {
            max_chars: 20,
            banned_words: ["darn".to_owned()].into(),
            block_links: true,
        };
        assert_eq!(f.check("hi", Role::Viewer), Ok(()));
        assert_eq!(f.check("  ", Role::Viewer), Err(Refusal::Empty));
        assert_eq!(
            f.check(&"é".repeat(21), Role::Viewer),
            Err(Refusal::TooLong { max: 20 })
        );
        assert_eq!(f.check("oh DARN!", Role::Viewer), Err(Refusal::BannedWord));
        assert_eq!(f.check("darned", Role::Viewer), Ok(()), "whole words only");
        assert_eq!(f.check("see evil.com", Role::Viewer), Err(Refusal::Link));
        assert_eq!(f.check("a://b", Role::Anonymous), Err(Refusal::Link));
        assert_eq!(f.check("evil.com/x", Role::Viewer), Err(Refusal::Link));
        assert_eq!(f.check("see evil.com", Role::Moderator), Ok(()));
        assert_eq!(f.check("v1.2 ok", Role::Viewer), Ok(()));
    }

    #[test]
    fn actions_parse_and_are_checked() {
        assert_eq!(
            Action::parse(r#"{"action":"ban","identity":"bob"}"#),
            Ok(Action::Ban {
                identity: "bob".into()
            })
        );
        assert_eq!(
            Action::parse(r#"{"action":"timeout","identity":"bob","seconds":30}"#),
            Ok(Action::Timeout {
                identity: "bob".into(),
                seconds: 30
            })
        );
        assert!(Action::parse(r#"{"action":"timeout","identity":"bob","seconds":0}"#).is_err());
        assert!(Action::parse(r#"{"action":"ban","identity":""}"#).is_err());
        assert!(Action::parse(r#"{"action":"nuke"}"#).is_err());
        assert!(Action::parse(r#"{"action":"delete","id":"x","extra":1}"#).is_err());
        assert!(Action::parse("{").is_err());
    }

    #[test]
    fn sanctions_expire() {
        let s = Sanction {
            until_ms: Some(1_000),
            ban: false,
        };
        assert!(s.active(999));
        assert!(!s.active(1_000));
        assert!(
            Sanction {
                until_ms: None,
                ban: true
            }
            .active(u64::MAX)
        );
    }
}
