//! Room chat over WebSocket, moderation and presence, on the bus.
//!
//! - Subjects: `room.<room>.chat` (messages; captured by the history
//!   stream `CHAT` on `room.*.chat`), `room.<room>.moderation` (actions),
//!   `room.<room>.presence` (each node's counts, every second). `<room>` is
//!   [`room_token`]: a room's dots would otherwise split the subject.
//! - KV: `chat-sanctions` (bans, timeouts, deleted message ids) so a node
//!   that opens a room later knows them; `presence` (`<room>/<node>` → that
//!   node's [`NodePresence`]) for `/v1/rooms/{room}`.
//! - One [`Room`] per room with local members: a task subscribed to the
//!   three subjects fans out to the members' bounded queues; a member whose
//!   queue is full is disconnected (close 1013) instead of slowing the room.
//!   The task keeps the room's recent messages (seeded from the stream when
//!   the room opens), which is what a joining member gets as history.
//!
//! - Rate limits hold across the cluster ([`quota`]): each sender's
//!   bucket lives on one owner node, which leases tokens to the others over
//!   request/reply on `chat.rate.<node>`.
//!
//! While the bus is unreachable, sends are refused to the sender with an
//! `unavailable` error frame (nothing is queued: a chat line minutes late is
//! worse than a visible "not sent"); the members stay connected and the
//! room's subscriptions resume when the client reconnects.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, Utf8Bytes};
use tracing::{debug, info, warn};
use wave_metrics::{Histogram, Kind, family, single};

use crate::auth::Role;
use crate::bus::{Bus, BusError, History, HistoryLimits, Kv, PendingAppend, Subscription};
use crate::cluster::{Cluster, NodeId};
use crate::locks::lock;
use crate::media::RoomId;
use crate::metrics::HopBounds;

mod moderation;
pub mod presence;
pub mod quota;

pub use moderation::{Action, RoleRates, Sanction, TextFilter};
pub use presence::{
    Changes, NodePresence, Participant, PresenceCounts, PresenceUpdate, RoleCounts, RoomPresence,
};

use moderation::SendLimiter;
use quota::{Ask, Decision, Grant, LeaseReply, LeaseRequest, Quota};

/// Chat settings (the node's `--chat-*` flags).
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// Messages sent on join, at most.
    pub history_len: usize,
    /// Messages older than this are not sent on join.
    pub history_age: Duration,
    /// Messages per second by role.
    pub rates: RoleRates,
    /// Length, banned words, links.
    pub filter: TextFilter,
    /// Largest WebSocket message a client may send; larger closes with 1009.
    pub max_frame_bytes: usize,
    /// Frames queued for one client (not yet handed to its WebSocket) at
    /// which it counts as too slow and is disconnected (close 1013).
    pub client_queue: usize,
    /// How often presence is published and pushed to clients (at most once
    /// per interval per room per client).
    pub presence_interval: Duration,
    /// On a node without an auth secret, let anyone call
    /// `POST /v1/moderation/{room}/actions` (`--open-moderation`). Off by
    /// default: an open node refuses moderation with 403.
    pub open_moderation: bool,
    /// A room fans chat out to its members at most once per window: a
    /// message arriving sooner after the previous fan-out waits for the
    /// window's end and goes out with whatever else arrived, so each member
    /// gets one socket write for several messages. Messages further apart
    /// than the window are not delayed; zero turns pacing off.
    pub fanout_window: Duration,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            history_len: 100,
            history_age: Duration::from_secs(600),
            rates: RoleRates::default(),
            filter: TextFilter::default(),
            max_frame_bytes: 8 * 1024,
            client_queue: 1024,
            presence_interval: Duration::from_secs(1),
            open_moderation: false,
            fanout_window: DEFAULT_FANOUT_WINDOW,
        }
    }
}

/// One chat message as clients and the bus see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// 16 hex digits, unique per message.
    pub id: String,
    /// Server time of the send, Unix milliseconds.
    pub ts: u64,
    pub room: String,
    pub sender: Sender,
    pub text: String,
    /// The sender's own tag for the message, echoed back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// Who sent a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    pub identity: String,
    pub role: Role,
}

/// What the server sends on the WebSocket (JSON text frames, `type` tagged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame {
    /// First frame: who the server thinks you are.
    Welcome {
        room: String,
        identity: String,
        role: Role,
        node: String,
        /// Messages per second this member may send.
        rate: f64,
        max_chars: usize,
    },
    /// Second frame: recent messages, oldest first.
    History {
        messages: Vec<ChatMessage>,
    },
    Message(ChatMessage),
    /// A moderator removed message `id`.
    Delete {
        id: String,
    },
    /// Who is in the room and who joined or left (at most once per second).
    Presence(PresenceUpdate),
    /// A refused frame or a sanction; the connection stays open unless a
    /// close frame follows.
    Error {
        code: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    Pong,
}

/// What a client may send.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum ClientFrame {
    Message {
        text: String,
        #[serde(default)]
        client_id: Option<String>,
    },
    Ping,
}

/// Why a chat could not be joined or moderated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    #[error("{identity} is banned from the chat of room {room}")]
    Banned { room: RoomId, identity: String },
    #[error("chat bus unavailable: {0}")]
    Bus(#[from] BusError),
}

/// A moderator action on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ModEvent {
    action: Action,
    by: String,
    at_ms: u64,
}

/// A message id is KV-key and subject safe: hex only.
const MAX_CLIENT_ID: usize = 64;
/// Buckets' TTL for sanctions and deleted ids (bucket-wide on NATS).
const SANCTIONS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Close codes (RFC 6455 §7.4.1).
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_AGAIN_LATER: u16 = 1013;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_UNSUPPORTED: u16 = 1003;
/// Read buffer of a member's WebSocket; larger frames grow it.
const READ_BUFFER: usize = 4 * 1024;
/// [`ChatConfig::fanout_window`] by default: at most 100 writes a second
/// per member, at most 10 ms added to a message.
pub const DEFAULT_FANOUT_WINDOW: Duration = Duration::from_millis(10);
/// The chat's per-hop latency histogram on `/metrics`, labelled `hop`.
pub const HOP_METRIC: &str = "wave_chat_hop_seconds";
/// Hops of [`HOP_METRIC`], in path order.
pub const HOPS: [&str; 5] = [
    "read_to_publish",
    "origin_to_room",
    "fanout",
    "queue_to_write",
    "origin_to_write",
];
/// Chat messages the room task takes off the bus at once and hands each
/// member as one delivery (they are written with one flush).
pub const MAX_BATCH: usize = 64;
/// How long a send (or a background refill) waits for a lease from the
/// sender's owner node before the node's own bucket decides instead.
pub const LEASE_TIMEOUT: Duration = Duration::from_millis(250);
/// The round trip of a lease request on `/metrics`.
pub const LEASE_METRIC: &str = "wave_chat_rate_lease_seconds";
/// Queued deliveries a member's writer takes before it flushes.
const MAX_DRAIN: usize = 32;
/// A member's messages on their way to the history stream whose
/// acknowledgement has not come back; at this many the connection stops
/// reading until the oldest is acknowledged.
const MAX_IN_FLIGHT: usize = 16;

