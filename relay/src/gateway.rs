//! The node's gateway between its workers and the other nodes: Sans-IO.
//!
//! To the node's workers the gateway is one more engine, addressed by its
//! own [`WorkerId`] (one past the last worker):
//!
//! - On an **edge** (a node whose viewers watch a room published on another
//!   node), a worker makes the gateway the room's home. The gateway merges
//!   the watches of all its workers into one watch on the link to the room's
//!   origin (the node counts as one subscriber there, whatever its number of
//!   viewers), hands each announced source and packet to every watching
//!   worker, and sends keyframe requests upstream.
//! - On an **origin** (the node with the room's publishers), the gateway
//!   watches the room at its home worker for as long as one link watches it,
//!   and sends each announcement and packet once per watching link.
//!
//! Source ids are translated at both ends: on the wire an origin's source is
//! `worker << 48 | peer id`, so a keyframe request finds its worker without a
//! table; an edge numbers the sources it mirrors itself, so sources of
//! several links never collide at its workers.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use wave_vocab::RoomId;

use crate::message::{MediaPacket, Message, SourceId, WorkerId};

/// One connection to another node, numbered by the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

/// A source's track and layer, as `(source, track, layer)`.
pub type LayerKey = (SourceId, u8, u8);
/// A link and the layers it carries.
pub type Carried = (LinkId, Vec<LayerKey>);

/// A room's links at one node ([`Gateway::room_links`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomLinks {
    /// The link to the room's origin and the layers asked over it.
    pub parent: Option<Carried>,
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
}

/// Packets kept per relayed layer for retransmission: ~1 s of a 2.5 Mbit/s layer.
pub const RECENT: usize = 512;
/// A gap wider than this is a restart (a layer asked for again), not loss.
const MAX_GAP: u64 = crate::wire::MAX_NACK as u64;
/// An upstream room whose origin's link is gone.
const NO_LINK: LinkId = LinkId(u64::MAX);
/// Bits of the wire source id that hold the origin's peer id.
const PEER_BITS: u32 = 48;
/// Rooms one link may watch at once; a watch past it is refused (logged by
/// the driver through [`Gateway::refused`]).
pub const MAX_WATCHED_PER_LINK: usize = 1024;

/// A source mirrored on this edge.
struct InSource {
    link: LinkId,
    remote: SourceId,
    room: RoomId,
    /// The last announcement (rewritten to the local id), for workers that
    /// start watching later.
    announce: Message,
}

