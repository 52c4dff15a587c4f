//! The parts of HLS playlists an LL-HLS client needs: the multivariant
//! playlist's variants and audio renditions, and a media playlist's
//! segments, parts (numbered by MSN and index, as `_HLS_msn`/`_HLS_part`
//! count them), program date-times, preload hint and server control.
//! Tolerant: unknown tags are skipped; what a client cannot work without
//! (a target duration, a variant) is an error.

use crate::error::Error;

/// One `EXT-X-STREAM-INF` variant.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub bandwidth: u64,
    pub uri: String,
    /// Its `AUDIO` group, if any.
    pub audio: Option<String>,
}

/// One `EXT-X-MEDIA:TYPE=AUDIO` rendition with a URI.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioRendition {
    pub group: String,
    pub uri: String,
    pub default: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Multivariant {
    pub variants: Vec<Variant>,
    pub audio: Vec<AudioRendition>,
}

/// One `EXT-X-PART`.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub msn: u64,
    pub index: u32,
    pub uri: String,
    pub duration: f64,
    /// Wall time at which the part's media ends, milliseconds since the
    /// UNIX epoch, from the parent's `EXT-X-PROGRAM-DATE-TIME`.
    pub end_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct MediaPlaylist {
    pub target_duration: f64,
    pub part_target: Option<f64>,
    pub part_hold_back: Option<f64>,
    pub media_sequence: u64,
    pub can_block_reload: bool,
    pub ended: bool,
    /// Last MSN with a complete segment (`EXTINF` + URI).
    pub last_segment: Option<u64>,
    pub parts: Vec<Part>,
    /// `EXT-X-MAP` URI in force at the end of the playlist.
    pub map: Option<String>,
    /// `EXT-X-PRELOAD-HINT:TYPE=PART` URI.
    pub hint: Option<String>,
}

impl MediaPlaylist {
    /// The newest part as (MSN, index).
    pub fn last_part(&self) -> Option<(u64, u32)> {
        self.parts.last().map(|p| (p.msn, p.index))
    }

    /// The blocking-reload directives for the next part (or segment when
    /// the playlist has no parts), per §6.2.5.2 / what hls.js sends.
    pub fn next_directives(&self) -> (u64, Option<u32>) {
        match self.last_part() {
            Some((msn, i)) => (msn, Some(i + 1)),
            None => (self.last_segment.map_or(self.media_sequence, |m| m + 1), None),
        }
    }
}

/// The value of `KEY=` in an attribute list (quoted or not).
pub fn attribute<'a>(list: &'a str, key: &str) -> Option<&'a str> {
    let mut rest = list;
    while !rest.is_empty() {
        let (k, after) = rest.split_once('=')?;
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], q[end + 1..].trim_start_matches(','))
        } else {
            match after.split_once(',') {
                Some((v, n)) => (v, n),
                None => (after, ""),
            }
        };
        if k.trim() == key {
            return Some(value);
        }
        rest = next;
    }
    None
}

fn body(text: &str) -> Result<std::str::Lines<'_>, Error> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if !text.starts_with("#EXTM3U") {
        return Err(Error::Http("playlist does not start with #EXTM3U".into()));
    }
    Ok(text.lines())
}

pub fn parse_multivariant(text: &str) -> Result<Multivariant, Error> {
    let mut out = Multivariant::default();
    let mut pending: Option<(u64, Option<String>)> = None;
    for line in body(text)?.map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(attrs) = line.strip_prefix("#EXT-X-STREAM-INF:") {
            let bandwidth = attribute(attrs, "BANDWIDTH")
                .and_then(|b| b.parse().ok())
                .unwrap_or(0);
            pending = Some((bandwidth, attribute(attrs, "AUDIO").map(str::to_owned)));
        } else if let Some(attrs) = line.strip_prefix("#EXT-X-MEDIA:") {
            if attribute(attrs, "TYPE") == Some("AUDIO")
                && let (Some(group), Some(uri)) = (attribute(attrs, "GROUP-ID"), attribute(attrs, "URI"))
            {
                out.audio.push(AudioRendition {
                    group: group.to_owned(),
                    uri: uri.to_owned(),
                    default: attribute(attrs, "DEFAULT") == Some("YES"),
                });
            }
        } else if !line.starts_with('#')
            && let Some((bandwidth, audio)) = pending.take()
        {
            out.variants.push(Variant {
                bandwidth,
                uri: line.to_owned(),
                audio,
            });
        }
    }
    if out.variants.is_empty() {
        return Err(Error::Http("multivariant playlist without a variant".into()));
    }
    Ok(out)
}

