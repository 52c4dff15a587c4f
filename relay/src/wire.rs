//! The byte encoding of [`Message`]: what a network transport carries, one
//! message per frame (the transport delimits frames). Big-endian integers,
//! strings as a length byte and UTF-8, the media payload as the frame's
//! rest. Decoding checks every length and count against the bounds below
//! and returns a [`DecodeError`] for anything else: a hostile peer gets its
//! frame refused, never a panic or an unbounded allocation.

use std::sync::Arc;
use std::time::Instant;

use wave_vocab::{Codec, CodecDesc, MediaKind, RoomId, SessionId};

use crate::message::{Ext, MediaPacket, Message, SourceId, TrackDesc};

/// The encoding's version, the first byte of every frame.
pub const VERSION: u8 = 3;
/// A frame longer than this is refused (a media packet is at most a
/// datagram; announcements are a few hundred bytes).
pub const MAX_FRAME: usize = 16 * 1024;
/// Bounds of an announcement.
pub const MAX_CODECS: usize = 32;
pub const MAX_TRACKS: usize = 8;
pub const MAX_LAYERS: usize = 4;
pub const MAX_IDENTITY: usize = 255;
pub const MAX_TAG: usize = 32;

const WATCH: u8 = 1;
const SOURCE: u8 = 2;
const SOURCE_GONE: u8 = 3;
const MEDIA: u8 = 4;
const KEYFRAME: u8 = 5;
const DEMAND: u8 = 6;
const LAYERS: u8 = 7;
const NACK: u8 = 8;
const HOPS: u8 = 9;
/// Sequence numbers one `Nack` names at most.
pub const MAX_NACK: usize = 64;
/// Nodes one `Hops` names at most: a relay tree deeper than this is refused.
pub const MAX_HOPS: usize = 16;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame ends inside {0}")]
    Truncated(&'static str),
    #[error("frame of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("unknown version {0}")]
    Version(u8),
    #[error("unknown message type {0}")]
    Type(u8),
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("{0} over its bound")]
    TooMany(&'static str),
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// Appends `msg`'s frame to `out`. A message the decoder would refuse
/// (too many tracks, a too long identity) is cut to the bounds: the
/// engine never builds one, and the receiver must never see one.
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    out.push(VERSION);
    match msg {
        Message::Watch {
            room,
            origin,
            watching,
        } => {
            out.push(WATCH);
            put_str(out, room.as_str());
            out.extend_from_slice(&origin.to_be_bytes());
            out.push(u8::from(*watching));
        }
        Message::Source {
            room,
            origin,
            source,
            session,
            identity,
            codecs,
            tracks,
        } => {
            out.push(SOURCE);
            put_str(out, room.as_str());
            out.extend_from_slice(&origin.to_be_bytes());
            out.extend_from_slice(&source.0.to_be_bytes());
            put_str(out, session.as_str());
            match identity {
                Some(id) => {
                    out.push(1);
                    put_str(out, id);
                }
                None => out.push(0),
            }
            let codecs = &codecs[..codecs.len().min(MAX_CODECS)];
            out.push(codecs.len() as u8);
            for c in codecs {
                put_codec(out, c);
            }
            let tracks = &tracks[..tracks.len().min(MAX_TRACKS)];
            out.push(tracks.len() as u8);
            for t in tracks {
                put_str(out, &t.mid);
                out.push(kind_byte(t.kind));
                let rids = &t.rids[..t.rids.len().min(MAX_LAYERS)];
                out.push(rids.len() as u8);
                for rid in rids {
                    put_str(out, rid.as_deref().unwrap_or(""));
                }
            }
        }
        Message::SourceGone { room, source } => {
            out.push(SOURCE_GONE);
            put_str(out, room.as_str());
            out.extend_from_slice(&source.0.to_be_bytes());
        }
        Message::Media {
            source,
            track,
            layer,
            codec,
            packet,
        } => {
            out.push(MEDIA);
            // The sender's residence time, stamped by the transport
            // ([`stamp_residence`]) as the frame leaves.
            out.extend_from_slice(&0u32.to_be_bytes());
            out.extend_from_slice(&source.0.to_be_bytes());
            out.extend_from_slice(&[*track, *layer, codec.map_or(0, codec_byte), packet.pt]);
            out.extend_from_slice(&packet.seq.to_be_bytes());
            out.extend_from_slice(&packet.rtp_ts.to_be_bytes());
            let e = &packet.ext;
            let flags = u8::from(packet.marker)
                | u8::from(e.audio_level.is_some()) << 1
                | u8::from(e.voice_activity.is_some()) << 2
                | u8::from(e.voice_activity == Some(true)) << 3
                | u8::from(e.video_orientation.is_some()) << 4;
            out.push(flags);
            out.push(e.audio_level.unwrap_or(0) as u8);
            out.push(e.video_orientation.unwrap_or(0));
            out.extend_from_slice(&packet.payload);
        }
        Message::Keyframe { source, layer } => {
            out.push(KEYFRAME);
            out.extend_from_slice(&source.0.to_be_bytes());
            out.push(*layer);
        }
        Message::Layers { source, track, rates } => {
            out.push(LAYERS);
            out.extend_from_slice(&source.0.to_be_bytes());
            out.push(*track);
            let rates = &rates[..rates.len().min(MAX_LAYERS)];
            out.push(rates.len() as u8);
            for r in rates {
                match r {
                    Some(bps) => {
                        out.push(1);
                        out.extend_from_slice(&bps.to_be_bytes());
                    }
                    None => out.push(0),
                }
            }
        }
        Message::Nack {
            source,
            track,
            layer,
            seqs,
        } => {
            out.push(NACK);
            out.extend_from_slice(&source.0.to_be_bytes());
            out.push(*track);
            out.push(*layer);
            let seqs = &seqs[..seqs.len().min(MAX_NACK)];
            out.push(seqs.len() as u8);
            for s in seqs {
                out.extend_from_slice(&s.to_be_bytes());
            }
        }
        Message::Demand {
            source,
            track,
            layer,
            wanted,
        } => {
            out.push(DEMAND);
            out.extend_from_slice(&source.0.to_be_bytes());
            out.push(*track);
            out.push(*layer);
            out.push(u8::from(*wanted));
        }
        Message::Hops { room, origin, hops } => {
            out.push(HOPS);
            put_str(out, room.as_str());
            out.extend_from_slice(&origin.to_be_bytes());
            let hops = &hops[..hops.len().min(MAX_HOPS)];
            out.push(hops.len() as u8);
            for h in hops {
                out.extend_from_slice(&h.to_be_bytes());
            }
        }
    }
}

