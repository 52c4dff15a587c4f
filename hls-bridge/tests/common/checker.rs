//! An LL-HLS conformance checker for the MUSTs of checklist C1–C12, C16,
//! C17 and C18 of /work/shared/reference/ll-hls.md (C13–C15 are HTTP
//! behaviour, checked in the HTTP tests). Violations are strings that
//! start with the checklist item, e.g. `"C6: part ... longer than ..."`.
//!
//! - [`check_media`]: one media playlist on its own.
//! - [`Reloads`]: invariants across successive reloads of one playlist.
//! - [`check_multivariant`]: the multivariant playlist against the media
//!   playlists it names.
//! - [`check_init`], [`check_fragments`]: fMP4 boxes.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Part {
    pub uri: String,
    pub duration: f64,
    pub independent: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Segment {
    pub msn: u64,
    pub uri: Option<String>,
    pub duration: Option<f64>,
    pub discontinuity: bool,
    pub map: Option<String>,
    pub pdt: Option<String>,
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, Default)]
pub struct Media {
    pub version: Option<u32>,
    pub target_duration: Option<u64>,
    pub media_sequence: Option<u64>,
    pub discontinuity_sequence: u64,
    pub part_target: Option<f64>,
    pub server_control: Option<String>,
    pub attrs: BTreeMap<String, String>,
    /// Complete segments, then possibly one with parts only.
    pub segments: Vec<Segment>,
    pub skipped: u64,
    pub hints: Vec<(String, String)>,
    pub reports: Vec<(String, u64, Option<u64>)>,
    pub endlist: bool,
}

impl Media {
    pub fn complete(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| s.uri.is_some())
    }
    pub fn last_part(&self) -> Option<(u64, u64)> {
        self.segments
            .iter()
            .rev()
            .find(|s| !s.parts.is_empty())
            .map(|s| (s.msn, s.parts.len() as u64 - 1))
    }
    pub fn part_uris(&self) -> BTreeSet<String> {
        self.segments
            .iter()
            .flat_map(|s| s.parts.iter().map(|p| p.uri.clone()))
            .collect()
    }
}

/// Parses `A=B,C="D,E"` attribute lists.
pub fn attributes(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().to_string();
        rest = &rest[eq + 1..];
        let value;
        if let Some(stripped) = rest.strip_prefix('"') {
            let end = stripped.find('"').unwrap_or(stripped.len());
            value = stripped[..end].to_string();
            rest = stripped.get(end + 1..).unwrap_or("");
            rest = rest.strip_prefix(',').unwrap_or(rest);
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].to_string();
            rest = rest.get(end + 1..).unwrap_or("");
        }
        out.insert(key, value);
    }
    out
}

fn num(attrs: &BTreeMap<String, String>, key: &str) -> Option<f64> {
    attrs.get(key).and_then(|v| v.parse().ok())
}

/// C1: the text itself.
fn check_text(text: &str, v: &mut Vec<String>) {
    if text.starts_with('\u{feff}') {
        v.push("C1: BOM".into());
    }
    if !text.starts_with("#EXTM3U\n") {
        v.push("C1: #EXTM3U is not the first line".into());
    }
    if text.chars().any(|c| c.is_control() && c != '\n' && c != '\r') {
        v.push("C1: control character".into());
    }
    if text.matches("#EXT-X-VERSION:").count() > 1 {
        v.push("C1: more than one EXT-X-VERSION".into());
    }
}

