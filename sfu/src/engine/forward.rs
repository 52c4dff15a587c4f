//! The packet path: a publisher's RTP packet to the viewers of its layer
//! here, to the engines that mirror its room, and to the LL-HLS tap.

use std::time::Instant;

use relay::{MediaPacket, Message, SourceId};
use str0m::media::MediaKind;
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo};
use wave_vocab::{Codec, CodecDesc};

use super::mirror::{codec_of, extension_values, media_packet};
use super::state::Role;
use super::{Engine, PeerId};

impl Engine {
    /// One RTP packet from a publisher: fan it out to the viewers of its layer.
    pub(super) fn forward(&mut self, now: Instant, pid: PeerId, packet: RtpPacket) {
        let Some((ti, li, codec)) = self.locate(pid, &packet) else {
            return;
        };
        self.tap_hls(now, pid, ti, li, codec, &packet);
        let relay = media_packet(&packet);
        let room = self.peers.get(&pid).and_then(|peer| self.rooms.get(&peer.room));
        if let Some(room) = room {
            for &w in &room.watchers {
                let msg = Message::Media {
                    source: SourceId(pid.0),
                    track: ti as u8,
                    layer: li as u8,
                    codec,
                    packet: relay.clone(),
                };
                self.relays.push_back((w, msg));
            }
        }
        self.fan_out(now, pid, ti, li, codec, &relay);
    }

    /// The track and layer of a publisher's packet (by SSRC, learnt from
    /// str0m on the first packet of each), and its codec.
    fn locate(&mut self, pid: PeerId, packet: &RtpPacket) -> Option<(usize, usize, Option<Codec>)> {
        let peer = self.peers.get_mut(&pid)?;
        let Role::Publisher(p) = &mut peer.role else {
            return None;
        };
        let ssrc = packet.header.ssrc;
        let mut found = p.tracks.iter().enumerate().find_map(|(ti, t)| {
            t.layers
                .iter()
                .position(|l| l.ssrc == Some(ssrc))
                .map(|li| (ti, li))
        });
        if found.is_none() {
            let (mid, rid) = {
                let mut api = peer.rtc.direct_api();
                let s = api.stream_rx(&ssrc)?;
                (s.mid(), s.rid())
            };
            if let Some(ti) = p.tracks.iter().position(|t| t.mid == mid)
                && let Some(li) = p.tracks[ti]
                    .layers
                    .iter()
                    .position(|l| l.rid == rid || l.rid.is_none())
            {
                p.tracks[ti].layers[li].ssrc = Some(ssrc);
                found = Some((ti, li));
            }
        }
        let (ti, li) = found?;
        let pt = packet.header.payload_type;
        let codec = peer
            .rtc
            .codec_config()
            .params()
            .iter()
            .find(|pp| pp.pt() == pt)
            .and_then(|pp| codec_of(pp.spec().codec));
        Some((ti, li, codec))
    }

    /// Writes one packet of a source's track and layer to every viewer of
    /// it here (the source is a local publisher or a mirror).
    pub(super) fn fan_out(
        &mut self,
        now: Instant,
        pid: PeerId,
        ti: usize,
        li: usize,
        codec: Option<Codec>,
        packet: &MediaPacket,
    ) {
        let Some(track) = self.source_mut(pid).and_then(|p| p.tracks.get_mut(ti)) else {
            return;
        };
        let kind = track.kind;
        let Some(layer) = track.layers.get_mut(li) else {
            return;
        };
        layer.last_packet = Some(now);
        layer.codec = codec;
        layer.bytes_window += packet.payload.len() as u64;
        layer.window_start.get_or_insert(now);
        let keyframe = kind == MediaKind::Video && relay::starts_keyframe(codec, &packet.payload);
        if kind == MediaKind::Video {
            layer.gop.push(now, keyframe, codec, packet);
        }
        if keyframe {
            layer.keyframe_wanted = false;
            if let Some(size) = vp8_keyframe_size(codec, &packet.payload) {
                layer.size = Some(size);
            }
        }
        let subscribers = match kind {
            MediaKind::Audio => std::mem::take(&mut track.subscribers),
            MediaKind::Video => std::mem::take(&mut layer.subscribers),
        };
        let out = Outgoing {
            kind,
            layer: li,
            keyframe,
            codec,
            packet,
            ext: extension_values(&packet.ext),
        };
        let mut leave_old: Vec<(PeerId, usize)> = Vec::new();
        for &vid in &subscribers {
            self.write_to_viewer(now, vid, &out, &mut leave_old);
        }
        let Some(track) = self.source_mut(pid).and_then(|p| p.tracks.get_mut(ti)) else {
            return;
        };
        match kind {
            MediaKind::Audio => restore(&mut track.subscribers, subscribers),
            MediaKind::Video => restore(&mut track.layers[li].subscribers, subscribers),
        }
        for (vid, old) in leave_old {
            if old != li {
                track.layers[old].subscribers.retain(|x| *x != vid);
            }
        }
    }

