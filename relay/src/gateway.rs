//! The node's gateway between its workers and the other nodes: Sans-IO.
//!
//! To the node's workers the gateway is one more engine, addressed by its
//! own [`WorkerId`] (one past the last worker):
//!
//! - On an **edge** (a node whose viewers watch a room published on another
//!   node), a worker makes the gateway the room's home. The gateway merges
//!   the watches of all its workers into one watch on the link to the room's
//!   *parent* (its origin, or a relay node nearer to it), hands each
//!   announced source and packet to every watching worker, and sends
//!   keyframe requests upstream.
//! - On a **relay** (a node other nodes watch a room through, whose origin
//!   is elsewhere), child links join the same upstream watch as the workers
//!   do: each child counts as one subscriber, gets the sources under this
//!   node's numbers, and gets only the layers it asked for.
//! - On an **origin** (the node with the room's publishers), the gateway
//!   watches the room at its home worker for as long as one link watches it,
//!   and sends each announcement and packet once per watching link.
//!
//! Source ids are translated at each hop: on the wire an origin's source is
//! `worker << 48 | peer id`, so a keyframe request finds its worker without a
//! table; a node numbers the sources it mirrors itself (with the top bit set
//! towards its children), so sources of several links never collide. A
//! mirrored source outlives the loss of its route for [`GRACE_TICKS`] ticks:
//! announced again under the same session over a new route, it keeps its
//! number, and the workers' viewers see a pause, not a new publisher.
//!
//! A watch over a link is preceded by the nodes it comes through
//! ([`Message::Hops`]); a node refuses a watch that passed through it or
//! through its own parent for the room, and the child routes again.
//!
//! A room may have publishers on several nodes. What crosses links is a
//! [`Topic`]: one room's sources *on one origin node* (named by its tag),
//! each with its own tree. A node with publishers of the room serves its
//! own topic as the origin and is fed the others' like any edge; workers
//! watch the room, and the gateway feeds them every topic of it that the
//! driver routes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::RangeInclusive;
use std::time::Duration;

use wave_vocab::{RoomId, SessionId};

use crate::gop::Gop;
use crate::message::{MediaPacket, Message, SourceId, WorkerId, starts_keyframe};
use crate::wire::MAX_HOPS;

/// One connection to another node, numbered by the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

/// One room's sources on one origin node: what a relay tree carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic {
    pub room: RoomId,
    /// The origin node's tag (from its certificate).
    pub origin: u64,
}

impl Topic {
    pub fn new(room: RoomId, origin: u64) -> Topic {
        Topic { room, origin }
    }

    /// Every topic of `room`, for range queries.
    fn of(room: &RoomId) -> RangeInclusive<Topic> {
        Topic::new(room.clone(), 0)..=Topic::new(room.clone(), u64::MAX)
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{:016x}", self.room, self.origin)
    }
}

/// A source's track and layer, as `(source, track, layer)`.
pub type LayerKey = (SourceId, u8, u8);
/// A link and the layers it carries.
pub type Carried = (LinkId, Vec<LayerKey>);

/// A room's links at one node ([`Gateway::room_links`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomLinks {
    /// The links to the room's parents (one per origin node fed from) and
    /// the layers asked over each.
    pub parents: Vec<Carried>,
    /// The links watching the room here and the layers each asked for.
    pub children: Vec<Carried>,
}

/// What the gateway asks its driver to do.
#[derive(Debug, Clone)]
pub enum GatewayOutput {
    /// Hand to a worker's inbox (from the gateway's own id).
    Worker(WorkerId, Message),
    /// Send on a link.
    Link(LinkId, Message),
    /// The topic lost its route (its parent's link closed, or the parent
    /// refused the watch): the driver routes it again, elsewhere.
    Unroute(Topic),
}

/// Packets kept per relayed layer for retransmission: ~1 s of a 2.5 Mbit/s layer.
pub const RECENT: usize = 512;
/// A gap wider than this is a restart (a layer asked for again), not loss.
const MAX_GAP: u64 = crate::wire::MAX_NACK as u64;
/// An upstream room whose parent's link is gone.
const NO_LINK: LinkId = LinkId(u64::MAX);
/// Bits of the wire source id that hold the origin's peer id.
const PEER_BITS: u32 = 48;
/// The wire id bit of a source a relay forwards (its own number for it).
const RELAYED: u64 = 1 << 63;
/// Rooms one link may watch at once; a watch past it is refused (logged by
/// the driver through [`Gateway::refused`]).
pub const MAX_WATCHED_PER_LINK: usize = 1024;
/// How often the driver calls [`Gateway::tick`].
pub const TICK: Duration = Duration::from_millis(250);
/// Ticks a mirrored source waits for a new route after losing its own (4 s).
pub const GRACE_TICKS: u32 = 16;
/// Ticks it waits at most once the new route is set (1 s): a parent
/// announces what it has right after the watch, so a source it did not
/// announce by then is gone (its publisher left with its origin, or came
/// back under a new session that the viewers should move to).
pub const ROUTED_GRACE_TICKS: u32 = 4;

/// Who needs a mirrored layer: a local worker or a child link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Sub {
    Worker(WorkerId),
    Link(LinkId),
}

/// A source mirrored on this node.
struct InSource {
    link: LinkId,
    remote: SourceId,
    topic: Topic,
    session: SessionId,
    /// The last announcement (under the local id), for workers and
    /// children that start watching later.
    announce: Message,
    /// Ticks since its route was lost; `None` while it is fed.
    stale: Option<u32>,
}

/// A topic this node watches upstream.
struct EdgeRoom {
    link: LinkId,
    workers: BTreeSet<WorkerId>,
    /// Links fed from here, with the nodes their watch came through.
    children: BTreeMap<LinkId, Vec<u64>>,
    sources: Vec<SourceId>,
}

impl EdgeRoom {
    fn new(link: LinkId) -> EdgeRoom {
        EdgeRoom {
            link,
            workers: BTreeSet::new(),
            children: BTreeMap::new(),
            sources: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.workers.is_empty() && self.children.is_empty()
    }
}

/// A local source some link watches.
struct OutSource {
    room: RoomId,
    announce: Message,
}

/// The gateway's tables. Every input returns nothing; outputs are polled.
pub struct Gateway {
    me: WorkerId,
    workers: usize,
    /// Which worker is a room's home here (the node's room hash).
    home: Box<dyn Fn(&RoomId) -> WorkerId + Send>,
    /// This node's tag in hop lists, and each link's peer's.
    tag: u64,
    link_tags: HashMap<LinkId, u64>,
    /// The last hop list each link sent, for its next watch.
    hops_in: HashMap<LinkId, (Topic, Vec<u64>)>,
    // Edge and relay side.
    routes: BTreeMap<Topic, LinkId>,
    edge_rooms: BTreeMap<Topic, EdgeRoom>,
    /// The workers watching each room here: fed every routed topic of it.
    room_workers: HashMap<RoomId, BTreeSet<WorkerId>>,
    in_ids: HashMap<(LinkId, SourceId), SourceId>,
    in_sources: HashMap<SourceId, InSource>,
    /// Which workers and child links need each mirrored (source, track, layer).
    demand_in: HashMap<LayerKey, BTreeSet<Sub>>,
    next_source: u64,
    // Origin side.
    watched: HashMap<RoomId, BTreeSet<LinkId>>,
    /// The topics each link watches here (as their origin or as a relay).
    watching: HashMap<LinkId, BTreeSet<Topic>>,
    out_sources: HashMap<(WorkerId, SourceId), OutSource>,
    /// The (wire source, track, layer)s each link asked for.
    demand_out: HashMap<LinkId, HashSet<LayerKey>>,
    /// The last [`RECENT`] packets of each layer sent on.
    recent: Recent,
    /// The latest keyframe-started group of each video layer here (under
    /// its wire id at an origin, its local id at an edge): written to a
    /// link that starts carrying the layer, so its viewers start at once.
    gops: HashMap<LayerKey, Gop>,
    replays: u64,
    /// The highest sequence number seen per mirrored (local source, track, layer).
    highest: HashMap<LayerKey, u64>,
    nacked: u64,
    resent: u64,
    loops: u64,
    reparents: u64,
    out: VecDeque<GatewayOutput>,
    refused: u64,
}

impl Gateway {
    /// The gateway of a node with `workers` workers; it is `WorkerId(workers)`.
    pub fn new(workers: usize, home: Box<dyn Fn(&RoomId) -> WorkerId + Send>) -> Gateway {
        Gateway {
            me: WorkerId(workers),
            workers,
            home,
            tag: 0,
            link_tags: HashMap::new(),
            hops_in: HashMap::new(),
            routes: BTreeMap::new(),
            edge_rooms: BTreeMap::new(),
            room_workers: HashMap::new(),
            in_ids: HashMap::new(),
            in_sources: HashMap::new(),
            demand_in: HashMap::new(),
            next_source: 1,
            watched: HashMap::new(),
            watching: HashMap::new(),
            out_sources: HashMap::new(),
            demand_out: HashMap::new(),
            recent: HashMap::new(),
            gops: HashMap::new(),
            replays: 0,
            highest: HashMap::new(),
            nacked: 0,
            resent: 0,
            loops: 0,
            reparents: 0,
            out: VecDeque::new(),
            refused: 0,
        }
    }

