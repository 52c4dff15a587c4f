//! A room's viewers on another engine (another worker) are fed from the
//! room's home engine through relays: a mirror of the publisher forwards to
//! them with the same rewrite and keyframe-aligned switches as a local
//! publisher, keyframe requests go back to the home, and mirrors come and
//! go with the viewers and publishers.

use crate::common;

use std::time::Duration;

use common::sim::Sim;
use common::{assert_continuous, assert_every_frame, assert_vp8_continuous, frames, layers_seen, of_kind};
use signaling::LayerPref;
use str0m::media::MediaKind;

#[test]
fn a_viewer_on_a_second_engine_gets_every_packet_and_switches_on_keyframes() {
    let mut sim = Sim::with_second_engine();
    let p = sim.publish("spread", 1);
    sim.run(Duration::from_millis(500));
    let local = sim.play("spread", Some(LayerPref::Low));
    let remote = sim.play_on_second("spread", Some(LayerPref::Low));
    sim.run(Duration::from_secs(2));
    let asked_before = sim.client(p).keyframe_requests.len();

    sim.set_layer(remote, Some(LayerPref::High));
    sim.run(Duration::from_secs(2));
    sim.set_layer(remote, Some(LayerPref::Mid));
    sim.run(Duration::from_secs(2));
    sim.set_layer(remote, Some(LayerPref::Low));
    sim.run(Duration::from_secs(2));

    let got = &sim.client(remote).received;
    let f = frames(got);
    assert_eq!(layers_seen(&f), vec![0, 2, 1, 0]);
    assert_every_frame(&f);
    assert_continuous(&of_kind(got, MediaKind::Video));
    assert_continuous(&of_kind(got, MediaKind::Audio));
    assert_vp8_continuous(got);
    // The remote viewer's switches asked the publisher for keyframes through the home.
    assert!(sim.client(p).keyframe_requests.len() > asked_before);
    assert!(sim.relayed.0 > 500, "media handed over: {:?}", sim.relayed);
    assert!(
        sim.relayed.1 >= 4,
        "watch and keyframe requests went back: {:?}",
        sim.relayed
    );

    // The local viewer is untouched by the remote one's switches, and both
    // got the same audio.
    let lf = frames(&sim.client(local).received);
    assert_eq!(layers_seen(&lf), vec![0]);
    assert_every_frame(&lf);
    let audio = |c| of_kind(&sim.client(c).received, MediaKind::Audio).len() as i64;
    assert!(
        (audio(local) - audio(remote)).abs() <= 2,
        "{} vs {}",
        audio(local),
        audio(remote)
    );

    // Each viewer is counted once, the room once (on its home).
    let (home, second) = (sim.engine.stats(), sim.second.as_ref().unwrap().stats());
    assert_eq!((home.rooms, home.publishers, home.viewers), (1, 1, 1));
    assert_eq!((second.rooms, second.publishers, second.viewers), (0, 0, 1));
    assert!(second.rtp_forwarded > 0);
}

#[test]
fn mirrors_follow_publisher_reconnects_and_end_with_the_last_viewer() {
    let mut sim = Sim::with_second_engine();
    // The viewer arrives first: it waits for a publisher like a local one.
    let remote = sim.play_on_second("m", None);
    sim.run(Duration::from_millis(300));
    let first = sim.publish("m", 1);
    sim.run(Duration::from_secs(2));
    sim.delete(first);
    sim.run(Duration::from_millis(700));
    let _second = sim.publish("m", 2);
    sim.run(Duration::from_secs(2));

    let got = &sim.client(remote).received;
    let tags: Vec<u8> = frames(got).iter().map(|x| x.0).collect();
    let switch = tags
        .iter()
        .position(|t| *t == 2)
        .expect("frames from the new publisher");
    assert!(switch > 0, "frames from the first publisher");
    assert!(tags[..switch].iter().all(|t| *t == 1) && tags[switch..].iter().all(|t| *t == 2));
    assert_continuous(&of_kind(got, MediaKind::Video));
    assert_continuous(&of_kind(got, MediaKind::Audio));

    // The last remote viewer leaves: the mirror room ends and the home
    // stops handing packets over.
    sim.delete(remote);
    sim.run(Duration::from_millis(100));
    let handed = sim.relayed.0;
    sim.run(Duration::from_secs(1));
    assert_eq!(
        sim.relayed.0, handed,
        "no relay after the last remote viewer left"
    );
    let second = sim.second.as_ref().unwrap();
    assert_eq!((second.stats().rooms, second.stats().viewers), (0, 0));
    assert_eq!(second.peer_count(), 0);
}

#[test]
fn the_home_room_ends_once_its_publisher_and_remote_viewers_are_gone() {
    let mut sim = Sim::with_second_engine();
    let p = sim.publish("end", 1);
    let remote = sim.play_on_second("end", None);
    sim.run(Duration::from_secs(1));
    assert!(!sim.client(remote).received.is_empty());
    sim.delete(p);
    sim.run(Duration::from_millis(100));
    // Still watched: the room waits on its home for a publisher.
    assert_eq!(sim.engine.stats().rooms, 1);
    sim.delete(remote);
    sim.run(Duration::from_millis(100));
    assert_eq!(sim.engine.stats().rooms, 0);
    assert_eq!(sim.engine.peer_count(), 0);
}
