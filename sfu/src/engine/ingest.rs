//! Ingest sources: a room's publisher fed with RTP from outside the engine
//! (an RTMP encoder, depacketized and packetized again by `crate::ingest`)
//! instead of from a peer's `Rtc`. Like a mirror it has no `Rtc`; unlike a
//! mirror it is the room's own source on its home engine, so its packets
//! take a WHIP publisher's path: the LL-HLS tap, the engines watching the
//! room, then `fan_out`. Nobody can ask it for a keyframe: the encoder sends
//! them on its own schedule (its GOP).

use std::sync::Arc;
use std::time::Instant;

use hls_bridge::SenderReport;
use relay::{MediaPacket, Message, SourceId};
use str0m::media::{MediaKind, Mid};
use tracing::{debug, info};
use wave_vocab::{Codec, CodecDesc, MediaError, RoomId, SessionId};

use super::state::{Ingest, Publisher, SourceLayer, SourceTrack};
use super::{Engine, Event, PeerId, Reply};

/// The payload types an ingest source announces (viewers map them onto
/// theirs by format, as for any publisher).
pub const INGEST_VIDEO_PT: u8 = 96;
pub const INGEST_AUDIO_PT: u8 = 111;

/// A new ingest source for [`super::Command::Ingest`].
#[derive(Debug)]
pub struct IngestOpen {
    pub room: RoomId,
    pub session: SessionId,
    pub identity: Option<String>,
}

/// One RTP packet of an ingest source: H.264 (packetization-mode 1) on
/// the video track or Opus on the audio track.
#[derive(Debug)]
pub struct IngestPacket {
    pub video: bool,
    pub packet: MediaPacket,
    /// The source's clock (capture time) for this stream, as a sender
    /// report would give it: LL-HLS dates and aligns the renditions by it.
    pub report: Option<SenderReport>,
}

/// One access unit of an ingest source whose audio is AAC: it goes to the
/// room's LL-HLS `aac` rendition unchanged (the Opus made from it goes to
/// WebRTC viewers as [`IngestPacket`]s).
#[derive(Debug, Clone)]
pub struct IngestAac {
    /// The source's AudioSpecificConfig (shared by its access units).
    pub config: Arc<[u8]>,
    /// The source's clock in ms (FLV time, or the RTSP stream's).
    pub ts_ms: u32,
    /// One raw AAC access unit.
    pub data: Vec<u8>,
    /// That clock as a sender report would give it (`rtp_time` in ms):
    /// LL-HLS dates the audio by it, as the video by its own.
    pub report: Option<SenderReport>,
}

/// What an ingest source hands its worker, in order.
#[derive(Debug)]
pub enum IngestItem {
    Rtp(IngestPacket),
    Aac(IngestAac),
}

impl From<IngestPacket> for IngestItem {
    fn from(p: IngestPacket) -> Self {
        IngestItem::Rtp(p)
    }
}

/// The H.264 format an ingest source announces: constrained baseline 3.1,
/// the one every WebRTC viewer offers, so each maps it exactly. The
/// encoder's real profile (often High) is in its SPS, which travels
/// in-band before every IDR; decoders follow the SPS, not the SDP.
const ANNOUNCED_PROFILE_LEVEL_ID: u32 = 0x42e01f;

const VIDEO: usize = 0;
const AUDIO: usize = 1;

