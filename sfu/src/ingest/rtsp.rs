//! RTSP pull (`POST /v1/ingest/{room}`): one tokio task per pull around
//! `retina`'s client. A pull connects (DESCRIBE, SETUP of the H.264
//! stream and of one AAC or G.711 stream, PLAY), claims its room as an
//! RTMP publish does and becomes the room's ingest source on its home
//! worker; the frames `retina` depacketizes go through the shared
//! [`Source`] to RTP. When the camera drops, the source leaves the room
//! and the pull tries again after a backoff ([`Retry`], Sans-IO).
//!
//! Each pull is cluster room state: a record in the bus's `pulls` bucket
//! ([`super::records`]) that the running node keeps current and any node
//! answers `GET`, `DELETE` and `/v1/rooms/{room}` from; deleting it stops
//! the pull, and when the pull's node leaves the registry a live node
//! adopts the record (compare-and-swap) and restarts the pull. A single
//! node's in-process bus holds the same records for it alone.
//!
//! Bounds: [`MAX_PULLS`] per node (finished ones count until deleted; an
//! adopter at the limit does not adopt);
//! 5 s from connect to PLAY answered, 10 s without a frame; the frame
//! sizes of [`Source`]. A URL's credentials go to `retina` as
//! [`Credentials`] and are cut from the URL itself: logs, answers and
//! listings show `rtsp://***@host/…`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use retina::client::{Credentials, Demuxed, PlayOptions, Session, SessionOptions, SetupOptions, Transport};
use retina::codec::{CodecItem, FrameFormat, ParametersRef, VideoParametersCodec};
use serde::Serialize;
use signaling::PullRequest;
use signaling::bus::{BusError, Kv};
use signaling::cluster::{Cluster, NodeId};
use tokio::sync::{Notify, oneshot};
use tracing::{debug, error, info, warn};
use url::Url;
use wave_metrics::{Kind, single};
use wave_vocab::{MediaError, RoomId, SessionId};

use super::audio::{Law, ToOpus};
use super::ntp_now;
use super::records::{Listed, Orphans, PullRecord, Sealer, Secret};
use super::source::{AvcConfig, Source};
use crate::engine::IngestOpen;
use crate::ingest::IngestNode;

/// Pulls one node keeps (each holds a task and, while playing, a TCP or
/// UDP flow from a camera).
pub const MAX_PULLS: usize = 16;
/// From TCP connect to PLAY answered: a camera on a LAN answers in well
/// under a second; one that accepts and says nothing is given up on.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// No frame for this long: the camera is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Failed attempts in a row before a pull that never played gives up
/// (1 + 2 + 4 + 8 + 16 s of backoff between them): a wrong URL or a
/// camera that answers nonsense shows `failed`. A pull that has played
/// retries until deleted or its token expires.
const ATTEMPTS_BEFORE_PLAYING: u32 = 6;
/// Longest failure reason kept (the API's and the log's).
const MAX_REASON: usize = 300;

/// A pull as `GET /v1/ingest/{room}/{id}` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum PullState {
    Connecting,
    Playing,
    /// The last attempt failed; the next starts after `backoff_ms`.
    Retrying {
        attempt: u32,
        backoff_ms: u64,
        reason: String,
    },
    /// Given up: a camera that never played, or nothing to play.
    Failed {
        reason: String,
    },
    /// The token's `exp` passed.
    Ended {
        reason: String,
    },
}

/// Why one attempt ended; each is a label of
/// `wave_ingest_rtsp_failures_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer (or no PLAY) within [`CONNECT_TIMEOUT`].
    Timeout(String),
    /// Connection refused, or an answer that is not RTSP or says no.
    Protocol(String),
    /// The camera asks for credentials it was not given, or refuses them.
    Auth(String),
    /// No H.264 stream to play: trying again will not help.
    Codec(String),
    /// The room is published elsewhere, or the node refused the source.
    Room(String),
    /// The camera stopped sending or closed the stream while playing.
    Dropped(String),
}

const FAILURES: [&str; 6] = ["timeout", "protocol", "auth", "codec", "room", "dropped"];

impl Failure {
    fn index(&self) -> usize {
        match self {
            Failure::Timeout(_) => 0,
            Failure::Protocol(_) => 1,
            Failure::Auth(_) => 2,
            Failure::Codec(_) => 3,
            Failure::Room(_) => 4,
            Failure::Dropped(_) => 5,
        }
    }

    fn reason(&self) -> String {
        let (label, why) = match self {
            Failure::Timeout(w)
            | Failure::Protocol(w)
            | Failure::Auth(w)
            | Failure::Codec(w)
            | Failure::Room(w)
            | Failure::Dropped(w) => (FAILURES[self.index()], w),
        };
        format!("{label}: {why}")
    }
}

/// When a pull tries again (Sans-IO): attempts' outcomes in, the pull's
/// next state out.
#[derive(Debug, Default)]
pub struct Retry {
    /// Failed attempts since the last that played.
    failed: u32,
    played: bool,
}

impl Retry {
    /// An attempt reached PLAY and the room took the source.
    pub fn handle_playing(&mut self) {
        self.played = true;
        self.failed = 0;
    }

    /// An attempt ended with `failure`: `Retrying` with the backoff to wait,
    /// or `Failed`.
    pub fn handle_failure(&mut self, failure: &Failure) -> PullState {
        self.failed += 1;
        let reason = failure.reason();
        let permanent = matches!(failure, Failure::Codec(_) | Failure::Auth(_));
        if permanent || (!self.played && self.failed >= ATTEMPTS_BEFORE_PLAYING) {
            return PullState::Failed {
                reason: format!("{reason} (after {} attempts)", self.failed),
            };
        }
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << (self.failed - 1).min(16))
            .min(MAX_BACKOFF);
        PullState::Retrying {
            attempt: self.failed,
            backoff_ms: backoff.as_millis() as u64,
            reason,
        }
    }
}

