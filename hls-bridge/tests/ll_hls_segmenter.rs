//! The segmenter and playlists over a realistic simulated room: three
//! H.264 simulcast layers with real SPS/PPS and Opus, keyframes only on
//! the bridge's requests, every playlist of every update checked against
//! checklist C1–C12, C16–C18.

use crate::common;

use std::time::Duration;

use common::checker;
use common::room::{Room, conformance, ladder};
use hls_bridge::{HlsConfig, playlist};

fn assert_conformant(room: &Room) {
    assert_conformant_as(room, "room");
}

fn assert_conformant_as(room: &Room, what: &str) {
    let v = conformance(&room.snapshots);
    assert!(
        v.is_empty(),
        "{what}: {} violations, first: {:#?}",
        v.len(),
        &v[..v.len().min(10)]
    );
}

#[test]
fn simulcast_room_is_conformant_and_aligned() {
    let mut room = Room::new(HlsConfig::default(), &ladder(), true);
    room.run(Duration::from_secs(40));
    assert_conformant(&room);
    let snap = room.last();
    let td = snap.config.target_duration();
    assert_eq!(td, 3);
    // Segments ~2 s, aligned across the ladder: the same MSNs start at the
    // same decode time in every video rendition.
    let starts: Vec<Vec<(u64, u64)>> = ["v0", "v1", "v2"]
        .iter()
        .map(|n| {
            snap.renditions[*n]
                .segments
                .iter()
                .map(|s| (s.msn, s.start_dts))
                .collect()
        })
        .collect();
    assert!(
        starts[0].len() >= 6,
        "window holds at least 6 segments: {}",
        starts[0].len()
    );
    assert_eq!(starts[0], starts[1]);
    assert_eq!(starts[1], starts[2]);
    for s in &snap.renditions["v2"].segments {
        assert!(
            (1.6..=2.5).contains(&s.duration),
            "segment {} lasts {}",
            s.msn,
            s.duration
        );
        assert!(s.independent && s.parts[0].independent);
    }
    // Keyframe requests: all layers at the same instant.
    let mut by_time = std::collections::BTreeMap::<Duration, usize>::new();
    for (t, _) in &room.keyframe_requests {
        *by_time.entry(*t).or_default() += 1;
    }
    let aligned = by_time.values().filter(|&&n| n == 3).count();
    assert!(aligned >= 15, "aligned requests: {by_time:?}");
    // Parts: fixed target, none longer, most at least 85%.
    for r in snap.renditions.values() {
        for s in &r.segments {
            for p in &s.parts {
                assert!(p.duration <= 0.334 + 1e-9);
            }
        }
    }
    // Per-rendition media sequence numbers, and an Opus rendition.
    assert!(snap.renditions["opus"].segments.len() >= 6);
    let text = playlist::media_playlist(snap, "v1", false, "").unwrap();
    assert!(
        text.contains("#EXT-X-RENDITION-REPORT:URI=\"../opus/index.m3u8\""),
        "{text}"
    );
    assert!(text.contains("#EXT-X-PART-INF:PART-TARGET=0.334"));
    assert!(text.contains("PART-HOLD-BACK=1.002"));
    let mv = playlist::multivariant(snap, "").unwrap();
    assert_eq!(mv.matches("#EXT-X-STREAM-INF").count(), 3, "{mv}");
    assert!(
        mv.contains("RESOLUTION=1280x720") && mv.contains("RESOLUTION=320x180"),
        "{mv}"
    );
    assert!(mv.contains("CODECS=\"avc1.42e01f,opus\""), "{mv}");
    assert!(mv.contains("FRAME-RATE=30.000"), "{mv}");
}

/// Every common camera and encoder frame rate fills its parts: a whole
/// number of frames fits in 85-100 % of the default PART-TARGET (C6).
#[test]
fn common_frame_rates_fill_the_default_parts() {
    for fps in [10, 12, 15, 24, 25, 30, 50, 60] {
        let mut room = Room::new(HlsConfig::default(), &ladder()[..1], true);
        room.layers[0].fps = fps;
        room.run(Duration::from_secs(20));
        assert_conformant_as(&room, &format!("{fps} fps"));
        assert!(room.last().renditions["v0"].segments.len() >= 6, "{fps} fps");
    }
}