    /// The id workers address the gateway by.
    pub fn id(&self) -> WorkerId {
        self.me
    }

    /// This node's tag in hop lists (unique in the cluster: the driver
    /// takes it from the node's certificate).
    pub fn set_tag(&mut self, tag: u64) {
        self.tag = tag;
    }

    /// This node's tag: the origin of the topics of its own publishers.
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// The tag of the node at the other end of `link`, once known.
    pub fn link_tag(&mut self, link: LinkId, tag: u64) {
        self.link_tags.insert(link, tag);
    }

    /// Watches of rooms refused so far (a link over [`MAX_WATCHED_PER_LINK`]).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Packets asked again upstream, and packets resent downstream.
    pub fn repairs(&self) -> (u64, u64) {
        (self.nacked, self.resent)
    }

    /// Links that started carrying a layer from its cached keyframe group.
    pub fn replays(&self) -> u64 {
        self.replays
    }

    /// `link` starts carrying the layer `key` (its id here; `wire` on the
    /// link): it is written the layer's cached keyframe group, or, for a
    /// video layer with none, the layer's keyframe is asked for on its
    /// behalf (its node held its own request back): `ask` is where to.
    fn start_carrying(&mut self, link: LinkId, key: LayerKey, wire: SourceId, ask: Option<GatewayOutput>) {
        if self.replay(link, key, wire) {
            return;
        }
        let video = match relayed_local(wire) {
            Some(local) => self.in_sources.get(&local).map(|s| &s.announce),
            None => {
                let (worker, peer) = from_wire(key.0);
                self.out_sources.get(&(worker, peer)).map(|s| &s.announce)
            }
        }
        .is_some_and(|a| is_video(a, key.1));
        if let (true, Some(ask)) = (video, ask) {
            self.out.push_back(ask);
        }
    }

    /// Writes the cached group of `key` (its id here) to `link` under the
    /// id `wire` it has on that link; `false` when there is none.
    fn replay(&mut self, link: LinkId, key: LayerKey, wire: SourceId) -> bool {
        let Some(group) = self.gops.get(&key).and_then(Gop::latest) else {
            return false;
        };
        self.replays += 1;
        let (_, track, layer) = key;
        for (codec, packet) in group {
            let m = Message::Media {
                source: wire,
                track,
                layer,
                codec: *codec,
                packet: packet.clone(),
            };
            self.out.push_back(GatewayOutput::Link(link, m));
        }
        true
    }

    /// Watches and routes refused as loops, and rooms that moved to a new
    /// parent after losing theirs: `(loops, reparents)`.
    pub fn tree_events(&self) -> (u64, u64) {
        (self.loops, self.reparents)
    }

    /// Rooms watched upstream and links watching rooms here: `(upstream, downstream)`.
    pub fn link_counts(&self) -> (usize, usize) {
        (self.edge_rooms.len(), self.watching.len())
    }

    /// The topic's parent is reached over `link`: local and child watches
    /// of it go there. A topic watched over another link moves; its sources
    /// keep their numbers when the new parent announces them again.
    pub fn route(&mut self, topic: Topic, link: LinkId) {
        if topic.origin == self.tag {
            // This node's own publishers are not fed from anywhere.
            return;
        }
        // A parent that is fed through this node would close a loop.
        if let (Some(tag), Some(r)) = (self.link_tags.get(&link), self.edge_rooms.get(&topic))
            && r.children.values().any(|hops| hops.contains(tag))
        {
            self.loops += 1;
            self.routes.remove(&topic);
            self.out.push_back(GatewayOutput::Unroute(topic));
            return;
        }
        self.routes.insert(topic.clone(), link);
        if let Some(r) = self.edge_rooms.get(&topic) {
            if r.link != link {
                self.reparent(&topic, link);
            }
            return;
        }
        // Workers watching the room are fed this topic of it too.
        let Some(workers) = self.room_workers.get(&topic.room).filter(|w| !w.is_empty()) else {
            return;
        };
        let mut r = EdgeRoom::new(link);
        r.workers = workers.clone();
        self.edge_rooms.insert(topic.clone(), r);
        self.watch_upstream(&topic);
    }

    /// The link to the topic's parent, when one is routed.
    pub fn route_of(&self, topic: &Topic) -> Option<LinkId> {
        self.routes.get(topic).copied()
    }

    /// Forgets a topic whose origin no longer publishes the room: its
    /// sources are gone at once and its parent (if any) is unwatched.
    pub fn drop_topic(&mut self, topic: &Topic) {
        self.routes.remove(topic);
        let children: Vec<LinkId> = self
            .edge_rooms
            .get(topic)
            .map(|r| r.children.keys().copied().collect())
            .unwrap_or_default();
        self.drop_edge_room(topic, true);
        for l in children {
            self.unwatch_link(l, topic);
        }
    }

    /// Moves an upstream topic to `link`: the old parent is unwatched and
    /// the sources wait, stale, for the new one's announcements.
    fn reparent(&mut self, topic: &Topic, link: LinkId) {
        let Some(r) = self.edge_rooms.get_mut(topic) else {
            return;
        };
        let old = std::mem::replace(&mut r.link, link);
        if old != NO_LINK {
            let m = Message::Watch {
                room: topic.room.clone(),
                origin: topic.origin,
                watching: false,
            };
            self.out.push_back(GatewayOutput::Link(old, m));
            for s in &r.sources {
                if let Some(src) = self.in_sources.get_mut(s) {
                    self.in_ids.remove(&(src.link, src.remote));
                    src.link = NO_LINK;
                    src.stale.get_or_insert(0);
                }
            }
        }
        let mut stale = false;
        for s in &r.sources {
            if let Some(n) = self.in_sources.get_mut(s).and_then(|s| s.stale.as_mut()) {
                *n = (*n).max(GRACE_TICKS - ROUTED_GRACE_TICKS);
                stale = true;
            }
        }
        if stale {
            self.reparents += 1;
        }
        self.watch_upstream(topic);
    }