/// The URL `retina` is given (no userinfo), its credentials, and the
/// form shown to people (`rtsp://***@host/…` when it had credentials).
pub fn split_credentials(url: &str) -> Result<(Url, Option<Credentials>, String), MediaError> {
    // The parser's message could quote the URL: it is not passed on.
    let bad = || MediaError::BadRequest("url is not an rtsp://host/… URL".into());
    let mut url = Url::parse(url).map_err(|_| bad())?;
    if url.scheme() != "rtsp" || url.host_str().is_none_or(str::is_empty) {
        return Err(bad());
    }
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let creds = (!url.username().is_empty() || url.password().is_some()).then(|| Credentials {
        username: decode(url.username()),
        password: decode(url.password().unwrap_or("")),
    });
    url.set_password(None).map_err(|()| bad())?;
    url.set_username("").map_err(|()| bad())?;
    let mut shown = url.clone();
    if creds.is_some() {
        shown.set_username("***").map_err(|()| bad())?;
    }
    Ok((url, creds, shown.to_string()))
}

/// The node's pulls: the ones it runs (its table, what each task needs of
/// the node) and their records on the bus ([`records`](super::records)),
/// which `GET`, `DELETE` and `/v1/rooms/{room}` read on any node.
pub struct Pulls<N> {
    node: Weak<N>,
    cluster: Cluster,
    records: Kv,
    sealer: Sealer,
    table: Mutex<BTreeMap<SessionId, Entry>>,
    /// A state changed (or [`Pulls::release`]): the driver wakes.
    changed: Notify,
    released: AtomicBool,
    /// Records whose credentials this node cannot open (another
    /// `--auth-secret`): logged once, not adopted.
    unopenable: Mutex<BTreeSet<String>>,
}

/// Where a pull's record stands on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// `POST` is writing it.
    Creating,
    /// The bus did not take it yet: the driver creates it.
    Unwritten,
    At(u64),
}

struct Entry {
    room: RoomId,
    /// Without credentials.
    url: String,
    transport: &'static str,
    state: PullState,
    identity: Option<String>,
    /// The token's `exp`, Unix seconds.
    until: Option<u64>,
    credentials: Option<Secret>,
    written: Written,
    /// Changed since the record was last written.
    dirty: bool,
    /// Dropped to stop the task.
    _stop: oneshot::Sender<()>,
}

/// What a pull's task is started with (from a `POST` or an adopted record).
struct Launch {
    id: SessionId,
    room: RoomId,
    url: Url,
    shown: String,
    creds: Option<Credentials>,
    tcp: bool,
    identity: Option<String>,
    until: Option<u64>,
    credentials: Option<Secret>,
    written: Written,
}

/// Process-wide counters (one pull table per node).
static PLAYING: AtomicU64 = AtomicU64::new(0);
static STARTED: AtomicU64 = AtomicU64::new(0);
static ADOPTED: AtomicU64 = AtomicU64::new(0);
static RECORD_ERRORS: AtomicU64 = AtomicU64::new(0);
static FAILED: [AtomicU64; FAILURES.len()] = [const { AtomicU64::new(0) }; FAILURES.len()];

impl<N: IngestNode> Pulls<N> {
    /// `records` is the bus's [`BUCKET`] (TTL [`RECORD_TTL`]); `sealer`
    /// keeps the credentials records carry.
    pub fn new(node: Weak<N>, cluster: Cluster, records: Kv, sealer: Sealer) -> Pulls<N> {
        Pulls {
            node,
            cluster,
            records,
            sealer,
            table: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
            released: AtomicBool::new(false),
            unopenable: Mutex::new(BTreeSet::new()),
        }
    }

