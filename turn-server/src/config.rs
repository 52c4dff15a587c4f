//! Configuration: `clap` flags (each with an environment variable), an
//! optional TOML file with the same keys, flags overriding the file.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::auth::Credentials;
use crate::core::ServerConfig;
use crate::filter::{IpNet, PeerFilter};

/// Everything the driver needs. Build it in code to embed the server, or
/// from [`ServeArgs`] on the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// UDP and TCP listen address (same port for both).
    pub listen: SocketAddr,
    /// TLS listener, with its certificate chain and key (PEM).
    pub tls: Option<TlsConfig>,
    /// IP relay ports are bound on.
    pub relay_ip: IpAddr,
    /// IP advertised in XOR-RELAYED-ADDRESS when the server is behind 1:1 NAT.
    pub external_ip: Option<IpAddr>,
    /// Relay port range, inclusive (RFC 8656 §7.2 suggests 49152–65535).
    pub relay_ports: (u16, u16),
    /// Prometheus `/metrics` listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Concurrent TCP/TLS client connections.
    pub max_connections: usize,
    /// Protocol limits, credentials and the peer filter.
    pub server: ServerConfig,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Config {
    /// Loopback defaults, convenient for embedding and tests.
    pub fn loopback(realm: &str, auth_secret: Option<&str>) -> Self {
        let server = ServerConfig {
            realm: realm.to_owned(),
            credentials: Credentials {
                rest_secret: auth_secret.map(str::to_owned),
                users: BTreeMap::new(),
            },
            ..ServerConfig::default()
        };
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3478)),
            tls: None,
            relay_ip: IpAddr::from([127, 0, 0, 1]),
            external_ip: None,
            relay_ports: (49152, 65535),
            metrics_listen: None,
            max_connections: 10_000,
            server,
        }
    }
}

/// Invalid configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Parser)]
#[command(name = "turn-server", version, about = "WAVE TURN server (RFC 8656)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Print TURN REST API credentials as JSON.
    Credentials(CredentialsArgs),
}

#[derive(Debug, Args)]
pub struct CredentialsArgs {
    /// Shared secret (the server's --auth-secret).
    #[arg(long, env = "TURN_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: String,
    /// User id; quotas are counted per user.
    #[arg(long, env = "TURN_USER")]
    pub user: String,
    /// Validity, e.g. 300, 90s, 10m, 24h, 1d.
    #[arg(long, env = "TURN_TTL", default_value = "24h")]
    pub ttl: DurationArg,
    /// TURN URIs to list; default: udp and tcp URIs for --host.
    #[arg(long = "uri", env = "TURN_URIS", value_delimiter = ',')]
    pub uris: Vec<String>,
    /// host:port clients reach the server at.
    #[arg(long, env = "TURN_PUBLIC_HOST", default_value = "127.0.0.1:3478")]
    pub host: String,
}

