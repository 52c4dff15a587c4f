//! The in-process bus. Locks here guard small maps and are never held across
//! an `.await`; delivery is a bounded channel per subscription that drops
//! (with a `warn!`) when a subscriber falls 65,536 messages behind, as a NATS
//! slow consumer would.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::warn;

use crate::locks::{lock, read, write};

use super::{BusError, BusStatus, HistoryEntry, HistoryLimits, KvEntry, Message, subject_matches};

/// Messages a subscription may have pending (async-nats' default).
const SUBSCRIPTION_CAPACITY: usize = 65_536;

#[derive(Clone)]
pub struct LocalBus {
    inner: Arc<Inner>,
}

struct Inner {
    subs: RwLock<BTreeMap<u64, Sub>>,
    next_id: AtomicU64,
    buckets: Mutex<HashMap<String, LocalKv>>,
    streams: Mutex<HashMap<String, LocalHistory>>,
    status: watch::Sender<BusStatus>,
}

struct Sub {
    pattern: String,
    tx: mpsc::Sender<Message>,
}

impl Default for LocalBus {
    fn default() -> Self {
        LocalBus::new()
    }
}

impl LocalBus {
    pub fn new() -> LocalBus {
        LocalBus {
            inner: Arc::new(Inner {
                subs: RwLock::new(BTreeMap::new()),
                next_id: AtomicU64::new(1),
                buckets: Mutex::new(HashMap::new()),
                streams: Mutex::new(HashMap::new()),
                status: watch::Sender::new(BusStatus::Connected),
            }),
        }
    }

    pub fn status(&self) -> watch::Receiver<BusStatus> {
        self.inner.status.subscribe()
    }

    pub(super) fn publish(
        &self,
        subject: &str,
        reply: Option<String>,
        payload: Bytes,
    ) -> Result<(), BusError> {
        self.inner.publish(subject, reply, payload);
        Ok(())
    }

    pub(super) fn subscribe(&self, pattern: &str) -> LocalSubscription {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_CAPACITY);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let sub = Sub {
            pattern: pattern.to_owned(),
            tx,
        };
        write(&self.inner.subs).insert(id, sub);
        LocalSubscription {
            id,
            rx,
            bus: Arc::downgrade(&self.inner),
        }
    }

    pub(super) async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        let inbox = format!("_INBOX.{:032x}", rand::random::<u128>());
        let mut answers = self.subscribe(&inbox);
        if !self.inner.has_subscriber(subject) {
            return Err(BusError::NoResponders(subject.to_owned()));
        }
        self.inner.publish(subject, Some(inbox), payload);
        match tokio::time::timeout(timeout, answers.next()).await {
            Ok(Some(m)) => Ok(m.payload),
            Ok(None) => Err(BusError::Unavailable("in-process bus dropped".into())),
            Err(_) => Err(BusError::TimedOut(subject.to_owned())),
        }
    }

    pub(super) fn kv(&self, bucket: &str, ttl: Duration) -> LocalKv {
        lock(&self.inner.buckets)
            .entry(bucket.to_owned())
            .or_insert_with(|| LocalKv {
                state: Arc::new(Mutex::new(KvState::new(ttl))),
            })
            .clone()
    }

    pub(super) fn history(&self, name: &str, pattern: &str, limits: HistoryLimits) -> LocalHistory {
        lock(&self.inner.streams)
            .entry(name.to_owned())
            .or_insert_with(|| LocalHistory {
                state: Arc::new(Mutex::new(HistoryState::new(pattern, limits))),
                bus: Arc::downgrade(&self.inner),
            })
            .clone()
    }
}

impl Inner {
    fn publish(&self, subject: &str, reply: Option<String>, payload: Bytes) {
        let subs = read(&self.subs);
        for (id, sub) in subs.iter() {
            if !subject_matches(&sub.pattern, subject) {
                continue;
            }
            let msg = Message {
                subject: subject.to_owned(),
                payload: payload.clone(),
                reply: reply.clone(),
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = sub.tx.try_send(msg) {
                warn!(sub = id, pattern = %sub.pattern, %subject, "slow consumer: message dropped");
            }
        }
    }

    fn has_subscriber(&self, subject: &str) -> bool {
        read(&self.subs)
            .values()
            .any(|s| subject_matches(&s.pattern, subject))
    }
}

pub struct LocalSubscription {
    id: u64,
    rx: mpsc::Receiver<Message>,
    bus: Weak<Inner>,
}

impl LocalSubscription {
    pub async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

impl Drop for LocalSubscription {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            write(&bus.subs).remove(&self.id);
        }
    }
}

