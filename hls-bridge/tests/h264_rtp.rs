//! The bridge depacketizes generated H.264 RTP (RFC 6184) into access
//! units, through loss, reordering and broken FU-A fragments.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use hls_bridge::{Bridge, BridgeConfig, Frame, RtpPacket, TrackId, TrackKind};

const T: TrackId = TrackId(1);

fn bridge(now: Instant) -> Bridge {
    let mut b = Bridge::new(BridgeConfig::default());
    b.add_track(now, T, TrackKind::H264 { layer: 0 }).unwrap();
    b
}

fn feed(b: &mut Bridge, now: Instant, pkts: &[Pkt]) {
    for p in pkts {
        let _ = b.handle_rtp(
            now,
            T,
            RtpPacket {
                sequence_number: p.seq,
                timestamp: p.ts,
                marker: p.marker,
                payload: &p.payload,
            },
        );
    }
}

/// (timestamp, keyframe, data) of every frame out, in order.
fn frames(b: &mut Bridge) -> Vec<(i64, bool, Vec<u8>)> {
    std::iter::from_fn(|| b.poll_frame())
        .map(|(id, f)| {
            assert_eq!(id, T);
            match f {
                Frame::Video { au, .. } => (au.timestamp, au.keyframe, au.data),
                Frame::Audio(_) => panic!("audio on a video track"),
            }
        })
        .collect()
}

#[test]
fn clean_stream_gives_every_access_unit_with_its_timestamp() {
    let now = Instant::now();
    let mut b = bridge(now);
    let pkts = stream(10, 5, 3000, 100, 1000);
    feed(&mut b, now, &pkts);
    let out = frames(&mut b);
    assert_eq!(out.len(), 10);
    for (n, (ts, key, data)) in out.iter().enumerate() {
        assert_eq!(*ts, 1000 + 3000 * n as i64);
        assert_eq!(*key, n.is_multiple_of(5));
        assert_eq!(*data, length_prefixed(&access_unit(n, 5, 3000)));
    }
    let stats = b.stats(T).unwrap();
    assert_eq!(stats.lost_packets, 0);
    assert_eq!(stats.h264.broken_fragments, 0);
}

#[test]
fn first_frame_carries_the_config_and_codec_string() {
    let now = Instant::now();
    let mut b = bridge(now);
    feed(&mut b, now, &stream(2, 30, 500, 0, 0));
    let Some((
        _,
        Frame::Video {
            new_config: Some(c),
            au,
        },
    )) = b.poll_frame()
    else {
        panic!("no first frame with config");
    };
    assert!(au.keyframe);
    assert_eq!((c.width, c.height), (1920, 1080));
    assert_eq!(c.codec_string(), "avc1.640028");
    let Some((_, Frame::Video { new_config: None, .. })) = b.poll_frame() else {
        panic!("second frame should not repeat the config");
    };
}

#[test]
fn lost_fu_a_fragment_drops_until_the_next_idr() {
    let now = Instant::now();
    let mut b = bridge(now);
    // 3000-byte slices: 3 FU-A fragments each. GOP of 4.
    let mut pkts = stream(12, 4, 3000, 65_500, 0);
    // Lose the middle fragment of frame 5 (a P frame): packets of frame 0
    // are SPS+PPS STAP-A + 3 FU-A = 4, frames 1..3 have 3 each.
    let frame5_start = 4 + 3 * 3 + 4;
    pkts.remove(frame5_start + 1);
    feed(&mut b, now, &pkts);
    // Let the gap time out.
    b.handle_timeout(now + Duration::from_millis(100));
    let out = frames(&mut b);
    let ts: Vec<i64> = out.iter().map(|f| f.0 / 3000).collect();
    assert_eq!(ts, vec![0, 1, 2, 3, 4, 8, 9, 10, 11]);
    let stats = b.stats(T).unwrap();
    assert_eq!(stats.lost_packets, 1);
    assert!(stats.h264.broken_fragments >= 1);
    assert_eq!(stats.h264.dropped_access_units, 3);
}

