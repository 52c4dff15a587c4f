//! Playlists over a [`RoomSnapshot`]: LL-HLS media playlists (with delta
//! updates and rendition reports), the multivariant playlist and a DASH
//! MPD over the same CMAF files. Pure functions; checklist C1–C12, C16.
//!
//! URIs are relative: the multivariant playlist at `/hls/{room}/index.m3u8`
//! names `{session}/{rendition}/index.m3u8`; a media playlist names
//! `init_{n}.mp4`, `seg_{msn}.m4s`, `part_{msn}_{i}.m4s` and the other
//! renditions as `../{name}/index.m3u8`. `suffix` (e.g. `?token=...`) is
//! appended to every URI so signed URLs carry over.

use std::fmt::Write as _;
use std::time::Duration;

use crate::segmenter::{AudioCodec, RenditionKind, RenditionSnapshot, RoomSnapshot, SegmentInfo};

/// EXT-X-VERSION: 10 covers EXT-X-SKIP (9) and PRELOAD-HINT (Apple, 10).
pub const VERSION: u32 = 10;

/// Complete segments that keep their EXT-X-PART tags (plus the open one):
/// parts stay within three target durations of the end (§6.2.2).
const SEGMENTS_WITH_PARTS: usize = 2;

/// The media playlist of `rendition`; `skip` is `_HLS_skip=YES|v2`.
/// `None` when the rendition is unknown or has published nothing yet.
pub fn media_playlist(room: &RoomSnapshot, rendition: &str, skip: bool, suffix: &str) -> Option<String> {
    let r = room.renditions.get(rendition)?;
    if !r.has_media() {
        return None;
    }
    let c = &room.config;
    let td = c.target_duration();
    let part_target = c.part_target.as_secs_f64();
    let skip_until = 6.0 * f64::from(td);
    let mut out = String::with_capacity(4096);
    out.push_str("#EXTM3U\n");
    let _ = writeln!(out, "#EXT-X-VERSION:{VERSION}");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{td}");
    let _ = writeln!(out, "{}", server_control(room));
    let _ = writeln!(out, "#EXT-X-PART-INF:PART-TARGET={part_target:.3}");
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{}", r.media_sequence);
    let _ = writeln!(out, "#EXT-X-DISCONTINUITY-SEQUENCE:{}", r.discontinuity_sequence);

    let open = r.open.as_ref().filter(|o| !o.parts.is_empty());
    let total: f64 = r.segments.iter().map(|s| s.duration).sum::<f64>() + open.map_or(0.0, |o| o.duration);
    // Delta update: skip the head segments that end at least the Skip
    // Boundary before the end of the playlist (C10).
    let mut skipped = 0;
    if skip && !r.ended {
        let mut end = 0.0;
        for s in &r.segments {
            end += s.duration;
            if total - end >= skip_until {
                skipped += 1;
            } else {
                break;
            }
        }
    }
    if skipped > 0 {
        let _ = writeln!(out, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
    }
    let with_parts_from = r.segments.len().saturating_sub(SEGMENTS_WITH_PARTS);
    let mut map = None;
    for (i, s) in r.segments.iter().enumerate().skip(skipped) {
        segment_tags(&mut out, s, &mut map, skipped > 0 && i == skipped, suffix);
        if i >= with_parts_from {
            part_tags(&mut out, s, suffix);
        }
        let _ = writeln!(out, "#EXTINF:{:.5},", s.duration);
        let _ = writeln!(out, "seg_{}.m4s{suffix}", s.msn);
    }
    if let Some(o) = open {
        segment_tags(&mut out, o, &mut map, false, suffix);
        part_tags(&mut out, o, suffix);
    }
    if r.ended {
        out.push_str("#EXT-X-ENDLIST\n");
    } else {
        if let Some(n) = r.next_map() {
            let _ = writeln!(out, "#EXT-X-PRELOAD-HINT:TYPE=MAP,URI=\"init_{n}.mp4{suffix}\"");
        }
        if let Some((msn, i)) = r.next_part() {
            let _ = writeln!(
                out,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part_{msn}_{i}.m4s{suffix}\""
            );
        }
    }
    for other in room.renditions.values().filter(|o| o.name != r.name) {
        if let Some((msn, part)) = other.last_part() {
            let _ = writeln!(
                out,
                "#EXT-X-RENDITION-REPORT:URI=\"../{}/index.m3u8{suffix}\",LAST-MSN={msn},LAST-PART={part}",
                other.name
            );
        }
    }
    Some(out)
}

/// The SERVER-CONTROL tag, identical in every media playlist (C7).
pub fn server_control(room: &RoomSnapshot) -> String {
    let td = f64::from(room.config.target_duration());
    let part_target = room.config.part_target.as_secs_f64();
    format!(
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL={:.1},PART-HOLD-BACK={:.3},HOLD-BACK={:.1}",
        6.0 * td,
        3.0 * part_target,
        3.0 * td
    )
}

fn segment_tags(out: &mut String, s: &SegmentInfo, map: &mut Option<u32>, force_map: bool, suffix: &str) {
    if s.discontinuity {
        out.push_str("#EXT-X-DISCONTINUITY\n");
    }
    if force_map || *map != Some(s.init) {
        let _ = writeln!(out, "#EXT-X-MAP:URI=\"init_{}.mp4{suffix}\"", s.init);
        *map = Some(s.init);
    }
    let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{}", rfc3339(s.program_date_time));
}

fn part_tags(out: &mut String, s: &SegmentInfo, suffix: &str) {
    for p in &s.parts {
        let _ = write!(
            out,
            "#EXT-X-PART:DURATION={:.5},URI=\"part_{}_{}.m4s{suffix}\"",
            p.duration, s.msn, p.index
        );
        out.push_str(if p.independent { ",INDEPENDENT=YES\n" } else { "\n" });
    }
}

/// The multivariant playlist: one variant per video rendition (simulcast
/// layer) per audio group, AAC first (Apple needs it), then Opus.
/// `None` until some rendition has media.
pub fn multivariant(room: &RoomSnapshot, suffix: &str) -> Option<String> {
    let live: Vec<&RenditionSnapshot> = room.renditions.values().filter(|r| r.has_media()).collect();
    if live.is_empty() {
        return None;
    }
    let mut audio: Vec<&RenditionSnapshot> = live.iter().copied().filter(|r| !r.kind.is_video()).collect();
    audio.sort_by_key(|r| !matches!(r.kind, RenditionKind::Audio(AudioCodec::Aac { .. })));
    let mut video: Vec<&RenditionSnapshot> = live.iter().copied().filter(|r| r.kind.is_video()).collect();
    video.sort_by_key(|r| match r.kind {
        RenditionKind::Video { layer } => std::cmp::Reverse(layer),
        RenditionKind::Audio(_) => std::cmp::Reverse(0),
    });
    let mut out = String::with_capacity(2048);
    out.push_str("#EXTM3U\n");
    let _ = writeln!(out, "#EXT-X-VERSION:{VERSION}");
    for a in &audio {
        let (name, channels) = match &a.kind {
            RenditionKind::Audio(AudioCodec::Aac { channels, .. }) => ("AAC", *channels),
            RenditionKind::Audio(AudioCodec::Opus { stereo }) => ("Opus", if *stereo { 2 } else { 1 }),
            RenditionKind::Video { .. } => continue,
        };
        let _ = writeln!(
            out,
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"{}\",NAME=\"{name}\",LANGUAGE=\"und\",DEFAULT=YES,AUTOSELECT=YES,CHANNELS=\"{channels}\",URI=\"{}/{}/index.m3u8{suffix}\"",
            a.name, room.session, a.name
        );
    }
    let groups: Vec<Option<&RenditionSnapshot>> = if audio.is_empty() {
        vec![None]
    } else {
        audio.iter().copied().map(Some).collect()
    };
    for group in &groups {
        if video.is_empty() {
            // Audio only: the audio playlist is the variant.
            if let Some(a) = group {
                let _ = writeln!(
                    out,
                    "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},CODECS=\"{}\"",
                    a.peak_bandwidth.max(1),
                    a.average_bandwidth.max(1),
                    a.codec
                );
                let _ = writeln!(out, "{}/{}/index.m3u8{suffix}", room.session, a.name);
            }
            continue;
        }
        for v in &video {
            let (peak, avg) = (
                v.peak_bandwidth + group.map_or(0, |a| a.peak_bandwidth),
                v.average_bandwidth + group.map_or(0, |a| a.average_bandwidth),
            );
            let codecs = match group {
                Some(a) => format!("{},{}", v.codec, a.codec),
                None => v.codec.clone(),
            };
            let _ = write!(
                out,
                "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},RESOLUTION={}x{},FRAME-RATE={:.3},CODECS=\"{codecs}\"",
                peak.max(1),
                avg.max(1),
                v.width,
                v.height,
                if v.frame_rate > 0.0 { v.frame_rate } else { 30.0 },
            );
            if let Some(a) = group {
                let _ = write!(out, ",AUDIO=\"{}\"", a.name);
            }
            out.push('\n');
            let _ = writeln!(out, "{}/{}/index.m3u8{suffix}", room.session, v.name);
        }
    }
    Some(out)
}

/// A DASH MPD (dynamic, SegmentTimeline with `$Number$` = MSN) over the
/// same segments. One period: a resolution change keeps the segment
/// numbering and points `initialization` at the newest init section.
pub fn dash_mpd(room: &RoomSnapshot, suffix: &str) -> Option<String> {
    let epoch = room.epoch?;
    let live: Vec<&RenditionSnapshot> = room
        .renditions
        .values()
        .filter(|r| !r.segments.is_empty())
        .collect();
    if live.is_empty() {
        return None;
    }
    let td = room.config.target_duration();
    let publish = live
        .iter()
        .filter_map(|r| {
            r.segments
                .last()
                .map(|s| s.program_date_time + Duration::from_secs_f64(s.duration))
        })
        .max()
        .unwrap_or(epoch);
    let depth: f64 = live
        .iter()
        .map(|r| r.segments.iter().map(|s| s.duration).sum::<f64>())
        .fold(0.0, f64::max);
    let mut out = String::with_capacity(4096);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" profiles=\"urn:mpeg:dash:profile:isoff-live:2011,urn:mpeg:dash:profile:cmaf:2019\" type=\"{}\" availabilityStartTime=\"{}\" publishTime=\"{}\" minimumUpdatePeriod=\"PT{td}S\" minBufferTime=\"PT{td}S\" timeShiftBufferDepth=\"PT{depth:.3}S\" suggestedPresentationDelay=\"PT{}S\">",
        if room.ended() { "static" } else { "dynamic" },
        rfc3339(epoch),
        rfc3339(publish),
        3 * td
    );
    out.push_str("<Period id=\"0\" start=\"PT0S\">\n");
    for (set, video) in [(0, true), (1, false)] {
        let reps: Vec<&&RenditionSnapshot> = live.iter().filter(|r| r.kind.is_video() == video).collect();
        if reps.is_empty() {
            continue;
        }
        let (content, mime) = if video {
            ("video", "video/mp4")
        } else {
            ("audio", "audio/mp4")
        };
        let _ = writeln!(
            out,
            "<AdaptationSet id=\"{set}\" contentType=\"{content}\" mimeType=\"{mime}\" segmentAlignment=\"true\" startWithSAP=\"1\">"
        );
        for r in reps {
            let _ = write!(
                out,
                "<Representation id=\"{}\" bandwidth=\"{}\" codecs=\"{}\"",
                r.name,
                r.peak_bandwidth.max(1),
                r.codec
            );
            if video {
                let _ = write!(
                    out,
                    " width=\"{}\" height=\"{}\" frameRate=\"{}\"",
                    r.width,
                    r.height,
                    r.frame_rate.round().max(1.0)
                );
            } else {
                // An audio rendition's timescale is its rate (Opus and the
                // transcoded AAC 48 kHz, a passed-through AAC its own).
                let _ = write!(out, " audioSamplingRate=\"{}\"", r.timescale);
            }
            out.push_str(">\n");
            let init = r.segments.last().map_or(0, |s| s.init);
            let first = r.segments.first().map_or(0, |s| s.msn);
            let _ = writeln!(
                out,
                "<SegmentTemplate timescale=\"{}\" initialization=\"{}/{}/init_{init}.mp4{}\" media=\"{}/{}/seg_$Number$.m4s{}\" startNumber=\"{first}\">",
                r.timescale,
                room.session,
                r.name,
                xml_escape(suffix),
                room.session,
                r.name,
                xml_escape(suffix)
            );
            out.push_str("<SegmentTimeline>\n");
            for s in &r.segments {
                let d = (s.duration * f64::from(r.timescale)).round() as u64;
                let _ = writeln!(out, "<S t=\"{}\" d=\"{d}\"/>", s.start_dts);
            }
            out.push_str("</SegmentTimeline>\n</SegmentTemplate>\n</Representation>\n");
        }
        out.push_str("</AdaptationSet>\n");
    }
    out.push_str("</Period>\n</MPD>\n");
    Some(out)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time since the UNIX epoch.
pub fn rfc3339(t: Duration) -> String {
    let secs = t.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        t.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(Duration::from_millis(951_782_400_250)),
            "2000-02-29T00:00:00.250Z"
        );
        assert_eq!(
            rfc3339(Duration::from_secs(1_795_267_745)),
            "2026-11-21T13:29:05.000Z"
        );
    }
}
