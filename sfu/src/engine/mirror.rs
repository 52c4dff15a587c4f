//! Rooms across engines, through the `relay` protocol: the home engine (the
//! one with the room's publishers) announces each publisher to the engines
//! that watch the room and hands them every packet; a watching engine keeps
//! a *mirror* of each source and forwards to its own viewers through the
//! same code as for a local publisher (see the `relay` crate).
//!
//! Below the engine's methods: the conversions between str0m's types and the
//! relay's plain ones.

use std::time::Instant;

use relay::{Ext, MediaPacket, Message, SourceId, TrackDesc, WorkerId};
use str0m::format::PayloadParams;
use str0m::media::{Mid, Rid};
use str0m::rtp::{ExtensionValues, RtpPacket, VideoOrientation};
use tracing::{debug, trace, warn};
use wave_vocab::{Codec, CodecDesc, MediaKind, RoomId, SessionId};

use super::state::{Mirror, Publisher, Role, SourceLayer, SourceTrack};
use super::{Engine, PeerId};

impl Engine {
    /// A message from the engine of worker `from`.
    pub fn handle_relay(&mut self, now: Instant, from: WorkerId, msg: Message) {
        match msg {
            Message::Media {
                source,
                track,
                layer,
                codec,
                packet,
            } => {
                let Some(&id) = self.mirror_ids.get(&(from, source)) else {
                    trace!(from = from.0, source = source.0, "media for no mirror");
                    return;
                };
                self.fan_out(now, id, usize::from(track), usize::from(layer), codec, &packet);
                self.last_input = now;
            }
            Message::Keyframe { source, layer } => {
                let pid = PeerId(source.0);
                if matches!(self.peers.get(&pid).map(|p| &p.role), Some(Role::Publisher(_))) {
                    self.want_keyframe(now, pid, usize::from(layer));
                }
            }
            Message::Watch { room, watching, .. } => self.watched(from, room, watching),
            // Engines of one node hand each other every layer (a shared
            // buffer each); node links filter by demand in the gateway.
            Message::Demand { .. } => {}
            // Node links only: the gateways answer them.
            Message::Nack { .. } | Message::Hops { .. } => {}
            Message::Layers { source, track, rates } => {
                let Some(m) = self
                    .mirror_ids
                    .get(&(from, source))
                    .and_then(|id| self.mirrors.get_mut(id))
                else {
                    return;
                };
                let Some(t) = m.publisher.tracks.get_mut(usize::from(track)) else {
                    return;
                };
                // A layer live at the home is live here, carried or not.
                for (l, rate) in t.layers.iter_mut().zip(rates) {
                    if let Some(bps) = rate {
                        l.last_packet = Some(l.last_packet.map_or(now, |t| t.max(now)));
                        l.bitrate_bps = bps;
                    }
                }
            }
            Message::Source {
                room,
                source,
                session,
                identity,
                codecs,
                tracks,
                ..
            } => {
                let announced = Announced {
                    source,
                    session,
                    identity,
                    codecs,
                    tracks,
                };
                self.mirror_source(now, from, &room, announced);
            }
            Message::SourceGone { room, source } => {
                let Some(id) = self.mirror_ids.remove(&(from, source)) else {
                    return;
                };
                self.mirrors.remove(&id);
                debug!(%room, mirror = id.0, "mirror removed");
                self.source_left(now, &room, id);
            }
        }
    }

    /// Tells each mirror's home which of its layers viewers here need (a
    /// current or target layer; audio while anyone listens), when that
    /// changed.
    pub(super) fn update_demand(&mut self) {
        let Engine { mirrors, relays, .. } = self;
        for m in mirrors.values_mut() {
            let tracks = &m.publisher.tracks;
            m.demanded.resize(tracks.len(), Vec::new());
            for (ti, (t, told)) in tracks.iter().zip(m.demanded.iter_mut()).enumerate() {
                // Runs on every timeout: no allocation once `told` has its size.
                let audio = t.kind == str0m::media::MediaKind::Audio;
                let layers = if audio { 1 } else { t.layers.len() };
                told.resize(layers, false);
                for (li, was) in told.iter_mut().enumerate() {
                    let want = if audio {
                        !t.subscribers.is_empty()
                    } else {
                        !t.layers[li].subscribers.is_empty()
                    };
                    if want != *was {
                        *was = want;
                        let msg = Message::Demand {
                            source: m.remote,
                            track: ti as u8,
                            layer: li as u8,
                            wanted: want,
                        };
                        relays.push_back((m.home, msg));
                    }
                }
            }
        }
    }