/// The chat of one node. Cheap to clone.
#[derive(Clone)]
pub struct ChatHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    bus: Bus,
    node: NodeId,
    /// The live nodes, to find each sender's rate owner; `None`: this node
    /// owns every sender.
    cluster: Option<Cluster>,
    /// The buckets this node owns and the leases it holds.
    quota: Arc<Mutex<Quota>>,
    /// Answers lease requests on `chat.rate.<node>`.
    leases: tokio::task::JoinHandle<()>,
    config: ChatConfig,
    history: History,
    sanctions: Kv,
    presence: Kv,
    rooms: tokio::sync::Mutex<HashMap<RoomId, Room>>,
    next_member: AtomicU64,
    counters: Arc<ChatCounters>,
}

/// The chat's counters for `/metrics`.
#[derive(Debug, Default)]
struct ChatCounters {
    /// Members disconnected (close 1013) because their queue was full.
    slow_clients: AtomicU64,
    /// Chat messages queued to local members (one per member and message).
    deliveries: AtomicU64,
    /// Where a chat message's time goes, hop by hop.
    hops: Hops,
    /// Cluster-wide rate limits.
    rate: RateCounters,
}

/// What the cluster-wide rate limits cost and decided on this node.
#[derive(Debug, Default)]
struct RateCounters {
    /// Lease requests sent to another node.
    requests: AtomicU64,
    /// Of those, answered with tokens.
    grants: AtomicU64,
    /// Of those, answered with a refusal (the sender is over its rate).
    refusals: AtomicU64,
    /// Messages checked by this node's own bucket because their owner
    /// could not be asked.
    fallbacks: AtomicU64,
    /// Lease requests this node answered as an owner.
    served: AtomicU64,
    /// Round trip of the lease requests answered.
    round_trip: Histogram<HopBounds>,
}

/// Latency of each hop of a chat message on this node
/// (`wave_chat_hop_seconds{hop}`). "Origin" is the `ts` the sending node
/// stamped (wall clock, whole ms, so `origin_*` read up to 1 ms high);
/// the rest are monotonic. Per message and node, except `queue_to_write`
/// and `origin_to_write`: per member and delivery (a delivery may carry
/// several messages; it is stamped with its oldest).
#[derive(Debug, Default)]
struct Hops {
    /// Sending node: the client's frame read → handed to the bus client.
    read_to_publish: Histogram<HopBounds>,
    /// Every node: origin stamp → the room task takes it off the bus.
    origin_to_room: Histogram<HopBounds>,
    /// Every node: the room task took a batch → queued to every member.
    fanout: Histogram<HopBounds>,
    /// Queued to a member → its socket write (flush) done.
    queue_to_write: Histogram<HopBounds>,
    /// Origin stamp → the member's socket write done.
    origin_to_write: Histogram<HopBounds>,
}

