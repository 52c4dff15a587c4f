//! Node and room registries on the bus.
//!
//! - Bucket `nodes`: key = node id, value = [`NodeInfo`] (addresses and
//!   load), rewritten every heartbeat; the bucket's TTL drops a node that
//!   stops heartbeating.
//! - Bucket `rooms`: key = room, value = [`RoomClaim`] (owner node and its
//!   URL). The node taking a room's first publisher claims it with
//!   create-if-absent; the owner refreshes it with compare-and-swap every
//!   heartbeat while the room lives and deletes it when the room empties; the
//!   TTL frees it when the owner dies. A claim whose owner is no longer in
//!   `nodes` may be taken over with compare-and-swap at once.
//!
//! [`ClaimBook`] (Sans-IO) decides what to refresh and release; [`Cluster`]
//! performs it over the bus.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::bus::{Bus, BusError, Kv};
use crate::locks::{lock, read, write};
use crate::media::RoomId;

mod claims;
mod load;
pub mod placement;

pub use claims::{ClaimAction, ClaimBook};
pub use load::CpuSampler;
pub use placement::place;

/// A node's name in the registry: 1–64 of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    pub fn parse(s: &str) -> Option<NodeId> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        ok.then(|| NodeId(s.to_owned()))
    }

    /// A usable id from any string (a host name): invalid bytes become `-`.
    pub fn sanitize(s: &str) -> NodeId {
        let mut id: String = s
            .chars()
            .take(64)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if id.is_empty() {
            id.push_str("node");
        }
        NodeId(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        NodeId::parse(&s).ok_or_else(|| format!("bad node id {s:?}"))
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A node's load as it reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Process CPU over the last interval, 0..1 of all cores.
    pub cpu: f64,
    pub peers: u32,
    /// 0 = no limit configured.
    pub max_peers: u32,
    pub bandwidth_bps: u64,
    /// 0 = no limit configured.
    pub max_bandwidth_bps: u64,
}

impl Load {
    /// The busiest resource, 0..1 (or above when over a limit).
    pub fn factor(&self) -> f64 {
        let ratio = |used: f64, max: f64| if max > 0.0 { used / max } else { 0.0 };
        self.cpu
            .max(ratio(f64::from(self.peers), f64::from(self.max_peers)))
            .max(ratio(self.bandwidth_bps as f64, self.max_bandwidth_bps as f64))
    }
}

/// One entry of the `nodes` bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// Base URL of the node's HTTP front door, e.g. `http://10.0.0.2:8080`.
    pub http_url: String,
    /// The media (UDP) address, when known.
    pub media_addr: Option<String>,
    /// Relative capacity for placement (1.0 = a standard node).
    pub weight: f64,
    pub load: Load,
    /// The node's QUIC relay endpoint, when it relays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_addr: Option<String>,
    /// SHA-256 of the relay's certificate: the only one other nodes accept
    /// from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_fingerprint: Option<String>,
    /// Rooms with publishers on this node whose claim another node holds
    /// (the room has publishers on several nodes): other nodes feed their
    /// viewers this node's stream of the room too. At most [`MAX_ORIGINS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<String>,
}

/// Rooms one node lists as a second origin of at most; past it the rest
/// are left out (and logged): their viewers elsewhere see only the
/// claim holder's publishers.
pub const MAX_ORIGINS: usize = 4096;

/// One entry of the `rooms` bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomClaim {
    pub node: NodeId,
    pub http_url: String,
}

/// How this node takes part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    pub http_url: String,
    pub media_addr: Option<String>,
    pub weight: f64,
    pub max_peers: u32,
    pub max_bandwidth_bps: u64,
    /// The relay endpoint and certificate fingerprint this node advertises.
    pub relay_addr: Option<String>,
    pub relay_fingerprint: Option<String>,
    /// Children per node in a room's relay tree ([`placement::parent`]).
    pub relay_fanout: usize,
    /// How often the node announces itself and refreshes its claims.
    pub heartbeat: Duration,
    /// A node (and its claims) is dropped this long after its last heartbeat.
    pub ttl: Duration,
}

impl ClusterConfig {
    /// Defaults: heartbeat 1 s, TTL 3 s (a dead node is gone within 3–4 s).
    pub fn new(node_id: NodeId, http_url: String) -> ClusterConfig {
        ClusterConfig {
            node_id,
            http_url,
            media_addr: None,
            weight: 1.0,
            max_peers: 0,
            max_bandwidth_bps: 0,
            relay_addr: None,
            relay_fingerprint: None,
            relay_fanout: 8,
            heartbeat: Duration::from_secs(1),
            ttl: Duration::from_secs(3),
        }
    }
}