macro_rules! serve_args {
    ($( $(#[$meta:meta])* $name:ident : $ty:ty ),* $(,)?) => {
        /// `turn-server serve` flags; also the keys of the TOML file.
        #[derive(Debug, Default, Args, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct ServeArgs {
            /// TOML file with any of these settings (kebab-case keys); flags win.
            #[arg(long, env = "TURN_CONFIG")]
            #[serde(skip)]
            pub config: Option<PathBuf>,
            $( $(#[$meta])* pub $name: $ty, )*
        }

        impl ServeArgs {
            fn or(self, file: ServeArgs) -> ServeArgs {
                ServeArgs {
                    config: self.config,
                    $( $name: Merge::merge(self.$name, file.$name), )*
                }
            }
        }
    };
}

serve_args! {
    /// UDP and TCP listen address [default: 0.0.0.0:3478].
    #[arg(long, env = "TURN_LISTEN")]
    listen: Option<SocketAddr>,
    /// Realm for long-term credentials [default: wave].
    #[arg(long, env = "TURN_REALM")]
    realm: Option<String>,
    /// TURN REST API shared secret (usernames `expiry:user`).
    #[arg(long, env = "TURN_AUTH_SECRET", hide_env_values = true)]
    auth_secret: Option<String>,
    /// Static users, `name:password`, repeatable.
    #[arg(long = "user", env = "TURN_USERS", value_delimiter = ',', hide_env_values = true)]
    #[serde(default)]
    users: Vec<String>,
    /// IP relay ports bind on [default: the listen IP; required if that is unspecified].
    #[arg(long, env = "TURN_RELAY_IP")]
    relay_ip: Option<IpAddr>,
    /// IP advertised as the relayed address (1:1 NAT) [default: relay IP].
    #[arg(long, env = "TURN_EXTERNAL_IP")]
    external_ip: Option<IpAddr>,
    /// Relay port range LOW-HIGH [default: 49152-65535].
    #[arg(long, env = "TURN_RELAY_PORTS")]
    relay_ports: Option<PortRange>,
    /// Peers to allow despite the default deny list (ADDR or CIDR), repeatable.
    #[arg(long = "allow-peer", env = "TURN_ALLOW_PEERS", value_delimiter = ',')]
    #[serde(default)]
    allow_peers: Vec<IpNet>,
    /// TLS listen address; needs --tls-cert and --tls-key.
    #[arg(long, env = "TURN_TLS_LISTEN")]
    tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for TLS.
    #[arg(long, env = "TURN_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, env = "TURN_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Prometheus /metrics listen address [default: off].
    #[arg(long, env = "TURN_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Allocations per user [default: 12].
    #[arg(long, env = "TURN_USER_QUOTA")]
    user_quota: Option<u32>,
    /// Allocations per client IP [default: 64].
    #[arg(long, env = "TURN_IP_QUOTA")]
    ip_quota: Option<u32>,
    /// Allocations in total [default: 16000].
    #[arg(long, env = "TURN_MAX_ALLOCATIONS")]
    max_allocations: Option<u32>,
    /// Permissions per allocation [default: 32].
    #[arg(long, env = "TURN_MAX_PERMISSIONS")]
    max_permissions: Option<usize>,
    /// Channels per allocation [default: 32].
    #[arg(long, env = "TURN_MAX_CHANNELS")]
    max_channels: Option<usize>,
    /// Also accept RFC 5766 channel numbers 0x5000-0x7FFF (old clients) [default: false].
    #[arg(long, env = "TURN_RFC5766_CHANNELS", num_args = 0..=1, default_missing_value = "true")]
    rfc5766_channels: Option<bool>,
    /// Relayed kbit/s per allocation [default: unlimited].
    #[arg(long, env = "TURN_ALLOCATION_KBPS")]
    allocation_kbps: Option<u64>,
    /// Relayed kbit/s for the whole server [default: unlimited].
    #[arg(long, env = "TURN_TOTAL_KBPS")]
    total_kbps: Option<u64>,
    /// Requests/s per source IP without an allocation [default: 20]. The
    /// burst allowed is one second's worth, and at least 50.
    #[arg(long, env = "TURN_UNAUTH_RATE")]
    unauth_rate: Option<f64>,
    /// Default allocation lifetime [default: 10m].
    #[arg(long, env = "TURN_DEFAULT_LIFETIME")]
    default_lifetime: Option<DurationArg>,
    /// Longest allocation lifetime [default: 1h].
    #[arg(long, env = "TURN_MAX_LIFETIME")]
    max_lifetime: Option<DurationArg>,
    /// Nonce validity [default: 10m].
    #[arg(long, env = "TURN_NONCE_LIFETIME")]
    nonce_lifetime: Option<DurationArg>,
    /// Concurrent TCP/TLS connections [default: 10000].
    #[arg(long, env = "TURN_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
}

trait Merge {
    fn merge(cli: Self, file: Self) -> Self;
}

impl<T> Merge for Option<T> {
    fn merge(cli: Self, file: Self) -> Self {
        cli.or(file)
    }
}

impl<T> Merge for Vec<T> {
    fn merge(cli: Self, file: Self) -> Self {
        if cli.is_empty() { file } else { cli }
    }
}

impl ServeArgs {
    /// Reads the TOML file if one is named, applies flags over it and
    /// defaults under both.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source: Box::new(source),
                })?
            }
            None => ServeArgs::default(),
        };
        self.or(file).into_config()
    }

    fn into_config(self) -> Result<Config, ConfigError> {
        let invalid = |s: String| ConfigError::Invalid(s);
        let listen = self
            .listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 3478)));
        let relay_ip = match self.relay_ip {
            Some(ip) => ip,
            None if !listen.ip().is_unspecified() => listen.ip(),
            None => {
                return Err(invalid(
                    "--relay-ip is required when --listen is an unspecified address".into(),
                ));
            }
        };
        if relay_ip.is_unspecified() {
            return Err(invalid("--relay-ip must be a concrete address".into()));
        }
        let mut users = BTreeMap::new();
        for u in self.users {
            let Some((name, password)) = u.split_once(':') else {
                return Err(invalid("--user takes name:password".into()));
            };
            users.insert(name.to_owned(), password.to_owned());
        }
        if self.auth_secret.is_none() && users.is_empty() {
            return Err(invalid(
                "no credentials: give --auth-secret or --user (nothing unauthenticated allocates)".into(),
            ));
        }
        let tls = match (self.tls_listen, self.tls_cert, self.tls_key) {
            (Some(listen), Some(cert), Some(key)) => Some(TlsConfig { listen, cert, key }),
            (None, None, None) => None,
            _ => {
                return Err(invalid(
                    "--tls-listen, --tls-cert and --tls-key go together".into(),
                ));
            }
        };
        let relay_ports = self.relay_ports.unwrap_or(PortRange(49152, 65535));
        let d = ServerConfig::default();
        let server = ServerConfig {
            realm: self.realm.unwrap_or(d.realm),
            credentials: Credentials {
                rest_secret: self.auth_secret,
                users,
            },
            peer_filter: PeerFilter::new(self.allow_peers),
            relay_ipv4: relay_ip.is_ipv4(),
            relay_ipv6: relay_ip.is_ipv6(),
            default_lifetime: self.default_lifetime.map_or(d.default_lifetime, |d| d.0),
            max_lifetime: self.max_lifetime.map_or(d.max_lifetime, |d| d.0),
            nonce_lifetime: self.nonce_lifetime.map_or(d.nonce_lifetime, |d| d.0),
            user_quota: self.user_quota.unwrap_or(d.user_quota),
            ip_quota: self.ip_quota.unwrap_or(d.ip_quota),
            max_allocations: self.max_allocations.unwrap_or(d.max_allocations),
            max_permissions: self.max_permissions.unwrap_or(d.max_permissions),
            max_channels: self.max_channels.unwrap_or(d.max_channels),
            rfc5766_channels: self.rfc5766_channels.unwrap_or(d.rfc5766_channels),
            allocation_bandwidth: self.allocation_kbps.map(|k| k * 1000 / 8),
            total_bandwidth: self.total_kbps.map(|k| k * 1000 / 8),
            unauth_rate: self.unauth_rate.unwrap_or(d.unauth_rate),
            // A raised rate raises the burst too: with a fixed burst, a crowd
            // of clients behind one address (a NAT, or a load test) that
            // arrives at once is dropped whatever the rate says.
            unauth_burst: self.unauth_rate.map_or(d.unauth_burst, |r| r.max(d.unauth_burst)),
            ..d
        };
        Ok(Config {
            listen,
            tls,
            relay_ip,
            external_ip: self.external_ip,
            relay_ports: (relay_ports.0, relay_ports.1),
            metrics_listen: self.metrics_listen,
            max_connections: self.max_connections.unwrap_or(10_000),
            server,
        })
    }
}