impl Hops {
    /// Each hop with its name ([`HOPS`], same order).
    fn all(&self) -> [(&'static str, &Histogram<HopBounds>); 5] {
        let [a, b, c, d, e] = HOPS;
        [
            (a, &self.read_to_publish),
            (b, &self.origin_to_room),
            (c, &self.fanout),
            (d, &self.queue_to_write),
            (e, &self.origin_to_write),
        ]
    }
}

/// A room with local members; dropping it stops its task.
struct Room {
    shared: Arc<RoomShared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Room {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct RoomShared {
    id: RoomId,
    state: Mutex<RoomState>,
    counters: Arc<ChatCounters>,
    /// [`ChatConfig::client_queue`].
    client_queue: usize,
}

#[derive(Default)]
struct RoomState {
    members: BTreeMap<u64, Member>,
    limiter: SendLimiter,
    sanctions: HashMap<String, Sanction>,
    deleted: HashSet<String>,
    /// The last `history_len` messages: loaded from the stream once when the
    /// room opens on this node, then kept from the live subject, so a join
    /// costs no bus call and history and live frames meet without a gap or
    /// a repeat (both are taken under this state's lock).
    recent: VecDeque<ChatMessage>,
    /// Each node's last presence report and when it came.
    nodes: BTreeMap<String, (NodePresence, Instant)>,
    pushed: Option<PresenceCounts>,
    /// Joins and leaves reported since the last push.
    pending: Changes,
    last_push: Option<Instant>,
}

struct Member {
    identity: String,
    role: Role,
    /// Unbounded: `queued` is the bound, counted in frames.
    tx: mpsc::UnboundedSender<Out>,
    /// Frames queued and not yet handed to the WebSocket.
    queued: Arc<AtomicUsize>,
}

/// What a room hands a member's connection. The frames are encoded once
/// per room and shared by every member (a clone is a reference count).
#[derive(Debug)]
enum Out {
    /// Chat messages, with when they were queued and the oldest's origin
    /// stamp (Unix ms), for [`Hops`].
    Chat(Arc<[Utf8Bytes]>, Instant, u64),
    /// Anything else (moderation, presence).
    Frames(Arc<[Utf8Bytes]>),
    Close(u16, &'static str),
}

impl Out {
    /// What this counts against the member's queue bound.
    fn frames(&self) -> usize {
        match self {
            Out::Chat(f, ..) | Out::Frames(f) => f.len(),
            Out::Close(..) => 0,
        }
    }
}

/// A member admitted to a room, before its WebSocket runs.
pub struct Admission {
    room: RoomId,
    shared: Arc<RoomShared>,
    member: u64,
    identity: String,
    role: Role,
    rx: mpsc::UnboundedReceiver<Out>,
    queued: Arc<AtomicUsize>,
    /// What the member is sent first: the room's recent messages.
    history: Vec<ChatMessage>,
}

impl ChatHub {
    /// Opens the chat's stream and buckets on `bus`.
    /// Every sender's rate owner is this node.
    pub async fn new(bus: Bus, node: NodeId, config: ChatConfig) -> Result<ChatHub, BusError> {
        ChatHub::start(bus, node, None, config).await
    }

    /// The chat of a cluster member: each sender's rate limit is kept by
    /// the live node rendezvous hashing picks for it.
    pub async fn in_cluster(cluster: Cluster, config: ChatConfig) -> Result<ChatHub, BusError> {
        let (bus, node) = (cluster.bus().clone(), cluster.node_id().clone());
        ChatHub::start(bus, node, Some(cluster), config).await
    }

    async fn start(
        bus: Bus,
        node: NodeId,
        cluster: Option<Cluster>,
        config: ChatConfig,
    ) -> Result<ChatHub, BusError> {
        let limits = HistoryLimits {
            max_per_subject: config.history_len.max(1),
            max_age: config.history_age,
        };
        let history = bus.history("CHAT", "room.*.chat", limits).await?;
        let sanctions = bus.kv("chat-sanctions", SANCTIONS_TTL).await?;
        let presence = bus.kv("presence", presence_ttl(&config)).await?;
        let requests = bus.subscribe(&rate_subject(&node)).await?;
        let quota = Arc::new(Mutex::new(Quota::default()));
        let counters: Arc<ChatCounters> = Arc::default();
        let leases = tokio::spawn(serve_leases(
            bus.clone(),
            quota.clone(),
            counters.clone(),
            requests,
        ));
        Ok(ChatHub {
            inner: Arc::new(HubInner {
                bus,
                node,
                cluster,
                quota,
                leases,
                config,
                history,
                sanctions,
                presence,
                rooms: tokio::sync::Mutex::new(HashMap::new()),
                next_member: AtomicU64::new(1),
                counters,
            }),
        })
    }

    pub fn config(&self) -> &ChatConfig {
        &self.inner.config
    }

    /// Admits `identity` to `room` (opening the room on this node if
    /// needed): refused when banned, or when the room cannot subscribe.
    pub async fn admit(&self, room: &RoomId, identity: String, role: Role) -> Result<Admission, ChatError> {
        let mut rooms = self.inner.rooms.lock().await;
        if !rooms.contains_key(room) {
            let opened = self.open(room).await?;
            rooms.insert(room.clone(), opened);
        }
        // Invariant: inserted just above when it was missing.
        let shared = rooms[room].shared.clone();
        let mut state = lock(&shared.state);
        if state
            .sanctions
            .get(&identity)
            .is_some_and(|s| s.ban && s.active(unix_ms(SystemTime::now())))
        {
            let empty = state.members.is_empty();
            drop(state);
            if empty {
                rooms.remove(room);
            }
            return Err(ChatError::Banned {
                room: room.clone(),
                identity,
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let member = self.inner.next_member.fetch_add(1, Ordering::Relaxed);
        state.members.insert(
            member,
            Member {
                identity: identity.clone(),
                role,
                tx,
                queued: queued.clone(),
            },
        );
        let oldest = unix_ms(SystemTime::now())
            .saturating_sub(u64::try_from(self.inner.config.history_age.as_millis()).unwrap_or(u64::MAX));
        let history = state.recent.iter().filter(|m| m.ts >= oldest).cloned().collect();
        drop(state);
        Ok(Admission {
            room: room.clone(),
            shared,
            member,
            identity,
            role,
            rx,
            queued,
            history,
        })
    }

    /// Runs one member's WebSocket until either side ends it, then removes
    /// the member (and the room, when it was the last).
    pub async fn serve<S>(&self, admission: Admission, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.inner.config.max_frame_bytes))
            .max_frame_size(Some(self.inner.config.max_frame_bytes))
            // Each read fills (zeroes) the buffer's spare room first: the
            // 128 KiB default costs a 128 KiB memset per wake-up, which was
            // the largest cost of the fan-out. Clients send small frames.
            .read_buffer_size(READ_BUFFER);
        let ws =
            WebSocketStream::from_raw_socket(stream, tungstenite::protocol::Role::Server, Some(config)).await;
        let room = admission.room.clone();
        let member = admission.member;
        let identity = admission.identity.clone();
        info!(%room, member, "chat member joined");
        let reason = Connection {
            hub: self,
            admission,
            ws,
            acks: FuturesOrdered::new(),
        }
        .run()
        .await;
        debug!(%room, member, %identity, reason, "chat member left");
        self.leave(&room, member).await;
    }

    /// Drops a member admitted but never served (the upgrade failed).
    pub async fn abandon(&self, admission: Admission) {
        self.leave(&admission.room, admission.member).await;
    }

    /// Applies a moderator's action on every node: stored for rooms opened
    /// later, then published for rooms open now.
    pub async fn moderate(&self, room: &RoomId, action: Action, by: &str) -> Result<(), ChatError> {
        let token = room_token(room);
        let now_ms = unix_ms(SystemTime::now());
        let kv = &self.inner.sanctions;
        match &action {
            Action::Ban { identity } => {
                let s = Sanction {
                    until_ms: None,
                    ban: true,
                };
                kv.put(&sanction_key(&token, identity), json_bytes(&(identity, s)))
                    .await?;
            }
            Action::Timeout { identity, seconds } => {
                let s = Sanction {
                    until_ms: Some(now_ms.saturating_add(seconds.saturating_mul(1000))),
                    ban: false,
                };
                kv.put(&sanction_key(&token, identity), json_bytes(&(identity, s)))
                    .await?;
            }
            Action::Unban { identity } => kv.delete(&sanction_key(&token, identity), None).await?,
            Action::Delete { id } => {
                if !is_message_id(id) {
                    // Not an id this server makes: nothing to delete anywhere.
                    return Ok(());
                }
                kv.put(&format!("{token}/d/{id}"), Bytes::from_static(b"{}"))
                    .await?;
            }
        }
        let event = ModEvent {
            action,
            by: by.to_owned(),
            at_ms: now_ms,
        };
        self.inner
            .bus
            .publish(&format!("room.{token}.moderation"), json_bytes(&event))
            .await?;
        info!(%room, by, action = ?event.action, "moderation action");
        Ok(())
    }

    /// Local chat members per room (identity and role, one per
    /// connection), for presence.
    pub async fn local_members(&self) -> BTreeMap<RoomId, Vec<presence::LocalMember>> {
        let rooms = self.inner.rooms.lock().await;
        let mut out = BTreeMap::new();
        for (id, room) in rooms.iter() {
            let state = lock(&room.shared.state);
            let members = state
                .members
                .values()
                .map(|m| (m.identity.clone(), m.role))
                .collect();
            out.insert(id.clone(), members);
        }
        out
    }

    /// Every member is sent close 1001 (the node is shutting down).
    pub async fn close_all(&self) {
        let rooms = self.inner.rooms.lock().await;
        for room in rooms.values() {
            let state = lock(&room.shared.state);
            for m in state.members.values() {
                let _ = m.tx.send(Out::Close(CLOSE_GOING_AWAY, "node shutting down"));
            }
        }
    }

    pub(crate) fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    pub(crate) fn node(&self) -> &NodeId {
        &self.inner.node
    }

    pub(crate) fn presence_kv(&self) -> &Kv {
        &self.inner.presence
    }

    /// Subscribes to the room's subjects and loads its sanctions and
    /// presence, then starts its task.
    async fn open(&self, room: &RoomId) -> Result<Room, BusError> {
        let token = room_token(room);
        let bus = &self.inner.bus;
        let chat = bus.subscribe(&format!("room.{token}.chat")).await?;
        let moderation = bus.subscribe(&format!("room.{token}.moderation")).await?;
        let presence = bus.subscribe(&format!("room.{token}.presence")).await?;
        let mut state = RoomState::default();
        let prefix = format!("{token}/");
        for entry in self.inner.sanctions.entries().await? {
            let Some(rest) = entry.key.strip_prefix(&prefix) else {
                continue;
            };
            if let Some(id) = rest.strip_prefix("d/") {
                state.deleted.insert(id.to_owned());
            } else if let Ok((identity, s)) = serde_json::from_slice::<(String, Sanction)>(&entry.value) {
                state.sanctions.insert(identity, s);
            }
        }
        state.recent = match self.stored_history(room).await {
            Ok(m) => m.into_iter().filter(|m| !state.deleted.contains(&m.id)).collect(),
            Err(e) => {
                warn!(%room, error = %e, "chat history unavailable; starting the room without it");
                VecDeque::new()
            }
        };
        let now = Instant::now();
        for p in presence::stored(&self.inner.presence, room).await? {
            state.nodes.insert(p.node.clone(), (p, now));
        }
        let shared = Arc::new(RoomShared {
            id: room.clone(),
            state: Mutex::new(state),
            counters: self.inner.counters.clone(),
            client_queue: self.inner.config.client_queue.max(8),
        });
        let c = &self.inner.config;
        let task = tokio::spawn(run_room(
            shared.clone(),
            c.history_len,
            c.presence_interval,
            c.fanout_window,
            [chat, moderation, presence],
        ));
        debug!(%room, "chat room opened");
        Ok(Room { shared, task })
    }

    async fn leave(&self, room: &RoomId, member: u64) {
        let mut rooms = self.inner.rooms.lock().await;
        let Some(r) = rooms.get(room) else { return };
        let empty = {
            let mut state = lock(&r.shared.state);
            state.members.remove(&member);
            state.members.is_empty()
        };
        if empty {
            rooms.remove(room);
            debug!(%room, "chat room closed (no local members)");
        }
    }

    /// Checks one message from a member and sends it on its way to the
    /// history stream (which delivers it to the room on every node); the
    /// stream's acknowledgement is returned still to come.
    async fn start_send(
        &self,
        a: &Admission,
        text: String,
        client_id: Option<String>,
    ) -> Result<PendingAppend, ServerFrame> {
        let now_ms = unix_ms(SystemTime::now());
        let rate = self.inner.config.rates.of(a.role);
        let key = quota_key(&a.room, &a.identity);
        let owner = self.rate_owner(&key);
        let decision = {
            let mut state = lock(&a.shared.state);
            if let Some(s) = state.sanctions.get(&a.identity)
                && s.active(now_ms)
            {
                let wait = s.until_ms.map(|u| u.saturating_sub(now_ms));
                return Err(error_frame("timed_out", "you are muted in this chat", wait));
            }
            let now = Instant::now();
            match lock(&self.inner.quota).check(&key, owner.as_ref(), rate, now) {
                Decision::Fallback => self.fallback(&mut state, a, rate, now),
                d => d,
            }
        };
        match decision {
            // (A fallback was decided by the room's own bucket above.)
            Decision::Pass | Decision::Fallback => {}
            Decision::PassAndAsk(ask) => self.ask_in_background(key, rate, ask),
            Decision::Refuse(wait) => return Err(rate_limited(rate, wait)),
            Decision::Ask(ask) => self.ask_and_wait(a, &key, rate, ask).await?,
        }
        check_message(&self.inner.config.filter, a.role, &text, client_id.as_deref())?;
        let msg = ChatMessage {
            id: format!("{:016x}", rand::random::<u64>()),
            ts: now_ms,
            room: a.room.as_str().to_owned(),
            sender: Sender {
                identity: a.identity.clone(),
                role: a.role,
            },
            text,
            client_id,
        };
        let subject = format!("room.{}.chat", room_token(&a.room));
        self.inner
            .history
            .start_append(&subject, json_bytes(&ServerFrame::Message(msg)))
            .await
            .map_err(|e| unavailable(&a.room, &e))
    }

    /// The node that keeps `key`'s bucket; `None` when it is this one.
    fn rate_owner(&self, key: &str) -> Option<NodeId> {
        let cluster = self.inner.cluster.as_ref()?;
        cluster.owner_of(key).filter(|n| *n != self.inner.node)
    }

    /// A message whose owner cannot be asked, checked by this node's own
    /// bucket for the sender (the limit of a node alone).
    fn fallback(&self, state: &mut RoomState, a: &Admission, rate: f64, now: Instant) -> Decision {
        self.inner.counters.rate.fallbacks.fetch_add(1, Ordering::Relaxed);
        match state.limiter.check(&a.identity, rate, now) {
            Ok(()) => Decision::Pass,
            Err(wait) => Decision::Refuse(wait),
        }
    }

    /// Asks `ask.owner` for a lease while the message waits (at most
    /// [`LEASE_TIMEOUT`]); an owner that cannot answer leaves the decision
    /// to this node's own bucket.
    async fn ask_and_wait(&self, a: &Admission, key: &str, rate: f64, ask: Ask) -> Result<(), ServerFrame> {
        let answer = self.ask_owner(key, rate, &ask).await;
        let now = Instant::now();
        let decision = match answer {
            Ok(grant) => match lock(&self.inner.quota).after_answer(key, grant, rate, now) {
                Ok(()) => Decision::Pass,
                Err(wait) => Decision::Refuse(wait),
            },
            Err(e) => {
                self.owner_unreachable(key, &ask, &e, now);
                self.fallback(&mut lock(&a.shared.state), a, rate, now)
            }
        };
        match decision {
            Decision::Refuse(wait) => Err(rate_limited(rate, wait)),
            _ => Ok(()),
        }
    }

    /// Asks for the next lease without holding up the message just sent.
    fn ask_in_background(&self, key: String, rate: f64, ask: Ask) {
        let hub = self.clone();
        tokio::spawn(async move {
            let answer = hub.ask_owner(&key, rate, &ask).await;
            let now = Instant::now();
            match answer {
                Ok(grant) => lock(&hub.inner.quota).answered(&key, grant, now),
                Err(e) => hub.owner_unreachable(&key, &ask, &e, now),
            }
        });
    }

    /// One lease request over the bus.
    async fn ask_owner(&self, key: &str, rate: f64, ask: &Ask) -> Result<Grant, BusError> {
        let c = &self.inner.counters.rate;
        c.requests.fetch_add(1, Ordering::Relaxed);
        let request = LeaseRequest {
            key: key.to_owned(),
            rate,
            want: ask.want,
            owed: ask.owed,
        };
        let sent = Instant::now();
        let reply = self
            .inner
            .bus
            .request(&rate_subject(&ask.owner), json_bytes(&request), LEASE_TIMEOUT)
            .await?;
        c.round_trip.observe(sent.elapsed());
        let grant = serde_json::from_slice::<LeaseReply>(&reply)
            .ok()
            .and_then(|r| r.grant())
            .ok_or_else(|| BusError::Other(format!("unreadable lease answer from {}", ask.owner)))?;
        let counter = match grant {
            Grant::Tokens(_) => &c.grants,
            Grant::Refused(_) => &c.refusals,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(grant)
    }

    fn owner_unreachable(&self, key: &str, ask: &Ask, e: &BusError, now: Instant) {
        if lock(&self.inner.quota).failed(key, ask, now) {
            warn!(
                owner = %ask.owner,
                error = %e,
                "chat rate owner unreachable; its senders are limited by this node's own buckets for {:?}",
                quota::OWNER_DOWN_FOR
            );
        }
    }

    /// Appends the chat's counters to a `/metrics` page.
    pub fn render_metrics(&self, out: &mut String) {
        let c = &self.inner.counters;
        let counters = [
            (
                "wave_chat_slow_clients_total",
                "Chat members disconnected (1013) because their queue was full.",
                &c.slow_clients,
            ),
            (
                "wave_chat_deliveries_total",
                "Chat messages queued to local members.",
                &c.deliveries,
            ),
            (
                "wave_chat_rate_lease_requests_total",
                "Rate-limit lease requests sent to a sender's owner node.",
                &c.rate.requests,
            ),
            (
                "wave_chat_rate_lease_grants_total",
                "Lease requests answered with tokens.",
                &c.rate.grants,
            ),
            (
                "wave_chat_rate_lease_refusals_total",
                "Lease requests refused (the sender is over its rate).",
                &c.rate.refusals,
            ),
            (
                "wave_chat_rate_fallbacks_total",
                "Chat messages limited by this node's own bucket because their owner could not be asked.",
                &c.rate.fallbacks,
            ),
            (
                "wave_chat_rate_leases_served_total",
                "Lease requests this node answered as a sender's owner.",
                &c.rate.served,
            ),
        ];
        for (name, help, value) in counters {
            single(out, name, Kind::Counter, help, value.load(Ordering::Relaxed));
        }
        family(
            out,
            HOP_METRIC,
            Kind::Histogram,
            "Chat message latency by hop: read_to_publish (sending node), origin_to_room, fanout, queue_to_write, origin_to_write (origin = the sending node's ms stamp).",
        );
        for (hop, h) in c.hops.all() {
            h.render(HOP_METRIC, &format!("hop=\"{hop}\""), out);
        }
        family(
            out,
            LEASE_METRIC,
            Kind::Histogram,
            "Round trip of a rate-limit lease request to the sender's owner node (answered ones).",
        );
        c.rate
            .round_trip
            .render(LEASE_METRIC, "outcome=\"answered\"", out);
    }

    /// What the history stream retains for `room`, oldest first.
    async fn stored_history(&self, room: &RoomId) -> Result<Vec<ChatMessage>, BusError> {
        let subject = format!("room.{}.chat", room_token(room));
        let entries = self
            .inner
            .history
            .last(&subject, self.inner.config.history_len)
            .await?;
        Ok(entries
            .into_iter()
            .filter_map(|e| match serde_json::from_slice::<ServerFrame>(&e.payload) {
                Ok(ServerFrame::Message(m)) => Some(m),
                _ => None,
            })
            .collect())
    }

    /// The presence frame a joining member gets: totals and who is here.
    fn presence_now(a: &Admission) -> PresenceUpdate {
        lock(&a.shared.state).presence_update(Changes::default(), true)
    }
}

/// One member's WebSocket.
struct Connection<'a, S> {
    hub: &'a ChatHub,
    admission: Admission,
    ws: WebSocketStream<S>,
    /// Acknowledgements of this member's sends, oldest first.
    acks: FuturesOrdered<PendingAppend>,
}

impl<S> Connection<'_, S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    /// Returns why the connection ended.
    async fn run(mut self) -> &'static str {
        let a = &self.admission;
        let config = &self.hub.inner.config;
        let welcome = ServerFrame::Welcome {
            room: a.room.as_str().to_owned(),
            identity: a.identity.clone(),
            role: a.role,
            node: self.hub.inner.node.as_str().to_owned(),
            rate: config.rates.of(a.role),
            max_chars: config.filter.max_chars,
        };
        if self.send(&welcome).await.is_err() {
            return "write failed";
        }
        let messages = std::mem::take(&mut self.admission.history);
        if self.send(&ServerFrame::History { messages }).await.is_err() {
            return "write failed";
        }
        let counts = ChatHub::presence_now(&self.admission);
        if self.send(&ServerFrame::Presence(counts)).await.is_err() {
            return "write failed";
        }

        loop {
            tokio::select! {
                out = self.admission.rx.recv() => match out {
                    Some(out) => {
                        if let Err(reason) = self.deliver(out).await {
                            return reason;
                        }
                    }
                    None => {
                        self.close(CLOSE_AGAIN_LATER, "too slow, reconnect").await;
                        return "too slow";
                    }
                },
                Some(ack) = self.acks.next(), if !self.acks.is_empty() => {
                    if let Err(e) = ack
                        && self.send(&unavailable(&self.admission.room, &e)).await.is_err()
                    {
                        return "write failed";
                    }
                }
                // At MAX_IN_FLIGHT unacknowledged sends, stop reading.
                incoming = self.ws.next(), if self.acks.len() < MAX_IN_FLIGHT => match incoming {
                    None => return "closed by client",
                    Some(Ok(WsMessage::Text(text))) => {
                        if let Err(frame) = self.handle_text(text.as_str(), Instant::now()).await
                            && self.send(&frame).await.is_err()
                        {
                            return "write failed";
                        }
                    }
                    Some(Ok(WsMessage::Binary(_))) => {
                        self.close(CLOSE_UNSUPPORTED, "binary frames are not accepted").await;
                        return "binary frame";
                    }
                    Some(Ok(WsMessage::Close(_))) => return "closed by client",
                    Some(Ok(_)) => {}
                    Some(Err(tungstenite::Error::Capacity(e))) => {
                        debug!(room = %self.admission.room, error = %e, "chat frame too big");
                        self.close(CLOSE_TOO_BIG, "message too big").await;
                        return "message too big";
                    }
                    Some(Err(e)) => {
                        debug!(room = %self.admission.room, error = %e, "chat connection error");
                        return "protocol error";
                    }
                },
            }
        }
    }

    /// One text frame from the client, read at `read_at`; `Err` is the
    /// frame to answer with.
    async fn handle_text(&mut self, text: &str, read_at: Instant) -> Result<(), ServerFrame> {
        let frame = read_frame(text)
            .inspect_err(|e| debug!(room = %self.admission.room, error = %e.message, "bad chat frame"))?;
        match frame {
            ClientFrame::Ping => Err(ServerFrame::Pong),
            ClientFrame::Message { text, client_id } => {
                let ack = self.hub.start_send(&self.admission, text, client_id).await?;
                self.hub
                    .inner
                    .counters
                    .hops
                    .read_to_publish
                    .observe(read_at.elapsed());
                self.acks.push_back(ack);
                Ok(())
            }
        }
    }

    /// Writes `first` and what else is queued (up to [`MAX_DRAIN`]
    /// deliveries), then flushes once: one write for many frames when the
    /// member is behind. `Err` is why the connection ends.
    async fn deliver(&mut self, first: Out) -> Result<(), &'static str> {
        let mut next = Some(first);
        let mut taken = 0;
        // (queued at, origin ms) of the chat deliveries in this write.
        let mut stamps = [(Instant::now(), 0); MAX_DRAIN];
        let mut stamped = 0;
        while let Some(out) = next.take() {
            let frames = match out {
                Out::Chat(frames, queued_at, origin_ms) => {
                    stamps[stamped] = (queued_at, origin_ms);
                    stamped += 1;
                    frames
                }
                Out::Frames(frames) => frames,
                Out::Close(code, reason) => {
                    self.close(code, reason).await;
                    return Err(reason);
                }
            };
            for f in frames.iter() {
                self.ws
                    .feed(WsMessage::Text(f.clone()))
                    .await
                    .map_err(|_| "write failed")?;
            }
            self.admission.queued.fetch_sub(frames.len(), Ordering::Relaxed);
            taken += 1;
            if taken < MAX_DRAIN {
                next = self.admission.rx.try_recv().ok();
            }
        }
        self.ws.flush().await.map_err(|_| "write failed")?;
        if stamped > 0 {
            let hops = &self.hub.inner.counters.hops;
            let (now, now_us) = (Instant::now(), unix_us(SystemTime::now()));
            for &(queued_at, origin_ms) in &stamps[..stamped] {
                hops.queue_to_write
                    .observe(now.saturating_duration_since(queued_at));
                hops.origin_to_write
                    .observe_us(now_us.saturating_sub(origin_ms.saturating_mul(1000)));
            }
        }
        Ok(())
    }

    async fn send(&mut self, frame: &ServerFrame) -> Result<(), tungstenite::Error> {
        let text = serde_json::to_string(frame).unwrap_or_default();
        self.ws.send(WsMessage::text(text)).await
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(Some(frame))).await;
    }
}

/// The room's task: bus messages in, member queues out (at most once per
/// fan-out `window`), presence pushed at most once per `interval`.
async fn run_room(
    room: Arc<RoomShared>,
    history_len: usize,
    interval: Duration,
    window: Duration,
    subs: [Subscription; 3],
) {
    let [mut chat, mut moderation, mut presence] = subs;
    let mut last_fanout: Option<Instant> = None;
    // Checked four times per interval so a report is pushed within a quarter
    // interval of arriving; `push_presence` keeps pushes `interval` apart.
    let mut tick = tokio::time::interval(interval / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = chat.next() => {
                let Some(m) = m else { break };
                let took = Instant::now();
                let mut batch = vec![m.payload];
                // Within the window of the previous fan-out: wait for its
                // end, gathering what arrives meanwhile.
                if let Some(due) = last_fanout.map(|t| t + window)
                    && due > took
                {
                    let due = tokio::time::Instant::from_std(due);
                    while batch.len() < MAX_BATCH
                        && let Ok(Some(m)) = tokio::time::timeout_at(due, chat.next()).await
                    {
                        batch.push(m.payload);
                    }
                }
                // What else has arrived goes to the members with it.
                while batch.len() < MAX_BATCH
                    && let Some(Some(m)) = chat.next().now_or_never()
                {
                    batch.push(m.payload);
                }
                room.on_chat(batch, history_len, took);
                last_fanout = Some(Instant::now());
            }
            m = moderation.next() => {
                let Some(m) = m else { break };
                room.on_moderation(&m.payload);
            }
            m = presence.next() => {
                let Some(m) = m else { break };
                room.on_presence(&m.payload, Instant::now());
            }
            _ = tick.tick() => room.push_presence(Instant::now(), interval),
        }
    }
    warn!(room = %room.id, "chat room subscriptions ended");
}