    /// Starts pulling `req.url` into `req.room` and writes its record
    /// before answering, so that every node finds it.
    pub async fn start(self: &Arc<Self>, req: PullRequest) -> Result<(), MediaError> {
        let (url, creds, shown) = split_credentials(&req.url)?;
        let credentials = creds
            .as_ref()
            .map(|c| self.sealer.seal(req.id.as_str(), &c.username, &c.password));
        let until = req
            .until
            .map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs());
        let id = req.id.clone();
        self.launch(Launch {
            id: req.id,
            room: req.room,
            url,
            shown,
            creds,
            tcp: req.tcp,
            identity: req.identity,
            until,
            credentials,
            written: Written::Creating,
        })?;
        STARTED.fetch_add(1, Ordering::Relaxed);
        let Some(value) = self.snapshot(&id) else {
            return Ok(());
        };
        let written = match self.records.create(id.as_str(), value).await {
            Ok(revision) => Written::At(revision),
            Err(e) => {
                RECORD_ERRORS.fetch_add(1, Ordering::Relaxed);
                error!(pull = %id, error = %e, "RTSP pull record not written: other nodes do not see the pull until the bus takes it");
                Written::Unwritten
            }
        };
        self.set_written(&id, written).await;
        Ok(())
    }

    /// Adds a pull to the table and starts its task.
    fn launch(self: &Arc<Self>, l: Launch) -> Result<(), MediaError> {
        let (stop, stopped) = oneshot::channel();
        {
            let mut table = self.lock()?;
            if table.len() >= MAX_PULLS {
                return Err(MediaError::Overloaded { retry_after_secs: 5 });
            }
            table.insert(
                l.id.clone(),
                Entry {
                    room: l.room.clone(),
                    url: l.shown.clone(),
                    transport: if l.tcp { "tcp" } else { "udp" },
                    state: PullState::Connecting,
                    identity: l.identity.clone(),
                    until: l.until,
                    credentials: l.credentials,
                    written: l.written,
                    dirty: false,
                    _stop: stop,
                },
            );
        }
        info!(room = %l.room, pull = %l.id, url = %l.shown, "RTSP pull starting");
        let task = Task {
            pulls: self.clone(),
            id: l.id,
            room: l.room,
            url: l.url,
            shown: l.shown,
            creds: l.creds,
            tcp: l.tcp,
            identity: l.identity,
        };
        let until = l.until.map(|s| UNIX_EPOCH + Duration::from_secs(s));
        tokio::spawn(async move { task.run(until, stopped).await });
        Ok(())
    }

    /// A pull's state as JSON (`id`, `room`, `url`, `transport`, `node`,
    /// `updated`, `state`…), from its record; from this node's table when
    /// the bus is unreachable or has not taken the record yet.
    pub async fn get(&self, room: &RoomId, id: &SessionId) -> Option<serde_json::Value> {
        match self.records.get(id.as_str()).await {
            Ok(Some(e)) => decode(&e.value)
                .filter(|r| r.room == room.as_str())
                .map(|r| r.describe()),
            Ok(None) => self.local(room, Some(id), false).pop(),
            Err(e) => {
                debug!(pull = %id, error = %e, "pull records unreachable; answering from this node");
                self.local(room, Some(id), true).pop()
            }
        }
    }

    /// Stops and forgets a pull, on whichever node runs it: its record is
    /// deleted (the stop), and that node is told at once (it would also
    /// find the record gone at its next refresh). `false` when there is
    /// none; an error when the bus cannot say.
    pub async fn stop(&self, room: &RoomId, id: &SessionId) -> Result<bool, MediaError> {
        let unreachable =
            |e: BusError| MediaError::Unavailable(format!("the pull records are unreachable: {e}"));
        let Some(entry) = self.records.get(id.as_str()).await.map_err(unreachable)? else {
            // Only a pull whose record the bus never took.
            let local = !self.local(room, Some(id), false).is_empty();
            return Ok(local && self.forget(id));
        };
        let Some(record) = decode(&entry.value).filter(|r| r.room == room.as_str()) else {
            return Ok(false);
        };
        self.records
            .delete(id.as_str(), None)
            .await
            .map_err(unreachable)?;
        if &record.node == self.cluster.node_id() {
            self.forget(id);
        } else {
            let subject = format!("{STOP_SUBJECT}.{}", record.node);
            if let Err(e) = self
                .cluster
                .bus()
                .publish(&subject, Bytes::from(id.to_string()))
                .await
            {
                debug!(pull = %id, error = %e, "stop not sent; the running node finds the record gone at its next refresh");
            }
        }
        Ok(true)
    }

    /// The pulls into `room`, by id (their records, and this node's pulls
    /// the bus has not taken yet).
    pub async fn in_room(&self, room: &RoomId) -> Vec<serde_json::Value> {
        let entries = match self.records.entries().await {
            Ok(entries) => entries,
            Err(e) => {
                debug!(%room, error = %e, "pull records unreachable; listing this node's");
                return self.local(room, None, true);
            }
        };
        let mut found: BTreeMap<String, serde_json::Value> = entries
            .iter()
            .filter_map(|e| decode(&e.value))
            .filter(|r| r.room == room.as_str())
            .map(|r| (r.id.clone(), r.describe()))
            .collect();
        for v in self.local(room, None, false) {
            let id = v["id"].as_str().unwrap_or_default().to_owned();
            found.entry(id).or_insert(v);
        }
        found.into_values().collect()
    }

    /// This node's pulls into `room` (`id` alone, if given); with
    /// `all` `false` only those whose record is not on the bus.
    fn local(&self, room: &RoomId, id: Option<&SessionId>, all: bool) -> Vec<serde_json::Value> {
        let Ok(table) = self.lock() else {
            return Vec::new();
        };
        table
            .iter()
            .filter(|(i, e)| &e.room == room && id.is_none_or(|id| id == *i))
            .filter(|(_, e)| all || !matches!(e.written, Written::At(_)))
            .map(|(i, e)| self.record(i, e).describe())
            .collect()
    }

    /// Drops a pull from the table (its task ends); whether it was there.
    fn forget(&self, id: &SessionId) -> bool {
        self.lock().is_ok_and(|mut t| t.remove(id).is_some())
    }

    fn set(&self, id: &SessionId, state: PullState) {
        if let Ok(mut table) = self.lock()
            && let Some(e) = table.get_mut(id)
        {
            e.state = state;
            e.dirty = true;
            self.changed.notify_one();
        }
    }

    /// The record of a pull of the table as it stands.
    fn record(&self, id: &SessionId, e: &Entry) -> PullRecord {
        PullRecord {
            room: e.room.to_string(),
            id: id.to_string(),
            node: self.cluster.node_id().clone(),
            url: e.url.clone(),
            transport: e.transport.to_owned(),
            state: serde_json::to_value(&e.state).unwrap_or_default(),
            updated: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            identity: e.identity.clone(),
            until: e.until,
            credentials: e.credentials.clone(),
            released: false,
        }
    }

    /// The record to write for `id`, now (marks it clean).
    fn snapshot(&self, id: &SessionId) -> Option<Bytes> {
        let mut table = self.lock().ok()?;
        let e = table.get_mut(id)?;
        e.dirty = false;
        let record = self.record(id, e);
        Some(encode(&record))
    }

    /// The bus took (or did not take) `id`'s record. A record written for
    /// a pull deleted meanwhile is deleted again.
    async fn set_written(&self, id: &SessionId, written: Written) {
        let gone = match self.lock() {
            Ok(mut table) => match table.get_mut(id) {
                Some(e) => {
                    e.written = written;
                    false
                }
                None => true,
            },
            Err(_) => false,
        };
        if let (true, Written::At(revision)) = (gone, written) {
            let _ = self.records.delete(id.as_str(), Some(revision)).await;
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<SessionId, Entry>>, MediaError> {
        self.table
            .lock()
            .map_err(|_| MediaError::Internal("pull table poisoned".into()))
    }

    /// The number of pulls (any state) in the table.
    pub fn count(&self) -> usize {
        self.lock().map_or(0, |t| t.len())
    }

    /// The node stops: its pulls end here and their records are marked
    /// released, which a live node adopts at its next heartbeat (a record
    /// this cannot mark is adopted once this node has left the registry).
    pub async fn release(&self) {
        self.released.store(true, Ordering::Relaxed);
        self.changed.notify_one();
        let mut marked = Vec::new();
        let n = match self.lock() {
            Ok(mut t) => {
                for (id, e) in t.iter() {
                    if let Written::At(revision) = e.written {
                        let mut record = self.record(id, e);
                        record.released = true;
                        marked.push((id.clone(), encode(&record), revision));
                    }
                }
                // Dropping the entries stops the tasks before anyone adopts.
                std::mem::take(&mut *t).len()
            }
            Err(_) => 0,
        };
        if n > 0 {
            info!(pulls = n, "RTSP pulls left to the cluster");
        }
        for (id, value, revision) in marked {
            if let Err(e) = self.records.update(id.as_str(), value, revision).await {
                debug!(pull = %id, error = %e, "pull not marked released; adopted once this node has left");
            }
        }
    }

    /// The driver of this node's records until [`Pulls::release`]: writes
    /// a record when its pull's state changes and rewrites them all every
    /// heartbeat (a write that finds the record deleted, or naming another
    /// node, stops the pull here), stops a pull when another node deleted
    /// it (`pulls.stop.{node}`), and adopts orphaned records ([`Orphans`]).
    pub async fn run_records(self: Arc<Self>) {
        let heartbeat = self.cluster.config().heartbeat;
        let mut orphans = Orphans::new(
            heartbeat * STALE_HEARTBEATS,
            heartbeat * GRACE_HEARTBEATS,
            heartbeat * QUIET_HEARTBEATS,
        );
        let subject = format!("{STOP_SUBJECT}.{}", self.cluster.node_id());
        let mut stops = match self.cluster.bus().subscribe(&subject).await {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "no pull stop subscription; deleted pulls stop at the next refresh");
                None
            }
        };
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        while !self.released.load(Ordering::Relaxed) {
            tokio::select! {
                _ = tick.tick() => {
                    self.flush(true, &mut failing).await;
                    self.adopt(&mut orphans).await;
                }
                () = self.changed.notified() => self.flush(false, &mut failing).await,
                m = async {
                    match &mut stops {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Some(m) = m else {
                        stops = None;
                        continue;
                    };
                    let id = std::str::from_utf8(&m.payload).ok().and_then(SessionId::parse);
                    if let Some(id) = id
                        && self.forget(&id)
                    {
                        info!(pull = %id, "RTSP pull deleted on another node");
                    }
                }
            }
        }
    }

    /// Writes the records of changed pulls (`all`: of every pull).
    async fn flush(&self, all: bool, failing: &mut bool) {
        let ids: Vec<(SessionId, Written)> = match self.lock() {
            Ok(t) => t
                .iter()
                .filter(|(_, e)| (all || e.dirty) && e.written != Written::Creating)
                .map(|(id, e)| (id.clone(), e.written))
                .collect(),
            Err(_) => return,
        };
        for (id, written) in ids {
            let Some(value) = self.snapshot(&id) else { continue };
            let result = match written {
                Written::Creating => continue,
                Written::Unwritten => self.records.create(id.as_str(), value.clone()).await,
                Written::At(revision) => self.records.update(id.as_str(), value.clone(), revision).await,
            };
            match result {
                Ok(revision) => {
                    self.set_written(&id, Written::At(revision)).await;
                    if std::mem::take(failing) {
                        info!("RTSP pull records written again");
                    }
                }
                Err(BusError::KeyExists(_) | BusError::WrongRevision(_)) => self.reconcile(&id, value).await,
                Err(e) => {
                    RECORD_ERRORS.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut t) = self.lock()
                        && let Some(e) = t.get_mut(&id)
                    {
                        e.dirty = true;
                    }
                    if !std::mem::replace(failing, true) {
                        error!(error = %e, "RTSP pull records not written; retrying every heartbeat");
                    }
                }
            }
        }
    }

    /// A write found the record elsewhere than expected: deleted (the pull
    /// stops), adopted by another node (it stops here), or still this
    /// node's (written again at its revision).
    async fn reconcile(&self, id: &SessionId, value: Bytes) {
        let entry = match self.records.get(id.as_str()).await {
            Ok(entry) => entry,
            Err(e) => {
                debug!(pull = %id, error = %e, "pull record unreadable; next heartbeat");
                return;
            }
        };
        let Some(entry) = entry else {
            if self.forget(id) {
                info!(pull = %id, "RTSP pull stopped: its record was deleted");
            }
            return;
        };
        match decode(&entry.value) {
            Some(r) if &r.node != self.cluster.node_id() => {
                if self.forget(id) {
                    warn!(pull = %id, node = %r.node, "RTSP pull stopped here: another node runs it now");
                }
            }
            _ => {
                if let Ok(revision) = self.records.update(id.as_str(), value, entry.revision).await {
                    self.set_written(id, Written::At(revision)).await;
                }
            }
        }
    }

    /// One scan of the records: adopts those [`Orphans`] picks, each by
    /// compare-and-swap (one node wins), and restarts them here.
    async fn adopt(self: &Arc<Self>, orphans: &mut Orphans) {
        let live: BTreeSet<NodeId> = self.cluster.live_nodes().into_iter().map(|n| n.id).collect();
        if live.is_empty() {
            // Before the first heartbeat nothing is known of the others.
            return;
        }
        let entries = match self.records.entries().await {
            Ok(entries) => entries,
            Err(e) => {
                debug!(error = %e, "pull records unreachable; no adoption this heartbeat");
                return;
            }
        };
        let records: Vec<(u64, PullRecord)> = entries
            .iter()
            .filter_map(|e| Some((e.revision, decode(&e.value).filter(|r| r.id == e.key)?)))
            .collect();
        if let Ok(mut u) = self.unopenable.lock() {
            u.retain(|id| records.iter().any(|(_, r)| &r.id == id));
        }
        let listed: Vec<Listed<'_>> = records
            .iter()
            .map(|(revision, r)| Listed {
                key: &r.id,
                revision: *revision,
                node: &r.node,
                active: r.active(),
                released: r.released,
            })
            .collect();
        let (running, room_for) = match self.lock() {
            Ok(t) => (
                t.keys().map(ToString::to_string).collect::<BTreeSet<_>>(),
                MAX_PULLS.saturating_sub(t.len()),
            ),
            Err(_) => return,
        };
        let me = self.cluster.node_id();
        let picked = orphans.poll(Instant::now(), me, &live, &listed, &running, room_for);
        for (key, revision) in picked {
            if let Some((_, record)) = records.iter().find(|(_, r)| r.id == key) {
                self.adopt_one(record, revision).await;
            }
        }
    }

    async fn adopt_one(self: &Arc<Self>, record: &PullRecord, revision: u64) {
        let (Some(id), Some(room)) = (SessionId::parse(&record.id), RoomId::parse(&record.room)) else {
            return;
        };
        let creds = match &record.credentials {
            None => None,
            Some(secret) => match self.sealer.open(&record.id, secret) {
                Some((username, password)) => Some(Credentials { username, password }),
                None => {
                    let first = self
                        .unopenable
                        .lock()
                        .is_ok_and(|mut u| u.insert(record.id.clone()));
                    if first {
                        error!(%room, pull = %id, "RTSP pull not adopted: its credentials are sealed with another --auth-secret");
                    }
                    return;
                }
            },
        };
        // The record's URL is the shown one (`***` for the username).
        let Ok(mut url) = Url::parse(&record.url) else {
            return;
        };
        if url.set_username("").is_err() || url.set_password(None).is_err() {
            return;
        }
        let mut taken = record.clone();
        taken.node = self.cluster.node_id().clone();
        taken.released = false;
        taken.state = serde_json::to_value(PullState::Connecting).unwrap_or_default();
        let revision = match self.records.update(&record.id, encode(&taken), revision).await {
            Ok(revision) => revision,
            Err(BusError::WrongRevision(_)) => {
                debug!(pull = %id, "another node adopted the pull first");
                return;
            }
            Err(e) => {
                warn!(pull = %id, error = %e, "RTSP pull not adopted: the bus refused the record");
                return;
            }
        };
        ADOPTED.fetch_add(1, Ordering::Relaxed);
        info!(%room, pull = %id, from = %record.node, url = %record.url, "adopting an RTSP pull whose node is gone");
        let launched = self.launch(Launch {
            id: id.clone(),
            room,
            url,
            shown: record.url.clone(),
            creds,
            tcp: record.transport == "tcp",
            identity: record.identity.clone(),
            until: record.until,
            credentials: record.credentials.clone(),
            written: Written::At(revision),
        });
        if let Err(e) = launched {
            warn!(pull = %id, error = %e, "adopted RTSP pull not started here; another node takes it once its record goes stale");
        }
    }
}

