//! The bus over NATS (`async-nats`): core pub/sub and request/reply,
//! JetStream KV buckets (`max_age` = the keys' TTL) and JetStream streams for
//! history.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{
    BusError, BusStatus, HistoryEntry, HistoryLimits, KvEntry, NatsOptions, PendingAppend, subject_matches,
};

/// JetStream API calls give up after this long (async-nats' default is 5 s;
/// the control plane would rather fail and retry).
const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    status: Arc<watch::Sender<BusStatus>>,
}

impl NatsBus {
    pub(super) async fn connect(opts: &NatsOptions) -> Result<NatsBus, BusError> {
        let status = Arc::new(watch::Sender::new(BusStatus::Disconnected));
        let events = status.clone();
        let mut options = async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            info!("nats: connected");
                            events.send_replace(BusStatus::Connected);
                        }
                        async_nats::Event::Disconnected => {
                            warn!("nats: disconnected, reconnecting");
                            events.send_replace(BusStatus::Disconnected);
                        }
                        other => debug!(event = %other, "nats event"),
                    }
                }
            })
            .reconnect_delay_callback(reconnect_delay)
            .connection_timeout(Duration::from_secs(3));
        if let Some(name) = &opts.name {
            options = options.name(name);
        }
        if let Some(path) = &opts.credentials {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| BusError::Other(format!("credentials file {}: {e}", path.display())))?;
        }
        if let Some(ca) = &opts.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        // `--nats` takes a comma-separated list (a cluster's servers); the
        // client parses one URL per entry.
        let servers: Vec<&str> = opts
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let client = options
            .connect(servers)
            .await
            .map_err(|e| BusError::Unavailable(format!("connect to {}: {e}", opts.url)))?;
        // The Connected event may race the return of `connect`.
        status.send_replace(BusStatus::Connected);
        let mut js = jetstream::new(client.clone());
        js.set_timeout(JETSTREAM_TIMEOUT);
        Ok(NatsBus { client, js, status })
    }

    pub(super) fn status(&self) -> watch::Receiver<BusStatus> {
        self.status.subscribe()
    }

    /// Deliberately refuses instead of queueing while disconnected.
    fn check_connected(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(BusError::Unavailable("nats disconnected".into())),
        }
    }

    pub(super) async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        self.check_connected()?;
        self.client
            .publish(subject.to_owned(), payload)
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))
    }

    pub(super) async fn subscribe(&self, pattern: &str) -> Result<async_nats::Subscriber, BusError> {
        self.check_connected()?;
        let sub = self
            .client
            .subscribe(pattern.to_owned())
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        // Make the interest known to the server before the caller relies on it.
        self.client
            .flush()
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        Ok(sub)
    }

    pub(super) async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        use async_nats::RequestErrorKind as K;
        self.check_connected()?;
        let req = async_nats::Request::new().payload(payload).timeout(Some(timeout));
        match self.client.send_request(subject.to_owned(), req).await {
            Ok(m) => Ok(m.payload),
            Err(e) => Err(match e.kind() {
                K::NoResponders => BusError::NoResponders(subject.to_owned()),
                K::TimedOut => BusError::TimedOut(subject.to_owned()),
                K::InvalidSubject => BusError::InvalidSubject(subject.to_owned()),
                _ => BusError::Other(e.to_string()),
            }),
        }
    }

    pub(super) async fn kv(&self, bucket: &str, ttl: Duration) -> Result<NatsKv, BusError> {
        self.check_connected()?;
        let config = kv::Config {
            bucket: bucket.to_owned(),
            history: 1,
            max_age: ttl,
            ..Default::default()
        };
        // Creating an existing bucket with the same config succeeds; with
        // another config (another TTL) it fails, and the existing one is used.
        let store = match self.js.create_key_value(config).await {
            Ok(store) => store,
            Err(create) => self
                .js
                .get_key_value(bucket)
                .await
                .map_err(|e| BusError::Other(format!("kv bucket {bucket}: {create}; {e}")))?,
        };
        Ok(NatsKv {
            bus: self.clone(),
            store,
        })
    }

    pub(super) async fn history(
        &self,
        name: &str,
        pattern: &str,
        limits: HistoryLimits,
    ) -> Result<NatsHistory, BusError> {
        self.check_connected()?;
        let config = stream::Config {
            name: name.to_owned(),
            subjects: vec![pattern.to_owned()],
            max_messages_per_subject: i64::try_from(limits.max_per_subject).unwrap_or(i64::MAX),
            max_age: limits.max_age,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            ..Default::default()
        };
        let stream = match self.js.get_or_create_stream(config).await {
            Ok(s) => s,
            Err(e) => return Err(BusError::Other(format!("stream {name}: {e}"))),
        };
        Ok(NatsHistory {
            bus: self.clone(),
            stream,
            pattern: pattern.to_owned(),
        })
    }
}

/// Full-jitter exponential backoff: uniform in [0, min(4 s, 100 ms · 2^n)],
/// at least 50 ms, so nodes that lost the server together do not reconnect
/// in lockstep.
fn reconnect_delay(attempts: usize) -> Duration {
    let cap_ms = 100u64.saturating_mul(1 << attempts.min(6)).min(4_000);
    Duration::from_millis(rand::random_range(50..=cap_ms.max(50)))
}

/// A JetStream KV bucket; every call fails fast while disconnected.
pub struct NatsKv {
    bus: NatsBus,
    store: kv::Store,
}