impl RoomShared {
    /// Chat messages from the bus, in order, taken off it at `took`: kept
    /// for history and queued to every member as one delivery.
    fn on_chat(&self, payloads: Vec<Bytes>, history_len: usize, took: Instant) {
        let hops = &self.counters.hops;
        let took_us = unix_us(SystemTime::now());
        let mut oldest_ms = u64::MAX;
        let mut state = lock(&self.state);
        let mut frames = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let msg = match serde_json::from_slice::<ServerFrame>(&payload) {
                Ok(ServerFrame::Message(m)) => m,
                _ => {
                    debug!(room = %self.id, "dropping a malformed chat message from the bus");
                    continue;
                }
            };
            // Deleted, or already loaded from the stream when the room opened.
            if state.deleted.contains(&msg.id) || state.recent.iter().rev().any(|m| m.id == msg.id) {
                continue;
            }
            // The payload is already the client's frame (JSON, so UTF-8):
            // shared by every member, no copy or re-encoding per member.
            let Ok(frame) = Utf8Bytes::try_from(payload) else {
                continue;
            };
            hops.origin_to_room
                .observe_us(took_us.saturating_sub(msg.ts.saturating_mul(1000)));
            oldest_ms = oldest_ms.min(msg.ts);
            state.recent.push_back(msg);
            frames.push(frame);
        }
        while state.recent.len() > history_len {
            state.recent.pop_front();
        }
        if frames.is_empty() {
            return;
        }
        let n = frames.len() as u64;
        let frames: Arc<[Utf8Bytes]> = frames.into();
        let members = fan_out(self, &mut state, |_| {
            Some(Out::Chat(frames.clone(), took, oldest_ms))
        });
        drop(state);
        hops.fanout.observe(took.elapsed());
        self.counters
            .deliveries
            .fetch_add(n * members as u64, Ordering::Relaxed);
    }

    fn on_moderation(&self, payload: &[u8]) {
        let Ok(event) = serde_json::from_slice::<ModEvent>(payload) else {
            debug!(room = %self.id, "dropping a malformed moderation event from the bus");
            return;
        };
        let mut state = lock(&self.state);
        match event.action {
            Action::Ban { identity } => {
                state.sanctions.insert(
                    identity.clone(),
                    Sanction {
                        until_ms: None,
                        ban: true,
                    },
                );
                let banned = frame_text(&error_frame("banned", "you are banned from this chat", None));
                let mut closed = Vec::new();
                for (id, m) in &state.members {
                    if m.identity == identity {
                        let _ = m.tx.send(Out::Frames(banned.clone()));
                        let _ = m.tx.send(Out::Close(CLOSE_POLICY, "banned"));
                        closed.push(*id);
                    }
                }
                for id in closed {
                    state.members.remove(&id);
                }
            }
            Action::Timeout { identity, seconds } => {
                let until_ms = event.at_ms.saturating_add(seconds.saturating_mul(1000));
                state.sanctions.insert(
                    identity.clone(),
                    Sanction {
                        until_ms: Some(until_ms),
                        ban: false,
                    },
                );
                let muted = frame_text(&error_frame(
                    "timed_out",
                    "you are muted in this chat",
                    Some(seconds.saturating_mul(1000)),
                ));
                fan_out(self, &mut state, |m| {
                    (m.identity == identity).then(|| Out::Frames(muted.clone()))
                });
            }
            Action::Unban { identity } => {
                state.sanctions.remove(&identity);
            }
            Action::Delete { id } => {
                let frame = frame_text(&ServerFrame::Delete { id: id.clone() });
                state.recent.retain(|m| m.id != id);
                state.deleted.insert(id);
                fan_out(self, &mut state, |_| Some(Out::Frames(frame.clone())));
            }
        }
    }

    fn on_presence(&self, payload: &[u8], now: Instant) {
        let Ok(p) = serde_json::from_slice::<NodePresence>(payload) else {
            debug!(room = %self.id, "dropping a malformed presence report from the bus");
            return;
        };
        let mut state = lock(&self.state);
        state.pending.absorb(&p.changes);
        if p.is_empty() {
            state.nodes.remove(&p.node);
        } else {
            state.nodes.insert(p.node.clone(), (p, now));
        }
    }

    /// Forgets silent nodes and pushes the counts and pending joins and
    /// leaves when anything changed, at most once per `interval`.
    fn push_presence(&self, now: Instant, interval: Duration) {
        let stale = interval * presence::STALE_INTERVALS;
        let mut state = lock(&self.state);
        if state
            .last_push
            .is_some_and(|t| now.saturating_duration_since(t) < interval)
        {
            return;
        }
        state
            .nodes
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < stale);
        let counts = presence::total(state.nodes.values().map(|(p, _)| p));
        if state.pushed.as_ref() == Some(&counts) && state.pending.is_empty() {
            return;
        }
        let changes = std::mem::take(&mut state.pending);
        let update = state.presence_update(changes, false);
        let frame = frame_text(&ServerFrame::Presence(update));
        state.pushed = Some(counts);
        state.last_push = Some(now);
        fan_out(self, &mut state, |_| Some(Out::Frames(frame.clone())));
    }
}

