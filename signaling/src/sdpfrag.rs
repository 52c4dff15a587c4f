//! RFC 8840 `application/trickle-ice-sdpfrag` bodies, and the few SDP lines
//! the HTTP layer reads from offers and answers (ICE credentials, ice-lite).
//!
//! Everything here is a pure function over text from the network: bad input
//! is an `Err`, never a panic.

use std::fmt::Write as _;

use crate::media::IceRestartAnswer;

/// A parsed PATCH body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    pub ufrag: Option<String>,
    pub pwd: Option<String>,
    /// The first `m=` line's value (without `m=`), echoed in a restart answer.
    pub media: Option<String>,
    /// The first `a=mid:` value.
    pub mid: Option<String>,
    /// `a=candidate:` values (without `a=`) the node can use: UDP, not mDNS.
    pub candidates: Vec<String>,
    /// How many candidates were discarded (TCP, other transports, `.local` names).
    pub dropped: usize,
    pub end_of_candidates: bool,
}

/// Why a fragment was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FragError {
    #[error("empty fragment")]
    Empty,
    #[error("line {line}: not an SDP line")]
    NotSdp { line: usize },
    #[error("line {line}: malformed {what}")]
    Malformed { line: usize, what: &'static str },
    #[error("a=ice-pwd without a=ice-ufrag, or the reverse")]
    HalfCredentials,
}

/// ICE credentials and options read from an offer or answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IceParams {
    pub ufrag: Option<String>,
    pub pwd: Option<String>,
    pub ice_lite: bool,
    /// The `a=ice-options:` value, repeated in a restart answer (RFC 9725 §4.3.3).
    pub ice_options: Option<String>,
}

/// Parses a trickle-ice-sdpfrag body (RFC 8840 §9.1).
pub fn parse(body: &str) -> Result<Fragment, FragError> {
    let mut frag = Fragment::default();
    let mut any = false;
    for (i, raw) in body.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        any = true;
        let Some((kind, value)) = line.split_once('=') else {
            return Err(FragError::NotSdp { line: line_no });
        };
        if kind.len() != 1 || !kind.as_bytes()[0].is_ascii_lowercase() {
            return Err(FragError::NotSdp { line: line_no });
        }
        match kind {
            "m" => {
                if value.split(' ').count() < 4 {
                    return Err(FragError::Malformed {
                        line: line_no,
                        what: "m= line",
                    });
                }
                frag.media.get_or_insert_with(|| value.to_owned());
            }
            "a" => parse_attribute(value, line_no, &mut frag)?,
            // Other line types (c=, o=, s=...) carry nothing for trickle.
            _ => {}
        }
    }
    if !any {
        return Err(FragError::Empty);
    }
    if frag.ufrag.is_some() != frag.pwd.is_some() {
        return Err(FragError::HalfCredentials);
    }
    Ok(frag)
}

fn parse_attribute(value: &str, line: usize, frag: &mut Fragment) -> Result<(), FragError> {
    let (name, arg) = value.split_once(':').unwrap_or((value, ""));
    match name {
        "ice-ufrag" => {
            check_ice_chars(arg, line, "a=ice-ufrag")?;
            frag.ufrag = Some(arg.to_owned());
        }
        "ice-pwd" => {
            check_ice_chars(arg, line, "a=ice-pwd")?;
            frag.pwd = Some(arg.to_owned());
        }
        "mid" => {
            if arg.is_empty() {
                return Err(FragError::Malformed { line, what: "a=mid" });
            }
            frag.mid.get_or_insert_with(|| arg.to_owned());
        }
        "candidate" => match check_candidate(arg) {
            Some(Usable::Yes) => frag.candidates.push(value.to_owned()),
            Some(Usable::No) => frag.dropped += 1,
            None => {
                return Err(FragError::Malformed {
                    line,
                    what: "a=candidate",
                });
            }
        },
        "end-of-candidates" => frag.end_of_candidates = true,
        // ice-options, group, and anything newer: nothing to act on.
        _ => {}
    }
    Ok(())
}

