//! Peers: demultiplexing datagrams to them, admitting them, patching and
//! removing them, and driving their str0m `Rtc`s.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpOffer;
use str0m::media::{MediaAdded, MediaKind, Rid};
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, Event as RtcEvent, IceConnectionState, Output, Rtc, RtcConfig};
use tracing::{debug, info, info_span, trace, warn};
use wave_vocab::{Codec, IcePatch, IceRestartAnswer, LayerPref, MediaError, RoomId, SessionId};

use super::mirror::codec_descs;
use super::rewrite::{Rewriter, Vp8Rewriter};
use super::sdp::{self, Intent};
use super::state::{OutTrack, Peer, Publisher, RateMeter, Role, SourceLayer, SourceTrack, Viewer};
use super::{
    Engine, EngineStats, Event, PeerId, RTX_CACHE_AGE, RTX_CACHE_PACKETS, RTX_RATIO_CAP, Reply, Transmit,
};

/// A peer [`Engine::add_peer`] admits: a WHIP publisher or a WHEP viewer.
pub(super) struct NewPeer {
    pub(super) room: RoomId,
    pub(super) session: SessionId,
    pub(super) identity: Option<String>,
    pub(super) offer: String,
    pub(super) intent: Intent,
    /// A viewer's `?publisher=`.
    pub(super) pin: Option<String>,
    pub(super) max_layer: Option<LayerPref>,
    /// A viewer's [`super::Command::Play`] `room_video`.
    pub(super) room_video: Vec<Codec>,
}

impl Engine {
    /// O(1): by remote address, else by the local ufrag in a STUN USERNAME.
    pub(super) fn demux(&self, from: SocketAddr, bytes: &[u8]) -> Option<PeerId> {
        if let Some(id) = self.by_addr.get(&from) {
            return Some(*id);
        }
        // RFC 7983: STUN starts with 0..=3.
        if !matches!(bytes.first(), Some(0..=3)) {
            return None;
        }
        let msg = str0m::ice::StunMessage::parse(bytes).ok()?;
        let (local, _remote) = msg.split_username()?;
        self.by_ufrag.get(local).copied()
    }

    /// Admits a new publisher or viewer: its offer answered, its `Rtc` in
    /// the engine, a viewer attached to the room's source.
    pub(super) fn add_peer(&mut self, now: Instant, new: NewPeer) -> Result<Reply, MediaError> {
        self.admit(&new)?;
        let NewPeer {
            room,
            session,
            identity,
            offer,
            intent,
            pin,
            max_layer,
            room_video,
        } = new;
        let (mut rtc, answer) = self.negotiate(now, &offer, intent, max_layer.as_ref())?;
        if intent == Intent::Play {
            self.check_playable(&room, pin.as_deref(), &room_video, &offer, &answer)?;
        }
        let local_ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        let id = PeerId(self.next_peer);
        self.next_peer += 1;
        let role = match intent {
            Intent::Publish => Role::Publisher(Publisher::default()),
            Intent::Play => Role::Viewer(Box::new(Viewer::new(pin, max_layer))),
        };
        let span = info_span!("peer", %room, %session, peer = id.0, role = ?intent);
        span.in_scope(|| info!("peer added"));
        self.by_session.insert(session.clone(), id);
        self.by_ufrag.insert(local_ufrag.clone(), id);
        self.rooms.entry(room.clone()).or_default();
        self.peers.insert(
            id,
            Box::new(Peer {
                session,
                room: room.clone(),
                identity,
                rtc,
                offer,
                local_ufrag,
                addrs: Vec::new(),
                timer: None,
                last_rx: now,
                role,
                dirty: false,
                nacks_seen: HashMap::new(),
                span,
            }),
        );
        // MediaAdded events describe the negotiated tracks.
        self.drive(now, id);
        let room_entry = self.rooms.entry(room.clone()).or_default();
        match intent {
            Intent::Publish => {
                room_entry.publishers.push(id);
                self.announce(id);
                self.attach_waiting_viewers(now, &room);
            }
            Intent::Play => {
                room_entry.viewers.insert(id);
                self.attach_viewer(now, id);
            }
        }
        Ok(Reply::Answer(sdp::with_end_of_candidates(&answer)))
    }

    /// The limits a new peer must fit: the engine's, its room's, a fresh session.
    fn admit(&self, new: &NewPeer) -> Result<(), MediaError> {
        if self.peers.len() >= self.config.max_peers {
            return Err(MediaError::Overloaded { retry_after_secs: 5 });
        }
        let room = self.rooms.get(&new.room);
        let in_room = room.map_or(0, |r| r.publishers.len() + r.viewers.len());
        if in_room >= self.config.max_room_peers {
            return Err(MediaError::RoomFull {
                room: new.room.clone(),
                retry_after_secs: 5,
            });
        }
        if self.by_session.contains_key(&new.session) {
            return Err(MediaError::BadRequest("session id already in use".into()));
        }
        Ok(())
    }

