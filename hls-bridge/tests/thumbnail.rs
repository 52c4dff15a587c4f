//! Thumbnails: an IDR encoded by openh264 from a known picture comes back
//! out of the JPEG/PNG a browser would load with the right size and colours.

use crate::common;

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::media::{QUADRANTS, quadrant_pattern, rgb_to_picture};
use hls_bridge::h264::{AccessUnit, AvcConfig};
use hls_bridge::thumbnail::{self, ImageFormat, ThumbnailCache, ThumbnailConfig};
use hls_bridge::transcode::video::H264Encoder;

/// An IDR (with in-band SPS/PPS) and a following P frame of the quadrant
/// pattern at `width`x`height`.
fn encoded(width: usize, height: usize) -> (AvcConfig, AccessUnit, AccessUnit) {
    let picture = rgb_to_picture(&quadrant_pattern(width, height), width, height);
    let mut enc = H264Encoder::new(2_000_000, 30.0).unwrap();
    let idr = enc.encode(&picture, 90_000, true).unwrap().unwrap();
    let p = enc.encode(&picture, 93_000, false).unwrap().unwrap();
    assert!(idr.keyframe && !p.keyframe);
    let avc = AvcConfig::new(idr.sps.clone().unwrap(), idr.pps.clone().unwrap()).unwrap();
    assert_eq!((avc.width, avc.height), (width as u32, height as u32));
    (avc, idr, p)
}

/// A decoded image: width, height, interleaved RGB8.
struct Rgb(usize, usize, Vec<u8>);

/// Decodes a JPEG with zune-jpeg (the decoder of the `image` crate).
fn decode_jpeg(jpeg: &[u8]) -> Rgb {
    assert_eq!(&jpeg[..3], [0xff, 0xd8, 0xff], "JPEG SOI");
    let mut dec = zune_jpeg::JpegDecoder::new(Cursor::new(jpeg));
    let pixels = dec.decode().unwrap();
    let info = dec.info().unwrap();
    assert_eq!(
        pixels.len(),
        usize::from(info.width) * usize::from(info.height) * 3
    );
    Rgb(info.width.into(), info.height.into(), pixels)
}

fn decode_png(png: &[u8]) -> Rgb {
    let mut reader = png::Decoder::new(Cursor::new(png)).read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    Rgb(info.width as usize, info.height as usize, pixels)
}

/// The image's colour at the centre of each quadrant is the pattern's.
fn assert_quadrants(img: &Rgb) {
    let Rgb(w, h, pixels) = img;
    for (q, want) in QUADRANTS.iter().enumerate() {
        let x = w / 4 + (w / 2) * (q % 2);
        let y = h / 4 + (h / 2) * (q / 2);
        let got = &pixels[(y * w + x) * 3..(y * w + x) * 3 + 3];
        for c in 0..3 {
            assert!(
                (i32::from(got[c]) - i32::from(want[c])).abs() <= 24,
                "quadrant {q}: {got:?} vs {want:?}"
            );
        }
    }
}

#[test]
fn idr_becomes_a_jpeg_and_a_png_with_its_colours() {
    let (avc, idr, _) = encoded(320, 240);
    let config = ThumbnailConfig::default();

    let jpeg = thumbnail::render(&avc, &idr, ImageFormat::Jpeg, &config).unwrap();
    let img = decode_jpeg(&jpeg);
    assert_eq!((img.0, img.1), (320, 240));
    assert_quadrants(&img);

    let png = thumbnail::render(&avc, &idr, ImageFormat::Png, &config).unwrap();
    let img = decode_png(&png);
    assert_eq!((img.0, img.1), (320, 240));
    assert_quadrants(&img);
}

#[test]
fn wide_pictures_are_scaled_to_the_max_width() {
    let (avc, idr, _) = encoded(640, 360);
    let config = ThumbnailConfig {
        max_width: 160,
        ..Default::default()
    };
    let jpeg = thumbnail::render(&avc, &idr, ImageFormat::Jpeg, &config).unwrap();
    let img = decode_jpeg(&jpeg);
    assert_eq!((img.0, img.1), (160, 90));
    assert_quadrants(&img);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let (avc, idr, p) = encoded(64, 48);
    let config = ThumbnailConfig::default();
    assert!(thumbnail::render(&avc, &p, ImageFormat::Jpeg, &config).is_err());
    let mut broken = idr.clone();
    broken.data.truncate(broken.data.len() / 2);
    assert!(thumbnail::render(&avc, &broken, ImageFormat::Png, &config).is_err());
    let garbage = AccessUnit {
        data: vec![0, 0, 0, 5, 0x65, 0xff, 0xff, 0xff, 0xff],
        ..idr
    };
    let _ = thumbnail::render(&avc, &garbage, ImageFormat::Png, &config);
}

#[test]
fn cache_keeps_the_top_layer_and_renders_once() {
    let t0 = Instant::now();
    let (top_avc, top_idr, top_p) = encoded(320, 240);
    let (low_avc, low_idr, _) = encoded(160, 120);
    let mut cache = ThumbnailCache::new(ThumbnailConfig::default());
    assert!(cache.thumbnail(&"room", ImageFormat::Jpeg).unwrap().is_none());

    cache.handle_access_unit(t0, "room", 2, &top_avc, &top_idr);
    cache.handle_access_unit(t0, "room", 2, &top_avc, &top_p);
    cache.handle_access_unit(t0 + Duration::from_secs(1), "room", 0, &low_avc, &low_idr);
    let a = cache.thumbnail(&"room", ImageFormat::Jpeg).unwrap().unwrap();
    let b = cache.thumbnail(&"room", ImageFormat::Jpeg).unwrap().unwrap();
    assert!(Arc::ptr_eq(&a, &b), "rendered once per IDR");
    assert_eq!(decode_jpeg(&a).0, 320);

    // The top layer went quiet: a lower layer's IDR takes over.
    cache.handle_access_unit(t0 + Duration::from_secs(11), "room", 0, &low_avc, &low_idr);
    let c = cache.thumbnail(&"room", ImageFormat::Png).unwrap().unwrap();
    assert_eq!(decode_png(&c).0, 160);

    cache.remove(&"room");
    assert!(cache.thumbnail(&"room", ImageFormat::Png).unwrap().is_none());
    assert_eq!(ImageFormat::from_extension("jpg"), Some(ImageFormat::Jpeg));
    assert_eq!(ImageFormat::Png.content_type(), "image/png");
}