/// `ice-char` = ALPHA / DIGIT / "+" / "/" (RFC 8839 §5.4), at most 256 of them.
fn check_ice_chars(s: &str, line: usize, what: &'static str) -> Result<(), FragError> {
    let ok = !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if ok {
        Ok(())
    } else {
        Err(FragError::Malformed { line, what })
    }
}

enum Usable {
    Yes,
    No,
}

/// Checks `foundation component transport priority address port typ type ...`
/// (RFC 8839 §5.1). UDP with a literal address is usable; TCP, other
/// transports and mDNS names are discarded (RFC 9725 §4.3.2).
fn check_candidate(arg: &str) -> Option<Usable> {
    let f: Vec<&str> = arg.split_ascii_whitespace().collect();
    let [
        _foundation,
        component,
        transport,
        priority,
        address,
        port,
        typ,
        cand_type,
        ..,
    ] = f[..]
    else {
        return None;
    };
    let well_formed = component.parse::<u16>().is_ok()
        && priority.parse::<u32>().is_ok()
        && port.parse::<u16>().is_ok()
        && typ == "typ"
        && !cand_type.is_empty()
        && !address.is_empty();
    if !well_formed {
        return None;
    }
    let usable = transport.eq_ignore_ascii_case("udp") && !address.to_ascii_lowercase().ends_with(".local");
    Some(if usable { Usable::Yes } else { Usable::No })
}