#[test]
fn program_date_time_is_the_capture_time_from_sender_reports() {
    let mut room = Room::new(HlsConfig::default(), &ladder()[..1], false);
    // Reports arrive before the first frame so the mapping starts there.
    room.run(Duration::from_secs(12));
    let snap = room.last();
    let seg = &snap.renditions["v0"].segments[2];
    // Capture = WALL0 + sim time - delay; the segment starts at an IDR
    // whose RTP time maps through the SR.
    let sim = seg.program_date_time - common::room::WALL0;
    let dts_secs = (seg.start_dts as f64) / 90_000.0 - 10.0;
    assert!(
        (sim.as_secs_f64() - dts_secs).abs() < 0.001,
        "PDT follows decode time"
    );
    assert!(sim.as_secs_f64() > 3.0 && sim.as_secs_f64() < 6.0, "{sim:?}");
}

#[test]
fn resolution_change_gives_discontinuity_and_new_init() {
    let mut room = Room::new(HlsConfig::default(), &ladder()[1..2], true);
    room.run(Duration::from_secs(9));
    room.layers[0].width = 480;
    room.layers[0].height = 270;
    room.layers[0].wants_idr = true;
    room.run(Duration::from_secs(9));
    assert_conformant(&room);
    let snap = room.last();
    let r = &snap.renditions["v0"];
    assert_eq!((r.width, r.height), (480, 270));
    let text = playlist::media_playlist(snap, "v0", false, "").unwrap();
    assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "{text}");
    assert!(text.contains("#EXT-X-MAP:URI=\"init_0.mp4\"") && text.contains("#EXT-X-MAP:URI=\"init_1.mp4\""));
    let disc = r.segments.iter().find(|s| s.discontinuity).unwrap();
    assert_eq!(disc.init, 1);
    assert!(disc.independent);
    assert_eq!(room.packager.stats().discontinuities, 1);
    // The new init section describes the new size.
    let init = &r.files["init_1.mp4"];
    assert!(checker::check_init(init).is_empty());
    assert!(
        playlist::multivariant(snap, "")
            .unwrap()
            .contains("RESOLUTION=480x270")
    );
}

#[test]
fn publisher_that_stops_ends_every_playlist_cleanly() {
    let mut room = Room::new(HlsConfig::default(), &ladder(), true);
    room.run(Duration::from_secs(7));
    room.stop();
    assert_conformant(&room);
    let snap = room.last();
    assert!(snap.ended());
    for name in snap.renditions.keys() {
        let text = playlist::media_playlist(snap, name, true, "").unwrap();
        assert!(
            text.ends_with("#EXT-X-ENDLIST\n") || text.contains("#EXT-X-ENDLIST"),
            "{text}"
        );
        assert!(!text.contains("PRELOAD-HINT"));
        assert!(!text.contains("#EXT-X-SKIP"), "no delta update with ENDLIST");
        assert!(snap.renditions[name].open.is_none());
    }
}

#[test]
fn publisher_without_keyframes_produces_no_playlist() {
    let mut room = Room::new(HlsConfig::default(), &ladder()[..1], false);
    room.layers[0].never_idr = true;
    room.run(Duration::from_secs(5));
    let snap = room.packager.snapshot();
    assert!(playlist::media_playlist(&snap, "v0", false, "").is_none());
    assert!(playlist::multivariant(&snap, "").is_none());
    // It keeps asking for one.
    assert!(
        room.keyframe_requests.len() >= 8,
        "{}",
        room.keyframe_requests.len()
    );
}

#[test]
fn an_encoder_that_stops_sending_idrs_gets_forced_cuts_not_a_broken_playlist() {
    let mut room = Room::new(HlsConfig::default(), &ladder()[..1], false);
    room.run(Duration::from_secs(4));
    room.layers[0].never_idr = true;
    room.run(Duration::from_secs(12));
    assert_conformant(&room);
    assert!(room.packager.stats().forced_cuts >= 2);
}

#[test]
fn part_target_is_configurable_and_fixed() {
    for (ms, ok) in [
        (200, true),
        (1000, true),
        (500, true),
        (150, false),
        (1200, false),
    ] {
        let config = HlsConfig {
            part_target: Duration::from_millis(ms),
            ..HlsConfig::default()
        };
        assert_eq!(config.validated().is_ok(), ok, "{ms} ms");
    }
    let config = HlsConfig {
        part_target: Duration::from_millis(200),
        segment_target: Duration::from_secs(1),
        ..HlsConfig::default()
    };
    let mut room = Room::new(config, &ladder()[..2], true);
    room.run(Duration::from_secs(15));
    assert_conformant(&room);
    let text = playlist::media_playlist(room.last(), "v1", false, "").unwrap();
    assert!(
        text.contains("PART-TARGET=0.200") && text.contains("PART-HOLD-BACK=0.600"),
        "{text}"
    );
    assert!(text.contains("#EXT-X-TARGETDURATION:2"));
}