    /// A new `Rtc` for an offer, and its answer.
    pub(crate) fn negotiate(
        &self,
        now: Instant,
        offer: &str,
        intent: Intent,
        max_layer: Option<&LayerPref>,
    ) -> Result<(Rtc, String), MediaError> {
        let offer = &*sdp::lenient_offer(offer);
        sdp::check_offer(offer, intent)?;
        let sdp_offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| MediaError::BadRequest(format!("SDP: {e}")))?;
        // A viewer pinned to the lowest layer has nothing to choose: without
        // the estimator str0m drains its queue in one poll instead of one
        // pacer timeout per packet (~25 % of the per-packet cost), and its
        // answer drops the feedback extensions (below).
        let bwe = intent == Intent::Play && max_layer != Some(&LayerPref::Low);
        let feedback = bwe || intent == Intent::Publish;
        let mut rtc = self.rtc_config(bwe, feedback).build(now);
        for addr in &self.config.candidates {
            match Candidate::host(*addr, "udp") {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => warn!(%addr, error = %e, "cannot use candidate address"),
            }
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(sdp_offer)
            .map_err(|e| MediaError::Unprocessable(format!("offer not acceptable: {e}")))?;
        let answer = answer.to_sdp_string();
        sdp::check_answer(offer, &answer)?;
        Ok((rtc, answer))
    }

    /// The codec order is the answer's: str0m lists the offered codecs it
    /// accepts in this order, and a browser sends the first codec of the
    /// answer. H.264 comes first (str0m's list starts with constrained
    /// baseline, packetization-mode=1), so every room whose publisher can
    /// send H.264 gets LL-HLS; a VP8-only offer still gets VP8.
    ///
    /// Without `feedback` the session negotiates no transport-wide sequence
    /// numbers and no abs-send-time: a viewer whose layer nothing estimates
    /// would only send feedback nobody reads, and str0m would keep a
    /// 1,000-record send register per viewer for it (~88 KB) and stamp every
    /// packet. A publisher keeps them: its browser's estimator needs the
    /// node's transport feedback.
    pub(super) fn rtc_config(&self, bwe: bool, feedback: bool) -> RtcConfig {
        let mut config = RtcConfig::new()
            .set_crypto_provider(wave_dtls::crypto_provider())
            .set_rtp_mode(true)
            .set_ice_lite(self.config.ice_lite)
            .set_dtls_cert(self.cert.clone())
            .clear_codecs()
            .enable_opus(true, false)
            .enable_h264(true)
            .enable_vp8(true)
            .enable_vp9(true)
            .enable_av1(true)
            .set_stats_interval(Some(Duration::from_secs(2)));
        if bwe {
            config = config.enable_bwe(Some(Bitrate::bps(self.config.initial_bwe_bps)));
        }
        if !feedback {
            let mut exts = ExtensionMap::empty();
            for (id, ext) in ExtensionMap::standard().iter() {
                if !matches!(
                    ext,
                    Extension::TransportSequenceNumber | Extension::AbsoluteSendTime
                ) {
                    exts.set(id, ext.clone());
                }
            }
            config = config.set_extension_map(exts);
        }
        config
    }

    pub(super) fn patch(
        &mut self,
        now: Instant,
        session: &SessionId,
        patch: IcePatch,
    ) -> Result<Option<IceRestartAnswer>, MediaError> {
        let id = *self.by_session.get(session).ok_or(MediaError::NotFound)?;
        let peer = self.peers.get_mut(&id).ok_or(MediaError::NotFound)?;
        match patch {
            IcePatch::Trickle { candidates, .. } => {
                for c in candidates {
                    match Candidate::from_sdp_string(&c) {
                        Ok(c) => peer.rtc.add_remote_candidate(c),
                        Err(e) => debug!(%session, error = %e, "dropping trickled candidate"),
                    }
                }
                self.drive(now, id);
                Ok(None)
            }
            IcePatch::Restart {
                ufrag,
                pwd,
                candidates,
            } => {
                let offer = sdp::with_ice_credentials(&peer.offer, &ufrag, &pwd, &candidates);
                let sdp_offer = SdpOffer::from_sdp_string(&offer)
                    .map_err(|e| MediaError::BadRequest(format!("restart fragment: {e}")))?;
                let answer = peer
                    .rtc
                    .sdp_api()
                    .accept_offer(sdp_offer)
                    .map_err(|e| MediaError::Unprocessable(format!("ICE restart refused: {e}")))?;
                let creds = peer.rtc.direct_api().local_ice_credentials();
                let answer = answer.to_sdp_string();
                let candidates = answer
                    .lines()
                    .filter_map(|l| l.trim_end().strip_prefix("a="))
                    .filter(|l| l.starts_with("candidate:"))
                    .map(str::to_owned)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                peer.offer = offer;
                let old = std::mem::replace(&mut peer.local_ufrag, creds.ufrag.clone());
                self.by_ufrag.remove(&old);
                self.by_ufrag.insert(creds.ufrag.clone(), id);
                info!("ICE restarted");
                self.drive(now, id);
                Ok(Some(IceRestartAnswer {
                    ufrag: creds.ufrag,
                    pwd: creds.pass,
                    candidates,
                    ice_lite: self.config.ice_lite,
                }))
            }
        }
    }

