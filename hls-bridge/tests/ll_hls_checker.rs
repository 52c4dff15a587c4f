//! The conformance checker catches violations: each test breaks one rule
//! in an otherwise valid playlist (or file) from a simulated room and
//! expects the checklist item in the checker's answer.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::checker::{self, Media, Reloads};
use common::room::{Room, ladder};
use hls_bridge::{HlsConfig, RoomSnapshot, playlist};

fn snapshot() -> RoomSnapshot {
    let mut room = Room::new(HlsConfig::default(), &ladder()[..2], true);
    room.run(Duration::from_secs(9));
    room.last().clone()
}

fn media(snap: &RoomSnapshot, name: &str) -> String {
    playlist::media_playlist(snap, name, false, "").unwrap()
}

fn flags(text: &str, code: &str) {
    let (_, v) = checker::check_media(text);
    assert!(
        v.iter().any(|e| e.starts_with(code)),
        "expected {code}, got {v:?}\n{text}"
    );
}

#[test]
fn the_valid_playlist_passes() {
    let snap = snapshot();
    for name in snap.renditions.keys() {
        let (_, v) = checker::check_media(&media(&snap, name));
        assert!(v.is_empty(), "{v:?}");
    }
}

#[test]
fn extinf_without_comma_is_c1() {
    let text = media(&snapshot(), "v1");
    let bad = text.replacen("#EXTINF:2.00000,", "#EXTINF:2.00000", 1);
    assert_ne!(bad, text);
    flags(&bad, "C1");
    flags(&text.replace("#EXT-X-VERSION:10", "#EXT-X-VERSION:6"), "C1");
    flags(&format!("\u{feff}{text}"), "C1");
}

#[test]
fn segment_longer_than_target_duration_is_c2() {
    let text = media(&snapshot(), "v1");
    flags(&text.replacen("#EXTINF:2.00000,", "#EXTINF:3.60000,", 1), "C2");
}

#[test]
fn missing_media_sequence_is_c3() {
    let text = media(&snapshot(), "v1");
    flags(&text.replace("#EXT-X-MEDIA-SEQUENCE:0\n", ""), "C3");
}

#[test]
fn playlist_type_on_a_live_playlist_is_c4() {
    let text = media(&snapshot(), "v1");
    flags(
        &text.replace(
            "#EXT-X-VERSION:10\n",
            "#EXT-X-VERSION:10\n#EXT-X-PLAYLIST-TYPE:EVENT\n",
        ),
        "C4",
    );
}

#[test]
fn map_or_date_after_a_part_is_c5() {
    let text = media(&snapshot(), "v1");
    let first_part = text.find("#EXT-X-PART:").unwrap();
    let line_end = first_part + text[first_part..].find('\n').unwrap() + 1;
    let bad = format!(
        "{}#EXT-X-MAP:URI=\"init_0.mp4\"\n{}",
        &text[..line_end],
        &text[line_end..]
    );
    flags(&bad, "C5");
    let no_map = text.replace("#EXT-X-MAP:URI=\"init_0.mp4\"\n", "");
    flags(&no_map, "C5");
}

#[test]
fn long_or_short_parts_are_c6() {
    let text = media(&snapshot(), "v1");
    flags(
        &text.replacen("DURATION=0.33333,URI=\"part_", "DURATION=0.34000,URI=\"part_", 1),
        "C6",
    );
    // A short part in the middle of a segment, not independent.
    let second = text
        .match_indices("DURATION=0.33333,URI=\"part_")
        .nth(1)
        .unwrap()
        .0;
    let bad = format!("{}DURATION=0.10000{}", &text[..second], &text[second + 16..]);
    flags(&bad, "C6");
    flags(&text.replace("#EXT-X-PART-INF:PART-TARGET=0.334\n", ""), "C6");
}

#[test]
fn part_hold_back_under_three_parts_is_c7() {
    let text = media(&snapshot(), "v1");
    flags(
        &text.replace("PART-HOLD-BACK=1.002", "PART-HOLD-BACK=0.666"),
        "C7",
    );
    flags(&text.replace("HOLD-BACK=9.0", "HOLD-BACK=6.0"), "C7");
    flags(&text.replace("CAN-SKIP-UNTIL=18.0", "CAN-SKIP-UNTIL=12.0"), "C7");
}

#[test]
fn hint_with_endlist_or_missing_hint_is_c8() {
    let text = media(&snapshot(), "v1");
    flags(&format!("{text}#EXT-X-ENDLIST\n"), "C8");
    let hint = text
        .lines()
        .find(|l| l.starts_with("#EXT-X-PRELOAD-HINT"))
        .unwrap();
    flags(&text.replace(&format!("{hint}\n"), ""), "C8");
    flags(
        &text.replace(&format!("{hint}\n"), &format!("{hint}\n{hint}\n")),
        "C8",
    );
}

#[test]
fn a_hinted_part_that_never_appears_is_c8() {
    let mut room = Room::new(HlsConfig::default(), &ladder()[..1], false);
    room.run(Duration::from_secs(5));
    let a = media(room.last(), "v0");
    room.run(Duration::from_millis(400));
    let b = media(room.last(), "v0");
    let hint = a.lines().find(|l| l.contains("TYPE=PART")).unwrap();
    let uri = hint.split('"').nth(1).unwrap();
    assert!(b.contains(uri));
    // The next reload names the hinted part differently.
    let bad = b.replace(uri, "part_99_0.m4s");
    let mut r = Reloads::default();
    assert!(r.check(&checker::check_media(&a).0).is_empty());
    let v = r.check(&checker::check_media(&bad).0);
    assert!(v.iter().any(|e| e.starts_with("C8")), "{v:?}");
}