/// A room this edge watches upstream.
struct EdgeRoom {
    link: LinkId,
    workers: BTreeSet<WorkerId>,
    sources: Vec<SourceId>,
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
    // Edge side.
    routes: HashMap<RoomId, LinkId>,
    edge_rooms: HashMap<RoomId, EdgeRoom>,
    in_ids: HashMap<(LinkId, SourceId), SourceId>,
    in_sources: HashMap<SourceId, InSource>,
    /// Which workers need each mirrored (source, track, layer).
    demand_in: HashMap<(SourceId, u8, u8), BTreeSet<WorkerId>>,
    next_source: u64,
    // Origin side.
    watched: HashMap<RoomId, BTreeSet<LinkId>>,
    watching: HashMap<LinkId, BTreeSet<RoomId>>,
    out_sources: HashMap<(WorkerId, SourceId), OutSource>,
    /// The (wire source, track, layer)s each link asked for.
    demand_out: HashMap<LinkId, HashSet<(SourceId, u8, u8)>>,
    /// The last [`RECENT`] packets of each relayed layer, for `Nack`s.
    recent: HashMap<LayerKey, VecDeque<(Option<wave_vocab::Codec>, MediaPacket)>>,
    /// The highest sequence number seen per mirrored (local source, track, layer).
    highest: HashMap<LayerKey, u64>,
    nacked: u64,
    resent: u64,
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
            routes: HashMap::new(),
            edge_rooms: HashMap::new(),
            in_ids: HashMap::new(),
            in_sources: HashMap::new(),
            demand_in: HashMap::new(),
            next_source: 1,
            watched: HashMap::new(),
            watching: HashMap::new(),
            out_sources: HashMap::new(),
            demand_out: HashMap::new(),
            recent: HashMap::new(),
            highest: HashMap::new(),
            nacked: 0,
            resent: 0,
            out: VecDeque::new(),
            refused: 0,
        }
    }

    /// The id workers address the gateway by.
    pub fn id(&self) -> WorkerId {
        self.me
    }

    /// Watches of rooms refused so far (a link over [`MAX_WATCHED_PER_LINK`]).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Packets asked again upstream, and packets resent downstream.
    pub fn repairs(&self) -> (u64, u64) {
        (self.nacked, self.resent)
    }

    /// Rooms watched upstream and links watching rooms here: `(upstream, downstream)`.
    pub fn link_counts(&self) -> (usize, usize) {
        (self.edge_rooms.len(), self.watching.len())
    }

    /// The room's origin is reached over `link`: local watches of it go there.
    /// A room already watched over another link moves (its sources gone,
    /// watched again on the new link).
    pub fn route(&mut self, room: RoomId, link: LinkId) {
        self.routes.insert(room.clone(), link);
        match self.edge_rooms.get(&room).map(|r| r.link) {
            Some(NO_LINK) => self.resume(&room),
            Some(l) if l != link => {
                let workers = self
                    .edge_rooms
                    .get(&room)
                    .map(|r| r.workers.clone())
                    .unwrap_or_default();
                self.drop_edge_room(&room, true);
                for w in workers {
                    self.worker_watch(w, room.clone(), true);
                }
            }
            _ => {}
        }
    }

    /// The link to the room's origin, when one is routed.
    pub fn route_of(&self, room: &RoomId) -> Option<LinkId> {
        self.routes.get(room).copied()
    }

    /// A message from a local worker.
    pub fn handle_worker(&mut self, from: WorkerId, msg: Message) {
        match msg {
            Message::Watch { room, watching } => self.worker_watch(from, room, watching),
            Message::Demand {
                source,
                track,
                layer,
                wanted,
            } => self.worker_demand(from, source, track, layer, wanted),
            // Engines do not ask for retransmissions; their viewers do.
            Message::Nack { .. } => {}
            Message::Keyframe { source, layer } => {
                if let Some(s) = self.in_sources.get(&source) {
                    let m = Message::Keyframe {
                        source: s.remote,
                        layer,
                    };
                    self.out.push_back(GatewayOutput::Link(s.link, m));
                }
            }
            Message::Source {
                room,
                source,
                session,
                identity,
                codecs,
                tracks,
            } => {
                let wire = wire_id(from, source);
                let announce = Message::Source {
                    room: room.clone(),
                    source: wire,
                    session,
                    identity,
                    codecs,
                    tracks,
                };
                for &l in self.watched.get(&room).into_iter().flatten() {
                    self.out.push_back(GatewayOutput::Link(l, announce.clone()));
                }
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
                for &l in self.watched.get(&room).into_iter().flatten() {
                    let m = Message::SourceGone {
                        room: room.clone(),
                        source: wire,
                    };
                    self.out.push_back(GatewayOutput::Link(l, m));
                }
            }
            Message::Layers { source, track, rates } => {
                let Some(s) = self.out_sources.get(&(from, source)) else {
                    return;
                };
                let wire = wire_id(from, source);
                for &l in self.watched.get(&s.room).into_iter().flatten() {
                    let m = Message::Layers {
                        source: wire,
                        track,
                        rates: rates.clone(),
                    };
                    self.out.push_back(GatewayOutput::Link(l, m));
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
                let wire = wire_id(from, source);
                let key = (wire, track, layer);
                let mut sent = false;
                for &l in links {
                    // Only the layers a link's viewers need cross it.
                    if !self.demand_out.get(&l).is_some_and(|d| d.contains(&key)) {
                        continue;
                    }
                    sent = true;
                    let m = Message::Media {
                        source: wire,
                        track,
                        layer,
                        codec,
                        packet: packet.clone(),
                    };
                    self.out.push_back(GatewayOutput::Link(l, m));
                }
                if sent {
                    let recent = self.recent.entry(key).or_default();
                    if recent.len() >= RECENT {
                        recent.pop_front();
                    }
                    recent.push_back((codec, packet));
                }
            }
        }
    }

    /// A worker's demand for a mirrored layer: the link hears of the
    /// first worker wanting it and of the last one leaving it.
    fn worker_demand(&mut self, from: WorkerId, source: SourceId, track: u8, layer: u8, wanted: bool) {
        let Some(s) = self.in_sources.get(&source) else {
            return;
        };
        let (link, remote) = (s.link, s.remote);
        if wanted {
            // A layer asked for (again) starts where it arrives, not where it stopped.
            self.highest.remove(&(source, track, layer));
        }
        let set = self.demand_in.entry((source, track, layer)).or_default();
        let before = !set.is_empty();
        if wanted {
            set.insert(from);
        } else {
            set.remove(&from);
        }
        let after = !set.is_empty();
        if set.is_empty() {
            self.demand_in.remove(&(source, track, layer));
        }
        if before != after {
            let m = Message::Demand {
                source: remote,
                track,
                layer,
                wanted: after,
            };
            self.out.push_back(GatewayOutput::Link(link, m));
        }
    }

    fn worker_watch(&mut self, from: WorkerId, room: RoomId, watching: bool) {
        if !watching {
            let Some(r) = self.edge_rooms.get_mut(&room) else {
                return;
            };
            r.workers.remove(&from);
            if r.workers.is_empty() {
                self.drop_edge_room(&room, true);
                return;
            }
            // What only this worker wanted is no longer wanted.
            let keys: Vec<(SourceId, u8, u8)> = self
                .demand_in
                .iter()
                .filter(|(k, set)| set.contains(&from) && r.sources.contains(&k.0))
                .map(|(k, _)| *k)
                .collect();
            for (source, track, layer) in keys {
                self.worker_demand(from, source, track, layer, false);
            }
            return;
        }
        if let Some(r) = self.edge_rooms.get_mut(&room) {
            if r.workers.insert(from) {
                // Sources already mirrored here are announced to the newcomer.
                for s in r.sources.clone() {
                    if let Some(src) = self.in_sources.get(&s) {
                        self.out
                            .push_back(GatewayOutput::Worker(from, src.announce.clone()));
                    }
                }
            }
            return;
        }
        let Some(&link) = self.routes.get(&room) else {
            // No route (the origin went away): the worker's viewers wait
            // until a route comes and re-sends the watch.
            self.edge_rooms.insert(
                room,
                EdgeRoom {
                    link: NO_LINK,
                    workers: BTreeSet::from([from]),
                    sources: Vec::new(),
                },
            );
            return;
        };
        self.edge_rooms.insert(
            room.clone(),
            EdgeRoom {
                link,
                workers: BTreeSet::from([from]),
                sources: Vec::new(),
            },
        );
        self.out
            .push_back(GatewayOutput::Link(link, Message::Watch { room, watching: true }));
    }

    /// Forgets an upstream room; its mirrored sources are gone at its
    /// workers, and (`unwatch`) the origin is told.
    fn drop_edge_room(&mut self, room: &RoomId, unwatch: bool) {
        let Some(r) = self.edge_rooms.remove(room) else {
            return;
        };
        for s in r.sources {
            if let Some(src) = self.in_sources.remove(&s) {
                self.in_ids.remove(&(src.link, src.remote));
            }
            self.demand_in.retain(|k, _| k.0 != s);
            self.highest.retain(|k, _| k.0 != s);
            for &w in &r.workers {
                let m = Message::SourceGone {
                    room: room.clone(),
                    source: s,
                };
                self.out.push_back(GatewayOutput::Worker(w, m));
            }
        }
        if unwatch && r.link != NO_LINK {
            self.out.push_back(GatewayOutput::Link(
                r.link,
                Message::Watch {
                    room: room.clone(),
                    watching: false,
                },
            ));
        }
    }

    /// A message from another node over `link`.
    pub fn handle_link(&mut self, link: LinkId, msg: Message) {
        match msg {
            Message::Watch { room, watching } => self.link_watch(link, room, watching),
            Message::Demand {
                source,
                track,
                layer,
                wanted,
            } => {
                // Only for a source of a room this link watches: bounded.
                let (worker, peer) = from_wire(source);
                let watched = self
                    .out_sources
                    .get(&(worker, peer))
                    .is_some_and(|s| self.watching.get(&link).is_some_and(|r| r.contains(&s.room)));
                if !watched {
                    return;
                }
                let d = self.demand_out.entry(link).or_default();
                if wanted {
                    d.insert((source, track, layer));
                } else {
                    d.remove(&(source, track, layer));
                }
            }
            Message::Nack {
                source,
                track,
                layer,
                seqs,
            } => {
                // Only for a layer this link asked for: bounded by its demand.
                if !self
                    .demand_out
                    .get(&link)
                    .is_some_and(|d| d.contains(&(source, track, layer)))
                {
                    return;
                }
                let Some(recent) = self.recent.get(&(source, track, layer)) else {
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
                let (worker, peer) = from_wire(source);
                if worker.0 < self.workers {
                    let m = Message::Keyframe { source: peer, layer };
                    self.out.push_back(GatewayOutput::Worker(worker, m));
                }
            }
            Message::Source {
                room,
                source,
                session,
                identity,
                codecs,
                tracks,
            } => {
                let Some(r) = self.edge_rooms.get_mut(&room).filter(|r| r.link == link) else {
                    return;
                };
                let id = match self.in_ids.get(&(link, source)) {
                    Some(&id) => id,
                    None => {
                        let id = SourceId(self.next_source);
                        self.next_source += 1;
                        self.in_ids.insert((link, source), id);
                        r.sources.push(id);
                        id
                    }
                };
                let announce = Message::Source {
                    room: room.clone(),
                    source: id,
                    session,
                    identity,
                    codecs,
                    tracks,
                };
                for &w in &r.workers {
                    self.out.push_back(GatewayOutput::Worker(w, announce.clone()));
                }
                self.in_sources.insert(
                    id,
                    InSource {
                        link,
                        remote: source,
                        room,
                        announce,
                    },
                );
            }
            Message::SourceGone { room, source } => {
                let Some(id) = self.in_ids.remove(&(link, source)) else {
                    return;
                };
                self.in_sources.remove(&id);
                self.demand_in.retain(|k, _| k.0 != id);
                self.highest.retain(|k, _| k.0 != id);
                if let Some(r) = self.edge_rooms.get_mut(&room) {
                    r.sources.retain(|&s| s != id);
                    for &w in &r.workers {
                        let m = Message::SourceGone {
                            room: room.clone(),
                            source: id,
                        };
                        self.out.push_back(GatewayOutput::Worker(w, m));
                    }
                }
            }
            Message::Layers { source, track, rates } => {
                let Some(&id) = self.in_ids.get(&(link, source)) else {
                    return;
                };
                let Some(r) = self
                    .in_sources
                    .get(&id)
                    .and_then(|s| self.edge_rooms.get(&s.room))
                else {
                    return;
                };
                for &w in &r.workers {
                    let m = Message::Layers {
                        source: id,
                        track,
                        rates: rates.clone(),
                    };
                    self.out.push_back(GatewayOutput::Worker(w, m));
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
                    .and_then(|s| self.edge_rooms.get(&s.room))
                else {
                    return;
                };
                // A gap: ask the origin for what is missing, once.
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
            }
        }
    }

    fn link_watch(&mut self, link: LinkId, room: RoomId, watching: bool) {
        if !watching {
            let wires: HashSet<SourceId> = self
                .out_sources
                .iter()
                .filter(|(_, s)| s.room == room)
                .map(|(&(w, p), _)| wire_id(w, p))
                .collect();
            if let Some(d) = self.demand_out.get_mut(&link) {
                d.retain(|(s, ..)| !wires.contains(s));
            }
            if let Some(rooms) = self.watching.get_mut(&link) {
                rooms.remove(&room);
                if rooms.is_empty() {
                    self.watching.remove(&link);
                }
            }
            self.unwatch_origin(&room, link);
            return;
        }
        let rooms = self.watching.entry(link).or_default();
        if !rooms.contains(&room) && rooms.len() >= MAX_WATCHED_PER_LINK {
            self.refused += 1;
            return;
        }
        rooms.insert(room.clone());
        let links = self.watched.entry(room.clone()).or_default();
        let first = links.is_empty();
        if !links.insert(link) {
            return;
        }
        if first {
            let home = (self.home)(&room);
            self.out.push_back(GatewayOutput::Worker(
                home,
                Message::Watch { room, watching: true },
            ));
        } else {
            // The home announced its sources already: replay them.
            for s in self.out_sources.values().filter(|s| s.room == room) {
                self.out.push_back(GatewayOutput::Link(link, s.announce.clone()));
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
            self.out_sources.retain(|_, s| s.room != *room);
            let home = (self.home)(room);
            self.out.push_back(GatewayOutput::Worker(
                home,
                Message::Watch {
                    room: room.clone(),
                    watching: false,
                },
            ));
        }
    }

    /// A link closed: rooms it watched here are unwatched, rooms watched
    /// over it lose their sources (their workers keep watching; a new route
    /// resumes them).
    pub fn link_down(&mut self, link: LinkId) {
        self.demand_out.remove(&link);
        for room in self.watching.remove(&link).unwrap_or_default() {
            self.unwatch_origin(&room, link);
        }
        let upstream: Vec<RoomId> = self
            .edge_rooms
            .iter()
            .filter(|(_, r)| r.link == link)
            .map(|(room, _)| room.clone())
            .collect();
        self.routes.retain(|_, l| *l != link);
        for room in upstream {
            let workers = self
                .edge_rooms
                .get(&room)
                .map(|r| r.workers.clone())
                .unwrap_or_default();
            self.drop_edge_room(&room, false);
            self.edge_rooms.insert(
                room,
                EdgeRoom {
                    link: NO_LINK,
                    workers,
                    sources: Vec::new(),
                },
            );
        }
    }

    /// Rooms watched here with no route (their origin's link went down).
    pub fn unrouted(&self) -> Vec<RoomId> {
        self.edge_rooms
            .iter()
            .filter(|(_, r)| r.link == NO_LINK)
            .map(|(room, _)| room.clone())
            .collect()
    }

    /// Re-sends the watch of a room that lost its route, once a route is set.
    pub fn resume(&mut self, room: &RoomId) {
        let Some(&link) = self.routes.get(room) else {
            return;
        };
        let Some(r) = self.edge_rooms.get_mut(room) else {
            return;
        };
        if r.link != NO_LINK {
            return;
        }
        r.link = link;
        self.out.push_back(GatewayOutput::Link(
            link,
            Message::Watch {
                room: room.clone(),
                watching: true,
            },
        ));
    }

    /// How `room` crosses this node's links: the link it is watched over (its
    /// parent), the links watching it here (its children) and the layers
    /// each carries, as `(source, track, layer)` in the origin's numbering.
    pub fn room_links(&self, room: &RoomId) -> RoomLinks {
        let parent = self.edge_rooms.get(room).filter(|r| r.link != NO_LINK).map(|r| {
            let mut layers: Vec<(SourceId, u8, u8)> = self
                .demand_in
                .keys()
                .filter(|k| r.sources.contains(&k.0))
                .filter_map(|&(s, t, l)| Some((self.in_sources.get(&s)?.remote, t, l)))
                .collect();
            layers.sort();
            (r.link, layers)
        });
        let wires: HashSet<SourceId> = self
            .out_sources
            .iter()
            .filter(|(_, s)| s.room == *room)
            .map(|(&(w, p), _)| wire_id(w, p))
            .collect();
        let children = self
            .watched
            .get(room)
            .into_iter()
            .flatten()
            .map(|&l| {
                let mut layers: Vec<(SourceId, u8, u8)> = self
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
        RoomLinks { parent, children }
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<GatewayOutput> {
        self.out.pop_front()
    }
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
            watching: on,
        }
    }

    fn links(out: &[GatewayOutput]) -> Vec<(LinkId, &Message)> {
        out.iter()
            .filter_map(|o| match o {
                GatewayOutput::Link(l, m) => Some((*l, m)),
                GatewayOutput::Worker(..) => None,
            })
            .collect()
    }

    fn workers(out: &[GatewayOutput]) -> Vec<(WorkerId, &Message)> {
        out.iter()
            .filter_map(|o| match o {
                GatewayOutput::Worker(w, m) => Some((*w, m)),
                GatewayOutput::Link(..) => None,
            })
            .collect()
    }

    #[test]
    fn an_edge_watches_once_upstream_and_fans_out_to_each_worker() {
        let mut g = gateway();
        g.route(room("r"), LinkId(7));
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

        // A keyframe request goes upstream under the origin's id.
        g.handle_worker(
            WorkerId(0),
            Message::Keyframe {
                source: local,
                layer: 2,
            },
        );
        let out = drain(&mut g);
        assert!(matches!(
            links(&out)[..],
            [(LinkId(7), Message::Keyframe { source: SourceId(s), layer: 2 })] if *s == 1 << 48 | 5
        ));

        // The last worker leaving unwatches upstream; one leaving does not.
        g.handle_worker(WorkerId(0), watch("r", false));
        assert!(links(&drain(&mut g)).is_empty());
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
        g.route(room("r"), LinkId(1));
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
            carried.parent,
            Some((LinkId(1), vec![(SourceId(1 << 48 | 2), 0, 2)]))
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
        edge.route(room("r"), LinkId(1));
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
        g.route(room("r"), LinkId(1));
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
        assert_eq!(carried.parent, None);
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
    fn a_lost_origin_removes_its_sources_and_a_new_route_resumes_the_watch() {
        let mut g = gateway();
        g.route(room("r"), LinkId(1));
        g.handle_worker(WorkerId(0), watch("r", true));
        g.handle_link(LinkId(1), source("r", 4));
        drain(&mut g);
        g.link_down(LinkId(1));
        let out = drain(&mut g);
        assert!(matches!(
            workers(&out)[..],
            [(WorkerId(0), Message::SourceGone { .. })]
        ));
        assert_eq!(g.unrouted(), vec![room("r")]);
        assert_eq!(g.route_of(&room("r")), None);

        g.route(room("r"), LinkId(2));
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
        g.route(room("r"), LinkId(1));
        g.handle_worker(WorkerId(0), watch("r", true));
        drain(&mut g);
        g.handle_link(LinkId(2), source("r", 4));
        g.handle_link(LinkId(2), source("other", 4));
        assert!(drain(&mut g).is_empty());
    }
}