#[test]
fn lost_fu_a_start_is_a_broken_fragment() {
    let now = Instant::now();
    let mut b = bridge(now);
    let mut pkts = stream(6, 3, 3000, 0, 0);
    // Frame 1's first fragment (start bit) is lost.
    pkts.remove(4);
    feed(&mut b, now, &pkts);
    b.handle_timeout(now + Duration::from_secs(1));
    let ts: Vec<i64> = frames(&mut b).iter().map(|f| f.0 / 3000).collect();
    assert_eq!(ts, vec![0, 3, 4, 5]);
    assert!(b.stats(T).unwrap().h264.broken_fragments >= 1);
}

#[test]
fn reordered_packets_within_the_window_lose_nothing() {
    let now = Instant::now();
    let mut b = bridge(now);
    let mut pkts = stream(9, 3, 3000, 65_530, u32::MAX - 6000);
    // Swap neighbours throughout, crossing the sequence and timestamp wrap.
    for i in (1..pkts.len() - 1).step_by(3) {
        pkts.swap(i, i + 1);
    }
    feed(&mut b, now, &pkts);
    let out = frames(&mut b);
    assert_eq!(out.len(), 9);
    for (n, f) in out.iter().enumerate() {
        assert_eq!(f.0, i64::from(u32::MAX - 6000) + 3000 * n as i64);
        assert_eq!(f.2, length_prefixed(&access_unit(n, 3, 3000)));
    }
    assert_eq!(b.stats(T).unwrap().lost_packets, 0);
}

#[test]
fn a_stream_that_starts_without_an_idr_is_held_back_and_asks_for_one() {
    let now = Instant::now();
    let mut b = bridge(now);
    assert_eq!(b.poll_keyframe_request(), Some(T));
    assert_eq!(b.poll_keyframe_request(), None);
    // Frames 1..4 of a GOP of 5: no IDR, no SPS.
    let pkts: Vec<Pkt> = stream(5, 5, 800, 0, 0).into_iter().skip(1).collect();
    feed(&mut b, now, &pkts);
    assert!(frames(&mut b).is_empty());
    // Still waiting: asks again after the retry interval, not before.
    b.handle_timeout(now + Duration::from_millis(100));
    assert_eq!(b.poll_keyframe_request(), None);
    b.handle_timeout(now + Duration::from_millis(500));
    assert_eq!(b.poll_keyframe_request(), Some(T));
}

#[test]
fn all_layers_are_asked_for_a_keyframe_at_the_same_instant() {
    let now = Instant::now();
    let mut b = Bridge::new(BridgeConfig::default());
    for (i, layer) in [(1, 0), (2, 1), (3, 2)] {
        b.add_track(now, TrackId(i), TrackKind::H264 { layer }).unwrap();
    }
    b.add_track(now, TrackId(9), TrackKind::Opus { stereo: true })
        .unwrap();
    while b.poll_keyframe_request().is_some() {}
    // Every layer gets going.
    for i in 1..=3 {
        for p in stream(1, 30, 500, 0, 0) {
            b.handle_rtp(
                now,
                TrackId(i),
                RtpPacket {
                    sequence_number: p.seq,
                    timestamp: p.ts,
                    marker: p.marker,
                    payload: &p.payload,
                },
            )
            .unwrap();
        }
    }
    let at = now + Duration::from_secs(2);
    assert_eq!(b.poll_timeout(), Some(at));
    b.handle_timeout(at);
    let asked: Vec<u32> = std::iter::from_fn(|| b.poll_keyframe_request())
        .map(|t| t.0)
        .collect();
    assert_eq!(asked, vec![1, 2, 3]);
    assert_eq!(b.poll_timeout(), Some(at + Duration::from_secs(2)));
}

