//! The control-plane bus: one API, two implementations.
//!
//! - [`Bus::in_process`]: everything lives in this process. It is what a
//!   single node runs in production, so it keeps NATS semantics: wildcard
//!   subjects (`*` one token, `>` the rest), request/reply through an inbox
//!   with "no responders" and timeouts, KV buckets with revisions,
//!   create-if-absent, compare-and-swap and expiry `ttl` after the last
//!   write, and history streams bounded per subject by count and age.
//! - [`Bus::connect`]: the same over a NATS server via `async-nats` (core
//!   pub/sub, request/reply, JetStream KV with the bucket's `max_age`, a
//!   JetStream stream with `max_msgs_per_subject` and `max_age`).
//!
//! During a NATS outage every call fails fast with [`BusError::Unavailable`]
//! instead of queueing: the caller decides (heartbeats are skipped and
//! re-sent, chat sends are refused to the client). Subscriptions survive
//! reconnects (the client re-subscribes).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

mod local;
mod nats;

pub use local::LocalBus;
pub use nats::NatsBus;

/// How to reach a NATS server.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// `nats://host:port` (or several, comma separated).
    pub url: String,
    /// A `.creds` file (JWT + nkey seed).
    pub credentials: Option<PathBuf>,
    /// A PEM file of CA certificates to trust; setting it requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// The connection name the server shows (`connz`).
    pub name: Option<String>,
}

/// Whether the bus can reach its peers. The in-process bus is always connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusStatus {
    Connected,
    Disconnected,
}

/// Why a bus operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("invalid subject or key {0:?}")]
    InvalidSubject(String),
    #[error("no responders on {0}")]
    NoResponders(String),
    #[error("request on {0} timed out")]
    TimedOut(String),
    #[error("key {0} already exists")]
    KeyExists(String),
    #[error("key {0} is not at the expected revision")]
    WrongRevision(String),
    #[error("subject {0} is not covered by the history stream")]
    NotInStream(String),
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("bus error: {0}")]
    Other(String),
}

/// One message as a subscriber receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub subject: String,
    pub payload: Bytes,
    /// Where a request wants its answer ([`Bus::respond`]).
    pub reply: Option<String>,
}

/// The bus. Cheap to clone.
#[derive(Clone)]
pub enum Bus {
    Local(LocalBus),
    Nats(Arc<NatsBus>),
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bus::Local(_) => f.write_str("Bus::Local"),
            Bus::Nats(_) => f.write_str("Bus::Nats"),
        }
    }
}

impl Bus {
    /// The embedded bus: no server, same semantics.
    pub fn in_process() -> Bus {
        Bus::Local(LocalBus::new())
    }

    /// Connects to NATS; fails when the first connection cannot be made.
    /// Later outages reconnect by themselves with jittered backoff.
    pub async fn connect(opts: &NatsOptions) -> Result<Bus, BusError> {
        Ok(Bus::Nats(Arc::new(NatsBus::connect(opts).await?)))
    }

    pub fn is_nats(&self) -> bool {
        matches!(self, Bus::Nats(_))
    }

    /// The current connection status, and changes to it.
    pub fn status(&self) -> watch::Receiver<BusStatus> {
        match self {
            Bus::Local(b) => b.status(),
            Bus::Nats(b) => b.status(),
        }
    }