    /// Tells the engines watching each publisher's (and ingest source's)
    /// room its video layers' rates (every tick): they pick layers they do
    /// not receive from it.
    pub(super) fn tell_layer_rates(&mut self, now: Instant) {
        let Engine {
            peers,
            ingests,
            rooms,
            relays,
            ..
        } = self;
        let publishers = peers.iter().filter_map(|(pid, peer)| match &peer.role {
            Role::Publisher(p) => Some((pid, &peer.room, p)),
            Role::Viewer(_) => None,
        });
        let ingests = ingests.iter().map(|(pid, i)| (pid, &i.room, &i.publisher));
        for (pid, room, p) in publishers.chain(ingests) {
            let Some(watchers) = rooms.get(room).map(|r| &r.watchers).filter(|w| !w.is_empty()) else {
                continue;
            };
            for (ti, t) in p.tracks.iter().enumerate() {
                if t.kind != str0m::media::MediaKind::Video {
                    continue;
                }
                let rates: Vec<Option<u64>> = t
                    .layers
                    .iter()
                    .map(|l| l.active(now).then_some(l.bitrate_bps))
                    .collect();
                for &w in watchers {
                    let msg = Message::Layers {
                        source: SourceId(pid.0),
                        track: ti as u8,
                        rates: rates.clone(),
                    };
                    relays.push_back((w, msg));
                }
            }
        }
    }

    /// Worker `from` started (or stopped) watching `room`.
    fn watched(&mut self, from: WorkerId, room: RoomId, watching: bool) {
        if !watching {
            if let Some(r) = self.rooms.get_mut(&room) {
                r.watchers.remove(&from);
                debug!(%room, watcher = from.0, "room unwatched");
            }
            self.remove_room_if_empty(&room);
            return;
        }
        let r = self.rooms.entry(room.clone()).or_default();
        r.watchers.insert(from);
        debug!(%room, watcher = from.0, "room watched");
        for pid in r.publishers.clone() {
            self.announce_to(pid, from);
        }
    }

    /// A source of `room` announced by its home `from`: mirrored here, its
    /// new tracks added, the viewers waiting for it attached.
    fn mirror_source(&mut self, now: Instant, from: WorkerId, room: &RoomId, a: Announced) {
        let Some(r) = self.rooms.get_mut(room) else {
            // The last viewer left; the unwatch is on its way.
            return;
        };
        if !r.homes.contains(&from) {
            warn!(%room, from = from.0, "source from an engine that is not one of the room's homes");
            return;
        }
        let id = match self.mirror_ids.get(&(from, a.source)) {
            Some(&id) => id,
            None => {
                let id = PeerId(self.next_peer);
                self.next_peer += 1;
                self.mirror_ids.insert((from, a.source), id);
                self.mirrors.insert(
                    id,
                    Box::new(Mirror {
                        home: from,
                        remote: a.source,
                        session: a.session.clone(),
                        identity: a.identity.clone(),
                        codecs: Vec::new(),
                        publisher: Publisher::default(),
                        demanded: Vec::new(),
                    }),
                );
                r.publishers.push(id);
                debug!(%room, mirror = id.0, home = from.0, source = a.source.0, "mirror added");
                id
            }
        };
        let Some(m) = self.mirrors.get_mut(&id) else {
            return;
        };
        m.session = a.session;
        m.identity = a.identity;
        m.codecs = a.codecs;
        let added = a.tracks.len() > m.publisher.tracks.len();
        // Tracks only ever get added; the ones known keep their state.
        for t in a.tracks.into_iter().skip(m.publisher.tracks.len()) {
            m.publisher.tracks.push(SourceTrack {
                mid: Mid::from(t.mid.as_str()),
                kind: str0m_kind(t.kind),
                layers: t
                    .rids
                    .iter()
                    .map(|rid| SourceLayer::new(rid.as_deref().map(Rid::from)))
                    .collect(),
                subscribers: Vec::new(),
            });
        }
        // Viewers attached before a track was known get it now.
        let viewers: Vec<PeerId> = match self.rooms.get(room) {
            Some(r) if added => r.viewers.iter().copied().collect(),
            _ => Vec::new(),
        };
        for vid in viewers {
            let Some(Role::Viewer(v)) = self.peers.get_mut(&vid).map(|p| &mut p.role) else {
                continue;
            };
            if v.source == Some(id) {
                v.source = None;
                self.unsubscribe(id, vid);
            }
        }
        self.attach_waiting_viewers(now, room);
    }

    /// Feeds `room`'s viewers here the publishers of `home` too (viewers
    /// may be waiting: they attach when the home announces).
    pub(super) fn watch(&mut self, room: RoomId, home: WorkerId) {
        let r = self.rooms.entry(room.clone()).or_default();
        if r.homes.insert(home) {
            debug!(%room, home = home.0, "mirroring room");
            let watch = Message::Watch {
                room,
                origin: 0,
                watching: true,
            };
            self.relays.push_back((home, watch));
        }
    }

