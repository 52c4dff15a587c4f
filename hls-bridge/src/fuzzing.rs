//! Entry points shared by the fuzz targets (`fuzz/`, nightly) and the
//! regression tests that replay `fuzz/regressions/` on stable: each takes
//! arbitrary bytes and must never panic.
//!
//! - [`h264_rtp`]: RTP payloads into the H.264 depacketizer, and every
//!   access unit's SPS/PPS into the parameter parser;
//! - [`hls_tap`]: a script of RTP packets (H.264 and Opus), sender reports,
//!   time and publishers leaving, through the whole tap: reordering,
//!   depacketizing, Opus TOCs, the packager and the playlists it renders;
//! - [`hls_query`]: a request path and query (`_HLS_msn`, `_HLS_part`,
//!   `_HLS_skip`, `token`) against a live and an ended room.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hyper::{Method, Request};
use wave_vocab::{PeerId, RoomId};

use crate::h264::{AvcConfig, H264Depacketizer};
use crate::http::{HlsAccess, HlsService, HlsStore, sign_token};
use crate::playlist;
use crate::room::{AacUnit, HlsTap, HlsUpdate, TapConfig, Track};
use crate::runner::InlineHost;
use crate::{HlsConfig, RoomSnapshot, RtpPacket, SenderReport};

/// The signed-URL key of [`hls_query`]'s signed service.
pub const QUERY_KEY: &[u8] = b"fuzz-hls-key";
/// The session seed of every fuzzed room: its path prefix is
/// `{seed:012x}` (`00000000f00d`).
pub const SESSION_SEED: u64 = 0xf00d;
/// A wall clock long past, so no request waits for a young stream.
const WALL: Duration = Duration::from_secs(1_000_000_000);

/// Input: a sequence of `[timestamp-step u8][marker u8][len u16][payload]`
/// packets, each pushed with its loss flag taken from the step's top bit.
pub fn h264_rtp(data: &[u8]) {
    let mut depacketizer = H264Depacketizer::default();
    let mut timestamp = 0i64;
    let mut rest = data;
    while let [step, flags, l0, l1, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*l0, *l1])).min(tail.len());
        let (payload, after) = tail.split_at(len);
        rest = after;
        timestamp += i64::from(step & 0x7f) * 3000;
        let _ = depacketizer.push(timestamp, flags & 1 != 0, payload, step & 0x80 != 0);
        while let Some(au) = depacketizer.poll() {
            assert!(
                au.data.len() <= crate::h264::MAX_ACCESS_UNIT_BYTES + 4 * crate::h264::MAX_ACCESS_UNIT_NALUS
            );
            if let (Some(sps), Some(pps)) = (au.sps, au.pps)
                && let Ok(config) = AvcConfig::new(sps, pps)
            {
                let _ = crate::fmp4::init_segment(&crate::fmp4::TrackConfig::Avc(config));
            }
        }
        let held = depacketizer.stats().buffered_bytes;
        assert!(
            held <= crate::h264::MAX_ACCESS_UNIT_BYTES as u64,
            "{held} bytes held"
        );
    }
    // A whole input as one parameter set, too.
    let _ = crate::h264::parse_sps(data);
}

/// Ops of [`hls_tap`], each starting with its op byte (low two bits):
///
/// - `0`, `1`: an RTP packet, `[op][flags][seq u16][timestamp u32][len u16][payload]`;
///   `flags` bit 0 video, bits 1–2 the layer (of 3), bit 3 the marker,
///   bits 4–5 the publisher (see [`publisher`]); with bit 6 it is a source
///   AAC access unit instead ([`HlsTap::handle_aac`]): the timestamp is its
///   ms, the payload `[config len u8][AudioSpecificConfig][access unit]`;
/// - `2`: a sender report for the next packet, `[op][ntp u64][rtp u32]`;
/// - `3`: `[op][what][ms u16]`: `what` bit 0 makes publisher `what >> 1`
///   leave, otherwise time advances by `ms`.
pub fn hls_tap(data: &[u8]) {
    let mut tap = new_tap();
    let mut now = drive(&mut tap, Instant::now(), data, render_all);
    // Every publisher leaves; the rooms end and are removed after linger.
    for p in 1..=3 {
        tap.publisher_left(now, publisher(p).0);
    }
    now += Duration::from_secs(120);
    tap.handle_timeout(now);
    drain(&mut tap, render_all);
}

/// Input: `[flags][path and query after /hls/]`; `flags` bit 0 asks the
/// signed service (tokens from [`sign_token`] with [`QUERY_KEY`]), bit 1
/// makes it a HEAD, bit 2 accepts gzip. Rooms: `r` (3 layers and Opus,
/// 10 s in) and `s` (the same, ended).
pub fn hls_query(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(tail) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(req) = Request::builder()
        .method(if flags & 2 != 0 { Method::HEAD } else { Method::GET })
        .uri(format!("/hls/{tail}"))
        .header(
            "accept-encoding",
            if flags & 4 != 0 { "gzip" } else { "identity" },
        )
        .body(())
    else {
        return;
    };
    let services = query_services();
    let service = &services.services[usize::from(flags & 1)];
    let _ = services.runtime.block_on(service.handle(&req));
}

