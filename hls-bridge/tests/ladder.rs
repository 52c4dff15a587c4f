//! The ABR ladder: one openh264 source layer in, two smaller renditions
//! out whose pictures decode at the right size, keep moving, and start
//! with IDRs exactly where the source has them or where one was asked for.

use crate::common;

use std::io::Cursor;

use common::media::rgb_to_picture;
use hls_bridge::Frame;
use hls_bridge::fmp4::{self, TrackConfig};
use hls_bridge::h264::{AccessUnit, AvcConfig};
use hls_bridge::transcode::ladder::{Ladder, LadderConfig, RungId};
use hls_bridge::transcode::video::{H264Decoder, H264Encoder, Picture};

/// Frame `n`: dark grey with a white vertical bar at x = 8 + 8n.
fn moving_bar(n: usize, width: usize, height: usize) -> Picture {
    let bar = 8 + 8 * n;
    let mut rgb = Vec::with_capacity(width * height * 3);
    for _ in 0..height {
        for x in 0..width {
            let v = if (bar..bar + 16).contains(&x) { 235 } else { 40 };
            rgb.extend_from_slice(&[v, v, v]);
        }
    }
    rgb_to_picture(&rgb, width, height)
}

/// The bar's left edge (first bright column of the middle row), scaled
/// back to source pixels.
fn bar_position(p: &Picture, scale: usize) -> usize {
    let row = &p.y[(p.height / 2) * p.width..(p.height / 2 + 1) * p.width];
    row.iter().position(|&y| y > 140).unwrap() * scale
}

/// `frames` source access units at 30 fps, IDRs at `idrs`.
fn source(frames: usize, idrs: &[usize], width: usize, height: usize, ts0: i64) -> Vec<AccessUnit> {
    let mut enc = H264Encoder::new(1_500_000, 30.0).unwrap();
    (0..frames)
        .map(|n| {
            enc.encode(
                &moving_bar(n, width, height),
                ts0 + n as i64 * 3000,
                idrs.contains(&n),
            )
            .unwrap()
            .unwrap()
        })
        .collect()
}

struct Rendition {
    avc: Option<AvcConfig>,
    decoder: H264Decoder,
    frames: Vec<(AccessUnit, Picture)>,
}

fn run(
    ladder: &mut Ladder,
    avc: &AvcConfig,
    aus: &[AccessUnit],
    out: &mut [Rendition],
    before: impl Fn(&mut Ladder, usize),
) {
    for (n, au) in aus.iter().enumerate() {
        before(ladder, n);
        ladder.handle_access_unit(avc, au).unwrap();
        while let Some((RungId(i), frame)) = ladder.poll_frame() {
            let Frame::Video { au, new_config } = frame else {
                panic!("video only");
            };
            let r = &mut out[i];
            if let Some(config) = new_config {
                assert!(au.keyframe, "a new config comes with an IDR");
                r.avc = Some(config);
            }
            let config = r.avc.as_ref().expect("first frame carries the config");
            let picture = r
                .decoder
                .decode(&[&config.sps, &config.pps], &au)
                .unwrap()
                .expect("every rung frame decodes to a picture");
            r.frames.push((au, picture));
        }
    }
}

fn renditions(n: usize) -> Vec<Rendition> {
    (0..n)
        .map(|_| Rendition {
            avc: None,
            decoder: H264Decoder::new().unwrap(),
            frames: Vec::new(),
        })
        .collect()
}

