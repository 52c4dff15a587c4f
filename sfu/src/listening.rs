//! The line `sfu serve` prints on stdout once it listens, and its parser:
//! the tests and `loadtest bench` start a node on port 0 and read back where
//! it is.

use std::net::SocketAddr;

/// Where a started node listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    pub http: SocketAddr,
    pub media: Vec<SocketAddr>,
}

/// `sfu listening on http://127.0.0.1:PORT (media UDP [127.0.0.1:A, 127.0.0.1:B])`
pub fn line(http: SocketAddr, media: &[SocketAddr]) -> String {
    format!("sfu listening on http://{http} (media UDP {media:?})")
}

/// Parses [`line`]'s output; `None` for any other line.
pub fn parse(line: &str) -> Option<Listening> {
    let rest = line.trim().strip_prefix("sfu listening on http://")?;
    let (http, rest) = rest.split_once(' ')?;
    let media = rest
        .strip_prefix("(media UDP [")?
        .strip_suffix("])")?
        .split(", ")
        .filter(|a| !a.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    Some(Listening {
        http: http.parse().ok()?,
        media,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let http: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let media: Vec<SocketAddr> = vec!["127.0.0.1:4000".parse().unwrap(), "[::1]:4001".parse().unwrap()];
        let l = line(http, &media);
        assert_eq!(parse(&format!("{l}\n")), Some(Listening { http, media }));
        assert_eq!(
            parse(&line(http, &[])),
            Some(Listening {
                http,
                media: Vec::new()
            })
        );
    }

    #[test]
    fn other_lines_are_none() {
        assert_eq!(parse(""), None);
        assert_eq!(parse("sfu listening on http://nowhere (media UDP [])"), None);
        assert_eq!(parse("error: address in use"), None);
    }
}