pub fn parse_media(text: &str) -> Result<MediaPlaylist, Error> {
    let mut out = MediaPlaylist::default();
    let mut msn: Option<u64> = None;
    let mut index = 0u32;
    // Wall time (ms) of the current segment's start, and media into it.
    let mut seg_start: Option<f64> = None;
    let mut into = 0.0;
    let mut target = None;
    let mut extinf = None;
    for line in body(text)?.map(str::trim).filter(|l| !l.is_empty()) {
        let cur = *msn.get_or_insert(out.media_sequence);
        if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
            target = v.parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            out.media_sequence = v
                .parse()
                .map_err(|_| Error::Http("bad EXT-X-MEDIA-SEQUENCE".into()))?;
            msn = Some(out.media_sequence);
        } else if let Some(a) = line.strip_prefix("#EXT-X-PART-INF:") {
            out.part_target = attribute(a, "PART-TARGET").and_then(|v| v.parse().ok());
        } else if let Some(a) = line.strip_prefix("#EXT-X-SERVER-CONTROL:") {
            out.can_block_reload = attribute(a, "CAN-BLOCK-RELOAD") == Some("YES");
            out.part_hold_back = attribute(a, "PART-HOLD-BACK").and_then(|v| v.parse().ok());
        } else if let Some(a) = line.strip_prefix("#EXT-X-SKIP:") {
            let n: u64 = attribute(a, "SKIPPED-SEGMENTS")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            msn = Some(cur + n);
        } else if let Some(a) = line.strip_prefix("#EXT-X-MAP:") {
            out.map = attribute(a, "URI").map(str::to_owned);
        } else if let Some(v) = line.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
            seg_start = parse_date_time(v);
            into = 0.0;
        } else if let Some(a) = line.strip_prefix("#EXT-X-PART:") {
            let duration: f64 = attribute(a, "DURATION")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::Http("EXT-X-PART without DURATION".into()))?;
            let uri = attribute(a, "URI").ok_or_else(|| Error::Http("EXT-X-PART without URI".into()))?;
            into += duration;
            out.parts.push(Part {
                msn: cur,
                index,
                uri: uri.to_owned(),
                duration,
                end_ms: seg_start.map(|s| s + into * 1000.0),
            });
            index += 1;
        } else if let Some(v) = line.strip_prefix("#EXTINF:") {
            extinf = v.split(',').next().and_then(|d| d.trim().parse::<f64>().ok());
        } else if let Some(a) = line.strip_prefix("#EXT-X-PRELOAD-HINT:") {
            if attribute(a, "TYPE") == Some("PART") {
                out.hint = attribute(a, "URI").map(str::to_owned);
            }
        } else if line == "#EXT-X-ENDLIST" {
            out.ended = true;
        } else if !line.starts_with('#') {
            // A segment URI closes segment `cur`; the next starts where it ended.
            let d = extinf.take().unwrap_or(0.0);
            seg_start = seg_start.map(|s| s + d * 1000.0);
            into = 0.0;
            out.last_segment = Some(cur);
            msn = Some(cur + 1);
            index = 0;
        }
    }
    out.target_duration = target.ok_or_else(|| Error::Http("no EXT-X-TARGETDURATION".into()))?;
    Ok(out)
}