    /// Sends the topic's hop list and watch to its parent, if routed.
    fn watch_upstream(&mut self, topic: &Topic) {
        let Some(r) = self.edge_rooms.get(topic).filter(|r| r.link != NO_LINK) else {
            return;
        };
        let mut hops: Vec<u64> = r.children.values().flatten().copied().collect();
        hops.sort_unstable();
        hops.dedup();
        hops.retain(|&h| h != self.tag);
        hops.truncate(MAX_HOPS - 1);
        hops.push(self.tag);
        let link = r.link;
        self.out.push_back(GatewayOutput::Link(
            link,
            Message::Hops {
                room: topic.room.clone(),
                origin: topic.origin,
                hops,
            },
        ));
        self.out.push_back(GatewayOutput::Link(
            link,
            Message::Watch {
                room: topic.room.clone(),
                origin: topic.origin,
                watching: true,
            },
        ));
    }

    /// A message from a local worker.
    pub fn handle_worker(&mut self, from: WorkerId, msg: Message) {
        match msg {
            Message::Watch { room, watching, .. } => self.worker_watch(from, room, watching),
            Message::Demand {
                source,
                track,
                layer,
                wanted,
            } => self.demand(Sub::Worker(from), (source, track, layer), wanted),
            // Engines do not ask for retransmissions (their viewers do), and
            // hop lists are between nodes.
            Message::Nack { .. } | Message::Hops { .. } => {}
            Message::Keyframe { source, layer } => {
                // A layer not carried here yet: its demand is on its way, and
                // the node that carries it answers that with the layer's
                // cached group, or asks the publisher (`start_carrying`).
                if !self.demand_in.keys().any(|k| k.0 == source && k.2 == layer) {
                    return;
                }
                if let Some(s) = self.in_sources.get(&source).filter(|s| s.link != NO_LINK) {
                    let m = Message::Keyframe {
                        source: s.remote,
                        layer,
                    };
                    self.out.push_back(GatewayOutput::Link(s.link, m));
                }
            }
            Message::Source { ref room, source, .. } => {
                let wire = wire_id(from, source);
                let mut announce = msg.with_source(wire);
                if let Message::Source { origin, .. } = &mut announce {
                    *origin = self.tag;
                }
                for &l in self.watched.get(room).into_iter().flatten() {
                    self.out.push_back(GatewayOutput::Link(l, announce.clone()));
                }
                let room = room.clone();
                self.out_sources
                    .insert((from, source), OutSource { room, announce });
            }
            Message::SourceGone { room, source } => {
                self.out_sources.remove(&(from, source));
                let wire = wire_id(from, source);
                for d in self.demand_out.values_mut() {
                    d.retain(|(s, ..)| *s != wire);
                }
                self.recent.retain(|k, _| k.0 != wire);
                self.gops.retain(|k, _| k.0 != wire);
                for &l in self.watched.get(&room).into_iter().flatten() {
                    let m = Message::SourceGone {
                        room: room.clone(),
                        source: wire,
                    };
                    self.out.push_back(GatewayOutput::Link(l, m));
                }
            }
            Message::Layers { source, .. } => {
                let Some(s) = self.out_sources.get(&(from, source)) else {
                    return;
                };
                let m = msg.with_source(wire_id(from, source));
                for &l in self.watched.get(&s.room).into_iter().flatten() {
                    self.out.push_back(GatewayOutput::Link(l, m.clone()));
                }
            }
            Message::Media {
                source,
                track,
                layer,
                codec,
                packet,
            } => {
                let Some(s) = self.out_sources.get(&(from, source)) else {
                    return;
                };
                let Some(links) = self.watched.get(&s.room) else {
                    return;
                };
                let key = (wire_id(from, source), track, layer);
                if codec.is_some_and(|c| c.kind() == wave_vocab::MediaKind::Video) {
                    let keyframe = starts_keyframe(codec, &packet.payload);
                    self.gops
                        .entry(key)
                        .or_default()
                        .push(packet.arrival, keyframe, codec, &packet);
                }
                // Only the layers a link's viewers need cross it.
                let demand = &self.demand_out;
                let to = links
                    .iter()
                    .copied()
                    .filter(|l| demand.get(l).is_some_and(|d| d.contains(&key)));
                send_layer(&mut self.out, &mut self.recent, to, key, codec, packet);
            }
        }
    }

    /// A worker's or child's demand for a mirrored layer: the parent hears
    /// of the first one wanting it and of the last one leaving it.
    fn demand(&mut self, sub: Sub, (source, track, layer): LayerKey, wanted: bool) {
        let Some(s) = self.in_sources.get(&source) else {
            return;
        };
        let (link, remote) = (s.link, s.remote);
        let key = (source, track, layer);
        let set = self.demand_in.entry(key).or_default();
        let before = !set.is_empty();
        let joined = wanted && set.insert(sub);
        if !wanted {
            set.remove(&sub);
        }
        let after = !set.is_empty();
        if let (Sub::Link(l), true, true) = (sub, joined, before) {
            // A child joining a layer already carried here starts at its
            // last keyframe (asked of the parent when there is none).
            let ask = (link != NO_LINK).then(|| {
                let m = Message::Keyframe {
                    source: remote,
                    layer,
                };
                GatewayOutput::Link(link, m)
            });
            self.start_carrying(l, key, relayed(source), ask);
        }
        if !after {
            self.demand_in.remove(&key);
            if let Sub::Link(_) = sub {
                self.recent.remove(&(relayed(source), track, layer));
            }
        }
        if before == after {
            return;
        }
        if after {
            // A layer asked for (again) starts where it arrives, not where it stopped.
            self.highest.remove(&key);
        }
        if link != NO_LINK {
            let m = Message::Demand {
                source: remote,
                track,
                layer,
                wanted: after,
            };
            self.out.push_back(GatewayOutput::Link(link, m));
        }
    }

    /// Withdraws what `sub` asked for of the topic's sources.
    fn withdraw(&mut self, sub: Sub, topic: &Topic) {
        let Some(r) = self.edge_rooms.get(topic) else {
            return;
        };
        let keys: Vec<LayerKey> = self
            .demand_in
            .iter()
            .filter(|(k, set)| set.contains(&sub) && r.sources.contains(&k.0))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.demand(sub, k, false);
        }
    }

    /// A worker watches `room` (or stops): it is fed every topic of the
    /// room routed here, and those the driver routes later.
    fn worker_watch(&mut self, from: WorkerId, room: RoomId, watching: bool) {
        let topics: Vec<Topic> = self
            .edge_rooms
            .range(Topic::of(&room))
            .map(|(t, _)| t.clone())
            .collect();
        if !watching {
            if let Some(w) = self.room_workers.get_mut(&room) {
                w.remove(&from);
                if w.is_empty() {
                    self.room_workers.remove(&room);
                }
            }
            for topic in topics {
                let Some(r) = self.edge_rooms.get_mut(&topic) else {
                    continue;
                };
                r.workers.remove(&from);
                if r.is_empty() {
                    self.drop_edge_room(&topic, true);
                } else {
                    // What only this worker wanted is no longer wanted.
                    self.withdraw(Sub::Worker(from), &topic);
                }
            }
            return;
        }
        if !self.room_workers.entry(room.clone()).or_default().insert(from) {
            return;
        }
        for topic in &topics {
            let Some(r) = self.edge_rooms.get_mut(topic) else {
                continue;
            };
            if r.workers.insert(from) {
                // Sources already mirrored here are announced to the newcomer.
                for s in &r.sources {
                    if let Some(src) = self.in_sources.get(s) {
                        self.out
                            .push_back(GatewayOutput::Worker(from, src.announce.clone()));
                    }
                }
            }
        }
        // Topics routed but not watched yet are watched now; the others
        // wait until the driver routes them.
        let routed: Vec<(Topic, LinkId)> = self
            .routes
            .range(Topic::of(&room))
            .filter(|(t, _)| !self.edge_rooms.contains_key(*t))
            .map(|(t, &l)| (t.clone(), l))
            .collect();
        for (topic, link) in routed {
            let mut r = EdgeRoom::new(link);
            r.workers.insert(from);
            self.edge_rooms.insert(topic.clone(), r);
            self.watch_upstream(&topic);
        }
    }