/// Parses and checks one media playlist (C1–C12 within one file).
pub fn check_media(text: &str) -> (Media, Vec<String>) {
    let mut v = Vec::new();
    check_text(text, &mut v);
    let mut m = Media::default();
    let mut cur = Segment::default();
    let mut pending_extinf: Option<f64> = None;
    let mut current_map: Option<String> = None;
    let mut seen_segment_tag = false;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let (tag, value) = line.split_once(':').unwrap_or((line, ""));
        if line.starts_with('#') {
            *counts.entry(tag).or_default() += 1;
        }
        match tag {
            "#EXT-X-VERSION" => m.version = value.parse().ok(),
            "#EXT-X-TARGETDURATION" => {
                if seen_segment_tag {
                    v.push("C2: TARGETDURATION after a segment".into());
                }
                m.target_duration = value.parse().ok();
            }
            "#EXT-X-MEDIA-SEQUENCE" => {
                if seen_segment_tag {
                    v.push("C3: MEDIA-SEQUENCE after the first segment".into());
                }
                m.media_sequence = value.parse().ok();
            }
            "#EXT-X-DISCONTINUITY-SEQUENCE" => m.discontinuity_sequence = value.parse().unwrap_or(0),
            "#EXT-X-PLAYLIST-TYPE" if !text.contains("#EXT-X-ENDLIST") => {
                v.push("C4: live playlist with EXT-X-PLAYLIST-TYPE".into())
            }
            "#EXT-X-PART-INF" => m.part_target = num(&attributes(value), "PART-TARGET"),
            "#EXT-X-SERVER-CONTROL" => {
                m.server_control = Some(line.to_string());
                m.attrs = attributes(value);
            }
            "#EXT-X-SKIP" => {
                if seen_segment_tag {
                    v.push("C10: EXT-X-SKIP after a segment".into());
                }
                m.skipped = num(&attributes(value), "SKIPPED-SEGMENTS").unwrap_or(0.0) as u64;
            }
            "#EXT-X-DISCONTINUITY" => {
                if !cur.parts.is_empty() {
                    v.push("C5: DISCONTINUITY after the segment's first EXT-X-PART".into());
                }
                seen_segment_tag = true;
                cur.discontinuity = true;
            }
            "#EXT-X-MAP" => {
                if !cur.parts.is_empty() {
                    v.push("C5: MAP after the segment's first EXT-X-PART".into());
                }
                let uri = attributes(value).get("URI").cloned();
                if uri.is_none() {
                    v.push("C5: MAP without URI".into());
                }
                current_map = uri;
            }
            "#EXT-X-PROGRAM-DATE-TIME" => {
                if !cur.parts.is_empty() {
                    v.push("C5: PROGRAM-DATE-TIME after the segment's first EXT-X-PART".into());
                }
                seen_segment_tag = true;
                cur.pdt = Some(value.to_string());
            }
            "#EXT-X-PART" => {
                seen_segment_tag = true;
                let a = attributes(value);
                let (Some(uri), Some(duration)) = (a.get("URI"), num(&a, "DURATION")) else {
                    v.push(format!("C6: EXT-X-PART without URI or DURATION: {line}"));
                    continue;
                };
                cur.parts.push(Part {
                    uri: uri.clone(),
                    duration,
                    independent: a.get("INDEPENDENT").is_some_and(|x| x == "YES"),
                });
            }
            "#EXTINF" => {
                seen_segment_tag = true;
                if !value.contains(',') {
                    v.push(format!("C1: EXTINF without the comma: {line}"));
                }
                pending_extinf = value.split(',').next().and_then(|d| d.parse().ok());
                if pending_extinf.is_none() {
                    v.push(format!("C1: bad EXTINF: {line}"));
                }
            }
            "#EXT-X-PRELOAD-HINT" => {
                let a = attributes(value);
                match (a.get("TYPE"), a.get("URI")) {
                    (Some(t), Some(u)) => m.hints.push((t.clone(), u.clone())),
                    _ => v.push("C8: PRELOAD-HINT without TYPE or URI".into()),
                }
            }
            "#EXT-X-RENDITION-REPORT" => {
                let a = attributes(value);
                match (a.get("URI"), num(&a, "LAST-MSN")) {
                    (Some(u), Some(msn)) => {
                        m.reports
                            .push((u.clone(), msn as u64, num(&a, "LAST-PART").map(|p| p as u64)))
                    }
                    _ => v.push("C9: RENDITION-REPORT without URI or LAST-MSN".into()),
                }
            }
            "#EXT-X-ENDLIST" => m.endlist = true,
            _ if !line.starts_with('#') => {
                let Some(d) = pending_extinf.take() else {
                    v.push(format!("C1: URI without EXTINF: {line}"));
                    continue;
                };
                cur.uri = Some(line.to_string());
                cur.duration = Some(d);
                cur.map = current_map.clone();
                m.segments.push(std::mem::take(&mut cur));
            }
            _ => {}
        }
    }
    if !cur.parts.is_empty() {
        cur.map = current_map.clone();
        m.segments.push(cur);
    }
    let first = m.media_sequence.unwrap_or(0) + m.skipped;
    for (i, s) in m.segments.iter_mut().enumerate() {
        s.msn = first + i as u64;
    }
    for (tag, n) in counts {
        let single = [
            "#EXT-X-TARGETDURATION",
            "#EXT-X-MEDIA-SEQUENCE",
            "#EXT-X-DISCONTINUITY-SEQUENCE",
            "#EXT-X-PART-INF",
            "#EXT-X-SERVER-CONTROL",
            "#EXT-X-SKIP",
            "#EXT-X-ENDLIST",
        ];
        if n > 1 && single.contains(&tag) {
            v.push(format!("C1: {tag} appears {n} times"));
        }
    }
    check_media_rules(&m, text, &mut v);
    (m, v)
}

