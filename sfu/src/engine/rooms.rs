//! Rooms, their sources (local publishers and mirrors) and which viewer
//! watches which source.

use std::time::Instant;

use relay::{Message, SourceId};
use str0m::media::MediaKind;
use tracing::{debug, warn};
use wave_vocab::{
    Codec, CodecDesc, MediaError, PublisherInfo, RoomId, RoomInfo, SessionId, TrackInfo, ViewerInfo,
};

use super::forward::map_payload_types;
use super::mirror::{codec_descs, codec_of};
use super::sdp;
use super::state::{Publisher, Role, Room};
use super::{Engine, PeerId};

impl Engine {
    /// A publisher's tracks, whether it is a local peer or a mirror.
    pub(super) fn source(&self, pid: PeerId) -> Option<&Publisher> {
        match self.peers.get(&pid) {
            Some(peer) => match &peer.role {
                Role::Publisher(p) => Some(p),
                Role::Viewer(_) => None,
            },
            None => match self.mirrors.get(&pid) {
                Some(m) => Some(&m.publisher),
                None => self.ingests.get(&pid).map(|i| &i.publisher),
            },
        }
    }

    pub(super) fn source_mut(&mut self, pid: PeerId) -> Option<&mut Publisher> {
        match self.peers.get_mut(&pid) {
            Some(peer) => match &mut peer.role {
                Role::Publisher(p) => Some(p),
                Role::Viewer(_) => None,
            },
            None => match self.mirrors.get_mut(&pid) {
                Some(m) => Some(&mut m.publisher),
                None => self.ingests.get_mut(&pid).map(|i| &mut i.publisher),
            },
        }
    }

    /// Whether a source matches a viewer's `?publisher=` (identity or session).
    fn source_matches(&self, pid: PeerId, pin: &str) -> bool {
        let (session, identity) = match self.peers.get(&pid) {
            Some(p) => (&p.session, p.identity.as_deref()),
            None => match (self.mirrors.get(&pid), self.ingests.get(&pid)) {
                (Some(m), _) => (&m.session, m.identity.as_deref()),
                (None, Some(i)) => (&i.session, i.identity.as_deref()),
                (None, None) => return false,
            },
        };
        identity == Some(pin) || session.as_str() == pin
    }

    fn source_codecs(&self, pid: PeerId) -> Vec<CodecDesc> {
        match self.peers.get(&pid) {
            Some(p) => codec_descs(p.rtc.codec_config().params()),
            None => match (self.mirrors.get(&pid), self.ingests.get(&pid)) {
                (Some(m), _) => m.codecs.clone(),
                (None, Some(i)) => i.codecs.clone(),
                (None, None) => Vec::new(),
            },
        }
    }

    /// The session id of a source (a local publisher, a mirror, an ingest).
    fn source_session(&self, pid: PeerId) -> Option<&SessionId> {
        match self.peers.get(&pid) {
            Some(p) => Some(&p.session),
            None => match (self.mirrors.get(&pid), self.ingests.get(&pid)) {
                (Some(m), _) => Some(&m.session),
                (None, Some(i)) => Some(&i.session),
                (None, None) => None,
            },
        }
    }

    /// The source a viewer of `room` gets: the one its `?publisher=` names,
    /// else the room's first.
    fn pick_source(&self, room: &Room, pin: Option<&str>) -> Option<PeerId> {
        room.publishers.iter().copied().find(|&pid| match pin {
            Some(pin) => self.source_matches(pid, pin),
            None => self.source(pid).is_some(),
        })
    }

    /// The video codecs a source sends: those its packets carried; before
    /// its first packet, those its video m-line negotiated (it may send any
    /// of them); empty when not known (a mirror before its first packet)
    /// or it has no video.
    pub(super) fn source_video_codecs(&self, pid: PeerId) -> Vec<Codec> {
        let Some(p) = self.source(pid) else {
            return Vec::new();
        };
        let video = || p.tracks.iter().filter(|t| t.kind == MediaKind::Video);
        let mut found: Vec<Codec> = video()
            .flat_map(|t| t.layers.iter().filter_map(|l| l.codec))
            .collect();
        if found.is_empty() {
            if let Some(peer) = self.peers.get(&pid) {
                for t in video() {
                    let Some(media) = peer.rtc.media(t.mid) else {
                        continue;
                    };
                    found.extend(
                        peer.rtc
                            .codec_config()
                            .params()
                            .iter()
                            .filter(|pp| media.remote_pts().contains(&pp.pt()))
                            .filter_map(|pp| codec_of(pp.spec().codec)),
                    );
                }
            } else if let Some(i) = self.ingests.get(&pid) {
                found.extend(i.codecs.iter().map(|d| d.codec));
            }
        }
        let mut out: Vec<Codec> = Vec::new();
        for c in found {
            if c != Codec::Opus && !out.contains(&c) {
                out.push(c);
            }
        }
        out
    }