#[derive(Clone)]
pub struct LocalKv {
    state: Arc<Mutex<KvState>>,
}

impl LocalKv {
    pub(super) fn create(&self, key: &str, value: Bytes) -> Result<u64, BusError> {
        lock(&self.state).create(Instant::now(), key, value)
    }

    pub(super) fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, BusError> {
        lock(&self.state).update(Instant::now(), key, value, revision)
    }

    pub(super) fn put(&self, key: &str, value: Bytes) -> u64 {
        lock(&self.state).put(Instant::now(), key, value)
    }

    pub(super) fn get(&self, key: &str) -> Option<KvEntry> {
        lock(&self.state).get(Instant::now(), key)
    }

    pub(super) fn delete(&self, key: &str, revision: Option<u64>) -> Result<(), BusError> {
        lock(&self.state).delete(Instant::now(), key, revision)
    }

    pub(super) fn entries(&self) -> Vec<KvEntry> {
        lock(&self.state).entries(Instant::now())
    }
}

/// A KV bucket's state, fed the time: revisions come from one counter per
/// bucket (like the sequence of the stream behind a JetStream bucket), and a
/// value lives `ttl` after its last write.
struct KvState {
    ttl: Duration,
    last_revision: u64,
    entries: BTreeMap<String, Slot>,
}

struct Slot {
    value: Bytes,
    revision: u64,
    written: Instant,
}

impl KvState {
    fn new(ttl: Duration) -> KvState {
        KvState {
            ttl,
            last_revision: 0,
            entries: BTreeMap::new(),
        }
    }

    fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        if ttl.is_zero() {
            return;
        }
        self.entries.retain(|_, s| now.duration_since(s.written) < ttl);
    }

    fn write(&mut self, now: Instant, key: &str, value: Bytes) -> u64 {
        self.last_revision += 1;
        let slot = Slot {
            value,
            revision: self.last_revision,
            written: now,
        };
        self.entries.insert(key.to_owned(), slot);
        self.last_revision
    }

    fn create(&mut self, now: Instant, key: &str, value: Bytes) -> Result<u64, BusError> {
        self.expire(now);
        if self.entries.contains_key(key) {
            return Err(BusError::KeyExists(key.to_owned()));
        }
        Ok(self.write(now, key, value))
    }

    fn update(&mut self, now: Instant, key: &str, value: Bytes, revision: u64) -> Result<u64, BusError> {
        self.expire(now);
        match self.entries.get(key) {
            Some(s) if s.revision == revision => Ok(self.write(now, key, value)),
            _ => Err(BusError::WrongRevision(key.to_owned())),
        }
    }

    fn put(&mut self, now: Instant, key: &str, value: Bytes) -> u64 {
        self.expire(now);
        self.write(now, key, value)
    }

    fn get(&mut self, now: Instant, key: &str) -> Option<KvEntry> {
        self.expire(now);
        self.entries.get(key).map(|s| KvEntry {
            key: key.to_owned(),
            value: s.value.clone(),
            revision: s.revision,
        })
    }

    fn delete(&mut self, now: Instant, key: &str, revision: Option<u64>) -> Result<(), BusError> {
        self.expire(now);
        if let Some(expected) = revision
            && self.entries.get(key).map(|s| s.revision) != Some(expected)
        {
            return Err(BusError::WrongRevision(key.to_owned()));
        }
        if self.entries.remove(key).is_some() {
            // A delete marker takes a revision in JetStream too.
            self.last_revision += 1;
        }
        Ok(())
    }

    fn entries(&mut self, now: Instant) -> Vec<KvEntry> {
        self.expire(now);
        self.entries
            .iter()
            .map(|(k, s)| KvEntry {
                key: k.clone(),
                value: s.value.clone(),
                revision: s.revision,
            })
            .collect()
    }
}