    pub(super) fn remove_peer(&mut self, now: Instant, id: PeerId, reason: &str) {
        let Some(mut peer) = self.peers.remove(&id) else {
            return;
        };
        let span = peer.span.clone();
        let _entered = span.enter();
        info!(reason, "peer removed");
        // RTCP BYE and DTLS close_notify go out before the state is dropped.
        if peer.rtc.close().is_ok() {
            for _ in 0..64 {
                match peer.rtc.poll_output() {
                    Ok(Output::Transmit(t)) => push_transmit(&mut self.stats, &mut self.transmits, t),
                    Ok(Output::Event(_)) => {}
                    Ok(Output::Timeout(_)) | Err(_) => break,
                }
            }
        }
        if let Some(at) = peer.timer {
            self.timers.remove(&(at, id));
        }
        self.by_session.remove(&peer.session);
        self.by_ufrag.remove(&peer.local_ufrag);
        for addr in &peer.addrs {
            if self.by_addr.get(addr) == Some(&id) {
                self.by_addr.remove(addr);
            }
        }
        match &peer.role {
            Role::Viewer(v) => {
                if let Some(source) = v.source {
                    self.unsubscribe(source, id);
                }
                if let Some(room) = self.rooms.get_mut(&peer.room) {
                    room.viewers.remove(&id);
                }
            }
            Role::Publisher(_) => self.local_source_left(now, &peer.room, id),
        }
        self.remove_room_if_empty(&peer.room);
        self.events.push_back(Event::SessionClosed {
            session: peer.session,
            room: peer.room,
        });
    }

    /// Drains one peer's `Rtc` to its next timeout and handles what came out.
    pub(super) fn drive(&mut self, now: Instant, id: PeerId) {
        let mut packets = std::mem::take(&mut self.scratch_packets);
        let mut events = std::mem::take(&mut self.scratch_events);
        let mut alive = true;
        if let Some(peer) = self.peers.get_mut(&id) {
            loop {
                match peer.rtc.poll_output() {
                    Ok(Output::Timeout(at)) => {
                        // Most drives leave the deadline where it was: no
                        // BTreeSet remove and insert then.
                        if peer.timer != Some(at) {
                            if let Some(old) = peer.timer {
                                self.timers.remove(&(old, id));
                            }
                            peer.timer = Some(at);
                            self.timers.insert((at, id));
                        }
                        break;
                    }
                    Ok(Output::Transmit(t)) => push_transmit(&mut self.stats, &mut self.transmits, t),
                    Ok(Output::Event(RtcEvent::RtpPacket(p))) => packets.push(p),
                    Ok(Output::Event(e)) => events.push(e),
                    Err(e) => {
                        warn!(session = %peer.session, error = %e, "rtc failed");
                        alive = false;
                        break;
                    }
                }
            }
            if !peer.rtc.is_alive() {
                alive = false;
            }
        }
        for e in events.drain(..) {
            self.handle_rtc_event(now, id, e);
        }
        for p in packets.drain(..) {
            self.forward(now, id, p);
        }
        self.hls_keyframe_requests(now);
        self.scratch_packets = packets;
        self.scratch_events = events;
        if !alive {
            self.remove_peer(now, id, "closed");
        }
    }