    /// The video codecs of the source a viewer of `room` pinned to `pin`
    /// would get here ([`Engine::source_video_codecs`]); empty when there is
    /// none or they are not known.
    pub(super) fn room_video(&self, room: &RoomId, pin: Option<&str>) -> Vec<Codec> {
        self.rooms
            .get(room)
            .and_then(|r| self.pick_source(r, pin))
            .map(|pid| self.source_video_codecs(pid))
            .unwrap_or_default()
    }

    /// Refuses a WHEP offer whose answer has none of the video codecs of
    /// the source the viewer would get (406, naming both): it would get
    /// audio only. The codecs are this engine's view of the source, else
    /// `told` (the room's own worker's). Passes when the room has no
    /// source yet, its codecs are not known yet (a relayed room) or the
    /// offer has no video.
    pub(super) fn check_playable(
        &self,
        room: &RoomId,
        pin: Option<&str>,
        told: &[Codec],
        offer: &str,
        answer: &str,
    ) -> Result<(), MediaError> {
        let Some(answered) = sdp::video_codecs(answer) else {
            return Ok(());
        };
        let mut sent = self.room_video(room, pin);
        if sent.is_empty() {
            sent = told.to_vec();
        }
        if sent.is_empty()
            || sent
                .iter()
                .any(|c| answered.contains(&c.to_string().to_ascii_uppercase()))
        {
            return Ok(());
        }
        let offered = sdp::video_codecs(offer).unwrap_or_default();
        let offered = if offered.is_empty() {
            "no video codec".to_owned()
        } else {
            offered.join(", ")
        };
        Err(MediaError::NotAcceptable(format!(
            "the room's video is {}; the offer has {offered}",
            codec_list(&sent)
        )))
    }

    /// A viewer was given a source sending `sent`, none of which it
    /// negotiated: it gets the source's audio only. Warned and counted
    /// once per viewer and source.
    pub(super) fn codec_mismatch(&mut self, vid: PeerId, pid: PeerId, sent: &[Codec]) {
        let publisher = self
            .source_session(pid)
            .map(ToString::to_string)
            .unwrap_or_default();
        let Some(peer) = self.peers.get_mut(&vid) else {
            return;
        };
        let Role::Viewer(v) = &mut peer.role else { return };
        if v.codec_warned == Some(pid) {
            return;
        }
        v.codec_warned = Some(pid);
        let mut viewer_video: Vec<Codec> = Vec::new();
        for d in v.video.iter().flat_map(|t| &t.codecs) {
            if !viewer_video.contains(&d.codec) {
                viewer_video.push(d.codec);
            }
        }
        self.stats.viewer_codec_mismatch += 1;
        let _entered = peer.span.enter();
        warn!(
            %publisher,
            publisher_video = %codec_list(sent),
            viewer_video = %codec_list(&viewer_video),
            "the viewer has none of its publisher's video codecs: it gets audio only"
        );
    }

    /// Attaches every viewer of `room` that has no source (a new publisher arrived).
    pub(super) fn attach_waiting_viewers(&mut self, now: Instant, room: &RoomId) {
        let Some(r) = self.rooms.get(room) else { return };
        let waiting: Vec<PeerId> = r
            .viewers
            .iter()
            .copied()
            .filter(
                |v| matches!(self.peers.get(v).map(|p| &p.role), Some(Role::Viewer(v)) if v.source.is_none()),
            )
            .collect();
        for vid in waiting {
            self.attach_viewer(now, vid);
        }
    }