impl RoomState {
    /// A presence frame from the nodes' last reports: the totals,
    /// `changes`, and with `listed` who is here (up to 200, for a join).
    fn presence_update(&self, changes: Changes, listed: bool) -> PresenceUpdate {
        let reports = || self.nodes.values().map(|(p, _)| p);
        let (participants, participants_truncated) = if listed {
            let (p, truncated) = presence::listed(reports());
            (Some(p), truncated)
        } else {
            (None, false)
        };
        PresenceUpdate {
            ts: unix_ms(SystemTime::now()),
            counts: presence::total(reports()),
            changes,
            participants,
            participants_truncated,
        }
    }
}

/// Queues `out(member)` to every member; a member whose queue is full is
/// dropped (its connection closes with 1013), never waited for. Returns
/// how many members it was queued to.
fn fan_out(room: &RoomShared, state: &mut RoomState, mut out: impl FnMut(&Member) -> Option<Out>) -> usize {
    let mut gone = Vec::new();
    let mut queued = 0;
    for (id, m) in &state.members {
        let Some(o) = out(m) else { continue };
        // A member already `client_queue` frames behind is too slow; one
        // delivery (at most MAX_BATCH frames) may go past the bound.
        if m.queued.fetch_add(o.frames(), Ordering::Relaxed) >= room.client_queue {
            warn!(room = %room.id, member = id, identity = %m.identity, "chat member too slow; disconnecting");
            room.counters.slow_clients.fetch_add(1, Ordering::Relaxed);
            gone.push(*id);
            continue;
        }
        if m.tx.send(o).is_ok() {
            queued += 1;
        } else {
            // Its connection just ended; `leave` is on its way.
            gone.push(*id);
        }
    }
    for id in gone {
        state.members.remove(&id);
    }
    queued
}

