//! Offer and answer checks the WHIP/WHEP rules need and str0m does not make.
//!
//! str0m parses and negotiates; this module only reads the m-line shape so a
//! bad offer gets a 4xx with a reason instead of a half-accepted answer
//! (RFC 9725 §4.4.2–4.4.3).

use signaling::MediaError;

/// What a peer intends with its offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// WHIP: the offer sends media.
    Publish,
    /// WHEP: the offer receives media.
    Play,
}

#[derive(Debug, Default)]
struct Section {
    kind: String,
    port_zero: bool,
    direction: Option<String>,
    msid_stream: Option<String>,
    /// `a=rtpmap` encoding names, upper case, in order, each once.
    codecs: Vec<String>,
    /// `a=bundle-only`: port 0 in an offer, yet not rejected (RFC 9143
    /// §6; Firefox's `max-bundle` offers).
    bundle_only: bool,
}

impl Section {
    /// Offered for use: a port, or port 0 with `a=bundle-only`.
    fn offered(&self) -> bool {
        !self.port_zero || self.bundle_only
    }
}

fn sections(sdp: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(rest) = line.strip_prefix("m=") {
            let mut parts = rest.split_whitespace();
            let kind = parts.next().unwrap_or_default().to_owned();
            let port_zero = parts.next() == Some("0");
            out.push(Section {
                kind,
                port_zero,
                ..Section::default()
            });
            continue;
        }
        let Some(section) = out.last_mut() else { continue };
        match line {
            "a=sendonly" | "a=recvonly" | "a=sendrecv" | "a=inactive" => {
                section.direction = Some(line[2..].to_owned());
            }
            "a=bundle-only" => section.bundle_only = true,
            _ => {
                if let Some(msid) = line.strip_prefix("a=msid:") {
                    section.msid_stream = msid.split_whitespace().next().map(str::to_owned);
                } else if let Some(map) = line.strip_prefix("a=rtpmap:")
                    && let Some(name) = map.split_whitespace().nth(1).and_then(|e| e.split('/').next())
                {
                    let name = name.to_ascii_uppercase();
                    if !section.codecs.contains(&name) {
                        section.codecs.push(name);
                    }
                }
            }
        }
    }
    out
}

/// Checks an offer's shape before it reaches str0m.
pub fn check_offer(sdp: &str, intent: Intent) -> Result<(), MediaError> {
    let media: Vec<Section> = sections(sdp)
        .into_iter()
        .filter(|s| s.kind == "audio" || s.kind == "video")
        .collect();
    if media.is_empty() {
        return Err(MediaError::Unprocessable(
            "offer has no audio or video m-line".into(),
        ));
    }
    for kind in ["audio", "video"] {
        let n = media.iter().filter(|s| s.kind == kind && s.offered()).count();
        if n > 1 {
            return Err(MediaError::Unprocessable(format!(
                "offer has {n} {kind} m-lines; one MediaStream carries at most one track per kind"
            )));
        }
    }
    for s in media.iter().filter(|s| s.offered()) {
        let dir = s.direction.as_deref().unwrap_or("sendrecv");
        let ok = match intent {
            Intent::Publish => matches!(dir, "sendonly" | "sendrecv"),
            Intent::Play => matches!(dir, "recvonly" | "sendrecv"),
        };
        if !ok {
            let want = if intent == Intent::Publish {
                "sendonly"
            } else {
                "recvonly"
            };
            return Err(MediaError::Unprocessable(format!(
                "{} m-line is {dir}; this endpoint needs {want}",
                s.kind
            )));
        }
    }
    if intent == Intent::Publish {
        let mut streams = media
            .iter()
            .filter(|s| s.offered())
            .filter_map(|s| s.msid_stream.as_deref());
        if let Some(first) = streams.next()
            && streams.any(|s| s != first)
        {
            return Err(MediaError::Unprocessable(
                "m-lines carry different msid streams".into(),
            ));
        }
    }
    Ok(())
}

/// Rejects an answer in which str0m had to refuse an offered m-line
/// (RFC 9725 §4.4.3: no partially successful answers), `bundle-only`
/// lines included.
pub fn check_answer(offer: &str, answer: &str) -> Result<(), MediaError> {
    let offered = sections(offer);
    let answered = sections(answer);
    for (i, o) in offered.iter().enumerate() {
        if !o.offered() || !(o.kind == "audio" || o.kind == "video") {
            continue;
        }
        let Some(a) = answered.get(i) else {
            return Err(MediaError::Unprocessable(format!(
                "{} m-line {i} was not answered",
                o.kind
            )));
        };
        if a.port_zero || a.direction.as_deref() == Some("inactive") {
            return Err(MediaError::Unprocessable(format!(
                "no supported codec for the {} m-line (supported: Opus, VP8, H.264, VP9, AV1)",
                o.kind
            )));
        }
    }
    Ok(())
}