    /// A child link watches a topic this node is fed from its parent.
    fn child_watch(&mut self, link: LinkId, topic: Topic, hops: Vec<u64>) {
        let parent = self
            .edge_rooms
            .get(&topic)
            .map(|r| r.link)
            .or_else(|| self.routes.get(&topic).copied());
        let parent_tag = parent.and_then(|l| self.link_tags.get(&l));
        if parent == Some(link) || parent_tag.is_some_and(|t| hops.contains(t)) {
            self.refuse_watch(link, topic);
            return;
        }
        self.watching.entry(link).or_default().insert(topic.clone());
        let new = !self.edge_rooms.contains_key(&topic);
        let workers = self.room_workers.get(&topic.room).cloned().unwrap_or_default();
        let r = self.edge_rooms.entry(topic.clone()).or_insert_with(|| {
            let mut r = EdgeRoom::new(parent.unwrap_or(NO_LINK));
            r.workers = workers;
            r
        });
        let first = r.children.insert(link, hops).is_none();
        if first {
            // The sources fed here so far, under this node's numbers.
            for s in &r.sources {
                if let Some(src) = self.in_sources.get(s).filter(|s| s.stale.is_none()) {
                    let m = src.announce.with_source(relayed(*s));
                    self.out.push_back(GatewayOutput::Link(link, m));
                }
            }
        }
        if new {
            self.watch_upstream(&topic);
        }
    }

    fn child_unwatch(&mut self, link: LinkId, topic: &Topic) {
        let Some(r) = self.edge_rooms.get_mut(topic) else {
            return;
        };
        if r.children.remove(&link).is_none() {
            return;
        }
        if r.is_empty() {
            self.drop_edge_room(topic, true);
        } else {
            self.withdraw(Sub::Link(link), topic);
        }
    }

    /// A watch that would close a loop: the child is told no and routes again.
    fn refuse_watch(&mut self, link: LinkId, topic: Topic) {
        self.loops += 1;
        self.out.push_back(GatewayOutput::Link(
            link,
            Message::Watch {
                room: topic.room,
                origin: topic.origin,
                watching: false,
            },
        ));
    }

    /// The topic lost its parent: its sources wait for a new route.
    fn lose_route(&mut self, topic: &Topic) {
        self.routes.remove(topic);
        let Some(r) = self.edge_rooms.get_mut(topic) else {
            return;
        };
        let old = std::mem::replace(&mut r.link, NO_LINK);
        for s in &r.sources {
            if let Some(src) = self.in_sources.get_mut(s) {
                self.in_ids.remove(&(old, src.remote));
                src.link = NO_LINK;
                src.stale.get_or_insert(0);
            }
        }
        self.out.push_back(GatewayOutput::Unroute(topic.clone()));
    }

    /// A mirrored source is gone: its workers and children are told.
    fn remove_source(&mut self, id: SourceId) {
        let Some(src) = self.in_sources.remove(&id) else {
            return;
        };
        if src.link != NO_LINK {
            self.in_ids.remove(&(src.link, src.remote));
        }
        self.demand_in.retain(|k, _| k.0 != id);
        self.highest.retain(|k, _| k.0 != id);
        self.gops.retain(|k, _| k.0 != id);
        self.recent.retain(|k, _| k.0 != relayed(id));
        let Some(r) = self.edge_rooms.get_mut(&src.topic) else {
            return;
        };
        r.sources.retain(|&s| s != id);
        let gone = Message::SourceGone {
            room: src.topic.room.clone(),
            source: id,
        };
        for &w in &r.workers {
            self.out.push_back(GatewayOutput::Worker(w, gone.clone()));
        }
        for &l in r.children.keys() {
            self.out
                .push_back(GatewayOutput::Link(l, gone.with_source(relayed(id))));
        }
    }

    /// Forgets an upstream topic (no worker or child watches it any more);
    /// its mirrored sources are gone, and (`unwatch`) the parent is told.
    fn drop_edge_room(&mut self, topic: &Topic, unwatch: bool) {
        let Some(r) = self.edge_rooms.get(topic) else {
            return;
        };
        let link = r.link;
        for s in r.sources.clone() {
            self.remove_source(s);
        }
        self.edge_rooms.remove(topic);
        if unwatch && link != NO_LINK {
            self.out.push_back(GatewayOutput::Link(
                link,
                Message::Watch {
                    room: topic.room.clone(),
                    origin: topic.origin,
                    watching: false,
                },
            ));
        }
    }

    /// Ticks since the last call: every [`TICK`]. Sources whose route was
    /// lost [`GRACE_TICKS`] ago and that no new parent announced are gone.
    pub fn tick(&mut self) {
        let mut gone = Vec::new();
        for (&id, s) in &mut self.in_sources {
            if let Some(n) = &mut s.stale {
                *n += 1;
                if *n >= GRACE_TICKS {
                    gone.push(id);
                }
            }
        }
        for id in gone {
            self.remove_source(id);
        }
    }