    /// Tells every engine watching the publisher's room about it.
    pub(super) fn announce(&mut self, pid: PeerId) {
        let room = match (self.peers.get(&pid), self.ingests.get(&pid)) {
            (Some(peer), _) => &peer.room,
            (None, Some(ingest)) => &ingest.room,
            (None, None) => return,
        };
        let watchers: Vec<WorkerId> = self
            .rooms
            .get(room)
            .map(|r| r.watchers.iter().copied().collect())
            .unwrap_or_default();
        for w in watchers {
            self.announce_to(pid, w);
        }
    }

    fn announce_to(&mut self, pid: PeerId, to: WorkerId) {
        let (room, session, identity, codecs, p) = match (self.peers.get(&pid), self.ingests.get(&pid)) {
            (Some(peer), _) => {
                let Role::Publisher(p) = &peer.role else { return };
                let codecs = codec_descs(peer.rtc.codec_config().params());
                (&peer.room, &peer.session, &peer.identity, codecs, p)
            }
            (None, Some(i)) => (&i.room, &i.session, &i.identity, i.codecs.clone(), &i.publisher),
            (None, None) => return,
        };
        let msg = Message::Source {
            room: room.clone(),
            origin: 0,
            source: SourceId(pid.0),
            session: session.clone(),
            identity: identity.clone(),
            codecs,
            tracks: p
                .tracks
                .iter()
                .map(|t| TrackDesc {
                    mid: t.mid.to_string(),
                    kind: vocab_kind(t.kind),
                    rids: t.layers.iter().map(|l| l.rid.map(|r| r.to_string())).collect(),
                })
                .collect(),
        };
        self.relays.push_back((to, msg));
    }
}

/// A [`Message::Source`]'s fields past its room.
struct Announced {
    source: SourceId,
    session: SessionId,
    identity: Option<String>,
    codecs: Vec<CodecDesc>,
    tracks: Vec<TrackDesc>,
}

/// A received packet as viewers (here and on other engines) are forwarded it.
pub(super) fn media_packet(packet: &RtpPacket) -> MediaPacket {
    let e = &packet.header.ext_vals;
    MediaPacket {
        pt: *packet.header.payload_type,
        seq: *packet.seq_no,
        rtp_ts: packet.header.timestamp,
        arrival: packet.timestamp,
        marker: packet.header.marker,
        ext: Ext {
            audio_level: e.audio_level,
            voice_activity: e.voice_activity,
            video_orientation: e.video_orientation.map(|o| o as u8),
        },
        payload: packet.payload.clone(),
    }
}

/// The header extensions str0m writes for a forwarded packet.
pub(super) fn extension_values(ext: &Ext) -> ExtensionValues {
    ExtensionValues {
        audio_level: ext.audio_level,
        voice_activity: ext.voice_activity,
        video_orientation: ext.video_orientation.map(VideoOrientation::from),
        ..ExtensionValues::default()
    }
}

/// The forwarded codecs among str0m's.
pub(super) fn codec_of(codec: str0m::format::Codec) -> Option<Codec> {
    use str0m::format::Codec as C;
    Some(match codec {
        C::Opus => Codec::Opus,
        C::H264 => Codec::H264,
        C::H265 => Codec::H265,
        C::Vp8 => Codec::Vp8,
        C::Vp9 => Codec::Vp9,
        C::Av1 => Codec::Av1,
        _ => return None,
    })
}

/// Negotiated payload types as the relay describes them (codecs the node
/// does not forward are left out).
pub(super) fn codec_descs(params: &[PayloadParams]) -> Vec<CodecDesc> {
    params
        .iter()
        .filter_map(|p| {
            let spec = p.spec();
            let format = &spec.format;
            Some(CodecDesc {
                pt: *p.pt(),
                codec: codec_of(spec.codec)?,
                clock_rate: spec.clock_rate.get(),
                channels: spec.channels,
                packetization_mode: format.packetization_mode,
                profile_level_id: format.profile_level_id,
                profile: format.profile_id.or(format.profile.map(u32::from)),
            })
        })
        .collect()
}

fn vocab_kind(kind: str0m::media::MediaKind) -> MediaKind {
    match kind {
        str0m::media::MediaKind::Audio => MediaKind::Audio,
        str0m::media::MediaKind::Video => MediaKind::Video,
    }
}

fn str0m_kind(kind: MediaKind) -> str0m::media::MediaKind {
    match kind {
        MediaKind::Audio => str0m::media::MediaKind::Audio,
        MediaKind::Video => str0m::media::MediaKind::Video,
    }
}