fn check_media_rules(m: &Media, text: &str, v: &mut Vec<String>) {
    let version = m.version.unwrap_or(1);
    if version < 6 {
        v.push(format!("C1: EXT-X-VERSION {version} < 6 with EXT-X-MAP"));
    }
    if m.skipped > 0 && version < 9 {
        v.push("C1: EXT-X-VERSION < 9 with EXT-X-SKIP".into());
    }
    if !m.hints.is_empty() && version < 10 {
        v.push("C1: EXT-X-VERSION < 10 with PRELOAD-HINT (Apple)".into());
    }
    let Some(td) = m.target_duration.filter(|&t| t >= 1) else {
        v.push("C2: EXT-X-TARGETDURATION missing or < 1".into());
        return;
    };
    if m.media_sequence.is_none() {
        v.push("C3: EXT-X-MEDIA-SEQUENCE missing".into());
    }
    for s in m.complete() {
        let d = s.duration.unwrap_or(0.0);
        if d.round() as u64 > td {
            v.push(format!("C2: segment {} of {d} s rounds above TD {td}", s.msn));
        }
        if d > td as f64 + 0.5 {
            v.push(format!("C2: segment {} exceeds TD by more than 0.5 s", s.msn));
        }
    }
    for s in &m.segments {
        if s.map.is_none() {
            v.push(format!("C5: segment {} without EXT-X-MAP", s.msn));
        }
        if s.pdt.is_none() {
            v.push(format!("C11: segment {} without PROGRAM-DATE-TIME", s.msn));
        }
    }
    // C6
    let has_parts = m.segments.iter().any(|s| !s.parts.is_empty());
    if has_parts != m.part_target.is_some() {
        v.push("C6: PART-INF present iff the playlist has parts".into());
    }
    if let Some(pt) = m.part_target {
        let last = m.segments.len().saturating_sub(1);
        for (si, s) in m.segments.iter().enumerate() {
            let n = s.parts.len();
            for (i, p) in s.parts.iter().enumerate() {
                if p.duration > pt + 1e-9 {
                    v.push(format!(
                        "C6: part {} of {} s is longer than PART-TARGET {pt}",
                        p.uri, p.duration
                    ));
                }
                let last_of_segment = i + 1 == n && (s.uri.is_some() || si != last);
                if p.duration < 0.85 * pt && !p.independent && !last_of_segment {
                    v.push(format!(
                        "C6: part {} of {} s is under 85% of PART-TARGET",
                        p.uri, p.duration
                    ));
                }
                let expected = format!("part_{}_{i}", s.msn);
                if !p.uri.starts_with(&expected) {
                    v.push(format!(
                        "C12: part {} should be {expected} (index from 0, parent's MSN)",
                        p.uri
                    ));
                }
            }
            if let (Some(d), false) = (s.duration, s.parts.is_empty()) {
                let sum: f64 = s.parts.iter().map(|p| p.duration).sum();
                if (sum - d).abs() > 0.002 {
                    v.push(format!("C12: segment {} lasts {d} s, its parts {sum} s", s.msn));
                }
            }
        }
        // C7
        match m.attrs.get("PART-HOLD-BACK").and_then(|x| x.parse::<f64>().ok()) {
            None => v.push("C7: PART-HOLD-BACK missing with PART-INF".into()),
            Some(phb) if phb + 1e-9 < 3.0 * pt => {
                v.push(format!("C7: PART-HOLD-BACK {phb} < 3x PART-TARGET {pt}"))
            }
            _ => {}
        }
        if !m.endlist && !m.hints.iter().any(|(t, _)| t == "PART") {
            v.push("C8: live playlist with parts but no PART preload hint".into());
        }
    }
    if let Some(hb) = m.attrs.get("HOLD-BACK").and_then(|x| x.parse::<f64>().ok())
        && hb + 1e-9 < 3.0 * td as f64
    {
        v.push(format!("C7: HOLD-BACK {hb} < 3x TD"));
    }
    match m.attrs.get("CAN-SKIP-UNTIL").and_then(|x| x.parse::<f64>().ok()) {
        Some(skip) if skip + 1e-9 < 6.0 * td as f64 => v.push(format!("C7: CAN-SKIP-UNTIL {skip} < 6x TD")),
        None if m.skipped > 0 => v.push("C10: EXT-X-SKIP without CAN-SKIP-UNTIL".into()),
        _ => {}
    }
    if m.attrs.contains_key("CAN-SKIP-DATERANGES") && !m.attrs.contains_key("CAN-SKIP-UNTIL") {
        v.push("C7: CAN-SKIP-DATERANGES without CAN-SKIP-UNTIL".into());
    }
    if m.skipped > 0 && m.endlist {
        v.push("C10: EXT-X-SKIP with ENDLIST".into());
    }
    if m.skipped > 0
        && let Some(skip) = m.attrs.get("CAN-SKIP-UNTIL").and_then(|x| x.parse::<f64>().ok())
    {
        // What is not skipped reaches at least the Skip Boundary.
        let kept: f64 = m
            .segments
            .iter()
            .map(|s| {
                s.duration
                    .unwrap_or_else(|| s.parts.iter().map(|p| p.duration).sum())
            })
            .sum();
        if kept + 1e-6 < skip {
            v.push(format!(
                "C10: delta update keeps {kept} s, less than the Skip Boundary {skip} s"
            ));
        }
    }
    // C8
    if m.endlist && !m.hints.is_empty() {
        v.push("C8: PRELOAD-HINT with ENDLIST".into());
    }
    for t in ["PART", "MAP"] {
        if m.hints.iter().filter(|(ty, _)| ty == t).count() > 1 {
            v.push(format!("C8: more than one {t} hint"));
        }
    }
    if let Some((_, uri)) = m.hints.iter().find(|(t, _)| t == "PART")
        && m.part_uris().contains(uri)
    {
        v.push(format!("C8: hint {uri} names a part already published"));
    }
    // C9
    for (uri, _, part) in &m.reports {
        if uri.starts_with('/') || uri.contains("://") {
            v.push(format!("C9: rendition report URI {uri} is not relative"));
        }
        if has_parts && part.is_none() {
            v.push(format!("C9: rendition report {uri} without LAST-PART"));
        }
    }
    let _ = text;
}