    /// Picks a publisher for a viewer (its pin, else the room's first) and subscribes.
    pub(super) fn attach_viewer(&mut self, now: Instant, vid: PeerId) {
        let Some(peer) = self.peers.get(&vid) else { return };
        let Role::Viewer(v) = &peer.role else { return };
        let Some(room) = self.rooms.get(&peer.room) else {
            return;
        };
        let Some(pid) = self.pick_source(room, v.pin.as_deref()) else {
            return;
        };
        let pub_codecs = self.source_codecs(pid);
        {
            let Some(Role::Viewer(v)) = self.peers.get_mut(&vid).map(|p| &mut p.role) else {
                return;
            };
            v.source = Some(pid);
            v.current = None;
            v.target = None;
            v.up_since = None;
            v.forced = true;
            for track in [v.audio.as_mut(), v.video.as_mut()].into_iter().flatten() {
                track.pt_map = map_payload_types(&pub_codecs, &track.codecs);
                track.rebase = true;
            }
        }
        self.check_video_codecs(vid, pid);
        self.subscribe_audio(vid, pid);
        debug!(viewer = vid.0, publisher = pid.0, "viewer attached");
        self.select_layer(now, vid);
    }

    /// Subscribes a viewer with audio to its source's audio track, if the
    /// source has one yet.
    fn subscribe_audio(&mut self, vid: PeerId, pid: PeerId) {
        let has_audio = matches!(
            self.peers.get(&vid).map(|p| &p.role),
            Some(Role::Viewer(v)) if v.audio.is_some()
        );
        if has_audio
            && let Some(p) = self.source_mut(pid)
            && let Some(t) = p.tracks.iter_mut().find(|t| t.kind == MediaKind::Audio)
            && !t.subscribers.contains(&vid)
        {
            t.subscribers.push(vid);
        }
    }

    /// Reports a viewer whose video track has none of its source's video
    /// codecs (when they are known: [`Engine::source_video_codecs`]).
    fn check_video_codecs(&mut self, vid: PeerId, pid: PeerId) {
        let sent = self.source_video_codecs(pid);
        let Some(Role::Viewer(v)) = self.peers.get(&vid).map(|p| &p.role) else {
            return;
        };
        let takes = v
            .video
            .as_ref()
            .is_none_or(|t| sent.is_empty() || t.codecs.iter().any(|d| sent.contains(&d.codec)));
        if !takes {
            self.codec_mismatch(vid, pid, &sent);
        }
    }

    /// str0m reported a source's track after viewers were given the source
    /// (it reports a publisher's tracks once its session is up, which can
    /// be after the publisher joined its room): they get its audio, and
    /// their video codecs are checked against its video.
    pub(super) fn source_track_added(&mut self, pid: PeerId, kind: MediaKind) {
        let Some(room) = self.peers.get(&pid).and_then(|p| self.rooms.get(&p.room)) else {
            return;
        };
        let viewers: Vec<PeerId> = room
            .viewers
            .iter()
            .copied()
            .filter(|v| {
                matches!(self.peers.get(v).map(|p| &p.role), Some(Role::Viewer(v)) if v.source == Some(pid))
            })
            .collect();
        for vid in viewers {
            match kind {
                MediaKind::Audio => self.subscribe_audio(vid, pid),
                MediaKind::Video => self.check_video_codecs(vid, pid),
            }
        }
    }

    pub(super) fn unsubscribe(&mut self, publisher: PeerId, vid: PeerId) {
        let Some(p) = self.source_mut(publisher) else {
            return;
        };
        for t in &mut p.tracks {
            t.subscribers.retain(|v| *v != vid);
            for l in &mut t.layers {
                l.subscribers.retain(|v| *v != vid);
            }
        }
    }

    /// A source (publisher or mirror) of `room` is gone: its viewers move
    /// to another source of the room, or wait for one.
    pub(super) fn source_left(&mut self, now: Instant, room_id: &RoomId, id: PeerId) {
        let viewers: Vec<PeerId> = match self.rooms.get_mut(room_id) {
            Some(room) => {
                room.publishers.retain(|p| *p != id);
                room.viewers.iter().copied().collect()
            }
            None => Vec::new(),
        };
        for vid in viewers {
            let Some(Role::Viewer(v)) = self.peers.get_mut(&vid).map(|p| &mut p.role) else {
                continue;
            };
            if v.source == Some(id) {
                v.source = None;
                v.current = None;
                v.target = None;
                self.attach_viewer(now, vid);
            }
        }
    }

