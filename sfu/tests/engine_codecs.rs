//! Every video codec a publisher may negotiate reaches viewers: H.264 (with
//! simulcast switches), and VP9 and AV1 passed through.

use crate::common;

use std::time::Duration;

use common::sim::Sim;
use common::{assert_continuous, frames, of_kind};
use signaling::LayerPref;
use str0m::format::Codec;
use str0m::media::MediaKind;

/// Publishes `codec` (one layer, or three with `simulcast`), adds a viewer,
/// and checks it gets that codec from a keyframe on with nothing missing.
fn viewer_gets(codec: Codec, simulcast: bool, layer: Option<LayerPref>) -> (Sim, u32) {
    let mut sim = Sim::new();
    sim.video_codec = codec;
    sim.simulcast = simulcast;
    let _publisher = sim.publish("codecs", 9);
    sim.run(Duration::from_millis(400));
    let viewer = sim.play("codecs", layer);
    sim.run(Duration::from_secs(2));

    let got = &sim.client(viewer).received;
    let video = of_kind(got, MediaKind::Video);
    assert!(video.len() > 40, "{codec}: video packets {}", video.len());
    assert!(
        video.iter().all(|r| r.codec == Some(codec)),
        "{codec}: payload types"
    );
    assert_continuous(&video);
    assert_continuous(&of_kind(got, MediaKind::Audio));
    let f = frames(got);
    assert!(f.len() > 40, "{codec}: frames {}", f.len());
    assert!(f[0].3, "{codec}: first frame is not a keyframe: {:?}", f[0]);
    assert!(f.iter().all(|x| x.0 == 9), "{codec}: frames from the publisher");
    for w in f.windows(2) {
        assert_eq!(w[1].2, w[0].2 + 1, "{codec}: frame gap {w:?}");
    }
    (sim, viewer)
}

#[test]
fn vp9_single_layer_passes_through() {
    viewer_gets(Codec::Vp9, false, None);
}

#[test]
fn av1_single_layer_passes_through() {
    viewer_gets(Codec::Av1, false, None);
}

#[test]
fn h264_single_layer_passes_through() {
    viewer_gets(Codec::H264, false, None);
}

#[test]
fn h264_simulcast_switches_up_on_a_keyframe() {
    let (mut sim, viewer) = viewer_gets(Codec::H264, true, Some(LayerPref::Low));
    assert!(
        frames(&sim.client(viewer).received).iter().all(|f| f.1 == 0),
        "low layer only"
    );

    sim.set_layer(viewer, Some(LayerPref::High));
    sim.run(Duration::from_secs(3));

    let got = &sim.client(viewer).received;
    let f = frames(got);
    let first_high = f
        .iter()
        .position(|x| x.1 == 2)
        .expect("switched to the high layer");
    assert!(
        f[first_high].3,
        "switch landed on a non-keyframe: {:?}",
        f[first_high]
    );
    assert!(
        f[first_high..].iter().all(|x| x.1 == 2),
        "stayed on the high layer"
    );
    assert_continuous(&of_kind(got, MediaKind::Video));
}