    /// Writes a viewer that has no video yet (it just joined, or its
    /// source changed) the latest keyframe-started group of the layer it
    /// starts on, when one is usable: it starts there and then. A viewer
    /// switching layers is not: the group's older frames would take its
    /// picture back in time. `false`: not started (the caller asks for a
    /// keyframe).
    pub(super) fn start_from_gop(&mut self, now: Instant, vid: PeerId, source: PeerId, layer: usize) -> bool {
        let starting =
            matches!(self.peers.get(&vid).map(|p| &p.role), Some(Role::Viewer(v)) if v.current.is_none());
        if !self.config.keyframe_cache || !starting {
            return false;
        }
        let Some((ti, group)) = self.source(source).and_then(|p| {
            let ti = p.tracks.iter().position(|t| t.kind == MediaKind::Video)?;
            let group = p.tracks[ti].layers.get(layer)?.gop.replay(now)?.to_vec();
            Some((ti, group))
        }) else {
            return false;
        };
        let mut leave_old: Vec<(PeerId, usize)> = Vec::new();
        for (codec, packet) in &group {
            let out = Outgoing {
                kind: MediaKind::Video,
                layer,
                keyframe: relay::starts_keyframe(*codec, &packet.payload),
                codec: *codec,
                packet,
                ext: extension_values(&packet.ext),
            };
            self.write_to_viewer(now, vid, &out, &mut leave_old);
        }
        self.stats.keyframe_cache_starts += 1;
        if let Some(track) = self.source_mut(source).and_then(|p| p.tracks.get_mut(ti)) {
            for (v, old) in leave_old {
                if old != layer {
                    track.layers[old].subscribers.retain(|x| *x != v);
                }
            }
        }
        matches!(self.peers.get(&vid).map(|p| &p.role), Some(Role::Viewer(v)) if v.current == Some(layer))
    }