    /// Fire and forget to everyone subscribed to a matching pattern.
    pub async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        check_subject(subject, false)?;
        match self {
            Bus::Local(b) => b.publish(subject, None, payload),
            Bus::Nats(b) => b.publish(subject, payload).await,
        }
    }

    /// Answers a request ([`Message::reply`]); a message without a reply
    /// subject is ignored.
    pub async fn respond(&self, msg: &Message, payload: Bytes) -> Result<(), BusError> {
        let Some(reply) = &msg.reply else { return Ok(()) };
        self.publish(reply, payload).await
    }

    /// Subscribes to a subject or wildcard pattern. Dropping the
    /// subscription unsubscribes.
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError> {
        check_subject(pattern, true)?;
        match self {
            Bus::Local(b) => Ok(Subscription::Local(b.subscribe(pattern))),
            Bus::Nats(b) => Ok(Subscription::Nats(b.subscribe(pattern).await?)),
        }
    }

    /// Sends a request and waits for the first answer. No subscriber at all
    /// is [`BusError::NoResponders`] at once; a silent one [`BusError::TimedOut`].
    pub async fn request(&self, subject: &str, payload: Bytes, timeout: Duration) -> Result<Bytes, BusError> {
        check_subject(subject, false)?;
        match self {
            Bus::Local(b) => b.request(subject, payload, timeout).await,
            Bus::Nats(b) => b.request(subject, payload, timeout).await,
        }
    }

    /// Opens (creating if needed) a KV bucket whose keys expire `ttl` after
    /// their last write.
    pub async fn kv(&self, bucket: &str, ttl: Duration) -> Result<Kv, BusError> {
        check_name(bucket)?;
        match self {
            Bus::Local(b) => Ok(Kv::Local(b.kv(bucket, ttl))),
            Bus::Nats(b) => Ok(Kv::Nats(Arc::new(b.kv(bucket, ttl).await?))),
        }
    }

    /// Opens (creating if needed) a history stream capturing `pattern`,
    /// keeping per subject at most `limits.max_per_subject` messages no
    /// older than `limits.max_age`.
    pub async fn history(
        &self,
        name: &str,
        pattern: &str,
        limits: HistoryLimits,
    ) -> Result<History, BusError> {
        check_name(name)?;
        check_subject(pattern, true)?;
        match self {
            Bus::Local(b) => Ok(History::Local(b.history(name, pattern, limits))),
            Bus::Nats(b) => Ok(History::Nats(Arc::new(b.history(name, pattern, limits).await?))),
        }
    }
}

/// A live subscription.
pub enum Subscription {
    Local(local::LocalSubscription),
    Nats(async_nats::Subscriber),
}

impl Subscription {
    /// The next message; `None` when the bus is gone.
    pub async fn next(&mut self) -> Option<Message> {
        match self {
            Subscription::Local(s) => s.next().await,
            Subscription::Nats(s) => {
                use futures_util::StreamExt;
                let m = s.next().await?;
                Some(Message {
                    subject: m.subject.to_string(),
                    payload: m.payload,
                    reply: m.reply.map(|r| r.to_string()),
                })
            }
        }
    }
}

/// One KV value and its revision (for [`Kv::update`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Bytes,
    pub revision: u64,
}

/// A KV bucket.
#[derive(Clone)]
pub enum Kv {
    Local(local::LocalKv),
    Nats(Arc<nats::NatsKv>),
}

impl Kv {
    /// Writes `key` only if it does not exist (or was deleted or expired).
    pub async fn create(&self, key: &str, value: Bytes) -> Result<u64, BusError> {
        check_key(key)?;
        match self {
            Kv::Local(kv) => kv.create(key, value),
            Kv::Nats(kv) => kv.create(key, value).await,
        }
    }

    /// Writes `key` only if its current revision is `revision`.
    pub async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, BusError> {
        check_key(key)?;
        match self {
            Kv::Local(kv) => kv.update(key, value, revision),
            Kv::Nats(kv) => kv.update(key, value, revision).await,
        }
    }

    /// Writes `key` unconditionally.
    pub async fn put(&self, key: &str, value: Bytes) -> Result<u64, BusError> {
        check_key(key)?;
        match self {
            Kv::Local(kv) => Ok(kv.put(key, value)),
            Kv::Nats(kv) => kv.put(key, value).await,
        }
    }

    /// The live value of `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<KvEntry>, BusError> {
        check_key(key)?;
        match self {
            Kv::Local(kv) => Ok(kv.get(key)),
            Kv::Nats(kv) => kv.get(key).await,
        }
    }

    /// Removes `key`; with `revision`, only if it is still at that revision.
    pub async fn delete(&self, key: &str, revision: Option<u64>) -> Result<(), BusError> {
        check_key(key)?;
        match self {
            Kv::Local(kv) => kv.delete(key, revision),
            Kv::Nats(kv) => kv.delete(key, revision).await,
        }
    }

    /// Every live entry, ordered by key.
    pub async fn entries(&self) -> Result<Vec<KvEntry>, BusError> {
        match self {
            Kv::Local(kv) => Ok(kv.entries()),
            Kv::Nats(kv) => kv.entries().await,
        }
    }
}

