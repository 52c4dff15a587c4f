//! Which peer addresses a client may relay to.
//!
//! The default denies every address that reaches the server's own network:
//! loopback, private, shared (CGNAT), link-local, site-local, multicast,
//! reserved, NAT64 and documentation ranges, in IPv4, IPv6, IPv4-mapped and
//! IPv4-compatible IPv6 form (the CVE-2020-26262 and CVE-2026-27624 classes).
//! An allow-list opens exactly the networks it names. A few ranges stay closed
//! even when allow-listed because no legitimate peer lives there.
//!
//! An embedding service whose clients only ever talk to it (an SFU's media
//! sockets) uses [`PeerFilter::only`]: exactly those socket addresses, IP
//! and port, and nothing else.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An IP network in CIDR form, e.g. `10.0.0.0/8` or `::1/128`; a bare
/// address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// Why a peer address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// In the built-in deny list and not allow-listed.
    Reserved,
    /// In a range that is never relayed to (unspecified, Teredo, 6to4).
    AlwaysBlocked,
    /// The server's own listener or relay port range.
    OwnAddress,
    /// Not one of the socket addresses of a [`PeerFilter::only`] filter.
    NotListed,
}

/// The peer filter: the built-in deny list, an operator allow-list, and the
/// server's own addresses.
#[derive(Debug, Clone, Default)]
pub struct PeerFilter {
    allow: Vec<IpNet>,
    /// When set, the only peers there are (canonical addresses).
    only: Option<Vec<SocketAddr>>,
    own: Vec<SocketAddr>,
    own_relay: Option<(IpAddr, u16, u16)>,
}

/// RFC 6890 special-purpose IPv4 ranges plus loopback/multicast/reserved
/// (eturnal's "recommended" list).
const DENY_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    (Ipv4Addr::new(192, 88, 99, 0), 24),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

const DENY_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128),
    // NAT64: the well-known prefix (RFC 6052) and the local-use one
    // (RFC 8215), which a site's translator maps onto its own IPv4 network.
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96),
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    // Site-local (deprecated by RFC 3879, still routed internally by some).
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

const ALWAYS_V4: &[(Ipv4Addr, u8)] = &[(Ipv4Addr::new(0, 0, 0, 0), 8)];

const ALWAYS_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::UNSPECIFIED, 128),
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32),
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16),
];

impl PeerFilter {
    /// A filter with the default deny list and this allow-list.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self {
            allow,
            only: None,
            own: Vec::new(),
            own_relay: None,
        }
    }

    /// A filter that relays to exactly these socket addresses (IP and
    /// port) and to nothing else, whatever their network.
    pub fn only(peers: impl IntoIterator<Item = SocketAddr>) -> Self {
        let mut peers: Vec<SocketAddr> = peers
            .into_iter()
            .map(|a| SocketAddr::new(canonical(a.ip()), a.port()))
            .collect();
        peers.sort_unstable();
        peers.dedup();
        Self {
            only: Some(peers),
            ..Self::default()
        }
    }

    /// Never relay to the server's own listeners or relay ports, even when
    /// their network is allow-listed: that would loop traffic through us.
    pub fn set_own_addresses(&mut self, listeners: Vec<SocketAddr>, relay: (IpAddr, u16, u16)) {
        self.own = listeners;
        self.own_relay = Some(relay);
    }

    /// Checks a peer IP (CreatePermission installs per-IP permissions).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Denied> {
        let ip = canonical(ip);
        if in_table(ip, ALWAYS_V4, ALWAYS_V6) {
            return Err(Denied::AlwaysBlocked);
        }
        if let Some(only) = &self.only {
            return match only.iter().any(|a| a.ip() == ip) {
                true => Ok(()),
                false => Err(Denied::NotListed),
            };
        }
        if self.allow.iter().any(|net| net.contains(ip)) {
            return Ok(());
        }
        if in_table(ip, DENY_V4, DENY_V6) {
            return Err(Denied::Reserved);
        }
        Ok(())
    }

    /// Checks a full peer address: the IP rules plus the server's own ports.
    pub fn check_addr(&self, addr: SocketAddr) -> Result<(), Denied> {
        self.check_ip(addr.ip())?;
        let ip = canonical(addr.ip());
        if let Some(only) = &self.only
            && !only.contains(&SocketAddr::new(ip, addr.port()))
        {
            return Err(Denied::NotListed);
        }
        let same = |a: IpAddr| canonical(a) == ip || a.is_unspecified();
        if self
            .own
            .iter()
            .any(|own| own.port() == addr.port() && same(own.ip()))
        {
            return Err(Denied::OwnAddress);
        }
        if let Some((relay_ip, lo, hi)) = self.own_relay
            && same(relay_ip)
            && (lo..=hi).contains(&addr.port())
        {
            return Err(Denied::OwnAddress);
        }
        Ok(())
    }
}

/// The form the rules are written in: IPv4-mapped (`::ffff:a.b.c.d`) and
/// IPv4-compatible (`::a.b.c.d`, RFC 4291 §2.5.5.1) addresses become the
/// IPv4 address they carry; `::` and `::1` stay IPv6.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if v6.segments()[..6] == [0; 6] && !v6.is_unspecified() && !v6.is_loopback() => {
            let [.., a, b, c, d] = v6.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, d))
        }
        other => other,
    }
}

fn in_table(ip: IpAddr, v4: &[(Ipv4Addr, u8)], v6: &[(Ipv6Addr, u8)]) -> bool {
    match ip {
        IpAddr::V4(ip) => v4
            .iter()
            .any(|&(net, prefix)| IpNet::new(IpAddr::V4(net), prefix).contains(IpAddr::V4(ip))),
        IpAddr::V6(ip) => v6
            .iter()
            .any(|&(net, prefix)| IpNet::new(IpAddr::V6(net), prefix).contains(IpAddr::V6(ip))),
    }
}