/// Who answers for a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node owns it (just now or already).
    Local,
    /// A live node owns it.
    Elsewhere(RoomClaim),
}

/// The registries over a bus. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Bus,
    config: ClusterConfig,
    nodes: Kv,
    rooms: Kv,
    book: Mutex<ClaimBook>,
    live: RwLock<BTreeMap<NodeId, NodeInfo>>,
    load: Mutex<Load>,
    /// Rooms published here whose claim is elsewhere (set each heartbeat).
    origins: Mutex<Vec<String>>,
}

impl Cluster {
    /// Opens the `nodes` and `rooms` buckets (TTL = `config.ttl`).
    pub async fn new(bus: Bus, config: ClusterConfig) -> Result<Cluster, BusError> {
        let nodes = bus.kv("nodes", config.ttl).await?;
        let rooms = bus.kv("rooms", config.ttl).await?;
        let grace = config.ttl;
        Ok(Cluster {
            inner: Arc::new(Inner {
                bus,
                config,
                nodes,
                rooms,
                book: Mutex::new(ClaimBook::new(grace)),
                live: RwLock::new(BTreeMap::new()),
                load: Mutex::new(Load::default()),
                origins: Mutex::new(Vec::new()),
            }),
        })
    }

    pub fn node_id(&self) -> &NodeId {
        &self.inner.config.node_id
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    /// This node's registry entry with its last reported load.
    pub fn info(&self) -> NodeInfo {
        let c = &self.inner.config;
        NodeInfo {
            id: c.node_id.clone(),
            http_url: c.http_url.clone(),
            media_addr: c.media_addr.clone(),
            weight: c.weight,
            load: *lock(&self.inner.load),
            relay_addr: c.relay_addr.clone(),
            relay_fingerprint: c.relay_fingerprint.clone(),
            origins: lock(&self.inner.origins).clone(),
        }
    }

    /// The live nodes with publishers of `room` (by the last heartbeat's
    /// view): the claim holder `owner`, when live, first, then the nodes
    /// that list the room as a second origin.
    pub fn origins(&self, room: &RoomId, owner: Option<&NodeId>) -> Vec<NodeInfo> {
        let live = read(&self.inner.live);
        let mut found: Vec<NodeInfo> = owner.and_then(|o| live.get(o)).cloned().into_iter().collect();
        for n in live.values() {
            if Some(&n.id) != owner && n.origins.iter().any(|r| r == room.as_str()) {
                found.push(n.clone());
            }
        }
        found
    }

    /// The nodes seen at the last heartbeat (this one included), by id.
    pub fn live_nodes(&self) -> Vec<NodeInfo> {
        read(&self.inner.live).values().cloned().collect()
    }

    /// Whether this node relays rooms to and from other nodes.
    pub fn relays(&self) -> bool {
        self.inner.config.relay_addr.is_some()
    }

    /// The node this one feeds `room` from, whose publishers are on
    /// `origin`: the origin itself, or a relaying node nearer to it in the
    /// room's tree ([`placement::parent`]). Nodes whose relay certificate is
    /// in `avoid` (their link just died) are left out of the tree; `None`
    /// when the origin is not live or does not relay.
    pub fn relay_parent(&self, room: &RoomId, origin: &NodeId, avoid: &[String]) -> Option<NodeInfo> {
        let live = read(&self.inner.live);
        let relaying = |n: &&NodeInfo| {
            n.relay_addr.is_some() && n.relay_fingerprint.as_ref().is_some_and(|f| !avoid.contains(f))
        };
        live.get(origin).filter(relaying)?;
        let nodes: Vec<&NodeId> = live.values().filter(relaying).map(|n| &n.id).collect();
        let parent = placement::parent(
            room,
            origin,
            self.node_id(),
            nodes,
            self.inner.config.relay_fanout,
        );
        live.get(&parent).cloned()
    }

    /// A live node's registry entry (by the last heartbeat's view).
    pub fn live_node(&self, id: &NodeId) -> Option<NodeInfo> {
        read(&self.inner.live).get(id).cloned()
    }

    /// The live node a new `room` should go to (by the last heartbeat's
    /// view), with its address.
    pub fn placement(&self, room: &RoomId) -> Option<NodeInfo> {
        let live = read(&self.inner.live);
        let id = place(room, live.values())?;
        live.get(&id).cloned()
    }

    /// The live node (by the last heartbeat's view) that answers for `key`
    /// ([`placement::owner`]); `None` before the first heartbeat.
    pub fn owner_of(&self, key: &str) -> Option<NodeId> {
        placement::owner(key, read(&self.inner.live).keys())
    }

    /// Whether this node holds `room`'s claim.
    pub fn owns(&self, room: &RoomId) -> bool {
        lock(&self.inner.book).owns(room)
    }

    /// The room's current claim, if any.
    pub async fn owner(&self, room: &RoomId) -> Result<Option<RoomClaim>, BusError> {
        let Some(entry) = self.inner.rooms.get(room.as_str()).await? else {
            return Ok(None);
        };
        Ok(decode::<RoomClaim>(&entry.value))
    }

    /// Claims `room` for a publisher arriving here: `None` when it may
    /// publish here (this node holds the claim, or another does and both
    /// relay, so this node becomes a second origin of the room), or the
    /// holder when it must publish there instead.
    pub async fn claim_to_publish(&self, room: &RoomId) -> Result<Option<RoomClaim>, BusError> {
        match self.claim(room).await? {
            Claim::Local => Ok(None),
            Claim::Elsewhere(_) if self.relays() => Ok(None),
            Claim::Elsewhere(owner) => Ok(Some(owner)),
        }
    }

    /// Claims `room` for this node unless a live node holds it. A claim by
    /// a node missing from `nodes` (dead, its claim not yet expired) is
    /// taken over with compare-and-swap.
    pub async fn claim(&self, room: &RoomId) -> Result<Claim, BusError> {
        let me = RoomClaim {
            node: self.node_id().clone(),
            http_url: self.inner.config.http_url.clone(),
        };
        let value = encode(&me);
        // Each retry means another node changed the key in between.
        for _ in 0..4 {
            match self.inner.rooms.create(room.as_str(), value.clone()).await {
                Ok(revision) => return Ok(self.claimed(room, revision)),
                Err(BusError::KeyExists(_)) => {}
                Err(e) => return Err(e),
            }
            let Some(entry) = self.inner.rooms.get(room.as_str()).await? else {
                continue;
            };
            let holder = decode::<RoomClaim>(&entry.value);
            if let Some(holder) = holder.as_ref().filter(|h| h.node != me.node) {
                if self.inner.nodes.get(holder.node.as_str()).await?.is_some() {
                    return Ok(Claim::Elsewhere(holder.clone()));
                }
                info!(%room, dead = %holder.node, "taking over the claim of a node that stopped heartbeating");
            }
            match self
                .inner
                .rooms
                .update(room.as_str(), value.clone(), entry.revision)
                .await
            {
                Ok(revision) => return Ok(self.claimed(room, revision)),
                Err(BusError::WrongRevision(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(BusError::Other(format!("room {room}: claim contended")))
    }

    fn claimed(&self, room: &RoomId, revision: u64) -> Claim {
        debug!(%room, revision, "room claimed");
        lock(&self.inner.book).handle_claimed(Instant::now(), room.clone(), revision);
        Claim::Local
    }

    /// One heartbeat: announce this node with `load`, refresh the view of
    /// live nodes, refresh claims of `active` rooms (re-creating any that
    /// expired during an outage) and release the rest.
    pub async fn heartbeat(&self, load: Load, active: &BTreeSet<RoomId>) -> Result<(), BusError> {
        *lock(&self.inner.load) = load;
        let mut origins: Vec<String> = {
            let book = lock(&self.inner.book);
            active
                .iter()
                .filter(|r| !book.owns(r))
                .map(|r| r.as_str().to_owned())
                .collect()
        };
        if origins.len() > MAX_ORIGINS {
            warn!(
                rooms = origins.len(),
                listed = MAX_ORIGINS,
                "more rooms published here with a claim elsewhere than the registry entry lists"
            );
            origins.truncate(MAX_ORIGINS);
        }
        *lock(&self.inner.origins) = origins;
        let info = self.info();
        self.inner.nodes.put(info.id.as_str(), encode(&info)).await?;

        let mut live = BTreeMap::new();
        for e in self.inner.nodes.entries().await? {
            match decode::<NodeInfo>(&e.value) {
                Some(n) => {
                    live.insert(n.id.clone(), n);
                }
                None => debug!(key = %e.key, "unreadable node entry ignored"),
            }
        }
        *write(&self.inner.live) = live;

        let actions = lock(&self.inner.book).poll_actions(Instant::now(), active);
        for action in actions {
            match action {
                ClaimAction::Refresh { room, revision } => self.refresh(&room, revision).await?,
                ClaimAction::Release { room, revision } => {
                    debug!(%room, "room empty, releasing its claim");
                    lock(&self.inner.book).handle_lost(&room);
                    match self.inner.rooms.delete(room.as_str(), Some(revision)).await {
                        Ok(()) | Err(BusError::WrongRevision(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    async fn refresh(&self, room: &RoomId, revision: u64) -> Result<(), BusError> {
        let value = encode(&RoomClaim {
            node: self.node_id().clone(),
            http_url: self.inner.config.http_url.clone(),
        });
        match self
            .inner
            .rooms
            .update(room.as_str(), value.clone(), revision)
            .await
        {
            Ok(rev) => {
                lock(&self.inner.book).handle_refreshed(room, rev);
                return Ok(());
            }
            Err(BusError::WrongRevision(_)) => {}
            Err(e) => return Err(e),
        }
        // The claim expired (an outage longer than the TTL) or was taken.
        match self.inner.rooms.create(room.as_str(), value).await {
            Ok(rev) => {
                info!(%room, "re-claimed a room after its claim expired");
                lock(&self.inner.book).handle_refreshed(room, rev);
            }
            Err(BusError::KeyExists(_)) => {
                warn!(%room, "another node took this room's claim; its publishers here are now unlisted");
                lock(&self.inner.book).handle_lost(room);
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Graceful exit: drop this node's entry and its claims.
    pub async fn leave(&self) {
        let rooms: Vec<RoomId> = lock(&self.inner.book).rooms().cloned().collect();
        for room in rooms {
            if let Err(e) = self.inner.rooms.delete(room.as_str(), None).await {
                debug!(%room, error = %e, "claim left to expire");
            }
        }
        if let Err(e) = self.inner.nodes.delete(self.node_id().as_str(), None).await {
            debug!(error = %e, "node entry left to expire");
        }
    }
}

fn encode<T: Serialize>(v: &T) -> Bytes {
    // Serializing these plain structs cannot fail.
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Option<T> {
    serde_json::from_slice(b).ok()
}

/// Announces this node every heartbeat until `shutdown` resolves, then
/// leaves the registry. Load and active rooms come from `node`; a bus
/// reconnect triggers an announcement at once (re-announcing the node and
/// re-claiming its rooms).
pub async fn run_heartbeats<M: crate::MediaNode>(
    cluster: Cluster,
    node: Arc<M>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut status = cluster.bus().status();
    let mut tick = tokio::time::interval(cluster.config().heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cpu = CpuSampler::new();
    let mut was_down = false;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => {}
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
                if *status.borrow_and_update() == crate::bus::BusStatus::Disconnected {
                    continue;
                }
            }
        }
        let rooms = node.rooms().await;
        let mut active = BTreeSet::new();
        let mut load = Load {
            cpu: cpu.sample(),
            max_peers: cluster.config().max_peers,
            max_bandwidth_bps: cluster.config().max_bandwidth_bps,
            ..Load::default()
        };
        for r in &rooms {
            if !r.publishers.is_empty() {
                active.insert(r.room.clone());
            }
            let peers = r.publishers.len() + r.viewers.len();
            load.peers = load
                .peers
                .saturating_add(u32::try_from(peers).unwrap_or(u32::MAX));
            let tracks: u64 = r
                .publishers
                .iter()
                .flat_map(|p| &p.tracks)
                .map(|t| t.bitrate_bps)
                .sum();
            let viewers: u64 = r.viewers.iter().map(|v| v.bitrate_bps).sum();
            load.bandwidth_bps = load.bandwidth_bps.saturating_add(tracks + viewers);
        }
        match cluster.heartbeat(load, &active).await {
            Ok(()) if was_down => {
                info!(node = %cluster.node_id(), rooms = active.len(), "re-announced after a bus outage");
                was_down = false;
            }
            Ok(()) => {}
            Err(e) => {
                if !was_down {
                    warn!(error = %e, "heartbeat failed; serving local rooms, retrying");
                }
                was_down = true;
            }
        }
    }
    cluster.leave().await;
}