/// Answers lease requests for the buckets this node owns until the bus
/// ends the subscription. Malformed requests get an `error` answer.
async fn serve_leases(
    bus: Bus,
    quota: Arc<Mutex<Quota>>,
    counters: Arc<ChatCounters>,
    mut requests: Subscription,
) {
    while let Some(m) = requests.next().await {
        let reply = match serde_json::from_slice::<LeaseRequest>(&m.payload) {
            Ok(req) => match req.check() {
                Ok(()) => {
                    counters.rate.served.fetch_add(1, Ordering::Relaxed);
                    let grant = lock(&quota).serve(&req.key, req.rate, req.want, req.owed, Instant::now());
                    LeaseReply::from(grant)
                }
                Err(why) => {
                    debug!(why, "refusing a bad lease request");
                    lease_error(why.to_owned())
                }
            },
            Err(e) => {
                debug!(error = %e, "refusing an unreadable lease request");
                lease_error(format!("unreadable lease request: {e}"))
            }
        };
        if let Err(e) = bus.respond(&m, json_bytes(&reply)).await {
            debug!(error = %e, "lease answer not sent");
        }
    }
    debug!("lease requests subscription ended");
}

fn lease_error(error: String) -> LeaseReply {
    LeaseReply {
        granted: 0,
        retry_after_ms: None,
        error: Some(error),
    }
}