/// Invariants across reloads of one media playlist (C2, C3, C4, C7, C8, C11).
#[derive(Default)]
pub struct Reloads {
    prev: Option<Media>,
    /// Hinted part URIs not seen yet.
    hinted: BTreeMap<String, (u64, u64)>,
    uris: BTreeMap<u64, String>,
    pdts: BTreeMap<u64, String>,
    pub reloads: usize,
}

fn part_position(uri: &str) -> Option<(u64, u64)> {
    let rest = uri.strip_prefix("part_")?;
    let rest = rest.split(['.', '?']).next()?;
    let (a, b) = rest.split_once('_')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl Reloads {
    /// Checks `m` (not a delta update) against every earlier reload.
    pub fn check(&mut self, m: &Media) -> Vec<String> {
        let mut v = Vec::new();
        self.reloads += 1;
        for s in m.complete() {
            if let Some(old) = self.uris.insert(s.msn, s.uri.clone().unwrap_or_default())
                && Some(&old) != s.uri.as_ref()
            {
                v.push(format!("C3: MSN {} changed URI from {old}", s.msn));
            }
            if let Some(pdt) = &s.pdt
                && let Some(old) = self.pdts.insert(s.msn, pdt.clone())
                && &old != pdt
            {
                v.push(format!("C11: PDT of MSN {} moved from {old} to {pdt}", s.msn));
            }
        }
        let published = m.part_uris();
        let newest = m.last_part();
        self.hinted.retain(|uri, &mut pos| {
            if published.contains(uri) {
                return false;
            }
            if let Some(n) = newest
                && n >= pos
            {
                // A later part exists: the hinted one must have appeared,
                // unless its parent's parts left the live edge.
                let parent_has_parts = m.segments.iter().any(|s| s.msn == pos.0 && !s.parts.is_empty());
                if parent_has_parts || m.segments.last().is_some_and(|s| s.msn == pos.0) {
                    v.push(format!("C8: hinted part {uri} never appeared"));
                }
                return false;
            }
            true
        });
        for (t, uri) in &m.hints {
            if t == "PART"
                && let Some(pos) = part_position(uri)
            {
                self.hinted.insert(uri.clone(), pos);
            }
        }
        if let Some(p) = &self.prev {
            if p.target_duration != m.target_duration {
                v.push("C2: TARGETDURATION changed across reloads".into());
            }
            if p.part_target != m.part_target {
                v.push("C7: PART-TARGET changed across reloads".into());
            }
            if p.server_control != m.server_control {
                v.push("C7: SERVER-CONTROL changed across reloads".into());
            }
            let (ps, ms) = (p.media_sequence.unwrap_or(0), m.media_sequence.unwrap_or(0));
            if ms < ps {
                v.push(format!("C3: MEDIA-SEQUENCE went back from {ps} to {ms}"));
            }
            if m.discontinuity_sequence < p.discontinuity_sequence {
                v.push("C3: DISCONTINUITY-SEQUENCE went back".into());
            }
            // Removed only from the head: every old complete segment at or
            // after the new head is still there.
            let removed_disc = p.complete().filter(|s| s.msn < ms && s.discontinuity).count() as u64;
            if ms > ps && m.discontinuity_sequence != p.discontinuity_sequence + removed_disc {
                v.push("C3: DISCONTINUITY-SEQUENCE does not count the removed discontinuities".into());
            }
            for s in p.complete().filter(|s| s.msn >= ms) {
                if !m.complete().any(|n| n.msn == s.msn) {
                    v.push(format!("C3: segment {} removed from the middle or tail", s.msn));
                }
            }
            if p.endlist && !m.endlist {
                v.push("C4: ENDLIST removed".into());
            }
        }
        self.prev = Some(m.clone());
        v
    }
}

/// The multivariant playlist and the media playlists it names, by the
/// URI used in it (C2 same TD, C7 identical SERVER-CONTROL, C9 rendition
/// reports for every other playlist, C11 PDT everywhere, C16).
pub fn check_multivariant(text: &str, media: &BTreeMap<String, Media>) -> Vec<String> {
    let mut v = Vec::new();
    check_text(text, &mut v);
    let mut uris = Vec::new();
    let mut groups: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    let mut stream: Option<BTreeMap<String, String>> = None;
    let mut variants = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("#EXT-X-MEDIA:") {
            let a = attributes(rest);
            for k in ["TYPE", "GROUP-ID", "NAME"] {
                if !a.contains_key(k) {
                    v.push(format!("C16: EXT-X-MEDIA without {k}"));
                }
            }
            if a.get("TYPE").is_some_and(|t| t != "VIDEO") && !a.contains_key("LANGUAGE") {
                v.push("C16: EXT-X-MEDIA without LANGUAGE (Apple 8.10)".into());
            }
            if a.get("DEFAULT").is_some_and(|d| d == "YES") && a.get("AUTOSELECT").is_some_and(|d| d != "YES")
            {
                v.push("C16: DEFAULT=YES without AUTOSELECT=YES".into());
            }
            if let Some(u) = a.get("URI") {
                uris.push(u.clone());
            }
            groups
                .entry(a.get("GROUP-ID").cloned().unwrap_or_default())
                .or_default()
                .push(a);
        } else if let Some(rest) = line.strip_prefix("#EXT-X-STREAM-INF:") {
            stream = Some(attributes(rest));
        } else if !line.starts_with('#') && !line.is_empty() {
            let Some(a) = stream.take() else {
                v.push(format!("C16: URI {line} without STREAM-INF"));
                continue;
            };
            uris.push(line.to_string());
            variants.push((line.to_string(), a));
        }
    }
    for (g, members) in &groups {
        let names: BTreeSet<&String> = members.iter().filter_map(|a| a.get("NAME")).collect();
        if names.len() != members.len() {
            v.push(format!("C16: NAMEs not unique in group {g}"));
        }
        if members
            .iter()
            .filter(|a| a.get("DEFAULT").is_some_and(|d| d == "YES"))
            .count()
            > 1
        {
            v.push(format!("C16: more than one DEFAULT=YES in group {g}"));
        }
    }
    if variants.is_empty() {
        v.push("C16: no variant".into());
    }
    let video_variants = variants
        .iter()
        .filter(|(_, a)| a.contains_key("RESOLUTION"))
        .count();
    let bitrates: BTreeSet<&String> = variants.iter().filter_map(|(_, a)| a.get("BANDWIDTH")).collect();
    if video_variants > 1 && bitrates.len() < 2 {
        v.push("C16: several variants but a single bitrate (Apple 9.9)".into());
    }
    for (uri, a) in &variants {
        for k in ["BANDWIDTH", "AVERAGE-BANDWIDTH", "CODECS"] {
            if !a.contains_key(k) {
                v.push(format!("C16: variant {uri} without {k}"));
            }
        }
        let video = a.get("CODECS").is_some_and(|c| c.contains("avc1"));
        if video {
            for k in ["RESOLUTION", "FRAME-RATE"] {
                if !a.contains_key(k) {
                    v.push(format!("C16: video variant {uri} without {k}"));
                }
            }
        }
        if let Some(g) = a.get("AUDIO") {
            if !groups.contains_key(g) {
                v.push(format!("C16: variant {uri} names unknown audio group {g}"));
            }
            if let (Some(codecs), Some(members)) = (a.get("CODECS"), groups.get(g)) {
                for m in members {
                    if let Some(mu) = m.get("URI").and_then(|u| media.get(u))
                        && mu.segments.is_empty()
                    {
                        v.push(format!("C16: audio rendition {:?} empty", m.get("URI")));
                    }
                }
                if codecs.split(',').count() < 2 {
                    v.push(format!("C16: variant {uri} CODECS does not list its audio codec"));
                }
            }
        }
    }
    // Media playlists named here.
    let listed: Vec<&Media> = uris.iter().filter_map(|u| media.get(u)).collect();
    if listed.len() != uris.len() {
        v.push("C16: a named media playlist was not supplied to the checker".into());
    }
    let tds: BTreeSet<Option<u64>> = listed.iter().map(|m| m.target_duration).collect();
    if tds.len() > 1 {
        v.push(format!("C2: TARGETDURATION differs across renditions: {tds:?}"));
    }
    let controls: BTreeSet<&Option<String>> = listed.iter().map(|m| &m.server_control).collect();
    if controls.len() > 1 {
        v.push("C7: SERVER-CONTROL differs across media playlists".into());
    }
    for (u, m) in uris.iter().filter_map(|u| media.get(u).map(|m| (u, m))) {
        if m.endlist {
            continue;
        }
        let own = u.rsplit_once('/').map_or("", |(d, _)| d);
        let own_dir = own.rsplit('/').next().unwrap_or("");
        let others: BTreeSet<String> = uris
            .iter()
            .filter(|o| *o != u)
            .filter_map(|o| o.rsplit('/').nth(1).map(str::to_string))
            .collect();
        let reported: BTreeSet<String> = m
            .reports
            .iter()
            .filter_map(|(r, _, _)| r.rsplit('/').nth(1).map(str::to_string))
            .collect();
        for o in &others {
            if !reported.contains(o) {
                v.push(format!("C9: {own_dir} has no rendition report for {o}"));
            }
        }
        if m.segments.iter().any(|s| s.pdt.is_none()) || m.segments.is_empty() {
            v.push(format!("C11: {u} lacks PDT"));
        }
    }
    v
}