/// A token [`hls_query`]'s signed service takes for `room` (it expires in 2100).
pub fn query_token(room: &str) -> String {
    sign_token(QUERY_KEY, room, 4_102_444_800)
}

/// The ops of [`hls_tap`] for `seconds` of publisher `pub_bits` (see
/// [`publisher`]): 3 H.264 layers at 30 fps (an IDR every 2 s, SPS and PPS
/// in a STAP-A before it) and 20 ms Opus packets, time advancing 33 ms a
/// frame. The seed of the tap's corpus and the media behind [`hls_query`].
pub fn sample_stream(seconds: u32, pub_bits: u8) -> Vec<u8> {
    stream(seconds, pub_bits, false)
}

/// [`sample_stream`]; with `aac`, AAC-LC 44.1 kHz stereo access units of a
/// source (passed through) instead of Opus.
fn stream(seconds: u32, pub_bits: u8, aac: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut aac_units = 0u32;
    let mut seq = [0u16; 4];
    let mut packet = |out: &mut Vec<u8>, flags: u8, ts: u32, payload: &[u8]| {
        let s = &mut seq[usize::from(flags & 1) * (1 + usize::from(flags >> 1 & 3))];
        out.extend_from_slice(&[0, flags | pub_bits << 4]);
        out.extend_from_slice(&s.to_be_bytes());
        out.extend_from_slice(&ts.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        out.extend_from_slice(payload);
        *s = s.wrapping_add(1);
    };
    for frame in 0..seconds * 30 {
        let ts = frame * 3000;
        for layer in 0..3u8 {
            let video = 1 | layer << 1;
            if frame % 60 == 0 {
                let mut stap = vec![0x78];
                for unit in [&SPS[..], &PPS[..]] {
                    stap.extend_from_slice(&(unit.len() as u16).to_be_bytes());
                    stap.extend_from_slice(unit);
                }
                packet(&mut out, video, ts, &stap);
                packet(&mut out, video | 8, ts, &[0x65, 0x88, 0x84, layer, 0x21, 0x42]);
            } else {
                packet(&mut out, video | 8, ts, &[0x41, 0x9a, layer, frame as u8]);
            }
        }
        // Opus: CELT fullband 20 ms mono (config 31, code 0), a short frame.
        for k in 0..2 {
            if !aac {
                packet(&mut out, 0, (frame * 2 + k) * 960, &[0xf8, 0xff, 0xfe]);
            }
        }
        while aac && u64::from(aac_units) * 1024 * 1000 / 44_100 <= u64::from(frame) * 1000 / 30 {
            let ms = (u64::from(aac_units) * 1024 * 1000 / 44_100) as u32;
            packet(&mut out, 0x40, ms, &[2, 0x12, 0x10, 0x21, 0x10, aac_units as u8]);
            aac_units += 1;
        }
        out.extend_from_slice(&[3, 0, 0, 33]);
    }
    out
}

/// A 1080p High-profile SPS as a real encoder writes it, and a PPS.
const SPS: [u8; 26] = [
    103, 100, 0, 40, 172, 217, 64, 120, 2, 39, 229, 132, 0, 0, 3, 0, 4, 0, 0, 3, 0, 240, 60, 96, 198, 88,
];
const PPS: [u8; 4] = [0x68, 0xce, 0x3c, 0x80];

fn new_tap() -> HlsTap {
    let config = TapConfig {
        hls: HlsConfig::default(),
        linger: Duration::from_secs(60),
        ladder: false,
    };
    HlsTap::new(config, Arc::new(InlineHost), Instant::now(), WALL)
}

/// Publisher `n & 3` (0 counts as 1): 1 and 2 publish into room `r` (the
/// second is refused while the first feeds it), 3 into `s`.
fn publisher(n: u8) -> (PeerId, RoomId) {
    let pid = u64::from(n & 3).max(1);
    let room = if pid == 3 { "s" } else { "r" };
    (PeerId(pid), RoomId::parse(room).expect("a valid room name"))
}

/// Runs the ops of [`hls_tap`] from `now`; every published snapshot goes
/// to `published`. Returns the time reached.
fn drive(
    tap: &mut HlsTap,
    mut now: Instant,
    data: &[u8],
    mut published: impl FnMut(RoomId, RoomSnapshot),
) -> Instant {
    let mut report = None;
    let mut rest = data;
    while let [op, tail @ ..] = rest {
        rest = tail;
        match op & 3 {
            0 | 1 => {
                let [flags, s0, s1, t0, t1, t2, t3, l0, l1, tail @ ..] = rest else {
                    break;
                };
                let len = usize::from(u16::from_be_bytes([*l0, *l1])).min(tail.len());
                let (payload, after) = tail.split_at(len);
                rest = after;
                let (pid, room) = publisher(flags >> 4);
                let timestamp = u32::from_be_bytes([*t0, *t1, *t2, *t3]);
                if flags & 0x40 != 0 {
                    let (n, unit) = payload.split_first().map_or((0, &[][..]), |(n, u)| (*n, u));
                    let (config, data) = unit.split_at(usize::from(n).min(unit.len()));
                    let aac = AacUnit {
                        config,
                        ts_ms: timestamp,
                        data,
                    };
                    tap.handle_aac(now, pid, report.take(), aac);
                    drain(tap, &mut published);
                    continue;
                }
                let track = Track {
                    pid,
                    video: flags & 1 != 0,
                    layer: usize::from(flags >> 1 & 3).min(2),
                    layers: 3,
                };
                let rtp = RtpPacket {
                    sequence_number: u16::from_be_bytes([*s0, *s1]),
                    timestamp,
                    marker: flags & 8 != 0,
                    payload,
                };
                tap.handle_media(now, &room, track, SESSION_SEED, report.take(), rtp);
            }
            2 => {
                let Some((sr, tail)) = rest.split_first_chunk::<12>() else {
                    break;
                };
                rest = tail;
                let (ntp, rtp) = sr.split_at(8);
                report = Some(SenderReport {
                    ntp_time: u64::from_be_bytes(ntp.try_into().expect("8 bytes")),
                    rtp_time: u32::from_be_bytes(rtp.try_into().expect("4 bytes")),
                });
            }
            _ => {
                let [what, m0, m1, tail @ ..] = rest else { break };
                rest = tail;
                if what & 1 != 0 {
                    tap.publisher_left(now, publisher(what >> 1).0);
                } else {
                    now += Duration::from_millis(u64::from(u16::from_be_bytes([*m0, *m1])));
                    tap.handle_timeout(now);
                }
            }
        }
        drain(tap, &mut published);
    }
    now
}

fn drain(tap: &mut HlsTap, mut published: impl FnMut(RoomId, RoomSnapshot)) {
    while let Some(update) = tap.poll_update() {
        if let HlsUpdate::Publish(room, snap) = update {
            published(room, snap);
        }
    }
    while tap.poll_keyframe_request().is_some() {}
}

fn render_all(_room: RoomId, snap: RoomSnapshot) {
    let _ = playlist::multivariant(&snap, "");
    let _ = playlist::dash_mpd(&snap, "");
    for name in snap.renditions.keys() {
        for skip in [false, true] {
            let _ = playlist::media_playlist(&snap, name, skip, "?token=t");
        }
    }
}

struct QueryServices {
    runtime: tokio::runtime::Runtime,
    /// Public, then signed.
    services: [HlsService; 2],
}

/// Room `r` live 10 s into its stream, room `s` ended after 10 s, both
/// with session `00000000f00d`.
fn query_services() -> &'static QueryServices {
    static SERVICES: OnceLock<QueryServices> = OnceLock::new();
    SERVICES.get_or_init(|| {
        let store = HlsStore::new();
        let mut tap = new_tap();
        let mut ops = sample_stream(10, 1);
        ops.extend(sample_stream(10, 3));
        ops.extend_from_slice(&[3, 3 << 1 | 1, 0, 0]);
        drive(&mut tap, Instant::now(), &ops, |room, snap| {
            store.publish(room.as_str(), snap)
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        let service = |access| HlsService::new(store.clone(), access).with_block_limit(Duration::ZERO);
        QueryServices {
            runtime,
            services: [
                service(HlsAccess::public()),
                service(HlsAccess::signed(QUERY_KEY)),
            ],
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tap_target_passes_source_aac_through_and_survives_it_mangled() {
        let ops = stream(3, 1, true);
        let mut tap = new_tap();
        let mut aac = None;
        drive(&mut tap, Instant::now(), &ops, |_, s| {
            if let Some(r) = s.renditions.get("aac") {
                aac = Some((r.timescale, r.codec.clone(), s.renditions.contains_key("opus")));
            }
        });
        let stats = tap.stats();
        assert!(stats.aac_passthrough > 100, "{stats:?}");
        assert_eq!((stats.aac_transcoders, stats.aac_passthrough_dropped), (0, 0));
        assert_eq!(aac, Some((44_100, "mp4a.40.2".to_string(), false)));
        // Flipped bytes land in configs, lengths, timestamps and frames.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..40 {
            let mut mangled = ops.clone();
            for _ in 0..64 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state % mangled.len() as u64) as usize;
                mangled[at] ^= (state >> 32) as u8 | 1;
            }
            hls_tap(&mangled);
        }
    }
}
