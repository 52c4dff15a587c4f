//! Client addresses behind reverse proxies (`--trusted-proxy`, off by
//! default).
//!
//! Without trusted proxies the TCP peer is the client and no forwarding
//! header is read: a client cannot name another address to dodge its POST
//! rate limit. With them, a request whose TCP peer is in the set names
//! its client in `X-Forwarded-For`: the rightmost entry not itself a
//! trusted proxy (entries to its left were written by the client and
//! prove nothing). That address keys the POST rate limit and the log
//! lines; a trusted proxy's own connections are spared the per-client
//! connection cap (every client behind it shares its address), the total
//! cap still counts them.
//!
//! `X-Forwarded-Proto` and `X-Forwarded-Host` are not read: `Location`
//! and every other URL the node writes are relative, so they are right
//! behind any proxy.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use hyper::HeaderMap;
use ipnet::IpNet;

/// The most `X-Forwarded-For` entries walked (a chain of proxies is short;
/// the header's size is bounded by the HTTP parser as a whole).
const MAX_HOPS: usize = 16;

/// A set of proxy addresses (CIDR blocks or single addresses).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// A `--trusted-proxy` value that is neither an address nor a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadProxy(pub String);

impl fmt::Display for BadProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "trusted proxy {:?} is neither an address nor a CIDR block (10.0.0.0/8, 2001:db8::/32, 192.0.2.7)",
            self.0
        )
    }
}

impl std::error::Error for BadProxy {}

impl FromStr for TrustedProxies {
    type Err = BadProxy;

    /// Comma-separated blocks; the empty string is the empty set.
    fn from_str(s: &str) -> Result<Self, BadProxy> {
        let mut nets = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net = match part.parse::<IpNet>() {
                Ok(net) => net.trunc(),
                Err(_) => IpNet::from(part.parse::<IpAddr>().map_err(|_| BadProxy(part.to_owned()))?),
            };
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }
}

impl fmt::Debug for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(ToString::to_string))
            .finish()
    }
}

impl TrustedProxies {
    /// The union of several values (each comma-separated).
    pub fn parse_all<S: AsRef<str>>(values: &[S]) -> Result<Self, BadProxy> {
        let mut nets = Vec::new();
        for v in values {
            nets.extend(v.as_ref().parse::<TrustedProxies>()?.0);
        }
        Ok(TrustedProxies(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is one of the proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client a request came from: `peer` itself unless `peer` is a
    /// trusted proxy that forwarded it with `X-Forwarded-For`.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if !self.contains(peer.ip()) {
            return peer;
        }
        let mut client = peer;
        let entries = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>();
        let hops = entries.iter().rev().flat_map(|v| v.rsplit(','));
        for hop in hops.take(MAX_HOPS) {
            // An entry that does not parse (`unknown`, an obfuscated
            // identifier) ends the walk at the last proxy that vouched.
            let Some(ip) = parse_hop(hop.trim()) else {
                break;
            };
            client = SocketAddr::new(ip, 0);
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, `v4:port` or `[v6]:port`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    hop.parse::<SocketAddr>().ok().map(|a| a.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn peer(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 40000)
    }

    fn ip(client: SocketAddr) -> String {
        client.ip().to_string()
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let none = TrustedProxies::default();
        let c = none.client(peer("192.0.2.9"), &headers(&["203.0.113.5"]));
        assert_eq!(c, peer("192.0.2.9"));
    }

    #[test]
    fn an_untrusted_peer_cannot_name_another_client() {
        let t: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let c = t.client(peer("192.0.2.9"), &headers(&["203.0.113.5"]));
        assert_eq!(c, peer("192.0.2.9"));
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client() {
        let t: TrustedProxies = "10.0.0.0/8, 192.0.2.1".parse().unwrap();
        // The client wrote the first entry itself: it is not believed.
        let h = headers(&["1.1.1.1, 203.0.113.5", "10.1.2.3"]);
        assert_eq!(ip(t.client(peer("192.0.2.1"), &h)), "203.0.113.5");
        let h = headers(&["1.1.1.1, 203.0.113.5, 10.1.2.3"]);
        assert_eq!(ip(t.client(peer("10.9.9.9"), &h)), "203.0.113.5");
    }

    #[test]
    fn ports_v6_and_mapped_addresses_parse() {
        let t: TrustedProxies = "::1,127.0.0.1".parse().unwrap();
        let h = headers(&["[2001:db8::7]:5555"]);
        assert_eq!(ip(t.client(peer("::1"), &h)), "2001:db8::7");
        let h = headers(&["203.0.113.5:443"]);
        assert_eq!(ip(t.client(peer("::ffff:127.0.0.1"), &h)), "203.0.113.5");
    }

    #[test]
    fn unparsable_or_missing_entries_stop_at_the_last_proxy() {
        let t: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let h = headers(&["203.0.113.5, unknown, 10.0.0.2"]);
        assert_eq!(ip(t.client(peer("10.0.0.1"), &h)), "10.0.0.2");
        assert_eq!(t.client(peer("10.0.0.1"), &HeaderMap::new()), peer("10.0.0.1"));
        // Only proxies: the leftmost proxy is the best known client.
        let h = headers(&["10.0.0.3, 10.0.0.2"]);
        assert_eq!(ip(t.client(peer("10.0.0.1"), &h)), "10.0.0.3");
    }

    #[test]
    fn a_long_chain_is_walked_only_so_far() {
        let t: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let chain = vec!["10.0.0.9"; 100].join(",");
        let h = headers(&[&format!("203.0.113.5,{chain}")]);
        assert_eq!(ip(t.client(peer("10.0.0.1"), &h)), "10.0.0.9");
    }

    #[test]
    fn values_parse_or_name_the_bad_one() {
        let t = TrustedProxies::parse_all(&["10.0.0.0/8,192.0.2.7", "2001:db8::/32"]).unwrap();
        assert!(t.contains("10.200.0.1".parse().unwrap()));
        assert!(t.contains("192.0.2.7".parse().unwrap()));
        assert!(!t.contains("192.0.2.8".parse().unwrap()));
        assert!(t.contains("2001:db8::1".parse().unwrap()));
        // Host bits are ignored, as in a routing table.
        let t: TrustedProxies = "10.1.2.3/8".parse().unwrap();
        assert!(t.contains("10.200.0.1".parse().unwrap()));
        let e = "10.0.0.0/8,proxy.local".parse::<TrustedProxies>().unwrap_err();
        assert_eq!(e, BadProxy("proxy.local".into()));
        assert!("".parse::<TrustedProxies>().unwrap().is_empty());
    }
}