    /// One viewer's copy of a packet: switches the viewer to this layer at
    /// its keyframe when it waits for one (the layer it leaves goes into
    /// `leave_old`), rewrites the header, hands it to the viewer's `Rtc`.
    fn write_to_viewer(
        &mut self,
        now: Instant,
        vid: PeerId,
        o: &Outgoing<'_>,
        leave_old: &mut Vec<(PeerId, usize)>,
    ) {
        let Some(viewer) = self.peers.get_mut(&vid) else {
            return;
        };
        let Role::Viewer(v) = &mut viewer.role else {
            return;
        };
        let out = match o.kind {
            MediaKind::Audio => v.audio.as_mut(),
            MediaKind::Video => {
                if v.current != Some(o.layer) {
                    // Waiting to switch to this layer: only at its keyframe.
                    if v.target != Some(o.layer) || !o.keyframe {
                        return;
                    }
                    if let Some(old) = v.current {
                        leave_old.push((vid, old));
                        self.stats.layer_switches += 1;
                    }
                    v.current = Some(o.layer);
                    if let Some(t) = v.video.as_mut() {
                        t.rebase = true;
                    }
                }
                // else: still on this layer until the target's keyframe arrives.
                v.video.as_mut()
            }
        };
        let Some(out) = out else { return };
        let packet = o.packet;
        let Some(&(_, out_pt)) = out.pt_map.iter().find(|(i, _)| *i == packet.pt) else {
            // A video codec the viewer did not negotiate (its source sends
            // another than the one it was expected to): say so once.
            if o.kind == MediaKind::Video
                && let Some(codec) = o.codec
                && !out.codecs.iter().any(|d| d.codec == codec)
                && let Some(source) = v.source
                && v.codec_warned != Some(source)
            {
                self.codec_mismatch(vid, source, &[codec]);
            }
            return;
        };
        if out.rebase {
            out.rewriter.rebase(packet.seq, packet.rtp_ts, now);
            out.vp8.rebase();
            out.rebase = false;
        }
        let Some(rw) = out.rewriter.rewrite(packet.seq, packet.rtp_ts, now) else {
            return;
        };
        let vp8_patch = match o.codec {
            Some(Codec::Vp8) => out.vp8.rewrite(&packet.payload),
            _ => None,
        };
        out.bitrate.add(now, packet.payload.len());
        let write = RtpWrite::new(
            out_pt,
            SeqNo::from(rw.seq),
            rw.ts,
            packet.arrival,
            packet.payload.clone(),
        )
        .marker(packet.marker)
        .ext_vals(o.ext.clone())
        .nackable(o.kind == MediaKind::Video);
        let write = match vp8_patch {
            Some(p) => write.vp8_patch(p),
            None => write,
        };
        let ssrc = out.ssrc;
        let mut api = viewer.rtc.direct_api();
        let Some(stream) = api.stream_tx(&ssrc) else {
            return;
        };
        stream.write_rtp(write);
        self.stats.rtp_forwarded += 1;
        if !viewer.dirty {
            viewer.dirty = true;
            self.dirty.push(vid);
        }
    }
}

/// What every viewer's copy of one packet shares.
struct Outgoing<'a> {
    kind: MediaKind,
    layer: usize,
    keyframe: bool,
    codec: Option<Codec>,
    packet: &'a MediaPacket,
    ext: ExtensionValues,
}

fn restore(slot: &mut Vec<PeerId>, taken: Vec<PeerId>) {
    // Viewers added while the list was taken (none today: forwarding adds
    // no subscribers) are kept after the restored ones.
    let added = std::mem::replace(slot, taken);
    for id in added {
        if !slot.contains(&id) {
            slot.push(id);
        }
    }
}

/// Maps each publisher payload type to the viewer's payload type of the
/// same format, else of the same codec.
pub(super) fn map_payload_types(
    publisher: &[CodecDesc],
    viewer: &[CodecDesc],
) -> Vec<(u8, str0m::media::Pt)> {
    publisher
        .iter()
        .filter_map(|p| {
            let exact = viewer.iter().find(|v| v.same_format(p));
            let same_codec = || viewer.iter().find(|v| v.codec == p.codec);
            exact
                .or_else(same_codec)
                .map(|v| (p.pt, str0m::media::Pt::from(v.pt)))
        })
        .collect()
}

/// Width and height from a VP8 keyframe's first packet: the payload
/// descriptor (RFC 7741 §4.2), then the keyframe header (RFC 6386 §9.1).
fn vp8_keyframe_size(codec: Option<Codec>, payload: &[u8]) -> Option<(u32, u32)> {
    if codec != Some(Codec::Vp8) {
        return None;
    }
    let first = *payload.first()?;
    let mut at = 1;
    if first & 0x80 != 0 {
        let ext = *payload.get(at)?;
        at += 1;
        if ext & 0x80 != 0 {
            at += if payload.get(at)? & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            at += 1;
        }
        if ext & 0x30 != 0 {
            at += 1;
        }
    }
    let frame = payload.get(at..at + 10)?;
    if frame[0] & 0x01 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u32::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff);
    let h = u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff);
    Some((w, h))
}