/// Milliseconds since the UNIX epoch of an ISO 8601 / RFC 3339 date-time
/// (`2026-11-21T16:42:35.123Z`, or with a `±hh:mm` offset).
pub fn parse_date_time(s: &str) -> Option<f64> {
    let s = s.trim();
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    let (clock, offset_min) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0)
    } else {
        let at = time.rfind(['+', '-'])?;
        let (c, off) = time.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (h, m) = off[1..].split_once(':').unwrap_or((&off[1..], "0"));
        (c, sign * (h.parse::<i64>().ok()? * 60 + m.parse::<i64>().ok()?))
    };
    let mut t = clock.splitn(3, ':');
    let hour: i64 = t.next()?.parse().ok()?;
    let minute: i64 = t.next()?.parse().ok()?;
    let second: f64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 - offset_min * 60;
    Some(secs as f64 * 1000.0 + second * 1000.0)
}

/// Resolves a playlist URI against the playlist's URL (RFC 3986 enough
/// for HLS: absolute, absolute path, relative with `../`).
pub fn resolve(base: &str, uri: &str) -> String {
    if uri.starts_with("http://") || uri.starts_with("https://") {
        return uri.to_owned();
    }
    let base = base.split(['?', '#']).next().unwrap_or(base);
    let origin_end = base
        .find("://")
        .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(base.len());
    let origin = &base[..origin_end];
    if uri.starts_with('/') {
        return format!("{origin}{uri}");
    }
    let path = &base[origin_end..];
    let mut dirs: Vec<&str> = path.split('/').collect();
    dirs.pop(); // the playlist's own name
    let (rel, query) = match uri.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (uri, None),
    };
    for seg in rel.split('/') {
        match seg {
            ".." => {
                if dirs.len() > 1 {
                    dirs.pop();
                }
            }
            "." => {}
            s => dirs.push(s),
        }
    }
    let mut out = format!("{origin}{}", dirs.join("/"));
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// `url` with `_HLS_` directives added to its query (before any other
/// parameter a signed URL carries, order does not matter to servers).
pub fn with_directives(url: &str, msn: u64, part: Option<u32>) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    match part {
        Some(p) => format!("{url}{sep}_HLS_msn={msn}&_HLS_part={p}"),
        None => format!("{url}{sep}_HLS_msn={msn}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEDIA: &str = "#EXTM3U\n#EXT-X-VERSION:10\n#EXT-X-TARGETDURATION:3\n\
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=18.0,PART-HOLD-BACK=1.000,HOLD-BACK=9.0\n\
#EXT-X-PART-INF:PART-TARGET=0.334\n#EXT-X-MEDIA-SEQUENCE:7\n#EXT-X-DISCONTINUITY-SEQUENCE:0\n\
#EXT-X-MAP:URI=\"init_0.mp4\"\n#EXT-X-PROGRAM-DATE-TIME:2026-11-21T16:00:00.000Z\n\
#EXTINF:2.00000,\nseg_7.m4s\n\
#EXT-X-PROGRAM-DATE-TIME:2026-11-21T16:00:02.000Z\n\
#EXT-X-PART:DURATION=0.33300,URI=\"part_8_0.m4s\",INDEPENDENT=YES\n\
#EXT-X-PART:DURATION=0.33300,URI=\"part_8_1.m4s\"\n#EXTINF:0.66600,\nseg_8.m4s\n\
#EXT-X-PROGRAM-DATE-TIME:2026-11-21T16:00:02.666Z\n\
#EXT-X-PART:DURATION=0.33400,URI=\"part_9_0.m4s\",INDEPENDENT=YES\n\
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part_9_1.m4s\"\n\
#EXT-X-RENDITION-REPORT:URI=\"../opus/index.m3u8\",LAST-MSN=9,LAST-PART=0\n";

    #[test]
    fn media_playlist_parts_are_numbered_like_the_directives() {
        let p = parse_media(MEDIA).unwrap();
        assert_eq!(p.target_duration, 3.0);
        assert_eq!(p.part_target, Some(0.334));
        assert_eq!(p.part_hold_back, Some(1.0));
        assert!(p.can_block_reload && !p.ended);
        assert_eq!(p.last_segment, Some(8));
        let ids: Vec<(u64, u32, &str)> = p.parts.iter().map(|x| (x.msn, x.index, x.uri.as_str())).collect();
        assert_eq!(
            ids,
            [
                (8, 0, "part_8_0.m4s"),
                (8, 1, "part_8_1.m4s"),
                (9, 0, "part_9_0.m4s")
            ]
        );
        assert_eq!(p.hint.as_deref(), Some("part_9_1.m4s"));
        assert_eq!(p.map.as_deref(), Some("init_0.mp4"));
        assert_eq!(p.next_directives(), (9, Some(1)));
        // Part ends from the parent's date-time plus the parts before it.
        let t0 = parse_date_time("2026-11-21T16:00:02.000Z").unwrap();
        assert_eq!(p.parts[1].end_ms, Some(t0 + 666.0));
        assert_eq!(p.parts[2].end_ms, Some(t0 + 666.0 + 334.0));
    }

    #[test]
    fn skip_and_no_parts() {
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:10\n\
#EXT-X-SKIP:SKIPPED-SEGMENTS=3\n#EXTINF:2.0,\nseg_13.m4s\n#EXT-X-ENDLIST\n";
        let p = parse_media(text).unwrap();
        assert_eq!(p.last_segment, Some(13));
        assert!(p.ended && !p.can_block_reload);
        assert_eq!(p.next_directives(), (14, None));
        assert!(parse_media("#EXTM3U\n#EXTINF:2.0,\nx.ts\n").is_err());
        assert!(parse_media("<html>").is_err());
    }

    #[test]
    fn multivariant_variants_and_audio() {
        let text = "#EXTM3U\n#EXT-X-VERSION:10\n\
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aac\",NAME=\"AAC\",LANGUAGE=\"und\",DEFAULT=YES,AUTOSELECT=YES,CHANNELS=\"2\",URI=\"abc/aac/index.m3u8\"\n\
#EXT-X-STREAM-INF:BANDWIDTH=1500000,AVERAGE-BANDWIDTH=1200000,RESOLUTION=1280x720,CODECS=\"avc1.42e01f,mp4a.40.2\",AUDIO=\"aac\"\n\
abc/v2/index.m3u8\n\
#EXT-X-STREAM-INF:BANDWIDTH=200000,CODECS=\"avc1.42e01f,mp4a.40.2\",AUDIO=\"aac\"\nabc/v0/index.m3u8\n";
        let m = parse_multivariant(text).unwrap();
        assert_eq!(m.variants.len(), 2);
        assert_eq!(m.variants[1].bandwidth, 200_000);
        assert_eq!(m.variants[0].audio.as_deref(), Some("aac"));
        assert_eq!(m.audio[0].uri, "abc/aac/index.m3u8");
        assert!(m.audio[0].default);
        assert!(parse_multivariant("#EXTM3U\n").is_err());
    }

    #[test]
    fn dates_and_urls() {
        assert_eq!(parse_date_time("1970-01-01T00:00:01.500Z"), Some(1500.0));
        assert_eq!(parse_date_time("2000-03-01T00:00:00Z"), Some(951_868_800_000.0));
        assert_eq!(
            parse_date_time("2000-03-01T01:00:00+01:00"),
            parse_date_time("2000-03-01T00:00:00Z")
        );
        assert_eq!(parse_date_time("garbage"), None);
        let m = "http://127.0.0.1:8080/hls/r/index.m3u8?token=t";
        assert_eq!(
            resolve(m, "abc/v0/index.m3u8?token=t"),
            "http://127.0.0.1:8080/hls/r/abc/v0/index.m3u8?token=t"
        );
        let v = "http://127.0.0.1:8080/hls/r/abc/v0/index.m3u8";
        assert_eq!(
            resolve(v, "../opus/index.m3u8"),
            "http://127.0.0.1:8080/hls/r/abc/opus/index.m3u8"
        );
        assert_eq!(resolve(v, "/x/y.m4s"), "http://127.0.0.1:8080/x/y.m4s");
        assert_eq!(
            with_directives(v, 9, Some(2)),
            format!("{v}?_HLS_msn=9&_HLS_part=2")
        );
        assert_eq!(with_directives("a?token=t", 4, None), "a?token=t&_HLS_msn=4");
        assert_eq!(attribute("A=1,B=\"x,y\",C=z", "C"), Some("z"));
        assert_eq!(attribute("A=1,B=\"x,y\",C=z", "B"), Some("x,y"));
    }
}