    pub(super) fn handle_rtc_event(&mut self, now: Instant, id: PeerId, event: RtcEvent) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let span = peer.span.clone();
        let _entered = span.enter();
        match event {
            RtcEvent::MediaAdded(m) => self.media_added(now, id, m),
            RtcEvent::KeyframeRequest(req) => {
                // A viewer lost a picture: ask its source layer, merged and throttled.
                let Role::Viewer(v) = &peer.role else { return };
                let (Some(source), Some(layer)) = (v.source, v.current.or(v.target)) else {
                    return;
                };
                trace!(kind = ?req.kind, "viewer keyframe request");
                self.want_keyframe(now, source, layer);
            }
            RtcEvent::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                if let Role::Viewer(v) = &mut peer.role {
                    v.bwe_bps = Some(estimate.as_u64());
                }
            }
            RtcEvent::IceConnectionStateChange(state) => {
                debug!(?state, "ice");
                if state == IceConnectionState::Disconnected {
                    // Consent lost; the idle timeout reaps it if it does not come back.
                    trace!("ice disconnected");
                }
            }
            RtcEvent::Connected => {
                info!("connected");
                if matches!(peer.role, Role::Viewer(_)) {
                    self.select_layer(now, id);
                }
            }
            RtcEvent::MediaEgressStats(s) => {
                let seen = peer.nacks_seen.entry((s.mid, s.rid)).or_default();
                self.stats.nacks_received += s.nacks.saturating_sub(*seen);
                *seen = s.nacks;
            }
            RtcEvent::MediaIngressStats(s) => {
                let seen = peer.nacks_seen.entry((s.mid, s.rid)).or_default();
                self.stats.nacks_sent += s.nacks.saturating_sub(*seen);
                *seen = s.nacks;
            }
            RtcEvent::StreamPaused(p) => {
                debug!(mid = %p.mid, rid = ?p.rid, paused = p.paused, "layer paused");
            }
            RtcEvent::Closed => {}
            _ => {}
        }
    }

    /// str0m negotiated a track: a publisher's becomes a source track (and
    /// is announced to mirroring engines), a viewer's an outgoing track.
    fn media_added(&mut self, now: Instant, id: PeerId, m: MediaAdded) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let v = match &mut peer.role {
            Role::Publisher(p) => {
                let rids: Vec<Option<Rid>> = match &m.simulcast {
                    Some(s) if !s.recv.is_empty() => s.recv.iter().map(|l| Some(l.rid)).collect(),
                    _ => vec![None],
                };
                debug!(mid = %m.mid, kind = ?m.kind, layers = rids.len(), "track");
                p.tracks.push(SourceTrack {
                    mid: m.mid,
                    kind: m.kind,
                    layers: rids.into_iter().map(SourceLayer::new).collect(),
                    subscribers: Vec::new(),
                });
                let kind = m.kind;
                self.announce(id);
                self.source_track_added(id, kind);
                return;
            }
            Role::Viewer(v) => v,
        };
        let mut api = peer.rtc.direct_api();
        // RTX history bounded to what a NACK can still use (a few RTTs),
        // not str0m's 3 s default: it is most of a viewer's memory.
        let ssrc = api.stream_tx_by_mid(m.mid, None).map(|s| {
            s.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, Some(RTX_RATIO_CAP));
            s.ssrc()
        });
        let Some(ssrc) = ssrc else {
            warn!(mid = %m.mid, "no send stream for viewer track");
            return;
        };
        let pts = peer
            .rtc
            .media(m.mid)
            .map(|md| md.remote_pts().to_vec())
            .unwrap_or_default();
        let negotiated: Vec<_> = peer
            .rtc
            .codec_config()
            .params()
            .iter()
            .filter(|p| pts.contains(&p.pt()))
            .cloned()
            .collect();
        let clock = if m.kind == MediaKind::Audio {
            48_000
        } else {
            90_000
        };
        let track = OutTrack {
            ssrc,
            codecs: codec_descs(&negotiated),
            pt_map: Vec::new(),
            rewriter: Rewriter::new(clock, self.rng.random()),
            vp8: Vp8Rewriter::default(),
            rebase: true,
            bitrate: RateMeter::default(),
        };
        match m.kind {
            MediaKind::Audio => v.audio = Some(track),
            MediaKind::Video => v.video = Some(track),
        }
        // str0m reports a viewer's tracks once negotiated; (re)attach so
        // the new track gets its payload type map and subscription.
        if v.source.is_some() || self.rooms.contains_key(&peer.room) {
            if let Some(pid) = v.source.take() {
                self.unsubscribe(pid, id);
            }
            self.attach_viewer(now, id);
        }
    }
}

/// Queues one of str0m's datagrams for the driver and counts it.
fn push_transmit(stats: &mut EngineStats, out: &mut VecDeque<Transmit>, t: str0m::net::Transmit) {
    stats.packets_out += 1;
    stats.bytes_out += t.contents.len() as u64;
    out.push_back(Transmit {
        source: t.source,
        destination: t.destination,
        contents: t.contents.into(),
    });
}