/// Where a pull's node is told that its pull was deleted elsewhere:
/// `pulls.stop.{node}`, the pull's id as payload.
const STOP_SUBJECT: &str = "pulls.stop";
/// A record whose revision has not moved for this many heartbeats is
/// stale: its node (still registered) no longer runs it.
const STALE_HEARTBEATS: u32 = 10;
/// Heartbeats a record of a node missing from the registry must stay
/// unchanged before it is an orphan (its node may have just joined).
const QUIET_HEARTBEATS: u32 = 2;
/// Heartbeats a live node other than an orphan's rendezvous owner waits
/// before adopting it.
const GRACE_HEARTBEATS: u32 = 3;

fn encode(record: &PullRecord) -> Bytes {
    // A plain struct: serializing cannot fail.
    Bytes::from(serde_json::to_vec(record).unwrap_or_default())
}

fn decode(b: &[u8]) -> Option<PullRecord> {
    serde_json::from_slice(b).ok()
}

/// The `wave_ingest_rtsp_*` families for `/metrics`.
pub fn render_metrics(pulls: usize, out: &mut String) {
    single(
        out,
        "wave_ingest_rtsp_pulls",
        Kind::Gauge,
        "RTSP pulls on this node, in any state.",
        pulls as u64,
    );
    single(
        out,
        "wave_ingest_rtsp_playing",
        Kind::Gauge,
        "RTSP pulls playing into a room.",
        PLAYING.load(Ordering::Relaxed),
    );
    single(
        out,
        "wave_ingest_rtsp_started_total",
        Kind::Counter,
        "RTSP pulls started.",
        STARTED.load(Ordering::Relaxed),
    );
    single(
        out,
        "wave_ingest_rtsp_adopted_total",
        Kind::Counter,
        "RTSP pulls this node took over from a node that left the cluster.",
        ADOPTED.load(Ordering::Relaxed),
    );
    single(
        out,
        "wave_ingest_rtsp_record_errors_total",
        Kind::Counter,
        "Pull records the bus did not take (retried every heartbeat).",
        RECORD_ERRORS.load(Ordering::Relaxed),
    );
    super::by_reason(
        out,
        "wave_ingest_rtsp_failures_total",
        "RTSP pull attempts that failed or dropped, by reason.",
        &FAILURES,
        &FAILED,
    );
}