/// An inclusive port range `LOW-HIGH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || format!("invalid port range {s:?}: expected LOW-HIGH");
        let (lo, hi) = s.split_once('-').ok_or_else(err)?;
        let (lo, hi): (u16, u16) = (
            lo.trim().parse().map_err(|_| err())?,
            hi.trim().parse().map_err(|_| err())?,
        );
        if lo == 0 || lo > hi {
            return Err(err());
        }
        Ok(Self(lo, hi))
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A duration written as seconds (`300`) or with a unit (`90s`, `10m`,
/// `24h`, `1d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationArg(pub Duration);

impl FromStr for DurationArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        let mult = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(format!("invalid duration unit in {s:?}: use s, m, h or d")),
        };
        Ok(Self(Duration::from_secs(n.saturating_mul(mult))))
    }
}

impl<'de> Deserialize<'de> for DurationArg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(Self(Duration::from_secs(n))),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_unknown_keys_fail() {
        let file: ServeArgs =
            toml::from_str("realm = \"file\"\nuser-quota = 3\nauth-secret = \"s\"\n").unwrap();
        let cli = ServeArgs {
            realm: Some("cli".into()),
            listen: Some("127.0.0.1:3478".parse().unwrap()),
            ..ServeArgs::default()
        };
        let cfg = cli.or(file).into_config().unwrap();
        assert_eq!(cfg.server.realm, "cli");
        assert_eq!(cfg.server.user_quota, 3);
        assert!(toml::from_str::<ServeArgs>("bogus = 1").is_err());
    }

    #[test]
    fn refuses_to_run_without_credentials() {
        let args = ServeArgs {
            listen: Some("127.0.0.1:3478".parse().unwrap()),
            ..ServeArgs::default()
        };
        assert!(args.into_config().is_err());
    }

    #[test]
    fn parses_durations_and_ranges() {
        assert_eq!("10m".parse::<DurationArg>().unwrap().0.as_secs(), 600);
        assert_eq!("86400".parse::<DurationArg>().unwrap().0.as_secs(), 86400);
        assert!("5y".parse::<DurationArg>().is_err());
        assert_eq!(
            "50000-50010".parse::<PortRange>().unwrap(),
            PortRange(50000, 50010)
        );
        assert!("5-1".parse::<PortRange>().is_err());
    }
}