#[test]
fn two_rungs_decode_at_their_sizes_and_follow_the_source() {
    let aus = source(30, &[0, 15], 640, 360, 1_000_000);
    let avc = AvcConfig::new(aus[0].sps.clone().unwrap(), aus[0].pps.clone().unwrap()).unwrap();
    let mut ladder = Ladder::new(LadderConfig::default()).unwrap();
    let mut out = renditions(2);
    run(&mut ladder, &avc, &aus, &mut out, |ladder, n| {
        if n == 20 {
            ladder.request_keyframe(Some(RungId(1)));
        }
    });

    for (r, (scale, size)) in out.iter().zip([(2, (320, 180)), (4, (160, 90))]) {
        let config = r.avc.as_ref().unwrap();
        assert_eq!((config.width, config.height), (size.0 as u32, size.1 as u32));
        assert!(
            config.codec_string().starts_with("avc1.42"),
            "{}",
            config.codec_string()
        );
        // The existing init segment writer takes it, and Firefox's parser reads it.
        let init = fmp4::init_segment(&TrackConfig::Avc(config.clone())).unwrap();
        let ctx = mp4parse::read_mp4(&mut Cursor::new(&init)).unwrap();
        assert_eq!(ctx.tracks.len(), 1);

        assert_eq!(r.frames.len(), 30, "one rung picture per source picture");
        let mut last = None;
        for (n, (au, picture)) in r.frames.iter().enumerate() {
            assert_eq!((picture.width, picture.height), size);
            assert_eq!(au.timestamp, 1_000_000 + n as i64 * 3000);
            let x = bar_position(picture, scale);
            assert!(x.abs_diff(8 + 8 * n) <= 2 * scale, "frame {n}: bar at {x}");
            assert!(last.is_none_or(|l| x > l), "pictures advance");
            last = Some(x);
        }
    }
    let keyframes = |r: &Rendition| -> Vec<usize> {
        r.frames
            .iter()
            .enumerate()
            .filter(|(_, (au, _))| au.keyframe)
            .map(|(n, _)| n)
            .collect()
    };
    assert_eq!(keyframes(&out[0]), [0, 15]);
    assert_eq!(keyframes(&out[1]), [0, 15, 20]);
    assert_eq!(ladder.stats().encoded, 60);
}

#[test]
fn a_new_source_size_gives_new_configs() {
    let mut ladder = Ladder::new(LadderConfig::default()).unwrap();
    let mut out = renditions(2);
    let first = source(3, &[0], 640, 360, 0);
    let avc = AvcConfig::new(first[0].sps.clone().unwrap(), first[0].pps.clone().unwrap()).unwrap();
    run(&mut ladder, &avc, &first, &mut out, |_, _| {});
    let second = source(3, &[0], 320, 240, 9000);
    let avc = AvcConfig::new(second[0].sps.clone().unwrap(), second[0].pps.clone().unwrap()).unwrap();
    run(&mut ladder, &avc, &second, &mut out, |_, _| {});
    let sizes: Vec<_> = out[0].frames.iter().map(|(_, p)| (p.width, p.height)).collect();
    assert_eq!(
        sizes,
        [
            (320, 180),
            (320, 180),
            (320, 180),
            (160, 120),
            (160, 120),
            (160, 120)
        ]
    );
    assert!(out[0].frames[3].0.keyframe);
    let low = out[1].avc.as_ref().unwrap();
    assert_eq!((low.width, low.height), (80, 60));
}

#[test]
fn broken_source_is_dropped_until_the_next_idr() {
    let aus = source(6, &[0, 4], 320, 240, 0);
    let avc = AvcConfig::new(aus[0].sps.clone().unwrap(), aus[0].pps.clone().unwrap()).unwrap();
    let mut ladder = Ladder::new(LadderConfig::default()).unwrap();
    // Starts mid-GOP: nothing until the IDR.
    ladder.handle_access_unit(&avc, &aus[1]).unwrap();
    assert!(ladder.poll_frame().is_none());
    // Garbage framing is an error, not a panic.
    let garbage = AccessUnit {
        data: vec![0, 0, 0, 99, 0x65],
        ..aus[0].clone()
    };
    assert!(ladder.handle_access_unit(&avc, &garbage).is_err());
    for au in &aus[2..] {
        ladder.handle_access_unit(&avc, au).unwrap();
    }
    let frames: Vec<_> = std::iter::from_fn(|| ladder.poll_frame()).collect();
    // Frames 2 and 3 wait for the IDR at 4; 4 and 5 go out on both rungs.
    assert_eq!(frames.len(), 4);
    assert_eq!(ladder.stats().dropped, 4);
}