/// How one attempt ended.
enum End {
    /// Deleted: the entry is gone already.
    Stopped,
    Expired,
    Failed(Failure),
}

struct Task<N> {
    pulls: Arc<Pulls<N>>,
    id: SessionId,
    room: RoomId,
    /// Without credentials.
    url: Url,
    /// As logs show it (`***` for credentials).
    shown: String,
    creds: Option<Credentials>,
    tcp: bool,
    identity: Option<String>,
}

/// A camera answering PLAY: its frames and the streams they belong to.
struct Playing {
    demuxed: Demuxed,
    video: usize,
    audio: Option<(usize, String)>,
}

impl<N: IngestNode> Task<N> {
    async fn run(self, until: Option<SystemTime>, mut stop: oneshot::Receiver<()>) {
        let deadline = until.map(|t| {
            let left = t.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::Instant::now() + left
        });
        let expiry = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        let mut retry = Retry::default();
        loop {
            self.pulls.set(&self.id, PullState::Connecting);
            let connected = tokio::select! {
                _ = &mut stop => End::Stopped,
                () = &mut expiry => End::Expired,
                r = tokio::time::timeout(CONNECT_TIMEOUT, self.connect()) => match r {
                    Err(_) => End::Failed(Failure::Timeout(format!(
                        "no answer to DESCRIBE, SETUP and PLAY within {} s",
                        CONNECT_TIMEOUT.as_secs()
                    ))),
                    Ok(Err(f)) => End::Failed(f),
                    Ok(Ok(playing)) => self.play(playing, &mut retry, &mut stop, &mut expiry).await,
                },
            };
            let failure = match connected {
                End::Stopped => {
                    info!(room = %self.room, pull = %self.id, "RTSP pull stopped");
                    return;
                }
                End::Expired => {
                    info!(room = %self.room, pull = %self.id, "RTSP pull ended: the token expired");
                    let reason = "the token expired".to_owned();
                    self.pulls.set(&self.id, PullState::Ended { reason });
                    return;
                }
                End::Failed(f) => f,
            };
            FAILED[failure.index()].fetch_add(1, Ordering::Relaxed);
            let next = retry.handle_failure(&failure);
            warn!(room = %self.room, pull = %self.id, url = %self.shown, reason = %failure.reason(), "RTSP pull attempt failed");
            let backoff = match &next {
                PullState::Retrying { backoff_ms, .. } => Duration::from_millis(*backoff_ms),
                _ => {
                    self.pulls.set(&self.id, next);
                    return;
                }
            };
            self.pulls.set(&self.id, next);
            tokio::select! {
                _ = &mut stop => return,
                () = &mut expiry => {
                    let reason = "the token expired".to_owned();
                    self.pulls.set(&self.id, PullState::Ended { reason });
                    return;
                }
                () = tokio::time::sleep(backoff) => {}
            }
        }
    }