impl Drop for HubInner {
    fn drop(&mut self) {
        self.leases.abort();
    }
}

/// Where `node` takes lease requests.
fn rate_subject(node: &NodeId) -> String {
    format!("chat.rate.{node}")
}

/// A sender's rate-limit key: room names have no `/`, so this is one-to-one.
fn quota_key(room: &RoomId, identity: &str) -> String {
    format!("{}/{identity}", room.as_str())
}

fn rate_limited(rate: f64, wait: Duration) -> ServerFrame {
    let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
    error_frame(
        "rate_limited",
        &format!("at most {rate} messages per second"),
        Some(ms),
    )
}

/// A room name as one subject token: `.` (allowed in room names) becomes
/// `=2e`; `=` never appears in room names, so this is one-to-one.
pub fn room_token(room: &RoomId) -> String {
    room.as_str().replace('.', "=2e")
}

fn sanction_key(token: &str, identity: &str) -> String {
    let hex: String = identity.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{token}/s/{hex}")
}

fn is_message_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn presence_ttl(config: &ChatConfig) -> Duration {
    config.presence_interval * presence::STALE_INTERVALS
}

/// A client's text frame, parsed; `Err` says why it was refused.
pub(crate) fn read_frame(text: &str) -> Result<ClientFrame, FrameError> {
    serde_json::from_str(text).map_err(|e| FrameError {
        code: if serde_json::from_str::<serde_json::Value>(text).is_ok() {
            "bad_frame"
        } else {
            "bad_json"
        },
        message: format!("expected {{\"type\":\"message\",\"text\":...}}: {e}"),
    })
}