/// An offer as str0m should read it. RFC 7587 §7 writes Opus as
/// `opus/48000/2`; GStreamer's `webrtcbin` writes `OPUS/48000` when its
/// caps carry no `encoding-params`, and str0m refuses that line, so the
/// viewer would get no audio. Such a line gets its `/2`.
pub fn lenient_offer(sdp: &str) -> std::borrow::Cow<'_, str> {
    let bare_opus = |line: &str| {
        line.strip_prefix("a=rtpmap:")
            .and_then(|m| m.split_whitespace().nth(1))
            .is_some_and(|enc| {
                let mut parts = enc.split('/');
                parts.next().is_some_and(|n| n.eq_ignore_ascii_case("opus"))
                    && parts.next() == Some("48000")
                    && parts.next().is_none()
            })
    };
    if !sdp.lines().any(|l| bare_opus(l.trim_end())) {
        return std::borrow::Cow::Borrowed(sdp);
    }
    let mut out = String::with_capacity(sdp.len() + 8);
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        out.push_str(body);
        if bare_opus(body) {
            out.push_str("/2");
        }
        out.push_str(&line[body.len()..]);
    }
    std::borrow::Cow::Owned(out)
}

/// The video codecs of an SDP's first video m-line that is not rejected
/// (port 0 without `a=bundle-only`): `a=rtpmap` names, upper case, each
/// once, in order, leaving out the formats that carry no picture of their
/// own (RTX, RED, FEC); `None` without such an m-line.
pub fn video_codecs(sdp: &str) -> Option<Vec<String>> {
    let section = sections(sdp)
        .into_iter()
        .find(|s| s.kind == "video" && s.offered())?;
    Some(
        section
            .codecs
            .into_iter()
            .filter(|c| !matches!(c.as_str(), "RTX" | "RED" | "ULPFEC" | "FLEXFEC-03" | "FLEXFEC"))
            .collect(),
    )
}

/// The first `a=ice-ufrag:` value of an SDP.
pub fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
}