    /// A message from another node over `link`.
    pub fn handle_link(&mut self, link: LinkId, msg: Message) {
        match msg {
            Message::Hops { room, origin, hops } => {
                // Kept for the link's next watch only: bounded.
                self.hops_in.insert(link, (Topic::new(room, origin), hops));
            }
            Message::Watch {
                room,
                origin,
                watching,
            } => self.link_watch(link, Topic::new(room, origin), watching),
            Message::Demand {
                source,
                track,
                layer,
                wanted,
            } => {
                if let Some(local) = relayed_local(source) {
                    // Only for a relayed source of a room this child watches.
                    let child = self
                        .in_sources
                        .get(&local)
                        .and_then(|s| self.edge_rooms.get(&s.topic))
                        .is_some_and(|r| r.children.contains_key(&link));
                    if child {
                        self.demand(Sub::Link(link), (local, track, layer), wanted);
                    }
                    return;
                }
                // Only for a source of a room this link watches: bounded.
                let (worker, peer) = from_wire(source);
                let tag = self.tag;
                let watched = self.out_sources.get(&(worker, peer)).is_some_and(|s| {
                    self.watching
                        .get(&link)
                        .is_some_and(|t| t.contains(&Topic::new(s.room.clone(), tag)))
                });
                if !watched {
                    return;
                }
                let d = self.demand_out.entry(link).or_default();
                if !wanted {
                    d.remove(&(source, track, layer));
                } else if d.insert((source, track, layer)) {
                    // The link starts carrying the layer at its last keyframe.
                    let ask = (worker.0 < self.workers).then_some(GatewayOutput::Worker(
                        worker,
                        Message::Keyframe { source: peer, layer },
                    ));
                    self.start_carrying(link, (source, track, layer), source, ask);
                }
            }
            Message::Nack {
                source,
                track,
                layer,
                seqs,
            } => {
                // Only for a layer this link asked for: bounded by its demand.
                let asked = match relayed_local(source) {
                    Some(local) => self
                        .demand_in
                        .get(&(local, track, layer))
                        .is_some_and(|s| s.contains(&Sub::Link(link))),
                    None => self
                        .demand_out
                        .get(&link)
                        .is_some_and(|d| d.contains(&(source, track, layer))),
                };
                let Some(recent) = self.recent.get(&(source, track, layer)).filter(|_| asked) else {
                    return;
                };
                for seq in seqs {
                    if let Some((codec, packet)) = recent.iter().rev().find(|(_, p)| p.seq == seq) {
                        self.resent += 1;
                        let m = Message::Media {
                            source,
                            track,
                            layer,
                            codec: *codec,
                            packet: packet.clone(),
                        };
                        self.out.push_back(GatewayOutput::Link(link, m));
                    }
                }
            }
            Message::Keyframe { source, layer } => {
                if let Some(local) = relayed_local(source) {
                    // Upstream, merged there with everyone else's.
                    if let Some(s) = self.in_sources.get(&local).filter(|s| s.link != NO_LINK)
                        && self
                            .edge_rooms
                            .get(&s.topic)
                            .is_some_and(|r| r.children.contains_key(&link))
                    {
                        let m = Message::Keyframe {
                            source: s.remote,
                            layer,
                        };
                        self.out.push_back(GatewayOutput::Link(s.link, m));
                    }
                    return;
                }
                let (worker, peer) = from_wire(source);
                if worker.0 < self.workers {
                    let m = Message::Keyframe { source: peer, layer };
                    self.out.push_back(GatewayOutput::Worker(worker, m));
                }
            }
            Message::Source {
                ref room,
                origin,
                source,
                ref session,
                ..
            } => {
                let topic = Topic::new(room.clone(), origin);
                let Some(r) = self.edge_rooms.get_mut(&topic).filter(|r| r.link == link) else {
                    return;
                };
                let mut resumed = false;
                let id = match self.in_ids.get(&(link, source)) {
                    Some(&id) => id,
                    None => {
                        // A source that lost its route and is announced
                        // again over the new one keeps its number.
                        let back = r.sources.iter().copied().find(|s| {
                            self.in_sources
                                .get(s)
                                .is_some_and(|x| x.stale.is_some() && x.session == *session)
                        });
                        let id = match back {
                            Some(id) => {
                                resumed = true;
                                id
                            }
                            None => {
                                let id = SourceId(self.next_source);
                                self.next_source += 1;
                                r.sources.push(id);
                                id
                            }
                        };
                        self.in_ids.insert((link, source), id);
                        id
                    }
                };
                let announce = msg.with_source(id);
                for &w in &r.workers {
                    self.out.push_back(GatewayOutput::Worker(w, announce.clone()));
                }
                for &l in r.children.keys() {
                    self.out
                        .push_back(GatewayOutput::Link(l, announce.with_source(relayed(id))));
                }
                self.in_sources.insert(
                    id,
                    InSource {
                        link,
                        remote: source,
                        topic,
                        session: session.clone(),
                        announce,
                        stale: None,
                    },
                );
                if resumed {
                    // Its layers are asked for again on the new route, each
                    // from a keyframe: the viewers' decoders lost the thread.
                    let mut keys: Vec<LayerKey> =
                        self.demand_in.keys().filter(|k| k.0 == id).copied().collect();
                    keys.sort_unstable();
                    for &(_, track, layer) in &keys {
                        let m = Message::Demand {
                            source,
                            track,
                            layer,
                            wanted: true,
                        };
                        self.out.push_back(GatewayOutput::Link(link, m));
                    }
                    let mut layers: Vec<u8> = keys.iter().map(|k| k.2).collect();
                    layers.dedup();
                    for layer in layers {
                        self.out
                            .push_back(GatewayOutput::Link(link, Message::Keyframe { source, layer }));
                    }
                }
            }
            Message::SourceGone { source, .. } => {
                if let Some(id) = self.in_ids.get(&(link, source)).copied() {
                    self.remove_source(id);
                }
            }
            Message::Layers { source, .. } => {
                let Some(&id) = self.in_ids.get(&(link, source)) else {
                    return;
                };
                let Some(r) = self
                    .in_sources
                    .get(&id)
                    .and_then(|s| self.edge_rooms.get(&s.topic))
                else {
                    return;
                };
                let m = msg.with_source(id);
                for &w in &r.workers {
                    self.out.push_back(GatewayOutput::Worker(w, m.clone()));
                }
                for &l in r.children.keys() {
                    self.out
                        .push_back(GatewayOutput::Link(l, m.with_source(relayed(id))));
                }
            }
            Message::Media {
                source,
                track,
                layer,
                codec,
                packet,
            } => {
                let Some(&id) = self.in_ids.get(&(link, source)) else {
                    return;
                };
                let Some(r) = self
                    .in_sources
                    .get(&id)
                    .and_then(|s| self.edge_rooms.get(&s.topic))
                else {
                    return;
                };
                // A gap: ask the parent for what is missing, once.
                let seq = packet.seq;
                match self.highest.get(&(id, track, layer)).copied() {
                    Some(h) if seq > h + 1 && seq - h <= MAX_GAP => {
                        let seqs: Vec<u64> = (h + 1..seq).collect();
                        self.nacked += seqs.len() as u64;
                        let m = Message::Nack {
                            source,
                            track,
                            layer,
                            seqs,
                        };
                        self.out.push_back(GatewayOutput::Link(link, m));
                        self.highest.insert((id, track, layer), seq);
                    }
                    Some(h) if seq <= h => {}
                    _ => {
                        self.highest.insert((id, track, layer), seq);
                    }
                }
                for &w in &r.workers {
                    let m = Message::Media {
                        source: id,
                        track,
                        layer,
                        codec,
                        packet: packet.clone(),
                    };
                    self.out.push_back(GatewayOutput::Worker(w, m));
                }
                if codec.is_some_and(|c| c.kind() == wave_vocab::MediaKind::Video) {
                    let keyframe = starts_keyframe(codec, &packet.payload);
                    self.gops.entry((id, track, layer)).or_default().push(
                        packet.arrival,
                        keyframe,
                        codec,
                        &packet,
                    );
                }
                // The children that asked for this layer.
                let to = self
                    .demand_in
                    .get(&(id, track, layer))
                    .into_iter()
                    .flatten()
                    .filter_map(|sub| match *sub {
                        Sub::Link(l) => Some(l),
                        Sub::Worker(_) => None,
                    });
                let key = (relayed(id), track, layer);
                send_layer(&mut self.out, &mut self.recent, to, key, codec, packet);
            }
        }
    }

    /// A link watches a topic here (or stops): this node's own (as its
    /// origin) or one it relays.
    fn link_watch(&mut self, link: LinkId, topic: Topic, watching: bool) {
        if !watching {
            if let Some(r) = self.edge_rooms.get(&topic) {
                if r.children.contains_key(&link) {
                    self.child_unwatch(link, &topic);
                    self.unwatch_link(link, &topic);
                    return;
                }
                if r.link == link {
                    // The parent refused the watch: route elsewhere.
                    self.lose_route(&topic);
                    return;
                }
            }
            if topic.origin != self.tag {
                return;
            }
            let room = topic.room.clone();
            let wires: HashSet<SourceId> = self
                .out_sources
                .iter()
                .filter(|(_, s)| s.room == room)
                .map(|(&(w, p), _)| wire_id(w, p))
                .collect();
            if let Some(d) = self.demand_out.get_mut(&link) {
                d.retain(|(s, ..)| !wires.contains(s));
            }
            self.unwatch_link(link, &topic);
            self.unwatch_origin(&room, link);
            return;
        }
        let hops = match self.hops_in.remove(&link) {
            Some((t, hops)) if t == topic => hops,
            _ => Vec::new(),
        };
        if hops.contains(&self.tag) {
            self.refuse_watch(link, topic);
            return;
        }
        let topics = self.watching.entry(link).or_default();
        if !topics.contains(&topic) && topics.len() >= MAX_WATCHED_PER_LINK {
            self.refused += 1;
            return;
        }
        if topic.origin != self.tag {
            self.child_watch(link, topic, hops);
            return;
        }
        let room = topic.room.clone();
        topics.insert(topic);
        let links = self.watched.entry(room.clone()).or_default();
        let first = links.is_empty();
        if !links.insert(link) {
            return;
        }
        if first {
            let home = (self.home)(&room);
            self.out.push_back(GatewayOutput::Worker(
                home,
                Message::Watch {
                    room,
                    origin: 0,
                    watching: true,
                },
            ));
        } else {
            // The home announced its sources already: replay them.
            for s in self.out_sources.values().filter(|s| s.room == room) {
                self.out.push_back(GatewayOutput::Link(link, s.announce.clone()));
            }
        }
    }