/// Whether a member with `role` may send `text` (tagged `client_id`):
/// the room's content rules and the tag's bound.
pub(crate) fn check_message(
    filter: &TextFilter,
    role: Role,
    text: &str,
    client_id: Option<&str>,
) -> Result<(), FrameError> {
    if let Err(refusal) = filter.check(text, role) {
        return Err(FrameError {
            code: refusal.code(),
            message: refusal.message(),
        });
    }
    if client_id.is_some_and(|c| c.len() > MAX_CLIENT_ID) {
        return Err(FrameError {
            code: "bad_frame",
            message: format!("client_id is longer than {MAX_CLIENT_ID} bytes"),
        });
    }
    Ok(())
}

/// Why a client's frame was refused: the error frame's code and message.
#[derive(Debug)]
pub(crate) struct FrameError {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl From<FrameError> for ServerFrame {
    fn from(e: FrameError) -> ServerFrame {
        error_frame(e.code, &e.message, None)
    }
}

fn error_frame(code: &str, message: &str, retry_after_ms: Option<u64>) -> ServerFrame {
    ServerFrame::Error {
        code: code.to_owned(),
        message: message.to_owned(),
        retry_after_ms,
    }
}

/// One server frame, encoded once, as a delivery's frames.
fn frame_text(frame: &ServerFrame) -> Arc<[Utf8Bytes]> {
    Arc::new([Utf8Bytes::from(serde_json::to_string(frame).unwrap_or_default())])
}

/// The answer to a send the bus did not take (or did not acknowledge).
fn unavailable(room: &RoomId, e: &BusError) -> ServerFrame {
    debug!(%room, error = %e, "chat send refused: bus unavailable");
    error_frame(
        "unavailable",
        "chat is unavailable, message not sent; retry",
        Some(1000),
    )
}

fn json_bytes<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// Wall-clock microseconds, for latency against a message's `ts`.
fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Wall-clock milliseconds; the one place the chat reads the clock for ids
/// and timestamps.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_tokens_are_single_subject_tokens() {
        let r = RoomId::parse("a.b-c_d").unwrap();
        assert_eq!(room_token(&r), "a=2eb-c_d");
        assert!(!room_token(&RoomId::parse("..").unwrap()).contains('.'));
    }

    #[test]
    fn frames_round_trip() {
        let m = ChatMessage {
            id: "0123456789abcdef".into(),
            ts: 1,
            room: "r".into(),
            sender: Sender {
                identity: "a".into(),
                role: Role::Viewer,
            },
            text: "hi".into(),
            client_id: None,
        };
        let text = serde_json::to_string(&ServerFrame::Message(m.clone())).unwrap();
        assert!(
            text.starts_with(r#"{"type":"message","id":"0123456789abcdef""#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<ServerFrame>(&text).unwrap(),
            ServerFrame::Message(m)
        );
        assert_eq!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"message","text":"x"}"#).unwrap(),
            ClientFrame::Message {
                text: "x".into(),
                client_id: None
            }
        );
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"shout"}"#).is_err());
    }

    #[test]
    fn sanction_keys_are_kv_safe() {
        let k = sanction_key("room", "bob smith/.*");
        assert!(
            k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'=' | b'-' | b'_'))
        );
        assert!(is_message_id("0123456789abcdef"));
        assert!(!is_message_id("0123456789abcdeg"));
    }
}
