//! The hand-off to the LL-HLS room packager (`hls_bridge::room`): a
//! publisher's H.264 and Opus packets, with the sender report str0m
//! attached to each (an ingest source's, with the report its driver
//! derived from the encoder's clock), as the packager reads them; an
//! ingest source's AAC access units, passed through. The packaging
//! itself, and its codecs, live in `hls-bridge`.

use std::time::{Instant, UNIX_EPOCH};

use hls_bridge::room::{AacUnit, HlsTap, Track};
use hls_bridge::{RtpPacket as BridgeRtp, SenderReport};
use relay::MediaPacket;
use str0m::media::MediaKind;
use str0m::rtp::RtpPacket;
use wave_vocab::{Codec, RoomId};

use super::ingest::IngestAac;
use super::state::Role;
use super::{Engine, PeerId};

/// RFC 5905: NTP era 0 starts 2,208,988,800 s before the UNIX epoch.
const NTP_UNIX: u64 = 2_208_988_800;

impl Engine {
    /// Hands a publisher's packet of track `ti`, layer `li` to the LL-HLS
    /// tap when it carries H.264 video or Opus audio.
    pub(super) fn tap_hls(
        &mut self,
        now: Instant,
        pid: PeerId,
        ti: usize,
        li: usize,
        codec: Option<Codec>,
        packet: &RtpPacket,
    ) {
        let Engine {
            hls: Some(tap),
            peers,
            config,
            ..
        } = self
        else {
            return;
        };
        let Some(peer) = peers.get(&pid) else { return };
        let Role::Publisher(p) = &peer.role else { return };
        let Some(t) = p.tracks.get(ti) else { return };
        let video = match (t.kind, codec) {
            (MediaKind::Video, Some(Codec::H264)) => true,
            (MediaKind::Audio, Some(Codec::Opus)) => false,
            _ => return,
        };
        let report = packet.last_sender_info.as_ref().and_then(|sr| {
            let unix = sr.ntp_time.duration_since(UNIX_EPOCH).ok()?;
            let ntp = ((unix.as_secs() + NTP_UNIX) << 32)
                | ((u64::from(unix.subsec_nanos()) << 32) / 1_000_000_000);
            Some(SenderReport {
                ntp_time: ntp,
                rtp_time: sr.rtp_time.numer() as u32,
            })
        });
        let rtp = BridgeRtp {
            sequence_number: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            marker: packet.header.marker,
            payload: &packet.payload,
        };
        let track = Track {
            pid,
            video,
            layer: li,
            layers: t.layers.len(),
        };
        hand_over(tap, config.seed, now, &peer.room, track, report, rtp);
    }

    /// Hands an ingest source's packet (H.264 or Opus, one layer) to the
    /// LL-HLS tap.
    pub(super) fn ingest_hls(
        &mut self,
        now: Instant,
        pid: PeerId,
        video: bool,
        report: Option<SenderReport>,
        packet: &MediaPacket,
    ) {
        let Engine {
            hls: Some(tap),
            ingests,
            config,
            ..
        } = self
        else {
            return;
        };
        let Some(ingest) = ingests.get(&pid) else { return };
        let rtp = BridgeRtp {
            // RFC 3550: the 16-bit sequence number is the extended one's low bits.
            sequence_number: packet.seq as u16,
            timestamp: packet.rtp_ts,
            marker: packet.marker,
            payload: &packet.payload,
        };
        let track = Track {
            pid,
            video,
            layer: 0,
            layers: 1,
        };
        hand_over(tap, config.seed, now, &ingest.room, track, report, rtp);
    }

    /// Hands an ingest source's AAC access unit to the LL-HLS tap, which
    /// passes it through to the room's `aac` rendition.
    pub(super) fn ingest_aac_hls(&mut self, now: Instant, pid: PeerId, aac: &IngestAac) {
        let Some(tap) = &mut self.hls else { return };
        let unit = AacUnit {
            config: &aac.config,
            ts_ms: aac.ts_ms,
            data: &aac.data,
        };
        tap.handle_aac(now, pid, aac.report, unit);
    }
}

/// One packet to the room packager; `seed` (the engine's) and the source
/// seed a new room's packager.
fn hand_over(
    tap: &mut HlsTap,
    seed: u64,
    now: Instant,
    room: &RoomId,
    track: Track,
    report: Option<SenderReport>,
    rtp: BridgeRtp<'_>,
) {
    let seed = seed ^ track.pid.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    tap.handle_media(now, room, track, seed, report, rtp);
}