fn all_media(snap: &RoomSnapshot) -> BTreeMap<String, Media> {
    snap.renditions
        .keys()
        .map(|n| {
            (
                format!("{}/{n}/index.m3u8", snap.session),
                checker::check_media(&media(snap, n)).0,
            )
        })
        .collect()
}

#[test]
fn missing_rendition_report_or_different_server_control_is_caught() {
    let snap = snapshot();
    let mv = playlist::multivariant(&snap, "").unwrap();
    let good = all_media(&snap);
    assert!(checker::check_multivariant(&mv, &good).is_empty());
    // C9: v1 forgets the audio rendition.
    let text = media(&snap, "v1");
    let report = text
        .lines()
        .find(|l| l.contains("RENDITION-REPORT:URI=\"../opus"))
        .unwrap();
    let mut bad = good.clone();
    bad.insert(
        format!("{}/v1/index.m3u8", snap.session),
        checker::check_media(&text.replace(&format!("{report}\n"), "")).0,
    );
    let v = checker::check_multivariant(&mv, &bad);
    assert!(v.iter().any(|e| e.starts_with("C9")), "{v:?}");
    // C7: one rendition with a different PART-HOLD-BACK.
    let mut bad = good.clone();
    bad.insert(
        format!("{}/v0/index.m3u8", snap.session),
        checker::check_media(&media(&snap, "v0").replace("PART-HOLD-BACK=1.002", "PART-HOLD-BACK=1.5")).0,
    );
    let v = checker::check_multivariant(&mv, &bad);
    assert!(v.iter().any(|e| e.starts_with("C7")), "{v:?}");
}

#[test]
fn variant_without_resolution_or_bandwidth_is_c16() {
    let snap = snapshot();
    let mv = playlist::multivariant(&snap, "").unwrap();
    let good = all_media(&snap);
    for (from, to) in [
        ("RESOLUTION=640x360,", ""),
        ("AVERAGE-BANDWIDTH=", "X-AVG="),
        ("LANGUAGE=\"und\",", ""),
        (",AUDIO=\"opus\"", ",AUDIO=\"aac\""),
    ] {
        let v = checker::check_multivariant(&mv.replacen(from, to, 1), &good);
        assert!(v.iter().any(|e| e.starts_with("C16")), "{from}: {v:?}");
    }
}

#[test]
fn reload_invariants_are_c2_c3_c7() {
    let snap = snapshot();
    let text = media(&snap, "v1");
    let cases = [
        ("#EXT-X-TARGETDURATION:3", "#EXT-X-TARGETDURATION:4", "C2"),
        (
            "#EXT-X-PART-INF:PART-TARGET=0.334",
            "#EXT-X-PART-INF:PART-TARGET=0.335",
            "C7",
        ),
        ("seg_1.m4s", "seg_1b.m4s", "C3"),
    ];
    for (from, to, code) in cases {
        let mut r = Reloads::default();
        assert!(r.check(&checker::check_media(&text).0).is_empty());
        let v = r.check(&checker::check_media(&text.replace(from, to)).0);
        assert!(v.iter().any(|e| e.starts_with(code)), "{code}: {v:?}");
    }
    // MEDIA-SEQUENCE going back.
    let mut later_room = Room::new(HlsConfig::default(), &ladder()[..1], false);
    later_room.run(Duration::from_secs(40));
    let later = media(later_room.last(), "v0");
    let (m, _) = checker::check_media(&later);
    assert!(m.media_sequence.unwrap() > 0);
    let mut r = Reloads::default();
    r.check(&m);
    let back = later.replace(
        &format!("#EXT-X-MEDIA-SEQUENCE:{}", m.media_sequence.unwrap()),
        &format!("#EXT-X-MEDIA-SEQUENCE:{}", m.media_sequence.unwrap() - 1),
    );
    let v = r.check(&checker::check_media(&back).0);
    assert!(v.iter().any(|e| e.starts_with("C3")), "{v:?}");
}

#[test]
fn missing_date_is_c11() {
    let text = media(&snapshot(), "v1");
    let pdt = text
        .lines()
        .find(|l| l.starts_with("#EXT-X-PROGRAM-DATE-TIME"))
        .unwrap();
    flags(&text.replacen(&format!("{pdt}\n"), "", 1), "C11");
}

#[test]
fn broken_fmp4_is_c17() {
    let snap = snapshot();
    let r = &snap.renditions["v1"];
    let init = r.files["init_0.mp4"].to_vec();
    assert!(checker::check_init(&init).is_empty());
    let avc3: Vec<u8> = {
        let mut b = init.clone();
        let at = b.windows(4).position(|w| w == b"avc1").unwrap();
        b[at..at + 4].copy_from_slice(b"avc3");
        b
    };
    assert!(checker::check_init(&avc3).iter().any(|e| e.starts_with("C17")));
    let no_iso6: Vec<u8> = {
        let mut b = init.clone();
        while let Some(at) = b.windows(4).position(|w| w == b"iso6") {
            b[at..at + 4].copy_from_slice(b"isom");
        }
        b
    };
    assert!(checker::check_init(&no_iso6).iter().any(|e| e.starts_with("C17")));
    // A segment whose second part does not continue the first's decode time.
    let seg = r.files["seg_1.m4s"].to_vec();
    assert!(checker::check_fragments(&seg).is_ok());
    let p0 = r.files["part_1_0.m4s"].to_vec();
    let p1 = r.files["part_1_1.m4s"].to_vec();
    let mut broken = p1.clone();
    broken.extend_from_slice(&p0);
    assert!(checker::check_fragments(&broken).unwrap_err().starts_with("C17"));
}
