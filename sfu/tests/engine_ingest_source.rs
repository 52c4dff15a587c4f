//! An ingest source (an RTMP publish, fed to the engine as RTP packets)
//! reaches a room's viewers as a WHIP publisher's stream would: a viewer
//! starts on the source's current group from the keyframe cache (or,
//! without it, at the source's next keyframe), gets its audio, and the keyframe
//! requests it sends are dropped (an RTMP encoder cannot be asked for one),
//! neither looping nor counted as sent; a second source for the held room
//! is refused.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::of_kind;
use common::sim::Sim;
use relay::{Ext, MediaPacket};
use sfu::engine::{Command, INGEST_AUDIO_PT, INGEST_VIDEO_PT, IngestItem, IngestOpen, IngestPacket};
use signaling::{RoomId, SessionId};
use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, MediaKind};
use str0m::rtp::Ssrc;

#[test]
fn an_ingest_source_feeds_viewers_from_its_next_keyframe_and_drops_their_plis() {
    let mut sim = Sim::without_keyframe_cache();
    sim.video_codec = Codec::H264;
    let room = RoomId::parse("rtmp").unwrap();
    let session = SessionId::random();
    let open = IngestOpen {
        room: room.clone(),
        session: session.clone(),
        identity: Some("encoder".into()),
    };
    sim.send_command(Command::Ingest(open))
        .expect("the ingest source opens");
    let mut source = Source::default();
    // 10 frames of the first group go by before anyone watches.
    for _ in 0..10 {
        source.step(&mut sim, &session);
    }
    let viewer = sim.play("rtmp", None);
    let mut asked = 0;
    for i in 0..90 {
        source.step(&mut sim, &session);
        // The viewer asks for a keyframe every 100 ms, as a decoder that
        // waits for one does.
        if i % 3 == 0
            && let Some(ssrc) = of_kind(&sim.client(viewer).received, MediaKind::Video)
                .first()
                .map(|r| r.ssrc)
        {
            let c = sim.clients.get_mut(&viewer).unwrap();
            if let Some(s) = c.rtc.direct_api().stream_rx(&Ssrc::from(ssrc)) {
                s.request_keyframe(KeyframeRequestKind::Pli);
                asked += 1;
            }
        }
    }

    let got = &sim.client(viewer).received;
    let video = of_kind(got, MediaKind::Video);
    // Frames 10..30 of the first group are skipped: the viewer starts at
    // the second group's parameter sets (STAP-A with the SPS) and IDR.
    let first = video.first().expect("video reached the viewer");
    assert_eq!(
        first.payload[0] & 0x1f,
        24,
        "first packet is not the STAP-A: {first:?}"
    );
    assert_eq!(first.payload[3] & 0x1f, 7, "no SPS first");
    // Frames 30 to 99, one packet each but the keyframes' two (30, 60, 90).
    assert_eq!(video.len(), 70 + 3, "video packets");
    assert!(video.iter().all(|r| r.codec == Some(Codec::H264)));
    common::assert_continuous(&video);
    let audio = of_kind(got, MediaKind::Audio);
    assert!(audio.len() > 100, "audio packets: {}", audio.len());
    common::assert_continuous(&audio);
    assert!(asked > 10, "the viewer asked for {asked} keyframes");
    assert_eq!(sim.engine.stats().keyframe_requests, 0, "a PLI went somewhere");

    // The room is held: a second source is refused, the first keeps it.
    let refused = sim.send_command(Command::Ingest(IngestOpen {
        room,
        session: SessionId::random(),
        identity: None,
    }));
    assert!(refused.is_err(), "a second source took a held room");
    sim.send_command(Command::Delete { session })
        .expect("the source ends");
    assert_eq!(sim.engine.stats().publishers, 0);
}

#[test]
fn with_the_keyframe_cache_a_viewer_of_an_ingest_source_starts_on_the_current_group_at_once() {
    let mut sim = Sim::new();
    sim.video_codec = Codec::H264;
    let session = SessionId::random();
    let open = IngestOpen {
        room: RoomId::parse("rtmp-cached").unwrap(),
        session: session.clone(),
        identity: None,
    };
    sim.send_command(Command::Ingest(open))
        .expect("the ingest source opens");
    let mut source = Source::default();
    for _ in 0..10 {
        source.step(&mut sim, &session);
    }
    // Frame 10 of the group: the viewer is written frames 0..=9 at once
    // and starts on frame 0's parameter sets, not 20 frames later.
    let viewer = sim.play("rtmp-cached", None);
    sim.run(Duration::from_millis(100));
    let video = of_kind(&sim.client(viewer).received, MediaKind::Video);
    let first = video.first().expect("video at once");
    assert_eq!(first.payload[0] & 0x1f, 24, "the group's STAP-A first: {first:?}");
    assert_eq!(video.len(), 10 + 1, "frames 0..=9, the keyframe's two packets");
    common::assert_continuous(&video);
    for _ in 0..30 {
        source.step(&mut sim, &session);
    }
    let video = of_kind(&sim.client(viewer).received, MediaKind::Video);
    assert_eq!(video.len(), 40 + 2, "then live: frames 10..39");
    common::assert_continuous(&video);
    assert_eq!(sim.engine.stats().keyframe_cache_starts, 1);
}

/// A 30 fps H.264 stream with a keyframe every 30 frames and 20 ms Opus
/// frames, as `sfu::ingest` makes them.
#[derive(Default)]
struct Source {
    frame: u32,
    video_seq: u64,
    audio_seq: u64,
}

impl Source {
    /// One video frame and its 33 ms of audio, then 33 ms of simulated time.
    fn step(&mut self, sim: &mut Sim, session: &SessionId) {
        let mut packets = Vec::new();
        let ts = self.frame * 3000;
        let units: Vec<Vec<u8>> = if self.frame.is_multiple_of(30) {
            vec![vec![0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce], vec![0x65; 200]]
        } else {
            vec![vec![0x41; 150]]
        };
        let n = units.len();
        for (i, payload) in units.into_iter().enumerate() {
            packets.push(self.packet(sim, true, ts, i + 1 == n, payload));
        }
        let from = (self.frame * 33) / 20;
        let to = ((self.frame + 1) * 33) / 20;
        for k in from..to {
            packets.push(self.packet(sim, false, k * 960, false, vec![0xfc, 0xff, 0xfe]));
        }
        sim.send_command(Command::IngestMedia {
            session: session.clone(),
            packets: packets.into_iter().map(IngestItem::from).collect(),
        })
        .expect("the source's media is taken");
        self.frame += 1;
        sim.run(Duration::from_millis(33));
    }

    fn packet(
        &mut self,
        sim: &Sim,
        video: bool,
        rtp_ts: u32,
        marker: bool,
        payload: Vec<u8>,
    ) -> IngestPacket {
        let seq = if video {
            &mut self.video_seq
        } else {
            &mut self.audio_seq
        };
        *seq += 1;
        IngestPacket {
            video,
            packet: MediaPacket {
                pt: if video { INGEST_VIDEO_PT } else { INGEST_AUDIO_PT },
                seq: *seq,
                rtp_ts,
                arrival: sim.now,
                marker,
                ext: Ext::default(),
                payload: Arc::from(payload),
            },
            report: None,
        }
    }
}