    /// DESCRIBE, SETUP of the streams WAVE plays, PLAY.
    async fn connect(&self) -> Result<Playing, Failure> {
        let options = SessionOptions::default()
            .creds(self.creds.clone())
            .user_agent("WAVE".into());
        let mut session = Session::describe(self.url.clone(), options)
            .await
            .map_err(rtsp_failure)?;
        let streams = session.streams();
        let video = streams
            .iter()
            .position(|s| s.media() == "video" && s.encoding_name() == "h264")
            .ok_or_else(|| {
                let offered: Vec<String> = streams
                    .iter()
                    .map(|s| format!("{}/{}", s.media(), s.encoding_name()))
                    .collect();
                Failure::Codec(format!("no H.264 video among {offered:?}"))
            })?;
        let audio = streams.iter().enumerate().find_map(|(i, s)| {
            let name = s.encoding_name();
            (s.media() == "audio" && matches!(name, "mpeg4-generic" | "pcmu" | "pcma"))
                .then(|| (i, name.to_owned()))
        });
        let setup = || {
            let transport = if self.tcp {
                Transport::Tcp(Default::default())
            } else {
                Transport::Udp(Default::default())
            };
            SetupOptions::default()
                .transport(transport)
                .frame_format(FrameFormat::MP4)
        };
        session.setup(video, setup()).await.map_err(rtsp_failure)?;
        if let Some((i, _)) = &audio {
            session.setup(*i, setup()).await.map_err(rtsp_failure)?;
        }
        let playing = session.play(PlayOptions::default()).await.map_err(rtsp_failure)?;
        let demuxed = playing.demuxed().map_err(rtsp_failure)?;
        Ok(Playing {
            demuxed,
            video,
            audio,
        })
    }