#[test]
fn garbage_payloads_are_errors_not_panics() {
    let now = Instant::now();
    let mut b = bridge(now);
    let mut x: u32 = 0x1234_5678;
    for seq in 0..5000u16 {
        let len = (x % 40) as usize;
        let payload: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let _ = b.handle_rtp(
            now,
            T,
            RtpPacket {
                sequence_number: seq,
                timestamp: x,
                marker: x & 1 == 1,
                payload: &payload,
            },
        );
    }
    b.handle_timeout(now + Duration::from_secs(1));
    while b.poll_frame().is_some() {}
    assert!(b.stats(T).unwrap().malformed > 0);
    assert!(
        b.handle_rtp(
            now,
            TrackId(77),
            RtpPacket {
                sequence_number: 0,
                timestamp: 0,
                marker: false,
                payload: &[1]
            }
        )
        .is_err()
    );
}

#[test]
fn an_access_unit_that_never_ends_is_bounded_dropped_and_counted() {
    let now = Instant::now();
    let mut b = bridge(now);
    let mut seq = 0u16;
    let mut ts = 0u32;
    let idr = |b: &mut Bridge, seq: &mut u16, ts: &mut u32| {
        *ts += 3000;
        let pkts = packetize(&access_unit(0, 1, 1000), *ts, seq, 1200);
        feed(b, now, &pkts);
    };
    idr(&mut b, &mut seq, &mut ts);
    assert_eq!(frames(&mut b).len(), 1, "the stream plays");

    // 12,000 single-NAL packets (13 MB) with one timestamp and no marker.
    ts += 3000;
    let flood: Vec<Pkt> = (0..12_000)
        .map(|i| {
            let p = Pkt {
                seq,
                ts,
                marker: false,
                payload: slice(false, 1100, i as u8),
            };
            seq = seq.wrapping_add(1);
            p
        })
        .collect();
    feed(&mut b, now, &flood);
    let stats = b.stats(T).unwrap().h264;
    assert!(
        stats.buffered_bytes <= 8 << 20,
        "{} bytes held for one access unit",
        stats.buffered_bytes
    );
    assert_eq!(stats.oversized_access_units, 1);
    idr(&mut b, &mut seq, &mut ts);
    let out = frames(&mut b);
    assert_eq!(
        out.iter().map(|f| (f.0, f.1)).collect::<Vec<_>>(),
        vec![(i64::from(ts), true)],
        "the oversized access unit is dropped, the next IDR plays"
    );
    assert_eq!(b.stats(T).unwrap().h264.buffered_bytes, 0);

    // An FU-A reassembly that never ends: a start, then 12,000 middles.
    ts += 3000;
    let mut fu: Vec<Pkt> = Vec::new();
    for i in 0..12_001u32 {
        let header = if i == 0 { 0x80 | 1 } else { 1 };
        let mut payload = vec![0x40 | 28, header];
        payload.extend(std::iter::repeat_n(i as u8, 1100));
        fu.push(Pkt {
            seq,
            ts,
            marker: false,
            payload,
        });
        seq = seq.wrapping_add(1);
    }
    feed(&mut b, now, &fu);
    let stats = b.stats(T).unwrap().h264;
    assert!(
        stats.buffered_bytes <= 8 << 20,
        "{} bytes held for one FU-A",
        stats.buffered_bytes
    );
    assert_eq!(stats.oversized_access_units, 2);
    idr(&mut b, &mut seq, &mut ts);
    assert_eq!(frames(&mut b).len(), 1, "the next IDR plays");
}

#[test]
fn frames_nobody_polls_are_bounded_and_counted() {
    let now = Instant::now();
    let mut b = bridge(now);
    let first = stream(600, 30, 500, 0, 0);
    feed(&mut b, now, &first);
    assert_eq!(frames(&mut b).len(), hls_bridge::MAX_QUEUED_FRAMES);
    // Frame 512 found the queue full; so did the IDRs at 540 and 570, and
    // the frames between waited for them.
    assert_eq!(b.stats(T).unwrap().dropped_frames, 3);
    // Drained, the track plays again from its next IDR.
    let next = stream(60, 30, 500, first.len() as u16, 600 * 3000);
    feed(&mut b, now, &next);
    assert_eq!(frames(&mut b).len(), 60);
}
