//! Every input kept under `fuzz/regressions/<target>/` (seeds, and what
//! the fuzz targets found) replayed through the target's entry point on
//! stable: a parser that panics fails here.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

/// A fuzz target's entry point.
type Entry = fn(&[u8]);

/// The fuzz targets of `fuzz/`, by name, with the entry point each runs.
const TARGETS: &[(&str, Entry)] = &[
    ("chat_frame", signaling::fuzzing::chat_frame),
    ("h264_rtp", hls_bridge::fuzzing::h264_rtp),
    ("hls_query", hls_bridge::fuzzing::hls_query),
    ("hls_tap", hls_bridge::fuzzing::hls_tap),
    ("relay_wire", relay::fuzzing::wire_gateway),
    ("rtmp_flv", sfu::fuzzing::rtmp_flv),
    ("rtmp_session", sfu::fuzzing::rtmp_session),
    ("sdp_offer", sfu::fuzzing::sdp_offer),
    ("sdpfrag", signaling::fuzzing::sdpfrag),
    ("turn_client", turn_server::fuzzing::exercise),
];

#[test]
fn every_kept_input_is_refused_or_handled_without_a_panic() {
    for (target, entry) in TARGETS {
        replay(target, *entry);
    }
}

/// Each `[[bin]]` of `fuzz/Cargo.toml` is listed above and has a
/// directory of kept inputs, and nothing else has one.
#[test]
fn every_fuzz_target_has_kept_inputs() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let mut bins: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|bin| bin.lines().find_map(|l| l.strip_prefix("name = ")))
        .map(|name| name.trim_matches('"'))
        .collect();
    bins.sort();
    let mut kept: Vec<String> = std::fs::read_dir(fuzz.join("regressions"))
        .expect("fuzz/regressions")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    kept.sort();
    let targets: Vec<&str> = TARGETS.iter().map(|(t, _)| *t).collect();
    assert_eq!(bins, targets);
    assert_eq!(kept, targets);
}

/// Feeds every file of `fuzz/regressions/{target}` to `entry`; names the
/// files that panicked.
fn replay(target: &str, entry: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let files = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut replayed = 0;
    let mut panicked = Vec::new();
    for file in files {
        let path = file.expect("a directory entry").path();
        let data = std::fs::read(&path).expect("a readable input");
        if catch_unwind(AssertUnwindSafe(|| entry(&data))).is_err() {
            panicked.push(path.display().to_string());
        }
        replayed += 1;
    }
    assert!(replayed > 0, "no inputs in {}", dir.display());
    assert!(panicked.is_empty(), "panicked on {panicked:?}");
}