    /// A source of this engine (a publisher or an ingest) is gone: LL-HLS
    /// ends its stream, the engines watching the room drop their mirror, its
    /// viewers here move on ([`Engine::source_left`]).
    pub(super) fn local_source_left(&mut self, now: Instant, room_id: &RoomId, id: PeerId) {
        if let Some(tap) = &mut self.hls {
            tap.publisher_left(now, id);
        }
        if let Some(room) = self.rooms.get(room_id) {
            for &w in &room.watchers {
                let gone = Message::SourceGone {
                    room: room_id.clone(),
                    source: SourceId(id.0),
                };
                self.relays.push_back((w, gone));
            }
        }
        self.source_left(now, room_id, id);
    }

    /// Once a room has no viewer here its homes are unwatched and its
    /// mirrors dropped; a room nothing keeps (no viewer, no publisher here,
    /// no engine watching) is removed.
    pub(super) fn remove_room_if_empty(&mut self, room_id: &RoomId) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        if room.viewers.is_empty() && !room.homes.is_empty() {
            let homes = std::mem::take(&mut room.homes);
            let mirrors = &mut self.mirrors;
            let mirror_ids = &mut self.mirror_ids;
            room.publishers.retain(|id| match mirrors.remove(id) {
                Some(m) => {
                    mirror_ids.remove(&(m.home, m.remote));
                    false
                }
                None => true,
            });
            for home in homes {
                debug!(room = %room_id, home = home.0, "mirrored room ended");
                let unwatch = Message::Watch {
                    room: room_id.clone(),
                    origin: 0,
                    watching: false,
                };
                self.relays.push_back((home, unwatch));
            }
        }
        if room.publishers.is_empty() && room.viewers.is_empty() && room.watchers.is_empty() {
            self.rooms.remove(room_id);
        }
    }

    pub(super) fn rooms_info(&self) -> Vec<RoomInfo> {
        self.rooms
            .iter()
            .map(|(room_id, room)| RoomInfo {
                room: room_id.clone(),
                publishers: room
                    .publishers
                    .iter()
                    .filter_map(|id| match self.peers.get(id) {
                        Some(peer) => match &peer.role {
                            Role::Publisher(p) => Some((&peer.session, &peer.identity, p)),
                            Role::Viewer(_) => None,
                        },
                        // An ingest source is listed like a publisher; mirrors by their home.
                        None => self
                            .ingests
                            .get(id)
                            .map(|i| (&i.session, &i.identity, &i.publisher)),
                    })
                    .map(|(session, identity, p)| PublisherInfo {
                        session: session.clone(),
                        identity: identity.clone(),
                        tracks: p
                            .tracks
                            .iter()
                            .flat_map(|t| {
                                t.layers.iter().map(move |l| TrackInfo {
                                    kind: format!("{:?}", t.kind).to_lowercase(),
                                    codec: l.codec.map(|c| c.to_string()).unwrap_or_default(),
                                    rid: l.rid.map(|r| r.to_string()),
                                    bitrate_bps: l.bitrate_bps,
                                    width: l.size.map(|s| s.0),
                                    height: l.size.map(|s| s.1),
                                })
                            })
                            .collect(),
                    })
                    .collect(),
                viewers: room
                    .viewers
                    .iter()
                    .filter_map(|id| self.peers.get(id))
                    .filter_map(|peer| {
                        let Role::Viewer(v) = &peer.role else { return None };
                        let layer = v.source.and_then(|pid| {
                            let p = self.source(pid)?;
                            let t = p.tracks.iter().find(|t| t.kind == MediaKind::Video)?;
                            t.layers.get(v.current?)?.rid.map(|r| r.to_string())
                        });
                        let bitrate_bps = [v.audio.as_ref(), v.video.as_ref()]
                            .into_iter()
                            .flatten()
                            .map(|t| t.bitrate.bps)
                            .sum();
                        Some(ViewerInfo {
                            session: peer.session.clone(),
                            identity: peer.identity.clone(),
                            layer,
                            bitrate_bps,
                        })
                    })
                    .collect(),
            })
            .collect()
    }
}

/// Codecs as `H264, VP8`.
fn codec_list(codecs: &[Codec]) -> String {
    codecs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