/// Reads the first `a=ice-ufrag`/`a=ice-pwd` (session or media level),
/// `a=ice-lite` and `a=ice-options` of an SDP.
pub fn ice_params(sdp: &str) -> IceParams {
    let mut p = IceParams::default();
    for line in sdp.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
            p.ufrag.get_or_insert_with(|| v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
            p.pwd.get_or_insert_with(|| v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("a=ice-options:") {
            p.ice_options.get_or_insert_with(|| v.trim().to_owned());
        } else if line == "a=ice-lite" {
            p.ice_lite = true;
        }
    }
    p
}

/// Whether a body looks like SDP at all: its first line is `v=0` (RFC 8866 §5).
pub fn looks_like_sdp(body: &str) -> bool {
    let body = body.trim_start_matches('\u{feff}').trim_start();
    body.lines().next().is_some_and(|l| l.trim_end() == "v=0")
}

/// The 200 body of an ICE restart (RFC 9725 §4.3.3): the node's new
/// credentials and candidates, the answer's ice-lite/ice-options repeated,
/// under the m= line and mid the client's fragment named.
pub fn restart_answer(answer: &IceRestartAnswer, ice_options: Option<&str>, request: &Fragment) -> String {
    let mut out = String::new();
    // `write!` to a String cannot fail.
    if answer.ice_lite {
        out.push_str("a=ice-lite\r\n");
    }
    if let Some(opts) = ice_options {
        let _ = write!(out, "a=ice-options:{opts}\r\n");
    }
    let _ = write!(
        out,
        "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n",
        answer.ufrag, answer.pwd
    );
    if let Some(m) = &request.media {
        let _ = write!(out, "m={m}\r\n");
    }
    if let Some(mid) = &request.mid {
        let _ = write!(out, "a=mid:{mid}\r\n");
    }
    for c in &answer.candidates {
        let c = c.strip_prefix("a=").unwrap_or(c);
        let _ = write!(out, "a={c}\r\n");
    }
    out.push_str("a=end-of-candidates\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRICKLE: &str = "a=ice-ufrag:EsAw\r\n\
        a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
        a=mid:0\r\n\
        a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1\r\n\
        a=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host generation 0\r\n\
        a=candidate:473322822 1 tcp 1518280447 192.0.2.1 9 typ host tcptype active\r\n\
        a=candidate:2 1 udp 2122260223 4f5a1c2e-1b2d-4d5c-9a3b-0c1d2e3f4a5b.local 50000 typ host\r\n\
        a=end-of-candidates\r\n";

    #[test]
    fn parses_a_trickle_fragment_and_drops_tcp_and_mdns() {
        let f = parse(TRICKLE).unwrap();
        assert_eq!(f.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(f.pwd.as_deref(), Some("P2uYro0UCOQ4zxjKXaWCBui1"));
        assert_eq!(f.media.as_deref(), Some("audio 9 UDP/TLS/RTP/SAVPF 111"));
        assert_eq!(f.mid.as_deref(), Some("0"));
        assert_eq!(f.candidates.len(), 2);
        assert!(f.candidates[0].starts_with("candidate:1387637174 1 udp"));
        assert_eq!(f.dropped, 2);
        assert!(f.end_of_candidates);
    }

    #[test]
    fn end_of_candidates_alone_is_a_fragment() {
        let f = parse("a=end-of-candidates\n").unwrap();
        assert!(f.end_of_candidates && f.candidates.is_empty() && f.ufrag.is_none());
    }

    #[test]
    fn malformed_fragments_are_errors() {
        assert_eq!(parse(""), Err(FragError::Empty));
        assert_eq!(parse("\r\n \r\n"), Err(FragError::Empty));
        assert_eq!(parse("hello world"), Err(FragError::NotSdp { line: 1 }));
        assert_eq!(parse("{\"json\": 1}"), Err(FragError::NotSdp { line: 1 }));
        assert!(matches!(
            parse("a=candidate:1 1 udp"),
            Err(FragError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            parse("a=candidate:1 x udp 5 1.2.3.4 5 typ host"),
            Err(FragError::Malformed { .. })
        ));
        assert!(matches!(
            parse("a=candidate:1 1 udp 5 1.2.3.4 99999 typ host"),
            Err(FragError::Malformed { .. })
        ));
        assert!(matches!(
            parse("a=ice-ufrag:bad ufrag!\na=ice-pwd:x"),
            Err(FragError::Malformed { .. })
        ));
        assert_eq!(parse("a=ice-ufrag:abcd\n"), Err(FragError::HalfCredentials));
        assert!(matches!(parse("m=audio\n"), Err(FragError::Malformed { .. })));
    }

    #[test]
    fn reads_ice_params_from_the_first_section() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n\
            a=ice-options:trickle\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
            a=ice-ufrag:first\r\na=ice-pwd:firstpwd\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
            a=ice-ufrag:second\r\na=ice-pwd:secondpwd\r\n";
        assert_eq!(
            ice_params(sdp),
            IceParams {
                ufrag: Some("first".into()),
                pwd: Some("firstpwd".into()),
                ice_lite: true,
                ice_options: Some("trickle".into()),
            }
        );
    }

    #[test]
    fn sdp_sniffing() {
        assert!(looks_like_sdp("v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\n"));
        assert!(looks_like_sdp("\u{feff}v=0\n"));
        assert!(!looks_like_sdp("hello"));
        assert!(!looks_like_sdp(""));
        assert!(!looks_like_sdp("o=- 0\nv=0\n"));
    }

    #[test]
    fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet = b"a=:candidate ice-ufrag pwd m\r\n0123456789.local udp tcp typ host \xff\x00/+";
        for _ in 0..20_000 {
            let len = rng.random_range(0..200);
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse(&text);
            let _ = ice_params(&text);
            let _ = looks_like_sdp(&text);
        }
        // Mutations of a valid fragment, one byte at a time.
        for i in 0..TRICKLE.len() {
            let mut b = TRICKLE.as_bytes().to_vec();
            b[i] = b' ';
            let _ = parse(&String::from_utf8_lossy(&b));
            let _ = parse(&TRICKLE[..i]); // TRICKLE is ASCII
        }
    }

    #[test]
    fn restart_answer_repeats_lite_options_and_mid() {
        let answer = IceRestartAnswer {
            ufrag: "newU".into(),
            pwd: "newpasswordnewpassword".into(),
            candidates: vec!["candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host".into()],
            ice_lite: true,
        };
        let req = parse(TRICKLE).unwrap();
        let body = restart_answer(&answer, Some("trickle"), &req);
        assert_eq!(
            body,
            "a=ice-lite\r\na=ice-options:trickle\r\na=ice-ufrag:newU\r\na=ice-pwd:newpasswordnewpassword\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
             a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n"
        );
        // What we produce parses as a fragment again.
        let back = parse(&body).unwrap();
        assert_eq!(back.ufrag.as_deref(), Some("newU"));
        assert_eq!(back.candidates.len(), 1);
    }
}