    fn unwatch_link(&mut self, link: LinkId, topic: &Topic) {
        if let Some(rooms) = self.watching.get_mut(&link) {
            rooms.remove(topic);
            if rooms.is_empty() {
                self.watching.remove(&link);
            }
        }
    }

    fn unwatch_origin(&mut self, room: &RoomId, link: LinkId) {
        let Some(links) = self.watched.get_mut(room) else {
            return;
        };
        links.remove(&link);
        if links.is_empty() {
            self.watched.remove(room);
            let wires: HashSet<SourceId> = self
                .out_sources
                .iter()
                .filter(|(_, s)| s.room == *room)
                .map(|(&(w, p), _)| wire_id(w, p))
                .collect();
            self.recent.retain(|k, _| !wires.contains(&k.0));
            self.gops.retain(|k, _| !wires.contains(&k.0));
            self.out_sources.retain(|_, s| s.room != *room);
            let home = (self.home)(room);
            self.out.push_back(GatewayOutput::Worker(
                home,
                Message::Watch {
                    room: room.clone(),
                    origin: 0,
                    watching: false,
                },
            ));
        }
    }

    /// A link closed: rooms it watched here are unwatched, rooms watched
    /// over it wait for a new route (their sources for [`GRACE_TICKS`]).
    pub fn link_down(&mut self, link: LinkId) {
        self.link_tags.remove(&link);
        self.hops_in.remove(&link);
        self.demand_out.remove(&link);
        for topic in self.watching.remove(&link).unwrap_or_default() {
            if self
                .edge_rooms
                .get(&topic)
                .is_some_and(|r| r.children.contains_key(&link))
            {
                self.child_unwatch(link, &topic);
            } else if topic.origin == self.tag {
                self.unwatch_origin(&topic.room, link);
            }
        }
        let upstream: Vec<Topic> = self
            .edge_rooms
            .iter()
            .filter(|(_, r)| r.link == link)
            .map(|(topic, _)| topic.clone())
            .collect();
        self.routes.retain(|_, l| *l != link);
        for topic in upstream {
            self.lose_route(&topic);
        }
    }

    /// Topics the driver should route: watched here (by workers or child
    /// links) with no parent.
    pub fn unrouted(&self) -> Vec<Topic> {
        self.edge_rooms
            .iter()
            .filter(|(_, r)| r.link == NO_LINK)
            .map(|(topic, _)| topic.clone())
            .collect()
    }

    /// Whether any topic of `room` is routed here.
    pub fn is_fed(&self, room: &RoomId) -> bool {
        self.routes.range(Topic::of(room)).next().is_some()
    }