impl IpNet {
    /// A network; the prefix is clamped to the address width.
    pub fn new(addr: IpAddr, prefix: u8) -> Self {
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        Self {
            addr,
            prefix: prefix.min(max),
        }
    }

    /// Whether `ip` (canonicalized) lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An allow-list entry that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid network {0:?}: expected ADDR or ADDR/PREFIX")]
pub struct ParseIpNetError(String);

impl FromStr for IpNet {
    type Err = ParseIpNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseIpNetError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| err())?;
        let max = if canonical(addr).is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| err())?,
            None => max,
        };
        // A mapped address with a v6-sized prefix describes the v4 network.
        let prefix = if addr.is_ipv6() && canonical(addr).is_ipv4() {
            prefix.checked_sub(96).ok_or_else(err)?
        } else {
            prefix
        };
        if prefix > max {
            return Err(err());
        }
        Ok(Self::new(addr, prefix))
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> serde::Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_denies_internal_ranges_in_every_form() {
        let f = PeerFilter::default();
        for s in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "::",
            "10.1.2.3",
            "::ffff:10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "2001::1",
            "2002::1",
            // IPv4-compatible forms of internal IPv4 addresses.
            "::127.0.0.1",
            "::10.1.2.3",
            "::169.254.169.254",
            "::192.168.0.1",
            // NAT64 local-use (RFC 8215) and site-local.
            "64:ff9b:1::a00:1",
            "64:ff9b:1:ffff::1",
            "fec0::1",
            "feff:ffff::1",
        ] {
            assert!(f.check_ip(ip(s)).is_err(), "{s} must be denied");
        }
        for s in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(f.check_ip(ip(s)).is_ok(), "{s} must be allowed");
        }
    }

    #[test]
    fn allow_list_opens_exactly_what_it_names() {
        let f = PeerFilter::new(vec!["127.0.0.5".parse().unwrap()]);
        assert!(f.check_ip(ip("127.0.0.5")).is_ok());
        assert!(f.check_ip(ip("::ffff:127.0.0.5")).is_ok());
        assert!(f.check_ip(ip("127.0.0.6")).is_err());
        assert!(f.check_ip(ip("::1")).is_err());
        let f = PeerFilter::new(vec!["0.0.0.0/0".parse().unwrap()]);
        assert_eq!(f.check_ip(ip("0.0.0.0")), Err(Denied::AlwaysBlocked));
    }

    #[test]
    fn ipv4_compatible_addresses_follow_the_ipv4_rules() {
        assert_eq!(canonical(ip("::127.0.0.1")), ip("127.0.0.1"));
        assert_eq!(canonical(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(canonical(ip("::1")), ip("::1"));
        assert_eq!(canonical(ip("::")), ip("::"));
        // An IPv6 allow-list does not open IPv4 networks through this form.
        let f = PeerFilter::new(vec!["::/0".parse().unwrap()]);
        assert_eq!(f.check_ip(ip("::127.0.0.1")), Err(Denied::Reserved));
        let f = PeerFilter::new(vec!["127.0.0.5".parse().unwrap()]);
        assert!(f.check_ip(ip("::127.0.0.5")).is_ok());
    }

    #[test]
    fn only_filter_allows_exactly_its_socket_addresses() {
        let f = PeerFilter::only([
            "127.0.0.1:40000".parse().unwrap(),
            "[::ffff:127.0.0.1]:40001".parse().unwrap(),
        ]);
        assert!(
            f.check_ip(ip("127.0.0.1")).is_ok(),
            "a permission to the media IP"
        );
        assert!(f.check_addr("127.0.0.1:40000".parse().unwrap()).is_ok());
        assert!(f.check_addr("[::ffff:127.0.0.1]:40000".parse().unwrap()).is_ok());
        assert!(f.check_addr("[::127.0.0.1]:40001".parse().unwrap()).is_ok());
        for other in [
            "127.0.0.1:21000",
            "127.0.0.1:39999",
            "127.0.0.2:40000",
            "8.8.8.8:40000",
        ] {
            assert!(
                f.check_addr(other.parse().unwrap()).is_err(),
                "{other} is not a media socket"
            );
        }
        assert_eq!(f.check_ip(ip("8.8.8.8")), Err(Denied::NotListed));
        assert_eq!(f.check_ip(ip("0.0.0.0")), Err(Denied::AlwaysBlocked));
    }

    #[test]
    fn own_addresses_are_never_peers() {
        let mut f = PeerFilter::new(vec!["127.0.0.0/8".parse().unwrap()]);
        f.set_own_addresses(
            vec!["0.0.0.0:3478".parse().unwrap()],
            (ip("127.0.0.1"), 50000, 50010),
        );
        assert_eq!(
            f.check_addr("127.0.0.1:3478".parse().unwrap()),
            Err(Denied::OwnAddress)
        );
        assert_eq!(
            f.check_addr("127.0.0.1:50005".parse().unwrap()),
            Err(Denied::OwnAddress)
        );
        assert!(f.check_addr("127.0.0.1:50011".parse().unwrap()).is_ok());
    }

    #[test]
    fn parses_networks() {
        assert!("10.0.0.0/8".parse::<IpNet>().unwrap().contains(ip("10.9.9.9")));
        assert!(
            "::ffff:10.0.0.0/104"
                .parse::<IpNet>()
                .unwrap()
                .contains(ip("10.9.9.9"))
        );
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nonsense".parse::<IpNet>().is_err());
        assert!("::/0".parse::<IpNet>().unwrap().contains(ip("2606::1")));
    }
}