/// Where a media frame holds its sender's residence time.
const RESIDENCE: std::ops::Range<usize> = 2..6;

/// Writes into an encoded media frame how long its packet stayed at the
/// sender (µs, from its arrival there to now); other frames are left alone.
pub fn stamp_residence(frame: &mut [u8], us: u32) {
    if frame.get(1) == Some(&MEDIA)
        && let Some(field) = frame.get_mut(RESIDENCE)
    {
        field.copy_from_slice(&us.to_be_bytes());
    }
}

/// The residence time a media frame's sender stamped, µs (`None`: not a media frame).
pub fn residence(frame: &[u8]) -> Option<u32> {
    if frame.first() != Some(&VERSION) || frame.get(1) != Some(&MEDIA) {
        return None;
    }
    let b = frame.get(RESIDENCE)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads one frame; `now` becomes a media packet's arrival time.
pub fn decode(frame: &[u8], now: Instant) -> Result<Message, DecodeError> {
    if frame.len() > MAX_FRAME {
        return Err(DecodeError::TooLong(frame.len()));
    }
    let mut r = Reader(frame);
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let msg = match r.u8("type")? {
        WATCH => Message::Watch {
            room: r.room()?,
            origin: r.u64("origin")?,
            watching: r.bool("watching")?,
        },
        SOURCE => {
            let room = r.room()?;
            let origin = r.u64("origin")?;
            let source = SourceId(r.u64("source")?);
            let session = SessionId::parse(r.str("session", 32)?).ok_or(DecodeError::Invalid("session"))?;
            let identity = match r.bool("identity flag")? {
                true => Some(r.str("identity", MAX_IDENTITY)?.to_owned()),
                false => None,
            };
            let n = r.count("codecs", MAX_CODECS)?;
            let codecs = (0..n).map(|_| r.codec_desc()).collect::<Result<_, _>>()?;
            let n = r.count("tracks", MAX_TRACKS)?;
            let mut tracks = Vec::with_capacity(n);
            for _ in 0..n {
                let mid = r.str("mid", MAX_TAG)?.to_owned();
                let kind = match r.u8("kind")? {
                    0 => MediaKind::Audio,
                    1 => MediaKind::Video,
                    _ => return Err(DecodeError::Invalid("kind")),
                };
                let layers = r.count("layers", MAX_LAYERS)?;
                let rids = (0..layers)
                    .map(|_| {
                        r.str("rid", MAX_TAG)
                            .map(|s| (!s.is_empty()).then(|| s.to_owned()))
                    })
                    .collect::<Result<_, _>>()?;
                tracks.push(TrackDesc { mid, kind, rids });
            }
            Message::Source {
                room,
                origin,
                source,
                session,
                identity,
                codecs,
                tracks,
            }
        }
        SOURCE_GONE => Message::SourceGone {
            room: r.room()?,
            source: SourceId(r.u64("source")?),
        },
        MEDIA => {
            let _residence = r.u32("residence")?;
            let source = SourceId(r.u64("source")?);
            let track = r.u8("track")?;
            let layer = r.u8("layer")?;
            let codec = match r.u8("codec")? {
                0 => None,
                b => Some(codec_of(b)?),
            };
            let pt = r.u8("payload type")?;
            let seq = r.u64("sequence number")?;
            let rtp_ts = r.u32("timestamp")?;
            let flags = r.u8("flags")?;
            let level = r.u8("audio level")? as i8;
            let orientation = r.u8("orientation")?;
            if flags & 0xe0 != 0 || orientation > 3 || level > 0 {
                return Err(DecodeError::Invalid("media header"));
            }
            let ext = Ext {
                audio_level: (flags & 2 != 0).then_some(level),
                voice_activity: (flags & 4 != 0).then_some(flags & 8 != 0),
                video_orientation: (flags & 16 != 0).then_some(orientation),
            };
            let payload: Arc<[u8]> = r.rest().into();
            Message::Media {
                source,
                track,
                layer,
                codec,
                packet: MediaPacket {
                    pt,
                    seq,
                    rtp_ts,
                    arrival: now,
                    marker: flags & 1 != 0,
                    ext,
                    payload,
                },
            }
        }
        KEYFRAME => Message::Keyframe {
            source: SourceId(r.u64("source")?),
            layer: r.u8("layer")?,
        },
        LAYERS => {
            let source = SourceId(r.u64("source")?);
            let track = r.u8("track")?;
            let n = usize::from(r.u8("layer count")?);
            if n > MAX_LAYERS {
                return Err(DecodeError::TooMany("layers"));
            }
            let mut rates = Vec::with_capacity(n);
            for _ in 0..n {
                rates.push(match r.u8("layer flag")? {
                    0 => None,
                    1 => Some(r.u64("bitrate")?),
                    _ => return Err(DecodeError::Invalid("layer flag")),
                });
            }
            Message::Layers { source, track, rates }
        }
        NACK => {
            let source = SourceId(r.u64("source")?);
            let track = r.u8("track")?;
            let layer = r.u8("layer")?;
            let n = usize::from(r.u8("nack count")?);
            if n > MAX_NACK {
                return Err(DecodeError::TooMany("nacked packets"));
            }
            let mut seqs = Vec::with_capacity(n);
            for _ in 0..n {
                seqs.push(r.u64("seq")?);
            }
            Message::Nack {
                source,
                track,
                layer,
                seqs,
            }
        }
        DEMAND => Message::Demand {
            source: SourceId(r.u64("source")?),
            track: r.u8("track")?,
            layer: r.u8("layer")?,
            wanted: match r.u8("wanted")? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::Invalid("wanted")),
            },
        },
        HOPS => {
            let room = r.room()?;
            let origin = r.u64("origin")?;
            let n = usize::from(r.u8("hop count")?);
            if n > MAX_HOPS {
                return Err(DecodeError::TooMany("hops"));
            }
            let mut hops = Vec::with_capacity(n);
            for _ in 0..n {
                hops.push(r.u64("hop")?);
            }
            Message::Hops { room, origin, hops }
        }
        t => return Err(DecodeError::Type(t)),
    };
    match r.0.len() {
        0 => Ok(msg),
        n => Err(DecodeError::Trailing(n)),
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Strings are bounded by their types (ids, mids, rids) or cut here at a
    // character boundary (an identity).
    let mut end = s.len().min(usize::from(u8::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn put_codec(out: &mut Vec<u8>, c: &CodecDesc) {
    out.extend_from_slice(&[c.pt, codec_byte(c.codec)]);
    out.extend_from_slice(&c.clock_rate.to_be_bytes());
    let present = u8::from(c.channels.is_some())
        | u8::from(c.packetization_mode.is_some()) << 1
        | u8::from(c.profile_level_id.is_some()) << 2
        | u8::from(c.profile.is_some()) << 3;
    out.push(present);
    out.push(c.channels.unwrap_or(0));
    out.push(c.packetization_mode.unwrap_or(0));
    out.extend_from_slice(&c.profile_level_id.unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&c.profile.unwrap_or(0).to_be_bytes());
}

fn codec_byte(c: Codec) -> u8 {
    Codec::ALL.iter().position(|&x| x == c).map_or(0, |i| i as u8 + 1)
}

fn codec_of(b: u8) -> Result<Codec, DecodeError> {
    usize::from(b)
        .checked_sub(1)
        .and_then(|i| Codec::ALL.get(i).copied())
        .ok_or(DecodeError::Invalid("codec"))
}

fn kind_byte(k: MediaKind) -> u8 {
    match k {
        MediaKind::Audio => 0,
        MediaKind::Video => 1,
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid(what)),
        }
    }

    fn count(&mut self, what: &'static str, max: usize) -> Result<usize, DecodeError> {
        let n = usize::from(self.u8(what)?);
        if n > max {
            return Err(DecodeError::TooMany(what));
        }
        Ok(n)
    }

    fn str(&mut self, what: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        let n = self.count(what, max)?;
        std::str::from_utf8(self.take(n, what)?).map_err(|_| DecodeError::Invalid(what))
    }

    fn room(&mut self) -> Result<RoomId, DecodeError> {
        RoomId::parse(self.str("room", 64)?).ok_or(DecodeError::Invalid("room"))
    }

    fn codec_desc(&mut self) -> Result<CodecDesc, DecodeError> {
        let pt = self.u8("payload type")?;
        let codec = codec_of(self.u8("codec")?)?;
        let clock_rate = self.u32("clock rate")?;
        let present = self.u8("codec fields")?;
        let channels = self.u8("channels")?;
        let packetization_mode = self.u8("packetization mode")?;
        let profile_level_id = self.u32("profile-level-id")?;
        let profile = self.u32("profile")?;
        if present & 0xf0 != 0 {
            return Err(DecodeError::Invalid("codec fields"));
        }
        Ok(CodecDesc {
            pt,
            codec,
            clock_rate,
            channels: (present & 1 != 0).then_some(channels),
            packetization_mode: (present & 2 != 0).then_some(packetization_mode),
            profile_level_id: (present & 4 != 0).then_some(profile_level_id),
            profile: (present & 8 != 0).then_some(profile),
        })
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> RoomId {
        RoomId::parse("stage").unwrap()
    }

    fn messages(now: Instant) -> Vec<Message> {
        vec![
            Message::Watch {
                room: room(),
                origin: 0xfeed_0000_0000_0001,
                watching: true,
            },
            Message::Source {
                room: room(),
                origin: 0xfeed_0000_0000_0001,
                source: SourceId(7),
                session: SessionId::parse("0123456789abcdef0123456789abcdef").unwrap(),
                identity: Some("alice é".into()),
                codecs: vec![
                    CodecDesc {
                        pt: 111,
                        codec: Codec::Opus,
                        clock_rate: 48_000,
                        channels: Some(2),
                        packetization_mode: None,
                        profile_level_id: None,
                        profile: None,
                    },
                    CodecDesc {
                        pt: 102,
                        codec: Codec::H264,
                        clock_rate: 90_000,
                        channels: None,
                        packetization_mode: Some(1),
                        profile_level_id: Some(0x42e01f),
                        profile: None,
                    },
                ],
                tracks: vec![
                    TrackDesc {
                        mid: "0".into(),
                        kind: MediaKind::Audio,
                        rids: vec![None],
                    },
                    TrackDesc {
                        mid: "1".into(),
                        kind: MediaKind::Video,
                        rids: vec![Some("q".into()), Some("h".into()), Some("f".into())],
                    },
                ],
            },
            Message::SourceGone {
                room: room(),
                source: SourceId(7),
            },
            Message::Media {
                source: SourceId(u64::MAX),
                track: 1,
                layer: 2,
                codec: Some(Codec::H264),
                packet: MediaPacket {
                    pt: 102,
                    seq: 70_000,
                    rtp_ts: 0xdead_beef,
                    arrival: now,
                    marker: true,
                    ext: Ext {
                        audio_level: Some(-30),
                        voice_activity: Some(false),
                        video_orientation: Some(3),
                    },
                    payload: vec![0x7c, 0x85, 1, 2, 3].into(),
                },
            },
            Message::Keyframe {
                source: SourceId(7),
                layer: 2,
            },
            Message::Demand {
                source: SourceId(1 << 48 | 7),
                track: 1,
                layer: 2,
                wanted: true,
            },
            Message::Layers {
                source: SourceId(9),
                track: 1,
                rates: vec![Some(150_000), None, Some(2_500_000)],
            },
            Message::Nack {
                source: SourceId(1 << 48 | 3),
                track: 1,
                layer: 0,
                seqs: vec![70_001, 70_003],
            },
            Message::Hops {
                room: room(),
                origin: 5,
                hops: vec![u64::MAX, 3],
            },
        ]
    }

    fn bytes(m: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        encode(m, &mut out);
        out
    }

    #[test]
    fn every_message_round_trips() {
        let now = Instant::now();
        for m in messages(now) {
            let frame = bytes(&m);
            let back = decode(&frame, now).unwrap_or_else(|e| panic!("{m:?}: {e}"));
            // Same message, same bytes: the encoding is canonical.
            assert_eq!(bytes(&back), frame, "{m:?}");
            assert_eq!(format!("{back:?}"), format!("{m:?}"));
        }
    }

    #[test]
    fn a_stamped_residence_reads_back_and_leaves_the_message_alone() {
        let now = Instant::now();
        for m in messages(now) {
            let mut frame = bytes(&m);
            stamp_residence(&mut frame, 1234);
            match m {
                Message::Media { .. } => assert_eq!(residence(&frame), Some(1234)),
                _ => assert_eq!(frame, bytes(&m), "only media frames are stamped"),
            }
            let back = decode(&frame, now).unwrap();
            assert_eq!(format!("{back:?}"), format!("{m:?}"));
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let now = Instant::now();
        for m in messages(now) {
            let frame = bytes(&m);
            // A media frame's payload is its rest: any cut inside the
            // header is refused, a cut in the payload is a shorter payload.
            let header = match m {
                Message::Media { .. } => frame.len() - 5,
                _ => frame.len(),
            };
            for cut in 0..header {
                assert!(decode(&frame[..cut], now).is_err(), "{m:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn hostile_frames_are_refused_not_trusted() {
        let now = Instant::now();
        assert_eq!(
            decode(&vec![VERSION; MAX_FRAME + 1], now).unwrap_err(),
            DecodeError::TooLong(MAX_FRAME + 1)
        );
        assert_eq!(decode(&[9, WATCH], now).unwrap_err(), DecodeError::Version(9));
        assert_eq!(decode(&[VERSION, 77], now).unwrap_err(), DecodeError::Type(77));
        // A room name that is not a room name.
        assert_eq!(
            decode(&[VERSION, WATCH, 3, b'a', b'/', b'b', 1], now).unwrap_err(),
            DecodeError::Invalid("room")
        );
        // A count over its bound.
        let mut frame = bytes(&messages(now)[1]);
        let codecs_at = 2 + 6 + 8 + 8 + 33 + 1 + 9;
        assert_eq!(frame[codecs_at], 2);
        frame[codecs_at] = MAX_CODECS as u8 + 1;
        assert_eq!(decode(&frame, now).unwrap_err(), DecodeError::TooMany("codecs"));
        // Trailing bytes after a complete message.
        let mut frame = bytes(&messages(now)[0]);
        frame.push(0);
        assert_eq!(decode(&frame, now).unwrap_err(), DecodeError::Trailing(1));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator: every frame of a few bytes of a
        // prefix that reaches each message type's decoder.
        let now = Instant::now();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for n in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 96) as usize;
            let mut frame: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8 ^ i as u8).collect();
            if let Some(b) = frame.first_mut() {
                *b = VERSION;
            }
            if let Some(b) = frame.get_mut(1) {
                *b = (n % 6) as u8;
            }
            let _ = decode(&frame, now);
        }
    }
}