    /// How `room` crosses this node's links: the link to its parent, the
    /// links watching it here (its children) and the layers each carries,
    /// as `(source, track, layer)` in the numbering of that link.
    pub fn room_links(&self, room: &RoomId) -> RoomLinks {
        let edges: Vec<&EdgeRoom> = self.edge_rooms.range(Topic::of(room)).map(|(_, r)| r).collect();
        let mut parents: Vec<Carried> = edges
            .iter()
            .filter(|r| r.link != NO_LINK)
            .map(|r| {
                let mut layers: Vec<LayerKey> = self
                    .demand_in
                    .keys()
                    .filter(|k| r.sources.contains(&k.0))
                    .filter_map(|&(s, t, l)| Some((self.in_sources.get(&s)?.remote, t, l)))
                    .collect();
                layers.sort();
                (r.link, layers)
            })
            .collect();
        parents.sort();
        let wires: HashSet<SourceId> = self
            .out_sources
            .iter()
            .filter(|(_, s)| s.room == *room)
            .map(|(&(w, p), _)| wire_id(w, p))
            .collect();
        let mut children: Vec<Carried> = self
            .watched
            .get(room)
            .into_iter()
            .flatten()
            .map(|&l| {
                let mut layers: Vec<LayerKey> = self
                    .demand_out
                    .get(&l)
                    .into_iter()
                    .flatten()
                    .filter(|k| wires.contains(&k.0))
                    .copied()
                    .collect();
                layers.sort();
                (l, layers)
            })
            .collect();
        for r in &edges {
            for &l in r.children.keys() {
                let mut layers: Vec<LayerKey> = self
                    .demand_in
                    .iter()
                    .filter(|(k, set)| set.contains(&Sub::Link(l)) && r.sources.contains(&k.0))
                    .map(|(&(s, t, layer), _)| (relayed(s), t, layer))
                    .collect();
                layers.sort();
                children.push((l, layers));
            }
        }
        children.sort();
        RoomLinks { parents, children }
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<GatewayOutput> {
        self.out.pop_front()
    }
}

/// The last packets sent of each layer (under its wire id), for `Nack`s.
type Recent = HashMap<LayerKey, VecDeque<(Option<wave_vocab::Codec>, MediaPacket)>>;

/// Sends a packet of the layer `key` (wire source, track, layer) on each of
/// `links`, and keeps it for their NACKs when it went anywhere.
fn send_layer(
    out: &mut VecDeque<GatewayOutput>,
    recent: &mut Recent,
    links: impl Iterator<Item = LinkId>,
    (source, track, layer): LayerKey,
    codec: Option<wave_vocab::Codec>,
    packet: MediaPacket,
) {
    let mut sent = false;
    for l in links {
        sent = true;
        let m = Message::Media {
            source,
            track,
            layer,
            codec,
            packet: packet.clone(),
        };
        out.push_back(GatewayOutput::Link(l, m));
    }
    if !sent {
        return;
    }
    let recent = recent.entry((source, track, layer)).or_default();
    if recent.len() >= RECENT {
        recent.pop_front();
    }
    recent.push_back((codec, packet));
}

fn wire_id(worker: WorkerId, source: SourceId) -> SourceId {
    SourceId(((worker.0 as u64) << PEER_BITS) | (source.0 & ((1 << PEER_BITS) - 1)))
}

fn from_wire(source: SourceId) -> (WorkerId, SourceId) {
    (
        WorkerId((source.0 >> PEER_BITS) as usize),
        SourceId(source.0 & ((1 << PEER_BITS) - 1)),
    )
}

/// Whether track `track` of an announced source is video.
fn is_video(announce: &Message, track: u8) -> bool {
    matches!(announce, Message::Source { tracks, .. }
        if tracks.get(usize::from(track)).is_some_and(|t| t.kind == wave_vocab::MediaKind::Video))
}

/// A mirrored source's id towards this node's children.
fn relayed(local: SourceId) -> SourceId {
    SourceId(RELAYED | local.0)
}

/// The local id of a source this node relays, from its wire id.
fn relayed_local(wire: SourceId) -> Option<SourceId> {
    (wire.0 & RELAYED != 0).then_some(SourceId(wire.0 & !RELAYED))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use wave_vocab::SessionId;

    use super::*;
    use crate::message::{Ext, MediaPacket};

    fn room(s: &str) -> RoomId {
        RoomId::parse(s).unwrap()
    }

    /// The tag of the origin node the edge tests are fed from (the
    /// gateway's own is 0).
    const O: u64 = 9;

    fn t(s: &str) -> Topic {
        Topic::new(room(s), O)
    }

    /// Two workers; every room's home is worker 1.
    fn gateway() -> Gateway {
        Gateway::new(2, Box::new(|_| WorkerId(1)))
    }

    fn drain(g: &mut Gateway) -> Vec<GatewayOutput> {
        std::iter::from_fn(|| g.poll_output()).collect()
    }

    fn source(r: &str, id: u64) -> Message {
        Message::Source {
            room: room(r),
            origin: O,
            source: SourceId(id),
            session: SessionId::parse(&"ab".repeat(16)).unwrap(),
            identity: None,
            codecs: Vec::new(),
            tracks: Vec::new(),
        }
    }

    fn media(id: u64, layer: u8) -> Message {
        Message::Media {
            source: SourceId(id),
            track: 0,
            layer,
            codec: None,
            packet: MediaPacket {
                pt: 96,
                seq: 1,
                rtp_ts: 0,
                arrival: Instant::now(),
                marker: true,
                ext: Ext::default(),
                payload: Arc::from(&[1u8, 2, 3][..]),
            },
        }
    }

    fn demand(source: u64, layer: u8, wanted: bool) -> Message {
        Message::Demand {
            source: SourceId(source),
            track: 0,
            layer,
            wanted,
        }
    }

    fn watch(r: &str, on: bool) -> Message {
        Message::Watch {
            room: room(r),
            origin: 0,
            watching: on,
        }
    }

    /// What went to links, hop lists left out.
    fn links(out: &[GatewayOutput]) -> Vec<(LinkId, &Message)> {
        out.iter()
            .filter_map(|o| match o {
                GatewayOutput::Link(_, Message::Hops { .. }) => None,
                GatewayOutput::Link(l, m) => Some((*l, m)),
                _ => None,
            })
            .collect()
    }

    fn workers(out: &[GatewayOutput]) -> Vec<(WorkerId, &Message)> {
        out.iter()
            .filter_map(|o| match o {
                GatewayOutput::Worker(w, m) => Some((*w, m)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_edge_watches_once_upstream_and_fans_out_to_each_worker() {
        let mut g = gateway();
        g.route(t("r"), LinkId(7));
        g.handle_worker(WorkerId(0), watch("r", true));
        g.handle_worker(WorkerId(1), watch("r", true));
        let out = drain(&mut g);
        assert_eq!(links(&out).len(), 1, "one watch upstream: {out:?}");
        assert!(matches!(
            links(&out)[0],
            (LinkId(7), Message::Watch { watching: true, .. })
        ));

        g.handle_link(LinkId(7), source("r", 1 << 48 | 5));
        g.handle_link(LinkId(7), media(1 << 48 | 5, 0));
        let out = drain(&mut g);
        let w = workers(&out);
        assert_eq!(w.len(), 4, "announce + packet to each of two workers");
        let local = match w[0].1 {
            Message::Source { source, .. } => *source,
            m => panic!("{m:?}"),
        };
        assert!(w.iter().all(|(_, m)| match m {
            Message::Source { source, .. } | Message::Media { source, .. } => *source == local,
            _ => false,
        }));

        // A keyframe request for a layer not carried here is held back:
        // the layer's demand follows, and the parent answers that.
        let ask = Message::Keyframe {
            source: local,
            layer: 2,
        };
        g.handle_worker(WorkerId(0), ask.clone());
        assert!(drain(&mut g).is_empty());
        // Once carried, a keyframe request goes upstream under the origin's id.
        g.handle_worker(WorkerId(0), demand(local.0, 2, true));
        drain(&mut g);
        g.handle_worker(WorkerId(0), ask);
        let out = drain(&mut g);
        assert!(matches!(
            links(&out)[..],
            [(LinkId(7), Message::Keyframe { source: SourceId(s), layer: 2 })] if *s == 1 << 48 | 5
        ));

        // The last worker leaving unwatches upstream; one leaving only
        // withdraws what it alone asked for.
        g.handle_worker(WorkerId(0), watch("r", false));
        assert!(matches!(
            links(&drain(&mut g))[..],
            [(LinkId(7), Message::Demand { wanted: false, .. })]
        ));
        g.handle_worker(WorkerId(1), watch("r", false));
        let out = drain(&mut g);
        assert!(matches!(
            links(&out)[..],
            [(LinkId(7), Message::Watch { watching: false, .. })]
        ));
        // Media arriving after the unwatch reaches nobody.
        g.handle_link(LinkId(7), media(1 << 48 | 5, 0));
        assert!(drain(&mut g).is_empty());
    }

    #[test]
    fn an_edge_asks_for_a_layer_once_and_drops_it_after_its_last_worker() {
        let mut g = gateway();
        g.route(t("r"), LinkId(1));
        g.handle_worker(WorkerId(0), watch("r", true));
        g.handle_worker(WorkerId(1), watch("r", true));
        g.handle_link(LinkId(1), source("r", 1 << 48 | 2));
        let local = match workers(&drain(&mut g))[0].1 {
            Message::Source { source, .. } => source.0,
            m => panic!("{m:?}"),
        };
        g.handle_worker(WorkerId(0), demand(local, 2, true));
        g.handle_worker(WorkerId(1), demand(local, 2, true));
        let out = drain(&mut g);
        assert!(
            matches!(links(&out)[..], [(LinkId(1), Message::Demand { source: SourceId(s), layer: 2, wanted: true, .. })] if *s == 1 << 48 | 2),
            "one demand upstream: {out:?}"
        );
        let carried = g.room_links(&room("r"));
        assert_eq!(
            carried.parents,
            vec![(LinkId(1), vec![(SourceId(1 << 48 | 2), 0, 2)])]
        );
        assert!(carried.children.is_empty());
        g.handle_worker(WorkerId(0), demand(local, 2, false));
        assert!(drain(&mut g).is_empty(), "worker 1 still wants it");
        // Worker 1 leaving the room withdraws its demand with it.
        g.handle_worker(WorkerId(2), watch("r", true));
        drain(&mut g);
        g.handle_worker(WorkerId(1), watch("r", false));
        let out = drain(&mut g);
        assert!(
            matches!(
                links(&out)[..],
                [(LinkId(1), Message::Demand { wanted: false, .. })]
            ),
            "{out:?}"
        );
    }

    fn media_seq(id: u64, layer: u8, seq: u64) -> Message {
        match media(id, layer) {
            Message::Media {
                source,
                track,
                layer,
                codec,
                mut packet,
            } => {
                packet.seq = seq;
                Message::Media {
                    source,
                    track,
                    layer,
                    codec,
                    packet,
                }
            }
            m => m,
        }
    }

    #[test]
    fn an_edge_asks_for_lost_packets_once_and_the_origin_resends_them() {
        // Edge: 10, then 13: 11 and 12 are asked for.
        let mut edge = gateway();
        edge.route(t("r"), LinkId(1));
        edge.handle_worker(WorkerId(0), watch("r", true));
        edge.handle_link(LinkId(1), source("r", 1 << 48 | 9));
        drain(&mut edge);
        edge.handle_link(LinkId(1), media_seq(1 << 48 | 9, 0, 10));
        edge.handle_link(LinkId(1), media_seq(1 << 48 | 9, 0, 13));
        let out = drain(&mut edge);
        assert!(
            matches!(&links(&out)[..], [(LinkId(1), Message::Nack { seqs, layer: 0, .. })] if *seqs == vec![11, 12]),
            "{out:?}"
        );
        // The resent 11 is forwarded and asks nothing more; a jump past the
        // window is a restart, not loss.
        edge.handle_link(LinkId(1), media_seq(1 << 48 | 9, 0, 11));
        let out = drain(&mut edge);
        assert!(links(&out).is_empty() && workers(&out).len() == 1, "{out:?}");
        edge.handle_link(LinkId(1), media_seq(1 << 48 | 9, 0, 1_000));
        assert!(links(&drain(&mut edge)).is_empty());
        assert_eq!(edge.repairs(), (2, 0));

        // Origin: the link asked for layer 0; it resends what it still has.
        let mut origin = gateway();
        origin.handle_link(LinkId(5), watch("r", true));
        origin.handle_worker(WorkerId(1), source("r", 9));
        let wire = 1 << 48 | 9;
        origin.handle_link(LinkId(5), demand(wire, 0, true));
        for seq in 1..=3 {
            origin.handle_worker(WorkerId(1), media_seq(9, 0, seq));
        }
        drain(&mut origin);
        let nack = |seqs: Vec<u64>| Message::Nack {
            source: SourceId(wire),
            track: 0,
            layer: 0,
            seqs,
        };
        origin.handle_link(LinkId(5), nack(vec![2, 99]));
        let out = drain(&mut origin);
        assert!(
            matches!(&links(&out)[..], [(LinkId(5), Message::Media { packet, .. })] if packet.seq == 2),
            "{out:?}"
        );
        // A link that did not ask for the layer gets nothing.
        origin.handle_link(LinkId(6), nack(vec![1]));
        assert!(drain(&mut origin).is_empty());
        assert_eq!(origin.repairs(), (0, 1));
    }

    #[test]
    fn a_worker_joining_later_gets_the_sources_already_mirrored() {
        let mut g = gateway();
        g.route(t("r"), LinkId(1));
        g.handle_worker(WorkerId(0), watch("r", true));
        g.handle_link(LinkId(1), source("r", 3));
        drain(&mut g);
        g.handle_worker(WorkerId(1), watch("r", true));
        let out = drain(&mut g);
        assert!(links(&out).is_empty(), "no second watch upstream");
        assert!(matches!(
            workers(&out)[..],
            [(WorkerId(1), Message::Source { .. })]
        ));
    }

    #[test]
    fn an_origin_watches_its_home_once_and_sends_each_packet_once_per_link() {
        let mut g = gateway();
        g.handle_link(LinkId(1), watch("r", true));
        let out = drain(&mut g);
        assert!(matches!(
            workers(&out)[..],
            [(WorkerId(1), Message::Watch { watching: true, .. })]
        ));
        g.handle_worker(WorkerId(1), source("r", 9));
        // A second link gets the announcement replayed, not a second watch.
        g.handle_link(LinkId(2), watch("r", true));
        let out = drain(&mut g);
        assert!(workers(&out).is_empty());
        let wire = SourceId(1 << 48 | 9);
        assert_eq!(links(&out).len(), 2, "{out:?}");
        assert!(
            links(&out)
                .iter()
                .all(|(_, m)| matches!(m, Message::Source { source, .. } if *source == wire))
        );

        // No link asked for a layer yet: nothing crosses.
        g.handle_worker(WorkerId(1), media(9, 1));
        assert!(drain(&mut g).is_empty());
        for l in [LinkId(1), LinkId(2)] {
            g.handle_link(l, demand(wire.0, 1, true));
        }
        g.handle_link(LinkId(2), demand(wire.0, 0, true));
        let carried = g.room_links(&room("r"));
        assert!(carried.parents.is_empty());
        assert_eq!(
            carried.children,
            vec![
                (LinkId(1), vec![(wire, 0, 1)]),
                (LinkId(2), vec![(wire, 0, 0), (wire, 0, 1)])
            ]
        );
        g.handle_worker(WorkerId(1), media(9, 1));
        let out = drain(&mut g);
        let sent: Vec<LinkId> = links(&out).iter().map(|(l, _)| *l).collect();
        assert_eq!(sent, vec![LinkId(1), LinkId(2)]);
        g.handle_worker(WorkerId(1), media(9, 0));
        let out = drain(&mut g);
        let sent: Vec<LinkId> = links(&out).iter().map(|(l, _)| *l).collect();
        assert_eq!(sent, vec![LinkId(2)], "layer 0 only where it was asked for");
        g.handle_link(LinkId(2), demand(wire.0, 1, false));
        g.handle_worker(WorkerId(1), media(9, 1));
        let out = drain(&mut g);
        let sent: Vec<LinkId> = links(&out).iter().map(|(l, _)| *l).collect();
        assert_eq!(sent, vec![LinkId(1)], "withdrawn on link 2");
        // A demand for a source the link does not watch is ignored.
        g.handle_link(LinkId(3), demand(wire.0, 1, true));
        g.handle_worker(WorkerId(1), media(9, 1));
        assert_eq!(links(&drain(&mut g)).len(), 1);

        // A keyframe request over a link reaches the source's worker.
        g.handle_link(
            LinkId(2),
            Message::Keyframe {
                source: wire,
                layer: 1,
            },
        );
        let out = drain(&mut g);
        assert!(matches!(
            workers(&out)[..],
            [(
                WorkerId(1),
                Message::Keyframe {
                    source: SourceId(9),
                    layer: 1
                }
            )]
        ));
        // A keyframe request naming a worker that does not exist is dropped.
        g.handle_link(
            LinkId(2),
            Message::Keyframe {
                source: SourceId(99 << 48),
                layer: 0,
            },
        );
        assert!(drain(&mut g).is_empty());

        // The last link gone unwatches the home.
        g.link_down(LinkId(1));
        assert!(drain(&mut g).is_empty());
        g.handle_link(LinkId(2), watch("r", false));
        let out = drain(&mut g);
        assert!(matches!(
            workers(&out)[..],
            [(WorkerId(1), Message::Watch { watching: false, .. })]
        ));
        g.handle_worker(WorkerId(1), media(9, 1));
        assert!(drain(&mut g).is_empty());
    }

    #[test]
    fn a_lost_origin_removes_its_sources_after_the_grace_and_a_new_route_resumes_the_watch() {
        let mut g = gateway();
        g.route(t("r"), LinkId(1));
        g.handle_worker(WorkerId(0), watch("r", true));
        g.handle_link(LinkId(1), source("r", 4));
        drain(&mut g);
        g.link_down(LinkId(1));
        let out = drain(&mut g);
        assert!(
            workers(&out).is_empty(),
            "the source waits for a new route: {out:?}"
        );
        assert!(matches!(out[..], [GatewayOutput::Unroute(_)]));
        assert_eq!(g.unrouted(), vec![t("r")]);
        assert_eq!(g.route_of(&t("r")), None);
        for _ in 1..GRACE_TICKS {
            g.tick();
        }
        assert!(drain(&mut g).is_empty());
        g.tick();
        let out = drain(&mut g);
        assert!(matches!(
            workers(&out)[..],
            [(WorkerId(0), Message::SourceGone { .. })]
        ));

        g.route(t("r"), LinkId(2));
        let out = drain(&mut g);
        assert!(matches!(
            links(&out)[..],
            [(LinkId(2), Message::Watch { watching: true, .. })]
        ));
        assert!(g.unrouted().is_empty());
        // The old link's packets are ignored; the new one's flow.
        g.handle_link(LinkId(1), media(4, 0));
        assert!(drain(&mut g).is_empty());
        g.handle_link(LinkId(2), source("r", 4));
        g.handle_link(LinkId(2), media(4, 0));
        assert_eq!(workers(&drain(&mut g)).len(), 2);
    }

    #[test]
    fn a_link_watching_ten_thousand_rooms_is_bounded() {
        let mut g = gateway();
        for i in 0..10_000 {
            g.handle_link(LinkId(1), watch(&format!("room{i}"), true));
        }
        assert_eq!(g.refused(), 10_000 - MAX_WATCHED_PER_LINK as u64);
        assert_eq!(drain(&mut g).len(), MAX_WATCHED_PER_LINK);
        g.link_down(LinkId(1));
        assert_eq!(drain(&mut g).len(), MAX_WATCHED_PER_LINK, "every watch undone");
        assert_eq!(g.link_counts(), (0, 0));
    }

    #[test]
    fn sources_from_a_link_that_does_not_carry_the_room_are_ignored() {
        let mut g = gateway();
        g.route(t("r"), LinkId(1));
        g.handle_worker(WorkerId(0), watch("r", true));
        drain(&mut g);
        g.handle_link(LinkId(2), source("r", 4));
        g.handle_link(LinkId(2), source("other", 4));
        assert!(drain(&mut g).is_empty());
    }
}