/// Replaces every `a=ice-ufrag`/`a=ice-pwd` of an offer and its candidates,
/// so a WHIP/WHEP ICE restart (which arrives as a PATCH fragment) can be fed
/// to str0m as the remote offer it understands.
pub fn with_ice_credentials(offer: &str, ufrag: &str, pwd: &str, candidates: &[String]) -> String {
    let mut out = String::with_capacity(offer.len() + 256);
    let mut in_first_media = false;
    let mut added = false;
    for line in offer.lines().map(str::trim_end) {
        if line.starts_with("m=") {
            if in_first_media && !added {
                push_candidates(&mut out, candidates);
                added = true;
            }
            in_first_media = !added;
        }
        if line.starts_with("a=ice-ufrag:") {
            out.push_str("a=ice-ufrag:");
            out.push_str(ufrag);
        } else if line.starts_with("a=ice-pwd:") {
            out.push_str("a=ice-pwd:");
            out.push_str(pwd);
        } else if line.starts_with("a=candidate:") || line == "a=end-of-candidates" {
            continue;
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    if !added {
        push_candidates(&mut out, candidates);
    }
    out
}

fn push_candidates(out: &mut String, candidates: &[String]) {
    for c in candidates {
        out.push_str("a=");
        out.push_str(c.strip_prefix("a=").unwrap_or(c));
        out.push_str("\r\n");
    }
}

/// Appends `a=end-of-candidates` to every media section: the node gathers
/// everything before answering and never trickles (RFC 9725 §4.3.2).
pub fn with_end_of_candidates(answer: &str) -> String {
    let mut out = String::with_capacity(answer.len() + 128);
    let mut in_media = false;
    for line in answer.lines().map(str::trim_end) {
        if line.starts_with("m=") {
            if in_media {
                out.push_str("a=end-of-candidates\r\n");
            }
            in_media = true;
        }
        if line.is_empty() {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    if in_media {
        out.push_str("a=end-of-candidates\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUB: &str = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\na=msid:s a\r\n\
                       m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\na=msid:s v\r\n";

    #[test]
    fn accepts_one_track_per_kind() {
        assert!(check_offer(PUB, Intent::Publish).is_ok());
        assert!(check_offer(PUB, Intent::Play).is_err());
    }

    #[test]
    fn rejects_two_video_lines_and_mixed_streams() {
        let two = format!("{PUB}m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\na=msid:s w\r\n");
        assert!(matches!(
            check_offer(&two, Intent::Publish),
            Err(MediaError::Unprocessable(_))
        ));
        let mixed = PUB.replace("a=msid:s v", "a=msid:t v");
        assert!(matches!(
            check_offer(&mixed, Intent::Publish),
            Err(MediaError::Unprocessable(_))
        ));
    }

    #[test]
    fn video_codecs_are_the_first_video_lines_pictures() {
        let offer = "v=0\r\nm=audio 9 X 111\r\na=rtpmap:111 opus/48000/2\r\n\
                     m=video 9 X 96 97 98 99 100\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\n\
                     a=rtpmap:98 vp9/90000\r\na=rtpmap:99 VP9/90000\r\na=rtpmap:100 AV1/90000\r\n\
                     a=rtpmap:101 red/90000\r\na=rtpmap:102 ulpfec/90000\r\n";
        assert_eq!(
            video_codecs(offer),
            Some(vec!["VP8".to_owned(), "VP9".to_owned(), "AV1".to_owned()])
        );
        assert_eq!(video_codecs("v=0\r\nm=audio 9 X 111\r\n"), None);
        assert_eq!(
            video_codecs("v=0\r\nm=video 0 X 96\r\na=rtpmap:96 VP8/90000\r\n"),
            None
        );
        // Firefox's max-bundle offer: port 0, bundle-only, not rejected.
        let bundled = "v=0\r\nm=video 0 X 120\r\na=bundle-only\r\na=recvonly\r\na=rtpmap:120 VP8/90000\r\n";
        assert_eq!(video_codecs(bundled), Some(vec!["VP8".to_owned()]));
    }

    #[test]
    fn bundle_only_lines_are_checked_like_the_others() {
        // Firefox's max-bundle offer puts port 0 and `a=bundle-only` on
        // every m-line after the first.
        let offer = "v=0\r\nm=audio 9 X 111\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n\
                     m=video 0 X 120\r\na=bundle-only\r\na=sendonly\r\na=rtpmap:120 VP8/90000\r\n";
        assert!(check_offer(offer, Intent::Publish).is_ok());
        let err = check_offer(offer, Intent::Play).unwrap_err().to_string();
        assert!(err.contains("audio m-line is sendonly"), "{err}");
        let two =
            format!("{offer}m=video 0 X 121\r\na=bundle-only\r\na=sendonly\r\na=rtpmap:121 VP8/90000\r\n");
        let err = check_offer(&two, Intent::Publish).unwrap_err().to_string();
        assert!(err.contains("2 video m-lines"), "{err}");
        // An answer that refuses a bundle-only line is no answer.
        let answer = "v=0\r\nm=audio 9 X 111\r\na=recvonly\r\nm=video 0 X 0\r\n";
        let err = check_answer(offer, answer).unwrap_err().to_string();
        assert!(err.contains("no supported codec for the video m-line"), "{err}");
        let answer = "v=0\r\nm=audio 9 X 111\r\na=recvonly\r\nm=video 9 X 120\r\na=recvonly\r\n";
        assert!(check_answer(offer, answer).is_ok());
    }

    #[test]
    fn bare_opus_gets_its_channel_count() {
        let gst = "v=0\r\nm=audio 0 X 111\r\na=bundle-only\r\na=rtpmap:111 OPUS/48000\r\na=fmtp:111 x\r\n";
        assert_eq!(
            lenient_offer(gst),
            "v=0\r\nm=audio 0 X 111\r\na=bundle-only\r\na=rtpmap:111 OPUS/48000/2\r\na=fmtp:111 x\r\n"
        );
        let lf = "a=rtpmap:96 opus/48000\n";
        assert_eq!(lenient_offer(lf), "a=rtpmap:96 opus/48000/2\n");
        // Already right, or not Opus at 48 kHz: untouched, not copied.
        for sdp in [
            "a=rtpmap:111 opus/48000/2\r\n",
            "a=rtpmap:0 PCMU/8000\r\n",
            "a=rtpmap:9 opus/16000\r\n",
        ] {
            assert!(matches!(lenient_offer(sdp), std::borrow::Cow::Borrowed(s) if s == sdp));
        }
    }

    #[test]
    fn restart_rewrites_credentials() {
        let offer = "v=0\r\na=ice-ufrag:old\r\na=ice-pwd:oldpwd\r\nm=audio 9 X 1\r\na=candidate:1 1 udp 1 1.2.3.4 5 typ host\r\nm=video 9 X 2\r\n";
        let out = with_ice_credentials(
            offer,
            "new",
            "newpwd",
            &["candidate:9 1 udp 1 5.6.7.8 9 typ host".into()],
        );
        assert!(out.contains("a=ice-ufrag:new\r\n") && out.contains("a=ice-pwd:newpwd\r\n"));
        assert!(!out.contains("1.2.3.4"));
        assert!(out.contains("a=candidate:9 1 udp 1 5.6.7.8 9 typ host\r\nm=video"));
    }
}
