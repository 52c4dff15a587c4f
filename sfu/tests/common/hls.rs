//! A room's LL-HLS `aac` rendition as a player would fetch it: the
//! multivariant playlist's AAC group, its media playlist, the init section
//! and the complete segments, read by Debian's `ffprobe` (decoding every
//! audio frame).

use std::time::{Duration, Instant};

/// What `ffprobe` read in the `aac` rendition's init section + segments.
#[derive(Debug)]
pub struct AacRendition {
    /// The multivariant playlist it came from.
    pub multivariant: String,
    pub codec: String,
    pub sample_rate: u32,
    pub channels: u32,
    /// Audio frames decoded.
    pub frames: u64,
    pub segments: usize,
}

/// Fetches `/hls/{room}/index.m3u8{query}` with `get` (a URL path to the
/// body's bytes), waits up to 15 s for the `aac` rendition to have
/// `min_segments` complete segments, and probes them after their init.
pub fn probe_aac(
    get: &dyn Fn(&str) -> Vec<u8>,
    room: &str,
    query: &str,
    min_segments: usize,
) -> AacRendition {
    let text = |path: &str| String::from_utf8_lossy(&get(path)).into_owned();
    let until = Instant::now() + Duration::from_secs(15);
    let (multivariant, media_path, playlist) = loop {
        let multivariant = text(&format!("/hls/{room}/index.m3u8{query}"));
        let uri = multivariant
            .lines()
            .find(|l| l.starts_with("#EXT-X-MEDIA:TYPE=AUDIO") && l.contains("GROUP-ID=\"aac\""))
            .and_then(|l| l.split("URI=\"").nth(1))
            .and_then(|rest| rest.split('"').next())
            .map(str::to_owned);
        if let Some(uri) = uri {
            let media_path = format!("/hls/{room}/{uri}");
            let playlist = text(&media_path);
            let segments = playlist.lines().filter(|l| l.starts_with("seg_")).count();
            if segments >= min_segments {
                break (multivariant, media_path, playlist);
            }
        }
        assert!(
            Instant::now() < until,
            "no aac rendition with {min_segments} segments: {multivariant}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let dir = media_path.rsplit_once('/').expect("a path").0;
    let map = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\""))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no EXT-X-MAP in {playlist}"));
    let mut file = get(&format!("{dir}/{map}"));
    let segments: Vec<&str> = playlist.lines().filter(|l| l.starts_with("seg_")).collect();
    for seg in &segments {
        file.extend_from_slice(&get(&format!("{dir}/{seg}")));
    }
    let path = std::env::temp_dir().join(format!("wave-aac-{}-{room}.mp4", std::process::id()));
    std::fs::write(&path, &file).unwrap();
    let out = std::process::Command::new("timeout")
        .args([
            "20",
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-count_frames",
        ])
        .args([
            "-show_entries",
            "stream=codec_name,sample_rate,channels,nb_read_frames",
        ])
        .args(["-of", "default=nw=1"])
        .arg(&path)
        .output()
        .expect("ffprobe runs (apt package ffmpeg)");
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "ffprobe: {stderr} {stdout}"
    );
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
            .to_owned()
    };
    AacRendition {
        multivariant,
        codec: field("codec_name"),
        sample_rate: field("sample_rate").parse().unwrap(),
        channels: field("channels").parse().unwrap(),
        frames: field("nb_read_frames").parse().unwrap(),
        segments: segments.len(),
    }
}