/// Retention of a history stream, per subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    pub max_per_subject: usize,
    pub max_age: Duration,
}

/// One retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub subject: String,
    pub seq: u64,
    pub payload: Bytes,
}

/// An append's acknowledgement still to come: the stream sequence.
pub type PendingAppend = futures_util::future::BoxFuture<'static, Result<u64, BusError>>;

/// A history stream: appends are kept per subject within its limits.
#[derive(Clone)]
pub enum History {
    Local(local::LocalHistory),
    Nats(Arc<nats::NatsHistory>),
}

impl History {
    /// Stores a message (live subscribers of `subject` receive it too).
    pub async fn append(&self, subject: &str, payload: Bytes) -> Result<u64, BusError> {
        self.start_append(subject, payload).await?.await
    }

    /// Sends a message on its way and returns its acknowledgement (the
    /// stream sequence) as a future: appends started one after another are
    /// stored in that order, while their acknowledgements overlap.
    pub async fn start_append(&self, subject: &str, payload: Bytes) -> Result<PendingAppend, BusError> {
        check_subject(subject, false)?;
        match self {
            History::Local(h) => {
                let seq = h.append(subject, payload);
                Ok(Box::pin(std::future::ready(seq)))
            }
            History::Nats(h) => h.start_append(subject, payload).await,
        }
    }

    /// The last `n` retained messages of `subject`, oldest first.
    pub async fn last(&self, subject: &str, n: usize) -> Result<Vec<HistoryEntry>, BusError> {
        check_subject(subject, false)?;
        match self {
            History::Local(h) => Ok(h.last(subject, n)),
            History::Nats(h) => h.last(subject, n).await,
        }
    }
}

/// Whether `subject` (a concrete subject) matches `pattern` (NATS wildcards).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Subjects are dot-separated non-empty tokens of printable ASCII without
/// spaces; wildcards (`*` a whole token, `>` the last token) only in patterns.
fn check_subject(subject: &str, wildcards: bool) -> Result<(), BusError> {
    let bad = || BusError::InvalidSubject(subject.to_owned());
    if subject.is_empty() || subject.len() > 256 {
        return Err(bad());
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad());
        }
        let wild = *t == "*" || (*t == ">" && i == tokens.len() - 1);
        if wild && !wildcards {
            return Err(bad());
        }
        if !wild && (t.contains('*') || t.contains('>')) {
            return Err(bad());
        }
    }
    Ok(())
}

/// KV keys as JetStream allows them: `[-/_=.a-zA-Z0-9]+`, no leading or trailing dot.
fn check_key(key: &str) -> Result<(), BusError> {
    let ok = !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'=' | b'.'));
    ok.then_some(())
        .ok_or_else(|| BusError::InvalidSubject(key.to_owned()))
}

/// Bucket and stream names: `[a-zA-Z0-9_-]+`.
fn check_name(name: &str) -> Result<(), BusError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    ok.then_some(())
        .ok_or_else(|| BusError::InvalidSubject(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(subject_matches("room.*.chat", "room.a.chat"));
        assert!(!subject_matches("room.*.chat", "room.a.b.chat"));
        assert!(subject_matches("room.>", "room.a.b.chat"));
        assert!(!subject_matches("room.>", "room"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(!subject_matches("a.b.c", "a.b"));
    }

    #[test]
    fn subjects_and_keys_are_checked() {
        assert!(check_subject("room.a.chat", false).is_ok());
        assert!(check_subject("room.*.chat", false).is_err());
        assert!(check_subject("room.*.chat", true).is_ok());
        assert!(check_subject("room.>.x", true).is_err());
        assert!(check_subject("room..chat", false).is_err());
        assert!(check_subject("room a", false).is_err());
        assert!(check_key("nodes.n-1").is_ok());
        assert!(check_key("a b").is_err());
        assert!(check_key(".a").is_err());
        assert!(check_name("rooms").is_ok());
        assert!(check_name("ro.oms").is_err());
    }
}