#[derive(Clone)]
pub struct LocalHistory {
    state: Arc<Mutex<HistoryState>>,
    bus: Weak<Inner>,
}

impl LocalHistory {
    pub(super) fn append(&self, subject: &str, payload: Bytes) -> Result<u64, BusError> {
        let seq = lock(&self.state).append(Instant::now(), subject, payload.clone())?;
        if let Some(bus) = self.bus.upgrade() {
            bus.publish(subject, None, payload);
        }
        Ok(seq)
    }

    pub(super) fn last(&self, subject: &str, n: usize) -> Vec<HistoryEntry> {
        lock(&self.state).last(Instant::now(), subject, n)
    }
}

/// A bounded ring per subject, fed the time.
struct HistoryState {
    pattern: String,
    limits: HistoryLimits,
    last_seq: u64,
    subjects: BTreeMap<String, VecDeque<(u64, Instant, Bytes)>>,
}

impl HistoryState {
    fn new(pattern: &str, limits: HistoryLimits) -> HistoryState {
        HistoryState {
            pattern: pattern.to_owned(),
            limits,
            last_seq: 0,
            subjects: BTreeMap::new(),
        }
    }

    fn append(&mut self, now: Instant, subject: &str, payload: Bytes) -> Result<u64, BusError> {
        if !subject_matches(&self.pattern, subject) {
            return Err(BusError::NotInStream(subject.to_owned()));
        }
        self.expire(now);
        self.last_seq += 1;
        let ring = self.subjects.entry(subject.to_owned()).or_default();
        ring.push_back((self.last_seq, now, payload));
        while ring.len() > self.limits.max_per_subject {
            ring.pop_front();
        }
        Ok(self.last_seq)
    }

    fn last(&mut self, now: Instant, subject: &str, n: usize) -> Vec<HistoryEntry> {
        self.expire(now);
        let Some(ring) = self.subjects.get(subject) else {
            return Vec::new();
        };
        let skip = ring.len().saturating_sub(n);
        ring.iter()
            .skip(skip)
            .map(|(seq, _, payload)| HistoryEntry {
                subject: subject.to_owned(),
                seq: *seq,
                payload: payload.clone(),
            })
            .collect()
    }

    fn expire(&mut self, now: Instant) {
        let max_age = self.limits.max_age;
        for ring in self.subjects.values_mut() {
            while ring
                .front()
                .is_some_and(|(_, t, _)| now.duration_since(*t) >= max_age)
            {
                ring.pop_front();
            }
        }
        self.subjects.retain(|_, ring| !ring.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_expires_ttl_after_last_write() {
        let t0 = Instant::now();
        let mut kv = KvState::new(Duration::from_secs(3));
        let r1 = kv.create(t0, "a", Bytes::from_static(b"1")).unwrap();
        let r2 = kv
            .update(t0 + Duration::from_secs(2), "a", Bytes::from_static(b"2"), r1)
            .unwrap();
        assert!(kv.get(t0 + Duration::from_secs(4), "a").is_some());
        assert_eq!(kv.get(t0 + Duration::from_secs(4), "a").unwrap().revision, r2);
        assert!(kv.get(t0 + Duration::from_secs(5), "a").is_none());
        assert!(kv.create(t0 + Duration::from_secs(5), "a", Bytes::new()).is_ok());
    }

    #[test]
    fn history_drops_by_count_and_age() {
        let t0 = Instant::now();
        let limits = HistoryLimits {
            max_per_subject: 2,
            max_age: Duration::from_secs(10),
        };
        let mut h = HistoryState::new("room.*.chat", limits);
        for i in 0..3u8 {
            h.append(
                t0 + Duration::from_secs(i.into()),
                "room.a.chat",
                Bytes::from(vec![i]),
            )
            .unwrap();
        }
        let got: Vec<u8> = h
            .last(t0, "room.a.chat", 10)
            .iter()
            .map(|e| e.payload[0])
            .collect();
        assert_eq!(got, [1, 2]);
        assert_eq!(h.last(t0 + Duration::from_secs(11), "room.a.chat", 10).len(), 1);
        assert!(h.last(t0 + Duration::from_secs(12), "room.a.chat", 10).is_empty());
        assert!(h.append(t0, "room.a.other", Bytes::new()).is_err());
    }
}