    /// Claims the room, opens the source and feeds it until the camera
    /// drops, the pull is deleted or the token expires.
    async fn play(
        &self,
        mut playing: Playing,
        retry: &mut Retry,
        stop: &mut oneshot::Receiver<()>,
        expiry: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> End {
        let Some(node) = self.pulls.node.upgrade() else {
            return End::Stopped;
        };
        match self.pulls.cluster.claim_to_publish(&self.room).await {
            Ok(None) => {}
            Ok(Some(owner)) => {
                return End::Failed(Failure::Room(format!(
                    "room {} is published on node {}",
                    self.room, owner.node
                )));
            }
            Err(e) => {
                return End::Failed(Failure::Room(format!("the room registry is unreachable: {e}")));
            }
        }
        let session = SessionId::random();
        let open = IngestOpen {
            room: self.room.clone(),
            session: session.clone(),
            identity: self.identity.clone(),
        };
        if let Err(e) = node.open_ingest(open).await {
            return End::Failed(Failure::Room(e.to_string()));
        }
        retry.handle_playing();
        PLAYING.fetch_add(1, Ordering::Relaxed);
        self.pulls.set(&self.id, PullState::Playing);
        info!(room = %self.room, pull = %self.id, session = %session, "RTSP pull playing");
        let end = self.feed(&node, &session, &mut playing, stop, expiry).await;
        PLAYING.fetch_sub(1, Ordering::Relaxed);
        let _ = node.end_ingest(&session).await;
        end
    }

    async fn feed(
        &self,
        node: &N,
        session: &SessionId,
        playing: &mut Playing,
        stop: &mut oneshot::Receiver<()>,
        expiry: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> End {
        let mut source = Source::new(ntp_now());
        let mut video_config = false;
        // `None`: not configured yet; `Some(false)`: a codec that failed to open.
        let mut audio_ready: Option<bool> = None;
        loop {
            let item = tokio::select! {
                _ = &mut *stop => return End::Stopped,
                () = &mut *expiry => return End::Expired,
                r = tokio::time::timeout(IDLE_TIMEOUT, playing.demuxed.next()) => r,
            };
            let item = match item {
                Err(_) => {
                    let why = format!("no frame for {} s", IDLE_TIMEOUT.as_secs());
                    return End::Failed(Failure::Dropped(why));
                }
                Ok(None) => return End::Failed(Failure::Dropped("the camera ended the stream".into())),
                Ok(Some(Err(e))) => return End::Failed(Failure::Dropped(first_line(&e))),
                Ok(Some(Ok(item))) => item,
            };
            let now = Instant::now();
            let made = match item {
                CodecItem::VideoFrame(f) if f.stream_id() == playing.video => {
                    if (f.has_new_parameters() || !video_config)
                        && let Some(config) = avc_config(&playing.demuxed, playing.video)
                    {
                        source.handle_h264_config(config);
                        video_config = true;
                    }
                    let (ts_ms, ticks) = clock(f.timestamp(), 90_000);
                    source.handle_h264(now, ts_ms, ticks, f.data())
                }
                CodecItem::AudioFrame(f) if Some(f.stream_id()) == playing.audio.as_ref().map(|a| a.0) => {
                    if audio_ready.is_none() {
                        let ready = audio_decoder(&playing.demuxed, playing.audio.as_ref());
                        audio_ready = Some(ready.is_ok());
                        match ready {
                            Ok(d) => source.handle_audio_config(d),
                            Err(e) => {
                                warn!(room = %self.room, pull = %self.id, error = %e, "RTSP audio not played")
                            }
                        }
                    }
                    if audio_ready == Some(true) {
                        let (ts_ms, _) = clock(f.timestamp(), 1000);
                        source.handle_audio_frame(now, ts_ms, f.data())
                    } else {
                        Ok(())
                    }
                }
                _ => Ok(()),
            };
            if let Err(e) = made {
                // One bad frame: skipped (the next keyframe recovers).
                debug!(room = %self.room, pull = %self.id, error = %e, "RTSP frame skipped");
            }
            let packets = source.take_packets();
            if packets.is_empty() {
                continue;
            }
            if let Err(e) = node.ingest(session, packets).await {
                return End::Failed(Failure::Room(format!("the room's worker refused media: {e}")));
            }
        }
    }
}

/// A `retina` error before PLAY as a failure: the camera refusing the
/// credentials (401/403) is `Auth`, anything else `Protocol`.
fn rtsp_failure(e: retina::Error) -> Failure {
    match e.status_code() {
        Some(401 | 403) => Failure::Auth(first_line(&e)),
        _ => Failure::Protocol(first_line(&e)),
    }
}

/// An error's first line, at most [`MAX_REASON`] bytes: `retina` appends
/// a hex dump of what the camera sent, which the API does not repeat.
fn first_line(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("");
    let mut line = first.strip_suffix("; buffered:").unwrap_or(first).to_owned();
    if line.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

/// The stream's H.264 parameters as the shared source takes them
/// (`FrameFormat::MP4`: 4-byte NAL unit lengths).
fn avc_config(demuxed: &Demuxed, stream: usize) -> Option<AvcConfig> {
    let Some(ParametersRef::Video(p)) = demuxed.streams().get(stream)?.parameters() else {
        return None;
    };
    let VideoParametersCodec::H264 { sps, pps } = p.codec_params() else {
        return None;
    };
    Some(AvcConfig {
        length_size: 4,
        sps: vec![sps.to_vec()],
        pps: vec![pps.to_vec()],
    })
}

fn audio_decoder(demuxed: &Demuxed, audio: Option<&(usize, String)>) -> Result<ToOpus, String> {
    let Some((i, name)) = audio else {
        return Err("no audio stream".into());
    };
    match name.as_str() {
        "pcmu" => ToOpus::g711(Law::Mu).map_err(|e| e.to_string()),
        "pcma" => ToOpus::g711(Law::A).map_err(|e| e.to_string()),
        _ => {
            let Some(ParametersRef::Audio(p)) = demuxed.streams().get(*i).and_then(|s| s.parameters()) else {
                return Err("AAC without its AudioSpecificConfig".into());
            };
            ToOpus::aac(p.extra_data()).map_err(|e| e.to_string())
        }
    }
}

/// A frame's time since the stream's first as (ms, ticks at `rate`).
fn clock(ts: retina::Timestamp, rate: i64) -> (u32, u32) {
    let clock = i64::from(ts.clock_rate().get());
    let elapsed = ts.elapsed();
    ((elapsed * 1000 / clock) as u32, (elapsed * rate / clock) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::IngestItem;
    use crate::ingest::records::{BUCKET, RECORD_TTL};
    use signaling::bus::Bus;
    use signaling::cluster::ClusterConfig;

    /// A node that takes no source: the pulls below never reach PLAY.
    struct NoNode;

    impl IngestNode for NoNode {
        async fn open_ingest(&self, _: IngestOpen) -> Result<(), MediaError> {
            Err(MediaError::Unavailable("no node".into()))
        }
        async fn ingest(&self, _: &SessionId, _: Vec<IngestItem>) -> Result<(), MediaError> {
            Err(MediaError::Unavailable("no node".into()))
        }
        async fn end_ingest(&self, _: &SessionId) -> Result<(), MediaError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_record_deleted_behind_the_nodes_back_stops_the_pull_at_its_next_refresh() {
        let bus = Bus::in_process();
        let mut config = ClusterConfig::new(NodeId::parse("a").unwrap(), "http://a".into());
        config.heartbeat = Duration::from_millis(100);
        let cluster = Cluster::new(bus.clone(), config).await.unwrap();
        let kv = bus.kv(BUCKET, RECORD_TTL).await.unwrap();
        let pulls = Arc::new(Pulls::new(
            Weak::<NoNode>::new(),
            cluster,
            kv.clone(),
            Sealer::new(Some(b"s3cret")),
        ));
        tokio::spawn(pulls.clone().run_records());
        let (room, id) = (RoomId::parse("cam").unwrap(), SessionId::random());
        // Nothing listens there: the pull retries.
        let port = closed_port();
        let url = format!("rtsp://admin:hunter2@127.0.0.1:{port}/x");
        let req = PullRequest {
            room: room.clone(),
            id: id.clone(),
            url,
            tcp: true,
            identity: None,
            until: None,
        };
        pulls.start(req).await.unwrap();
        let written = kv
            .get(id.as_str())
            .await
            .unwrap()
            .expect("the record, before start returns");
        let text = String::from_utf8_lossy(&written.value).into_owned();
        assert!(!text.contains("hunter2") && !text.contains("admin"), "{text}");
        let shown = pulls.get(&room, &id).await.expect("the pull");
        assert_eq!(shown["node"], "a");
        assert_eq!(shown["url"], format!("rtsp://***@127.0.0.1:{port}/x"));

        // The record goes without the node being told (a lost stop
        // message): its next rewrite finds it gone and stops the pull.
        kv.delete(id.as_str(), None).await.unwrap();
        let t0 = Instant::now();
        while pulls.count() > 0 {
            assert!(t0.elapsed() < Duration::from_millis(500), "the pull still runs");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(pulls.get(&room, &id).await.is_none());
        assert!(kv.get(id.as_str()).await.unwrap().is_none(), "not written again");
    }

    /// A loopback port nothing listens on.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[test]
    fn credentials_are_cut_from_the_url_and_shown_redacted() {
        let (url, creds, shown) = split_credentials("rtsp://admin:p%40ss@10.0.0.7:554/stream1?ch=2").unwrap();
        assert_eq!(url.as_str(), "rtsp://10.0.0.7:554/stream1?ch=2");
        let creds = creds.unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("admin", "p@ss")
        );
        assert_eq!(shown, "rtsp://***@10.0.0.7:554/stream1?ch=2");
        assert!(!shown.contains("p%40ss") && !shown.contains("admin"));

        let (_, creds, shown) = split_credentials("rtsp://cam.local/live").unwrap();
        assert!(creds.is_none());
        assert_eq!(shown, "rtsp://cam.local/live");

        for bad in ["http://cam/x", "rtsp://", "not a url", "rtsp:///path"] {
            let e = split_credentials(bad).unwrap_err();
            assert!(matches!(e, MediaError::BadRequest(_)), "{bad}: {e:?}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_a_pull_that_never_played_gives_up() {
        let drop = Failure::Timeout("no answer".into());
        let mut r = Retry::default();
        let backoffs: Vec<PullState> = (0..ATTEMPTS_BEFORE_PLAYING)
            .map(|_| r.handle_failure(&drop))
            .collect();
        let ms: Vec<u64> = backoffs
            .iter()
            .filter_map(|s| match s {
                PullState::Retrying { backoff_ms, .. } => Some(*backoff_ms),
                _ => None,
            })
            .collect();
        assert_eq!(ms, vec![1000, 2000, 4000, 8000, 16_000]);
        let PullState::Failed { reason } = &backoffs[5] else {
            panic!("{:?}", backoffs[5]);
        };
        assert_eq!(reason, "timeout: no answer (after 6 attempts)");

        // Once it has played, a camera that drops is retried for good, the
        // backoff starting again and capped.
        let mut r = Retry::default();
        r.handle_failure(&drop);
        r.handle_playing();
        let dropped = Failure::Dropped("the camera ended the stream".into());
        let states: Vec<PullState> = (0..10).map(|_| r.handle_failure(&dropped)).collect();
        assert_eq!(
            states[0],
            PullState::Retrying {
                attempt: 1,
                backoff_ms: 1000,
                reason: "dropped: the camera ended the stream".into()
            }
        );
        assert!(matches!(
            states[9],
            PullState::Retrying {
                attempt: 10,
                backoff_ms: 30_000,
                ..
            }
        ));

        // Nothing to play, or credentials refused: no retry.
        let mut r = Retry::default();
        assert!(matches!(
            r.handle_failure(&Failure::Codec("no H.264".into())),
            PullState::Failed { .. }
        ));
    }

    #[test]
    fn states_serialize_as_the_api_reports_them() {
        let v = serde_json::to_value(PullState::Retrying {
            attempt: 2,
            backoff_ms: 2000,
            reason: "dropped: x".into(),
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"state": "retrying", "attempt": 2, "backoff_ms": 2000, "reason": "dropped: x"})
        );
        assert_eq!(
            serde_json::to_value(PullState::Playing).unwrap(),
            serde_json::json!({"state": "playing"})
        );
    }
}