#[test]
fn dvr_window_and_delta_updates() {
    let config = HlsConfig {
        window_segments: 6,
        dvr_window: Duration::from_secs(40),
        ..HlsConfig::default()
    };
    let mut room = Room::new(config, &ladder()[..1], true);
    room.run(Duration::from_secs(70));
    assert_conformant(&room);
    let snap = room.last();
    let r = &snap.renditions["v0"];
    let total: f64 = r.segments.iter().map(|s| s.duration).sum();
    assert!((38.0..44.0).contains(&total), "DVR window {total} s");
    assert!(r.media_sequence > 5);
    let full = playlist::media_playlist(snap, "v0", false, "").unwrap();
    let delta = playlist::media_playlist(snap, "v0", true, "").unwrap();
    let (m, errs) = checker::check_media(&delta);
    assert!(errs.is_empty(), "{errs:?}");
    assert!(m.skipped >= 8, "skipped {}", m.skipped);
    assert!(
        delta.len() * 4 < full.len() * 3,
        "{} vs {}",
        delta.len(),
        full.len()
    );
    // The delta keeps exactly the tail of the full playlist.
    let (f, _) = checker::check_media(&full);
    assert_eq!(&f.segments[m.skipped as usize..], &m.segments[..]);
}

#[test]
fn dash_mpd_lists_the_same_segments() {
    let mut room = Room::new(HlsConfig::default(), &ladder(), true);
    room.run(Duration::from_secs(10));
    let snap = room.last();
    let mpd = playlist::dash_mpd(snap, "").unwrap();
    assert!(mpd.contains("type=\"dynamic\""));
    assert_eq!(mpd.matches("<Representation").count(), 4, "{mpd}");
    assert!(mpd.contains(&format!("media=\"{}/v2/seg_$Number$.m4s\"", snap.session)));
    let r = &snap.renditions["v2"];
    assert!(mpd.contains(&format!("startNumber=\"{}\"", r.segments[0].msn)));
    assert!(mpd.contains(&format!("<S t=\"{}\"", r.segments[0].start_dts)));
}

#[test]
fn timestamps_that_barely_advance_cannot_grow_a_rendition_without_bound() {
    use hls_bridge::h264::{AccessUnit, AvcConfig};
    use hls_bridge::segmenter::{MAX_PART_BYTES, MAX_SEGMENT_BYTES, MAX_WINDOW_BYTES};
    use hls_bridge::{Frame, Packager, TrackId};

    let t0 = std::time::Instant::now();
    let mut packager = Packager::new(HlsConfig::default(), 1, t0, common::room::WALL0).unwrap();
    let id = TrackId(1);
    packager.add_video(id, 0).unwrap();
    let config = AvcConfig::new(common::SPS_1080P.to_vec(), common::PPS.to_vec()).unwrap();
    // 160 frames of 1 MiB whose timestamps advance one 90 kHz tick each:
    // by the timeline, all of it is 1.8 ms, less than one part.
    let data = vec![0u8; 1 << 20];
    for n in 0..160i64 {
        let frame = Frame::Video {
            au: AccessUnit {
                timestamp: n,
                keyframe: n == 0,
                data: data.clone(),
                sps: None,
                pps: None,
            },
            new_config: (n == 0).then(|| config.clone()),
        };
        packager.push_frame(t0, id, &frame, None).unwrap();
    }
    let snapshot = packager.snapshot();
    let v0 = &snapshot.renditions["v0"];
    assert!(!v0.segments.is_empty(), "segments are published");
    for s in &v0.segments {
        assert!(
            s.size <= MAX_SEGMENT_BYTES + (1 << 20),
            "segment {} is {} bytes",
            s.msn,
            s.size
        );
        for p in &s.parts {
            assert!(
                p.size <= (MAX_PART_BYTES + (1 << 20)) as u64,
                "part of {} bytes",
                p.size
            );
        }
    }
    let window: u64 = v0.segments.iter().map(|s| s.size).sum();
    assert!(window <= MAX_WINDOW_BYTES, "the window holds {window} bytes");
    assert!(v0.media_sequence > 0, "the oldest segments were trimmed");
    assert!(packager.stats().byte_limited > 0);
}