impl NatsKv {
    pub(super) async fn create(&self, key: &str, value: Bytes) -> Result<u64, BusError> {
        self.bus.check_connected()?;
        self.store.create(key, value).await.map_err(|e| match e.kind() {
            kv::CreateErrorKind::AlreadyExists => BusError::KeyExists(key.to_owned()),
            kv::CreateErrorKind::InvalidKey => BusError::InvalidSubject(key.to_owned()),
            _ => BusError::Unavailable(e.to_string()),
        })
    }

    pub(super) async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, BusError> {
        self.bus.check_connected()?;
        self.store
            .update(key, value, revision)
            .await
            .map_err(|e| update_error(key, e))
    }

    pub(super) async fn put(&self, key: &str, value: Bytes) -> Result<u64, BusError> {
        self.bus.check_connected()?;
        self.store
            .put(key, value)
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<KvEntry>, BusError> {
        self.bus.check_connected()?;
        let entry = self
            .store
            .entry(key)
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| KvEntry {
                key: e.key,
                value: e.value,
                revision: e.revision,
            }))
    }

    pub(super) async fn delete(&self, key: &str, revision: Option<u64>) -> Result<(), BusError> {
        self.bus.check_connected()?;
        self.store
            .delete_expect_revision(key, revision)
            .await
            .map_err(|e| update_error(key, e))
    }

    /// Every live key with its value. The keys come from the stream's
    /// per-subject state (one server snapshot), not from `Store::keys`,
    /// whose last-per-subject consumer misses keys rewritten while it
    /// runs: 107 of 300 listings missed one with four keys rewritten in a
    /// loop (`bus::kv_entries_lists_every_key_while_the_keys_are_rewritten`),
    /// and a heartbeat's view lost a live node that way.
    pub(super) async fn entries(&self) -> Result<Vec<KvEntry>, BusError> {
        self.bus.check_connected()?;
        let unavailable = |e: stream::InfoError| BusError::Unavailable(e.to_string());
        let prefix = self.store.prefix.as_str();
        let mut subjects = self
            .store
            .stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(unavailable)?;
        let mut keys: Vec<String> = Vec::new();
        while let Some(s) = subjects.next().await {
            let (subject, _count) = s.map_err(unavailable)?;
            if let Some(key) = subject.strip_prefix(prefix) {
                keys.push(key.to_owned());
            }
        }
        keys.sort();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            // A key may be deleted, expire or go between the listing and the
            // read.
            if let Some(e) = self.get(&k).await? {
                out.push(e);
            }
        }
        Ok(out)
    }
}

fn update_error(key: &str, e: kv::UpdateError) -> BusError {
    match e.kind() {
        kv::UpdateErrorKind::WrongLastRevision => BusError::WrongRevision(key.to_owned()),
        kv::UpdateErrorKind::InvalidKey => BusError::InvalidSubject(key.to_owned()),
        _ => {
            // JetStream reports a failed expected-revision check as an API error.
            let text = e.to_string();
            if text.contains("wrong last sequence") {
                BusError::WrongRevision(key.to_owned())
            } else {
                BusError::Unavailable(text)
            }
        }
    }
}

#[derive(Clone)]
pub struct NatsHistory {
    bus: NatsBus,
    stream: stream::Stream,
    pattern: String,
}

impl NatsHistory {
    /// Hands the message to the connection (in call order) and returns the
    /// stream's acknowledgement still to come, so a caller can keep
    /// several appends in flight.
    pub(super) async fn start_append(
        &self,
        subject: &str,
        payload: Bytes,
    ) -> Result<PendingAppend, BusError> {
        if !subject_matches(&self.pattern, subject) {
            return Err(BusError::NotInStream(subject.to_owned()));
        }
        self.bus.check_connected()?;
        let ack = self
            .bus
            .js
            .publish(subject.to_owned(), payload)
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        Ok(Box::pin(async move {
            ack.await
                .map(|a| a.sequence)
                .map_err(|e| BusError::Unavailable(e.to_string()))
        }))
    }

    /// Reads what the stream retains for `subject` through a short-lived
    /// ephemeral consumer; the stream's limits bound how much that is.
    pub(super) async fn last(&self, subject: &str, n: usize) -> Result<Vec<HistoryEntry>, BusError> {
        self.bus.check_connected()?;
        let unavailable = |e: &dyn std::fmt::Display| BusError::Unavailable(e.to_string());
        let consumer: consumer::PullConsumer = self
            .stream
            .create_consumer(consumer::pull::Config {
                filter_subject: subject.to_owned(),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(5),
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&e))?;
        let pending = usize::try_from(consumer.cached_info().num_pending).unwrap_or(usize::MAX);
        let mut out = Vec::with_capacity(pending.min(n));
        if pending > 0 {
            let mut batch = consumer
                .fetch()
                .max_messages(pending)
                .expires(JETSTREAM_TIMEOUT)
                .messages()
                .await
                .map_err(|e| unavailable(&e))?;
            while let Some(m) = batch.next().await {
                let m = m.map_err(|e| unavailable(&e))?;
                let seq = m.info().map(|i| i.stream_sequence).unwrap_or_default();
                out.push(HistoryEntry {
                    subject: m.subject.to_string(),
                    seq,
                    payload: m.payload.clone(),
                });
                if out.len() == pending {
                    break;
                }
            }
        }
        let name = consumer.cached_info().name.clone();
        if let Err(e) = self.stream.delete_consumer(&name).await {
            debug!(%name, error = %e, "history consumer left to expire");
        }
        let skip = out.len().saturating_sub(n);
        Ok(out.split_off(skip))
    }
}