/// A box walker: (type, start, end) of the boxes in `data[from..to]`.
pub fn boxes(data: &[u8], from: usize, to: usize) -> Vec<([u8; 4], usize, usize)> {
    let mut out = Vec::new();
    let mut at = from;
    while at + 8 <= to {
        let size = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let kind: [u8; 4] = data[at + 4..at + 8].try_into().unwrap();
        if size < 8 || at + size > to {
            break;
        }
        out.push((kind, at, at + size));
        at += size;
    }
    out
}

fn find(data: &[u8], from: usize, to: usize, kind: &[u8; 4]) -> Option<(usize, usize)> {
    boxes(data, from, to)
        .into_iter()
        .find(|(k, _, _)| k == kind)
        .map(|(_, s, e)| (s, e))
}

/// C17 for an init section.
pub fn check_init(data: &[u8]) -> Vec<String> {
    let mut v = Vec::new();
    let top = boxes(data, 0, data.len());
    let kinds: Vec<[u8; 4]> = top.iter().map(|b| b.0).collect();
    if kinds.first() != Some(b"ftyp") || kinds.get(1) != Some(b"moov") {
        v.push("C17: init is not ftyp then moov".into());
        return v;
    }
    if kinds.iter().any(|k| k == b"mdat" || k == b"moof") {
        v.push("C17: init carries samples".into());
    }
    let (fs, fe) = (top[0].1, top[0].2);
    let brands: Vec<&[u8]> = data[fs + 16..fe].chunks(4).collect();
    let major = &data[fs + 8..fs + 12];
    if !brands
        .iter()
        .chain([&major])
        .any(|b| matches!(*b, b"iso6" | b"iso7" | b"iso8" | b"iso9"))
    {
        v.push("C17: ftyp not compatible with iso6+".into());
    }
    let (ms, me) = (top[1].1, top[1].2);
    if find(data, ms + 8, me, b"mvex").is_none() {
        v.push("C17: no mvex".into());
    }
    if let Some((s, _)) = find(data, ms + 8, me, b"mvhd") {
        let version = data[s + 8];
        let dur = if version == 1 {
            u64::from_be_bytes(data[s + 32..s + 40].try_into().unwrap())
        } else {
            u64::from(u32::from_be_bytes(data[s + 24..s + 28].try_into().unwrap()))
        };
        if dur != 0 {
            v.push("C17: mvhd duration is not 0".into());
        }
    }
    let traks = boxes(data, ms + 8, me)
        .into_iter()
        .filter(|b| &b.0 == b"trak")
        .count();
    if traks != 1 {
        v.push(format!("C17: {traks} traks"));
    }
    if data.windows(4).any(|w| w == b"avc3") {
        v.push("C17: avc3 instead of avc1 (Apple 1.10)".into());
    }
    v
}