impl Engine {
    /// Adds an ingest source as `room`'s publisher; refused when the room
    /// already has one or is homed on another engine.
    pub(super) fn add_ingest(&mut self, now: Instant, open: IngestOpen) -> Result<Reply, MediaError> {
        let IngestOpen {
            room,
            session,
            identity,
        } = open;
        if self.by_session.contains_key(&session) {
            return Err(MediaError::BadRequest("session id already in use".into()));
        }
        if let Some(r) = self.rooms.get(&room)
            && r.publishers.iter().any(|p| !self.mirrors.contains_key(p))
        {
            return Err(MediaError::Unprocessable(format!(
                "room {room} already has a publisher"
            )));
        }
        let id = PeerId(self.next_peer);
        self.next_peer += 1;
        let track = |mid: &str, kind| SourceTrack {
            mid: Mid::from(mid),
            kind,
            layers: vec![SourceLayer::new(None)],
            subscribers: Vec::new(),
        };
        let codecs = vec![
            CodecDesc {
                pt: INGEST_VIDEO_PT,
                codec: Codec::H264,
                clock_rate: 90_000,
                channels: None,
                packetization_mode: Some(1),
                profile_level_id: Some(ANNOUNCED_PROFILE_LEVEL_ID),
                profile: None,
            },
            CodecDesc {
                pt: INGEST_AUDIO_PT,
                codec: Codec::Opus,
                clock_rate: 48_000,
                channels: Some(2),
                packetization_mode: None,
                profile_level_id: None,
                profile: None,
            },
        ];
        self.ingests.insert(
            id,
            Box::new(Ingest {
                room: room.clone(),
                session: session.clone(),
                identity,
                codecs,
                publisher: Publisher {
                    tracks: vec![track("0", MediaKind::Video), track("1", MediaKind::Audio)],
                },
                aac_hls: false,
            }),
        );
        self.by_session.insert(session.clone(), id);
        self.rooms.entry(room.clone()).or_default().publishers.push(id);
        info!(%room, %session, peer = id.0, "ingest source added");
        self.announce(id);
        self.attach_waiting_viewers(now, &room);
        Ok(Reply::Done)
    }

    /// An ingest source's packets, in order: each takes a WHIP publisher's
    /// packet path (LL-HLS, watching engines, this engine's viewers); its
    /// AAC access units go to LL-HLS only.
    pub(super) fn ingest_media(
        &mut self,
        now: Instant,
        session: &SessionId,
        packets: Vec<IngestItem>,
    ) -> Result<Reply, MediaError> {
        let id = *self.by_session.get(session).ok_or(MediaError::NotFound)?;
        let Some(ingest) = self.ingests.get_mut(&id) else {
            return Err(MediaError::BadRequest("not an ingest session".into()));
        };
        // From the first AAC access unit on (it precedes the Opus made
        // from it), LL-HLS takes the source's AAC and not that Opus.
        ingest.aac_hls |= packets.iter().any(|p| matches!(p, IngestItem::Aac(_)));
        let aac_hls = ingest.aac_hls;
        for p in packets {
            let p = match p {
                IngestItem::Rtp(p) => p,
                IngestItem::Aac(aac) => {
                    self.ingest_aac_hls(now, id, &aac);
                    continue;
                }
            };
            let (ti, codec) = if p.video {
                (VIDEO, Codec::H264)
            } else {
                (AUDIO, Codec::Opus)
            };
            if p.video || !aac_hls {
                self.ingest_hls(now, id, p.video, p.report, &p.packet);
            }
            let watchers = self
                .ingests
                .get(&id)
                .and_then(|i| self.rooms.get(&i.room))
                .map(|r| &r.watchers);
            for &w in watchers.into_iter().flatten() {
                let msg = Message::Media {
                    source: SourceId(id.0),
                    track: ti as u8,
                    layer: 0,
                    codec: Some(codec),
                    packet: p.packet.clone(),
                };
                self.relays.push_back((w, msg));
            }
            self.fan_out(now, id, ti, 0, Some(codec), &p.packet);
        }
        self.last_input = now;
        Ok(Reply::Done)
    }

    /// Removes an ingest source: its viewers wait for the room's next
    /// source, watching engines drop their mirror, LL-HLS ends the stream.
    pub(super) fn remove_ingest(&mut self, now: Instant, id: PeerId, reason: &str) {
        let Some(ingest) = self.ingests.remove(&id) else {
            return;
        };
        info!(room = %ingest.room, session = %ingest.session, peer = id.0, reason, "ingest source removed");
        self.by_session.remove(&ingest.session);
        self.local_source_left(now, &ingest.room, id);
        self.remove_room_if_empty(&ingest.room);
        debug!(peer = id.0, "ingest session closed");
        self.events.push_back(Event::SessionClosed {
            session: ingest.session,
            room: ingest.room,
        });
    }
}