/// One fragment's facts: (tfdt, sum of sample durations, first sample is sync).
pub fn fragment_facts(data: &[u8], from: usize, to: usize) -> Result<(u64, u64, bool), String> {
    let (ms, me) = find(data, from, to, b"moof").ok_or("C17: no moof")?;
    let (ts, te) = find(data, ms + 8, me, b"traf").ok_or("C17: no traf")?;
    let (hs, _) = find(data, ts + 8, te, b"tfhd").ok_or("C17: no tfhd")?;
    let tfhd_flags = u32::from_be_bytes(data[hs + 8..hs + 12].try_into().unwrap()) & 0xff_ffff;
    if tfhd_flags & 0x02_0000 == 0 {
        return Err("C17: tfhd without default-base-is-moof".into());
    }
    if tfhd_flags & 0x01 != 0 {
        return Err("C17: tfhd base-data-offset (external addressing)".into());
    }
    let (ds, _) = find(data, ts + 8, te, b"tfdt").ok_or("C17: traf without tfdt")?;
    let tfdt = if data[ds + 8] == 1 {
        u64::from_be_bytes(data[ds + 12..ds + 20].try_into().unwrap())
    } else {
        u64::from(u32::from_be_bytes(data[ds + 12..ds + 16].try_into().unwrap()))
    };
    let (rs, _) = find(data, ts + 8, te, b"trun").ok_or("C17: no trun")?;
    let flags = u32::from_be_bytes(data[rs + 8..rs + 12].try_into().unwrap()) & 0xff_ffff;
    let count = u32::from_be_bytes(data[rs + 12..rs + 16].try_into().unwrap()) as usize;
    let mut at = rs + 16;
    if flags & 0x1 != 0 {
        at += 4;
    }
    let mut first_flags = None;
    if flags & 0x4 != 0 {
        first_flags = Some(u32::from_be_bytes(data[at..at + 4].try_into().unwrap()));
        at += 4;
    }
    let mut total = 0u64;
    for i in 0..count {
        if flags & 0x100 != 0 {
            total += u64::from(u32::from_be_bytes(data[at..at + 4].try_into().unwrap()));
            at += 4;
        }
        if flags & 0x200 != 0 {
            at += 4;
        }
        if flags & 0x400 != 0 {
            if i == 0 {
                first_flags = Some(u32::from_be_bytes(data[at..at + 4].try_into().unwrap()));
            }
            at += 4;
        }
        if flags & 0x800 != 0 {
            at += 4;
        }
    }
    let sync = first_flags.is_some_and(|f| f & 0x0001_0000 == 0);
    Ok((tfdt, total, sync))
}

/// C17 for a segment or part: every `moof` has a `traf` with `tfdt`,
/// addressing relative to the moof. Returns (first tfdt, end decode
/// time, starts with a sync sample) for continuity checks.
pub fn check_fragments(data: &[u8]) -> Result<(u64, u64, bool), String> {
    let top = boxes(data, 0, data.len());
    if top.last().is_none_or(|b| b.2 != data.len()) {
        return Err("C17: trailing bytes that are not boxes".into());
    }
    let mut first = None;
    let mut end = None;
    for (k, s, _) in &top {
        if k == b"moof" {
            let next_mdat = top
                .iter()
                .find(|b| b.1 > *s && &b.0 == b"mdat")
                .ok_or("C17: moof without mdat")?;
            let (tfdt, dur, sync) = fragment_facts(data, *s, next_mdat.2)?;
            if let Some(e) = end
                && e != tfdt
            {
                return Err(format!("C17: tfdt {tfdt} does not continue {e}"));
            }
            first.get_or_insert((tfdt, sync));
            end = Some(tfdt + dur);
        }
    }
    let (tfdt, sync) = first.ok_or("C17: no fragment")?;
    Ok((tfdt, end.unwrap_or(tfdt), sync))
}
