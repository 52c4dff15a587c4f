//! `sfu serve` configuration: flags, each with an environment variable, over
//! an optional TOML file, over built-in defaults.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use turn_server::config::PortRange;

/// WAVE: a WebRTC SFU with WHIP publish and WHEP play.
#[derive(Debug, Parser)]
#[command(name = "sfu", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run one node (defaults: HTTP on 127.0.0.1:8080, media UDP on loopback, no auth).
    Serve(Box<ServeArgs>),
    /// Print an HS256 token for WHIP/WHEP.
    Token(TokenArgs),
}

/// Flags of `sfu serve`. Each overrides the same key of `--config`.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML file with any of the keys below (snake_case); flags override it.
    #[arg(long, env = "SFU_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP listen address for WHIP/WHEP/REST and the page [default: 127.0.0.1:8080].
    #[arg(long, env = "SFU_HTTP")]
    pub http: Option<SocketAddr>,
    /// IP the media UDP sockets bind [default: 127.0.0.1].
    #[arg(long, env = "SFU_MEDIA_IP")]
    pub media_ip: Option<IpAddr>,
    /// First media UDP port; worker i binds port+i. 0 picks free ports [default: 0].
    #[arg(long, env = "SFU_MEDIA_PORT")]
    pub media_port: Option<u16>,
    /// IP advertised in ICE candidates when the node is behind 1:1 NAT [default: the bound IP].
    #[arg(long, env = "SFU_PUBLIC_IP")]
    pub public_ip: Option<IpAddr>,
    /// HS256 secret for bearer tokens. Without one the node is open and binds loopback only.
    #[arg(long, env = "SFU_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,
    /// Media worker threads [default: one per core].
    #[arg(long, env = "SFU_WORKERS")]
    pub workers: Option<usize>,
    /// Place a room's WHEP viewers on the least loaded media worker, fed
    /// from the room's own worker, so one room's fan-out uses every core
    /// (`--spread-viewers false`: a whole room on one worker) [default: true with more than one worker].
    #[arg(long, env = "SFU_SPREAD_VIEWERS")]
    pub spread_viewers: Option<bool>,
    /// HTTP runtime threads (signalling, LL-HLS) [default: one per core the process may run on, at least 2].
    #[arg(long, env = "SFU_HTTP_THREADS")]
    pub http_threads: Option<usize>,
    /// Sessions the node accepts before answering 503 [default: 10000].
    #[arg(long, env = "SFU_MAX_PEERS")]
    pub max_peers: Option<usize>,
    /// Sessions one room accepts before answering 429 [default: 5000].
    #[arg(long, env = "SFU_MAX_ROOM_PEERS")]
    pub max_room_peers: Option<usize>,
    /// ICE server to advertise in `Link` headers: `URL` or `URL,username,credential`.
    /// Repeat the flag (or separate with `;` in the variable) for several.
    #[arg(long = "ice-server", env = "SFU_ICE_SERVERS", value_delimiter = ';')]
    pub ice_servers: Vec<String>,
    /// Run full ICE instead of ICE-lite [default: ICE-lite].
    #[arg(long, env = "SFU_FULL_ICE")]
    pub full_ice: bool,
    /// Bandwidth estimate (bit/s) a viewer starts from [default: 2500000].
    #[arg(long, env = "SFU_INITIAL_BWE")]
    pub initial_bwe: Option<u64>,
    /// Run the embedded TURN server in this process and advertise it, with
    /// fresh credentials, on every WHIP/WHEP 201 [default: off].
    #[arg(long, env = "SFU_TURN")]
    pub turn: bool,
    /// Embedded TURN: UDP and TCP listen address [default: 127.0.0.1:3478].
    #[arg(long, env = "SFU_TURN_LISTEN")]
    pub turn_listen: Option<SocketAddr>,
    /// Embedded TURN: realm [default: wave].
    #[arg(long, env = "SFU_TURN_REALM")]
    pub turn_realm: Option<String>,
    /// TURN REST API shared secret (usernames `expiry:user`). With --turn
    /// [default: --auth-secret, or a random secret when the node is open];
    /// with --turn-url, the external server's secret (coturn: static-auth-secret).
    #[arg(long, env = "SFU_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,
    /// Embedded TURN: IP relay ports bind on [default: the listen IP, else --media-ip].
    #[arg(long, env = "SFU_TURN_RELAY_IP")]
    pub turn_relay_ip: Option<IpAddr>,
    /// Embedded TURN: relay port range LOW-HIGH, minus the node's media ports [default: 49152-65535].
    #[arg(long, env = "SFU_TURN_RELAY_PORTS")]
    pub turn_relay_ports: Option<PortRange>,
    /// TURN URI to advertise (`turn:host:port?transport=udp`, `turns:...`); repeat
    /// for several. Without --turn it names an external server and needs
    /// --turn-secret [default with --turn: udp and tcp URIs of the listen address].
    #[arg(long = "turn-url", env = "SFU_TURN_URLS", value_delimiter = ';')]
    pub turn_urls: Vec<String>,
    /// Lifetime of the TURN credentials handed to each session; checked at
    /// Allocate only, so calls outlive it [default: 1h].
    #[arg(long, env = "SFU_TURN_TTL", value_parser = parse_duration)]
    pub turn_ttl: Option<Duration>,
    /// Do not serve rooms as LL-HLS under /hls/ [default: every room with an H.264 publisher].
    #[arg(long, env = "SFU_NO_HLS")]
    pub no_hls: bool,
    /// LL-HLS part target in milliseconds, 200-1000 [default: 334: a third
    /// of a second rounded up, so 10, 12, 15, 24, 25, 30, 50 and 60 fps all
    /// fill a part to 85-100 %].
    #[arg(long, env = "SFU_HLS_PART_MS")]
    pub hls_part_ms: Option<u64>,
    /// LL-HLS segment target in milliseconds (keyframes are requested at
    /// this period; TARGETDURATION is 1.5x, rounded up) [default: 2000].
    #[arg(long, env = "SFU_HLS_SEGMENT_MS")]
    pub hls_segment_ms: Option<u64>,
    /// LL-HLS DVR window [default: 30s].
    #[arg(long, env = "SFU_HLS_DVR", value_parser = parse_duration)]
    pub hls_dvr: Option<Duration>,
    /// How long an ended room's LL-HLS playlists (EXT-X-ENDLIST) stay
    /// served after its publisher left before the room's HLS state is
    /// removed [default: 60s].
    #[arg(long, env = "SFU_HLS_LINGER", value_parser = parse_duration)]
    pub hls_linger: Option<Duration>,
    /// Transcode an ABR ladder (half and quarter size, openh264) for
    /// publishers that send one H.264 layer; costs about half a core per
    /// 720p30 room [default: off].
    #[arg(long, env = "SFU_HLS_LADDER")]
    pub hls_ladder: bool,
    /// HMAC secret for signed HLS URLs (`?token=`); without one HLS is public.
    #[arg(long, env = "SFU_HLS_SECRET", hide_env_values = true)]
    pub hls_secret: Option<String>,
    /// hls.js's `dist` directory, served at /vendor/hls.js/ for the demo
    /// page's HLS player; relative paths start at the working directory
    /// [default: web/node_modules/hls.js/dist, installed by scripts/setup.sh].
    #[arg(long, env = "SFU_HLSJS_DIR")]
    pub hlsjs_dir: Option<PathBuf>,
    /// Serve LL-HLS, DASH and thumbnails to anyone, even with
    /// --auth-secret [default: with --auth-secret every /hls/ request needs
    /// a subscribe token for the room as `?token=` (or a signed token the
    /// playlists carry)].
    #[arg(long, env = "SFU_PUBLIC_HLS")]
    pub public_hls: bool,
    /// The `aud` every bearer token must carry [default: `aud` is not checked].
    #[arg(long, env = "SFU_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,
    /// Longest lifetime (exp - iat) of a token for one room; `0` for no
    /// limit. Tokens for `*` are not limited [default: 24h].
    #[arg(long, env = "SFU_MAX_TOKEN_TTL", value_parser = parse_duration)]
    pub max_token_ttl: Option<Duration>,
    /// Concurrent HTTP connections from one client (an IPv4 address or an
    /// IPv6 /64; loopback peers such as a local reverse proxy are exempt);
    /// more are answered 503 and closed [default: 256].
    #[arg(long, env = "SFU_MAX_HTTP_CONNECTIONS_PER_CLIENT")]
    pub max_http_connections_per_client: Option<usize>,
    /// Concurrent HTTP connections in total [default: 8192].
    #[arg(long, env = "SFU_MAX_HTTP_CONNECTIONS")]
    pub max_http_connections: Option<usize>,
    /// NATS server URL(s) for the cluster control plane (`nats://host:4222`,
    /// comma separated) [default: none, the in-process bus: a single node].
    #[arg(long, env = "SFU_NATS")]
    pub nats: Option<String>,
    /// NATS credentials file (`.creds`: user JWT and nkey seed).
    #[arg(long, env = "SFU_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// PEM CA certificates to verify the NATS server with; requires TLS.
    #[arg(long, env = "SFU_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// This node's id in the registry, 1-64 of [A-Za-z0-9_-] [default: host name + random suffix].
    #[arg(long, env = "SFU_NODE_ID")]
    pub node_id: Option<String>,
    /// Base URL other nodes redirect clients to [default: http://<the bound HTTP address>].
    #[arg(long, env = "SFU_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Interval of node heartbeats and room-claim refreshes [default: 1s].
    #[arg(long, env = "SFU_HEARTBEAT", value_parser = parse_duration)]
    pub heartbeat: Option<Duration>,
    /// A node and its room claims are dropped this long after its last heartbeat [default: 3s].
    #[arg(long, env = "SFU_NODE_TTL", value_parser = parse_duration)]
    pub node_ttl: Option<Duration>,
    /// Relative capacity for placing new rooms (a node of weight 2 gets about twice the rooms) [default: 1].
    #[arg(long, env = "SFU_NODE_WEIGHT")]
    pub node_weight: Option<f64>,
    #[command(flatten)]
    pub chat: ChatArgs,
}

/// Chat flags of `sfu serve` (the same keys in `--config`).
#[derive(Debug, Args, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatArgs {
    /// Messages sent to a client on join, at most [default: 100].
    #[arg(long, env = "SFU_CHAT_HISTORY")]
    pub chat_history: Option<usize>,
    /// Messages older than this are not kept or sent on join [default: 10m].
    #[arg(long, env = "SFU_CHAT_HISTORY_AGE", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub chat_history_age: Option<Duration>,
    /// Messages per second a streamer may send [default: 50].
    #[arg(long, env = "SFU_CHAT_RATE_STREAMER")]
    pub chat_rate_streamer: Option<f64>,
    /// Messages per second a moderator may send [default: 50].
    #[arg(long, env = "SFU_CHAT_RATE_MODERATOR")]
    pub chat_rate_moderator: Option<f64>,
    /// Messages per second a viewer may send [default: 10].
    #[arg(long, env = "SFU_CHAT_RATE_VIEWER")]
    pub chat_rate_viewer: Option<f64>,
    /// Messages per second an anonymous member (open nodes) may send [default: 2].
    #[arg(long, env = "SFU_CHAT_RATE_ANONYMOUS")]
    pub chat_rate_anonymous: Option<f64>,
    /// Longest message, in characters [default: 500].
    #[arg(long, env = "SFU_CHAT_MAX_CHARS")]
    pub chat_max_chars: Option<usize>,
    /// Words refused in messages (comma separated, case-insensitive) [default: none].
    #[arg(long, env = "SFU_CHAT_BANNED_WORDS", value_delimiter = ',')]
    #[serde(default)]
    pub chat_banned_words: Vec<String>,
    /// Let viewers and anonymous members post links (streamers and moderators always may).
    #[arg(long, env = "SFU_CHAT_ALLOW_LINKS")]
    #[serde(default)]
    pub chat_allow_links: bool,
    /// On a node without `--auth-secret`, let anyone ban, time out and
    /// delete (`POST /v1/moderation/{room}/actions`); without this flag an
    /// open node refuses moderation with 403.
    #[arg(long, env = "SFU_OPEN_MODERATION")]
    #[serde(default)]
    pub open_moderation: bool,
    /// A room fans chat out at most once per this window: messages closer
    /// together go to each member in one socket write, up to the window
    /// later; `0ms` turns pacing off [default: 10ms].
    #[arg(long, env = "SFU_CHAT_FANOUT_WINDOW", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub chat_fanout_window: Option<Duration>,
}

impl ChatArgs {
    /// These flags over `file` over the defaults.
    fn resolve(&self, file: &ChatArgs) -> Result<signaling::chat::ChatConfig, ConfigError> {
        let mut c = signaling::chat::ChatConfig::default();
        let pick = |a: Option<f64>, b: Option<f64>, d: f64, name: &str| -> Result<f64, ConfigError> {
            let v = a.or(b).unwrap_or(d);
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(ConfigError::Invalid(format!(
                    "--{name} must be a positive number"
                )))
            }
        };
        let r = c.rates;
        c.rates.streamer = pick(
            self.chat_rate_streamer,
            file.chat_rate_streamer,
            r.streamer,
            "chat-rate-streamer",
        )?;
        c.rates.moderator = pick(
            self.chat_rate_moderator,
            file.chat_rate_moderator,
            r.moderator,
            "chat-rate-moderator",
        )?;
        c.rates.viewer = pick(
            self.chat_rate_viewer,
            file.chat_rate_viewer,
            r.viewer,
            "chat-rate-viewer",
        )?;
        c.rates.anonymous = pick(
            self.chat_rate_anonymous,
            file.chat_rate_anonymous,
            r.anonymous,
            "chat-rate-anonymous",
        )?;
        c.history_len = self.chat_history.or(file.chat_history).unwrap_or(c.history_len);
        c.history_age = self
            .chat_history_age
            .or(file.chat_history_age)
            .unwrap_or(c.history_age);
        if c.history_age.is_zero() {
            return Err(ConfigError::Invalid("--chat-history-age must be positive".into()));
        }
        c.filter.max_chars = self
            .chat_max_chars
            .or(file.chat_max_chars)
            .unwrap_or(c.filter.max_chars)
            .max(1);
        let words = if self.chat_banned_words.is_empty() {
            &file.chat_banned_words
        } else {
            &self.chat_banned_words
        };
        c.filter.banned_words = words
            .iter()
            .map(|w| w.trim().to_lowercase())
            .filter(|w| !w.is_empty())
            .collect();
        c.filter.block_links = !(self.chat_allow_links || file.chat_allow_links);
        c.open_moderation = self.open_moderation || file.open_moderation;
        c.fanout_window = self
            .chat_fanout_window
            .or(file.chat_fanout_window)
            .unwrap_or(c.fanout_window);
        if c.fanout_window > Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "--chat-fanout-window must be at most 1s".into(),
            ));
        }
        Ok(c)
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// The same keys as the flags, for `--config FILE`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub http: Option<SocketAddr>,
    pub media_ip: Option<IpAddr>,
    pub media_port: Option<u16>,
    pub public_ip: Option<IpAddr>,
    pub auth_secret: Option<String>,
    pub workers: Option<usize>,
    pub http_threads: Option<usize>,
    pub max_peers: Option<usize>,
    pub max_room_peers: Option<usize>,
    pub ice_servers: Option<Vec<String>>,
    pub full_ice: Option<bool>,
    pub initial_bwe: Option<u64>,
    pub turn: Option<bool>,
    pub turn_listen: Option<SocketAddr>,
    pub turn_realm: Option<String>,
    pub turn_secret: Option<String>,
    pub turn_relay_ip: Option<IpAddr>,
    pub turn_relay_ports: Option<PortRange>,
    pub turn_urls: Option<Vec<String>>,
    pub turn_ttl: Option<String>,
    pub hlsjs_dir: Option<PathBuf>,
    pub public_hls: Option<bool>,
    pub token_audience: Option<String>,
    pub max_token_ttl: Option<String>,
    pub max_http_connections_per_client: Option<usize>,
    pub max_http_connections: Option<usize>,
    pub nats: Option<String>,
    pub nats_creds: Option<PathBuf>,
    pub nats_ca: Option<PathBuf>,
    pub node_id: Option<String>,
    pub advertise_url: Option<String>,
    pub heartbeat: Option<String>,
    pub node_ttl: Option<String>,
    pub node_weight: Option<f64>,
    #[serde(flatten)]
    pub chat: ChatArgs,
}

/// Flags of `sfu token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The node's `--auth-secret`.
    #[arg(long, env = "SFU_AUTH_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Room the token is for (`*` for any room).
    #[arg(long)]
    pub room: String,
    /// Who the bearer is (shown in /v1/rooms; a WHEP viewer may pick a publisher by it).
    #[arg(long)]
    pub identity: String,
    /// Grant WHIP publishing.
    #[arg(long)]
    pub publish: bool,
    /// Grant WHEP playing.
    #[arg(long)]
    pub subscribe: bool,
    /// Chat role: streamer, moderator or viewer [default: streamer with
    /// --publish, else viewer]. Streamers and moderators may moderate.
    #[arg(long, value_parser = parse_role)]
    pub role: Option<signaling::auth::Role>,
    /// Lifetime: seconds, or with a unit (`90s`, `10m`, `6h`, `7d`); a node
    /// refuses one-room tokens longer than its --max-token-ttl [default: 6h].
    #[arg(long, default_value = "6h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// The audience (`aud`), for nodes started with --token-audience.
    #[arg(long)]
    pub audience: Option<String>,
}

/// The effective node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub http: SocketAddr,
    pub media_ip: IpAddr,
    pub media_port: u16,
    pub public_ip: Option<IpAddr>,
    pub auth_secret: Option<String>,
    pub workers: usize,
    /// A room's viewers spread over the workers (see `--spread-viewers`).
    pub spread_viewers: bool,
    pub http_threads: usize,
    pub max_peers: usize,
    pub max_room_peers: usize,
    pub ice_servers: Vec<signaling::IceServer>,
    pub ice_lite: bool,
    pub initial_bwe_bps: u64,
    /// TURN advertised with per-session REST credentials; `None`: no TURN.
    pub turn: Option<TurnConfig>,
    /// LL-HLS for rooms with an H.264 publisher; `None`: off.
    pub hls: Option<hls_bridge::HlsConfig>,
    /// Signed HLS URLs when set.
    pub hls_secret: Option<String>,
    /// How long an ended room's HLS stays served.
    pub hls_linger: Duration,
    /// ABR ladder for single-layer publishers.
    pub hls_ladder: bool,
    /// hls.js for the demo page (see `--hlsjs-dir`).
    pub hlsjs_dir: PathBuf,
    /// `/hls/` needs no grant even with an auth secret (`--public-hls`).
    pub public_hls: bool,
    /// Audience and longest lifetime of bearer tokens.
    pub token_policy: signaling::auth::TokenPolicy,
    /// Concurrent HTTP connections per client and in total.
    pub connection_limit: signaling::ConnectionLimit,
    pub cluster: ClusterArgs,
    pub chat: signaling::chat::ChatConfig,
}

/// Control-plane settings.
#[derive(Debug, Clone)]
pub struct ClusterArgs {
    /// `None`: the in-process bus.
    pub nats: Option<signaling::bus::NatsOptions>,
    pub node_id: signaling::cluster::NodeId,
    /// `None`: derived from the bound HTTP address.
    pub advertise_url: Option<String>,
    pub heartbeat: Duration,
    pub ttl: Duration,
    /// Placement weight (> 0).
    pub weight: f64,
}

impl Default for ClusterArgs {
    fn default() -> Self {
        ClusterArgs {
            nats: None,
            node_id: default_node_id(),
            advertise_url: None,
            heartbeat: Duration::from_secs(1),
            ttl: Duration::from_secs(3),
            weight: 1.0,
        }
    }
}

/// The host name plus 16 random bits, so two nodes on one host differ.
fn parse_role(s: &str) -> Result<signaling::auth::Role, String> {
    match signaling::auth::Role::parse(s) {
        Some(signaling::auth::Role::Anonymous) | None => {
            Err(format!("unknown role {s:?}: streamer, moderator or viewer"))
        }
        Some(r) => Ok(r),
    }
}

fn default_node_id() -> signaling::cluster::NodeId {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "node".into());
    let suffix: u16 = rand::random();
    signaling::cluster::NodeId::sanitize(&format!("{}-{suffix:04x}", host.trim()))
}

/// TURN the node advertises: its embedded server, or an external one
/// (turn-server, coturn) sharing the REST secret.
#[derive(Clone)]
pub struct TurnConfig {
    /// Run the embedded server with these settings.
    pub embedded: Option<EmbeddedTurnConfig>,
    /// URIs in the `Link` header; empty with `embedded`: derived from the bound listener.
    pub urls: Vec<String>,
    pub secret: String,
    /// Credential lifetime.
    pub ttl: Duration,
}

/// The embedded server's own settings.
#[derive(Debug, Clone)]
pub struct EmbeddedTurnConfig {
    pub listen: SocketAddr,
    pub realm: String,
    pub relay_ip: IpAddr,
    pub relay_ports: (u16, u16),
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnConfig")
            .field("embedded", &self.embedded)
            .field("urls", &self.urls)
            .field("secret", &"<redacted>")
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Why a configuration cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            http: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            media_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            media_port: 0,
            public_ip: None,
            auth_secret: None,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            spread_viewers: true,
            // One per core the process may run on, at least 2: a node
            // pinned to a core it shares did worse with one (BENCHMARKS.md).
            http_threads: std::thread::available_parallelism().map_or(2, |n| n.get().max(2)),
            max_peers: 10_000,
            max_room_peers: 5_000,
            ice_servers: Vec::new(),
            ice_lite: true,
            initial_bwe_bps: 2_500_000,
            turn: None,
            hls: Some(hls_bridge::HlsConfig::default()),
            hls_secret: None,
            hls_linger: Duration::from_secs(60),
            hls_ladder: false,
            hlsjs_dir: PathBuf::from("web/node_modules/hls.js/dist"),
            public_hls: false,
            token_policy: signaling::auth::TokenPolicy::default(),
            connection_limit: signaling::ConnectionLimit::default(),
            cluster: ClusterArgs::default(),
            chat: signaling::chat::ChatConfig::default(),
        }
    }
}

impl NodeConfig {
    /// Defaults, then the file, then the flags.
    pub fn from_args(args: ServeArgs) -> Result<NodeConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    source: Box::new(e),
                })?
            }
            None => FileConfig::default(),
        };
        let d = NodeConfig::default();
        let cluster = cluster_args(&args, &file, d.cluster.clone())?;
        let ice = if args.ice_servers.is_empty() {
            file.ice_servers.unwrap_or_default()
        } else {
            args.ice_servers
        };
        let auth_secret = args.auth_secret.or(file.auth_secret).filter(|s| !s.is_empty());
        let media_ip = args.media_ip.or(file.media_ip).unwrap_or(d.media_ip);
        let turn_ttl = match args.turn_ttl {
            Some(t) => Some(t),
            None => file
                .turn_ttl
                .as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(ConfigError::Invalid)?,
        };
        let turn = TurnArgs {
            embedded: args.turn || file.turn.unwrap_or(false),
            listen: args.turn_listen.or(file.turn_listen),
            realm: args.turn_realm.or(file.turn_realm),
            secret: args.turn_secret.or(file.turn_secret).filter(|s| !s.is_empty()),
            relay_ip: args.turn_relay_ip.or(file.turn_relay_ip),
            relay_ports: args.turn_relay_ports.or(file.turn_relay_ports),
            urls: if args.turn_urls.is_empty() {
                file.turn_urls.unwrap_or_default()
            } else {
                args.turn_urls
            },
            ttl: turn_ttl,
        }
        .resolve(auth_secret.as_deref(), media_ip)?;
        let config = NodeConfig {
            http: args.http.or(file.http).unwrap_or(d.http),
            media_ip,
            media_port: args.media_port.or(file.media_port).unwrap_or(d.media_port),
            public_ip: args.public_ip.or(file.public_ip),
            auth_secret,
            workers: args.workers.or(file.workers).unwrap_or(d.workers).max(1),
            spread_viewers: args.spread_viewers.unwrap_or(d.spread_viewers),
            http_threads: args
                .http_threads
                .or(file.http_threads)
                .unwrap_or(d.http_threads)
                .max(1),
            max_peers: args.max_peers.or(file.max_peers).unwrap_or(d.max_peers),
            max_room_peers: args
                .max_room_peers
                .or(file.max_room_peers)
                .unwrap_or(d.max_room_peers),
            ice_servers: ice
                .iter()
                .map(|s| parse_ice_server(s))
                .collect::<Result<_, _>>()?,
            ice_lite: !(args.full_ice || file.full_ice.unwrap_or(false)),
            initial_bwe_bps: args.initial_bwe.or(file.initial_bwe).unwrap_or(d.initial_bwe_bps),
            turn,
            hls: if args.no_hls {
                None
            } else {
                let mut hls = hls_bridge::HlsConfig::default();
                if let Some(ms) = args.hls_part_ms {
                    hls.part_target = Duration::from_millis(ms);
                }
                if let Some(ms) = args.hls_segment_ms {
                    hls.segment_target = Duration::from_millis(ms);
                }
                if let Some(dvr) = args.hls_dvr {
                    hls.dvr_window = dvr;
                }
                Some(hls.validated().map_err(|e| ConfigError::Invalid(e.to_string()))?)
            },
            hls_secret: args.hls_secret.filter(|s| !s.is_empty()),
            chat: args.chat.resolve(&file.chat)?,
            hls_linger: args.hls_linger.unwrap_or(d.hls_linger),
            hls_ladder: args.hls_ladder,
            hlsjs_dir: args.hlsjs_dir.or(file.hlsjs_dir).unwrap_or(d.hlsjs_dir),
            public_hls: args.public_hls || file.public_hls.unwrap_or(false),
            token_policy: signaling::auth::TokenPolicy {
                audience: args
                    .token_audience
                    .or(file.token_audience)
                    .filter(|a| !a.is_empty()),
                max_ttl: match args.max_token_ttl {
                    Some(t) => Some(t),
                    None => file
                        .max_token_ttl
                        .as_deref()
                        .map(parse_duration)
                        .transpose()
                        .map_err(|e| ConfigError::Invalid(format!("max_token_ttl: {e}")))?,
                }
                .map_or(d.token_policy.max_ttl, |t| (!t.is_zero()).then_some(t)),
            },
            connection_limit: signaling::ConnectionLimit {
                loopback_exempt: d.connection_limit.loopback_exempt,
                per_client: args
                    .max_http_connections_per_client
                    .or(file.max_http_connections_per_client)
                    .unwrap_or(d.connection_limit.per_client),
                total: args
                    .max_http_connections
                    .or(file.max_http_connections)
                    .unwrap_or(d.connection_limit.total),
            },
            cluster,
        };
        config.check()?;
        Ok(config)
    }

    /// An open node (no secret) must not be reachable from other machines.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.auth_secret.is_none() {
            if !self.http.ip().is_loopback() {
                return Err(ConfigError::Invalid(format!(
                    "refusing to serve HTTP on {} without --auth-secret: an open node binds loopback only",
                    self.http
                )));
            }
            if !self.media_ip.is_loopback() {
                return Err(ConfigError::Invalid(format!(
                    "refusing to bind media on {} without --auth-secret: an open node binds loopback only",
                    self.media_ip
                )));
            }
        }
        if let Some(listen) = self
            .turn
            .as_ref()
            .and_then(|t| t.embedded.as_ref())
            .map(|e| e.listen)
            && self.auth_secret.is_none()
            && !listen.ip().is_loopback()
        {
            return Err(ConfigError::Invalid(format!(
                "refusing to serve TURN on {listen} without --auth-secret: an open node binds loopback only"
            )));
        }
        if self.public_hls && self.hls_secret.is_some() {
            return Err(ConfigError::Invalid(
                "--public-hls and --hls-secret contradict each other: pick one".into(),
            ));
        }
        if self.connection_limit.per_client == 0 || self.connection_limit.total == 0 {
            return Err(ConfigError::Invalid(
                "--max-http-connections and --max-http-connections-per-client must be at least 1".into(),
            ));
        }
        if self.max_peers == 0 || self.max_room_peers == 0 {
            return Err(ConfigError::Invalid(
                "--max-peers and --max-room-peers must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

fn cluster_args(args: &ServeArgs, file: &FileConfig, d: ClusterArgs) -> Result<ClusterArgs, ConfigError> {
    let duration =
        |flag: Option<Duration>, key: &Option<String>, name: &str| -> Result<Option<Duration>, ConfigError> {
            match flag {
                Some(d) => Ok(Some(d)),
                None => key
                    .as_deref()
                    .map(parse_duration)
                    .transpose()
                    .map_err(|e| ConfigError::Invalid(format!("{name}: {e}"))),
            }
        };
    let heartbeat = duration(args.heartbeat, &file.heartbeat, "heartbeat")?.unwrap_or(d.heartbeat);
    let ttl = duration(args.node_ttl, &file.node_ttl, "node_ttl")?.unwrap_or(d.ttl);
    if heartbeat.is_zero() || ttl <= heartbeat {
        return Err(ConfigError::Invalid(
            "--node-ttl must be longer than --heartbeat (and both positive)".into(),
        ));
    }
    let weight = args.node_weight.or(file.node_weight).unwrap_or(d.weight);
    if !(weight.is_finite() && weight > 0.0) {
        return Err(ConfigError::Invalid(format!(
            "--node-weight {weight}: must be a positive number"
        )));
    }
    let node_id = match args.node_id.clone().or_else(|| file.node_id.clone()) {
        Some(id) => signaling::cluster::NodeId::parse(&id)
            .ok_or_else(|| ConfigError::Invalid(format!("--node-id {id:?}: 1-64 of [A-Za-z0-9_-]")))?,
        None => d.node_id,
    };
    let url = args
        .nats
        .clone()
        .or_else(|| file.nats.clone())
        .filter(|u| !u.is_empty());
    let creds = args.nats_creds.clone().or_else(|| file.nats_creds.clone());
    let ca = args.nats_ca.clone().or_else(|| file.nats_ca.clone());
    let nats = match url {
        Some(url) => Some(signaling::bus::NatsOptions {
            url,
            credentials: creds,
            tls_ca: ca,
            name: Some(format!("sfu {node_id}")),
        }),
        None if creds.is_some() || ca.is_some() => {
            return Err(ConfigError::Invalid(
                "--nats-creds and --nats-ca need --nats".into(),
            ));
        }
        None => None,
    };
    let advertise_url = args.advertise_url.clone().or_else(|| file.advertise_url.clone());
    if let Some(u) = &advertise_url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        return Err(ConfigError::Invalid(format!(
            "--advertise-url {u:?} must be an http(s) URL"
        )));
    }
    Ok(ClusterArgs {
        nats,
        node_id,
        advertise_url,
        heartbeat,
        ttl,
        weight,
    })
}

/// The TURN settings as given, before defaults.
struct TurnArgs {
    embedded: bool,
    listen: Option<SocketAddr>,
    realm: Option<String>,
    secret: Option<String>,
    relay_ip: Option<IpAddr>,
    relay_ports: Option<PortRange>,
    urls: Vec<String>,
    ttl: Option<Duration>,
}

impl TurnArgs {
    fn resolve(self, auth_secret: Option<&str>, media_ip: IpAddr) -> Result<Option<TurnConfig>, ConfigError> {
        for url in &self.urls {
            if !(url.starts_with("turn:") || url.starts_with("turns:")) {
                return Err(ConfigError::Invalid(format!(
                    "--turn-url {url:?} must be a turn: or turns: URI"
                )));
            }
        }
        let ttl = self.ttl.unwrap_or(Duration::from_secs(3600));
        if ttl.is_zero() {
            return Err(ConfigError::Invalid("--turn-ttl must be positive".into()));
        }
        if !self.embedded {
            let given = [
                (self.listen.is_some(), "--turn-listen"),
                (self.realm.is_some(), "--turn-realm"),
                (self.relay_ip.is_some(), "--turn-relay-ip"),
                (self.relay_ports.is_some(), "--turn-relay-ports"),
            ];
            if let Some((_, flag)) = given.iter().find(|(set, _)| *set) {
                return Err(ConfigError::Invalid(format!("{flag} needs --turn")));
            }
            return match (self.urls.is_empty(), self.secret) {
                (true, None) => Ok(None),
                (false, Some(secret)) => Ok(Some(TurnConfig {
                    embedded: None,
                    urls: self.urls,
                    secret,
                    ttl,
                })),
                (true, Some(_)) => Err(ConfigError::Invalid(
                    "--turn-secret needs --turn or --turn-url".into(),
                )),
                (false, None) => Err(ConfigError::Invalid(
                    "--turn-url needs --turn-secret (the TURN server's REST API secret)".into(),
                )),
            };
        }
        let listen = self
            .listen
            .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 3478)));
        let relay_ip = self.relay_ip.unwrap_or(if listen.ip().is_unspecified() {
            media_ip
        } else {
            listen.ip()
        });
        if relay_ip.is_unspecified() {
            return Err(ConfigError::Invalid(
                "--turn-relay-ip is required when neither --turn-listen nor --media-ip names an address"
                    .into(),
            ));
        }
        let secret = self
            .secret
            .or_else(|| auth_secret.map(str::to_owned))
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
        let PortRange(lo, hi) = self.relay_ports.unwrap_or(PortRange(49152, 65535));
        Ok(Some(TurnConfig {
            embedded: Some(EmbeddedTurnConfig {
                listen,
                realm: self.realm.unwrap_or_else(|| "wave".into()),
                relay_ip,
                relay_ports: (lo, hi),
            }),
            urls: self.urls,
            secret,
            ttl,
        }))
    }
}

/// `URL` or `URL,username,credential`.
fn parse_ice_server(s: &str) -> Result<signaling::IceServer, ConfigError> {
    let mut parts = s.split(',').map(str::trim);
    let url = parts.next().unwrap_or_default();
    let scheme_ok = ["stun:", "stuns:", "turn:", "turns:"]
        .iter()
        .any(|p| url.starts_with(p));
    if !scheme_ok {
        return Err(ConfigError::Invalid(format!(
            "ICE server {url:?} must be a stun:, stuns:, turn: or turns: URI"
        )));
    }
    Ok(signaling::IceServer {
        urls: vec![url.to_owned()],
        username: parts.next().map(str::to_owned),
        credential: parts.next().map(str::to_owned),
    })
}

/// `3600`, `90s`, `10m`, `6h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration"))?;
    let per_unit = match unit {
        "ms" => Duration::from_millis(1),
        "" | "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        "d" => Duration::from_secs(86_400),
        _ => return Err(format!("unknown unit {unit:?} (use ms, s, m, h or d)")),
    };
    let n = u32::try_from(n).map_err(|_| format!("{s:?} is too long"))?;
    per_unit
        .checked_mul(n)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_open_nodes_stay_on_loopback() {
        let dir = std::env::temp_dir().join(format!("wave-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sfu.toml");
        std::fs::write(&path, "http = \"127.0.0.1:9000\"\nworkers = 3\nmax_peers = 7\n").unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            workers: Some(1),
            ..ServeArgs::default()
        };
        let c = NodeConfig::from_args(args).unwrap();
        assert_eq!(c.http.port(), 9000);
        assert_eq!(c.workers, 1);
        assert_eq!(c.max_peers, 7);

        std::fs::write(&path, "bogus = 1\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        assert!(matches!(
            NodeConfig::from_args(args),
            Err(ConfigError::Parse { .. })
        ));

        let open_public = ServeArgs {
            http: Some("0.0.0.0:8080".parse().unwrap()),
            ..ServeArgs::default()
        };
        assert!(matches!(
            NodeConfig::from_args(open_public),
            Err(ConfigError::Invalid(_))
        ));
        let secured = ServeArgs {
            http: Some("0.0.0.0:8080".parse().unwrap()),
            media_ip: Some("0.0.0.0".parse().unwrap()),
            auth_secret: Some("s3cret".into()),
            ..ServeArgs::default()
        };
        assert!(NodeConfig::from_args(secured).is_ok());
    }

    #[test]
    fn http_security_flags_and_file_keys() {
        let d = NodeConfig::from_args(ServeArgs::default()).unwrap();
        assert!(!d.public_hls);
        assert_eq!(d.token_policy, signaling::auth::TokenPolicy::default());
        assert_eq!(d.token_policy.max_ttl, Some(Duration::from_secs(86_400)));
        assert_eq!(d.connection_limit, signaling::ConnectionLimit::default());

        let dir = std::env::temp_dir().join(format!("wave-config-sec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sfu.toml");
        std::fs::write(
            &path,
            "public_hls = true\ntoken_audience = \"file\"\nmax_token_ttl = \"2h\"\n\
             max_http_connections_per_client = 9\nmax_http_connections = 99\n",
        )
        .unwrap();
        let c = NodeConfig::from_args(ServeArgs {
            config: Some(path.clone()),
            token_audience: Some("flag".into()),
            max_http_connections: Some(50),
            ..ServeArgs::default()
        })
        .unwrap();
        assert!(c.public_hls);
        assert_eq!(c.token_policy.audience.as_deref(), Some("flag"));
        assert_eq!(c.token_policy.max_ttl, Some(Duration::from_secs(7_200)));
        assert_eq!(c.connection_limit.per_client, 9);
        assert_eq!(c.connection_limit.total, 50);

        let unbounded = NodeConfig::from_args(ServeArgs {
            max_token_ttl: Some(Duration::ZERO),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(unbounded.token_policy.max_ttl, None);
        let contradiction = ServeArgs {
            public_hls: true,
            hls_secret: Some("k".into()),
            ..ServeArgs::default()
        };
        assert!(matches!(
            NodeConfig::from_args(contradiction),
            Err(ConfigError::Invalid(_))
        ));
        let no_connections = ServeArgs {
            max_http_connections_per_client: Some(0),
            ..ServeArgs::default()
        };
        assert!(matches!(
            NodeConfig::from_args(no_connections),
            Err(ConfigError::Invalid(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn chat_fanout_window_defaults_reads_and_is_bounded() {
        let window = |w: Option<&str>| {
            let args = ServeArgs {
                chat: ChatArgs {
                    chat_fanout_window: w.map(|w| parse_duration(w).unwrap()),
                    ..ChatArgs::default()
                },
                ..ServeArgs::default()
            };
            NodeConfig::from_args(args).map(|c| c.chat.fanout_window)
        };
        assert_eq!(window(None).unwrap(), signaling::chat::DEFAULT_FANOUT_WINDOW);
        assert_eq!(window(Some("0ms")).unwrap(), Duration::ZERO);
        assert_eq!(window(Some("25ms")).unwrap(), Duration::from_millis(25));
        assert!(matches!(window(Some("2s")), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn turn_is_embedded_external_or_off() {
        assert!(
            NodeConfig::from_args(ServeArgs::default())
                .unwrap()
                .turn
                .is_none()
        );

        let embedded = ServeArgs {
            turn: true,
            auth_secret: Some("node".into()),
            ..ServeArgs::default()
        };
        let t = NodeConfig::from_args(embedded).unwrap().turn.unwrap();
        let e = t.embedded.unwrap();
        assert_eq!(e.listen, "127.0.0.1:3478".parse().unwrap());
        assert_eq!((e.realm.as_str(), e.relay_ports), ("wave", (49152, 65535)));
        assert_eq!(t.secret, "node", "the node's secret by default");
        assert!(t.urls.is_empty(), "derived from the bound listener");

        let open = NodeConfig::from_args(ServeArgs {
            turn: true,
            ..ServeArgs::default()
        });
        assert_eq!(open.unwrap().turn.unwrap().secret.len(), 32, "a random secret");

        let external = ServeArgs {
            turn_urls: vec!["turn:turn.example.com:3478".into()],
            turn_secret: Some("shared".into()),
            ..ServeArgs::default()
        };
        let t = NodeConfig::from_args(external).unwrap().turn.unwrap();
        assert!(t.embedded.is_none());
        assert_eq!(t.ttl, Duration::from_secs(3600));

        for bad in [
            ServeArgs {
                turn_urls: vec!["turn:x:3478".into()],
                ..ServeArgs::default()
            },
            ServeArgs {
                turn_secret: Some("s".into()),
                ..ServeArgs::default()
            },
            ServeArgs {
                turn_listen: Some("127.0.0.1:3478".parse().unwrap()),
                ..ServeArgs::default()
            },
            ServeArgs {
                turn: true,
                turn_urls: vec!["stun:x:3478".into()],
                ..ServeArgs::default()
            },
            ServeArgs {
                turn: true,
                turn_listen: Some("0.0.0.0:3478".parse().unwrap()),
                ..ServeArgs::default()
            },
        ] {
            assert!(
                matches!(NodeConfig::from_args(bad), Err(ConfigError::Invalid(_))),
                "accepted a bad TURN setup"
            );
        }
    }

    #[test]
    fn durations_and_ice_servers_parse() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert!(parse_duration("1y").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        let s = parse_ice_server("turn:127.0.0.1:3478?transport=udp,user,pass").unwrap();
        assert_eq!(s.username.as_deref(), Some("user"));
        assert!(parse_ice_server("http://x").is_err());
    }

    #[test]
    fn cluster_flags_default_to_the_in_process_bus() {
        let d = NodeConfig::from_args(ServeArgs::default()).unwrap();
        assert!(d.cluster.nats.is_none());
        assert!(signaling::cluster::NodeId::parse(d.cluster.node_id.as_str()).is_some());
        assert_eq!(d.cluster.heartbeat, Duration::from_secs(1));

        let n = NodeConfig::from_args(ServeArgs {
            nats: Some("nats://127.0.0.1:4222".into()),
            node_id: Some("edge-1".into()),
            heartbeat: Some(Duration::from_millis(200)),
            node_ttl: Some(Duration::from_secs(1)),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(n.cluster.nats.unwrap().url, "nats://127.0.0.1:4222");
        assert_eq!(n.cluster.node_id.as_str(), "edge-1");

        for bad in [
            ServeArgs {
                node_id: Some("a.b".into()),
                ..ServeArgs::default()
            },
            ServeArgs {
                nats_creds: Some("x.creds".into()),
                ..ServeArgs::default()
            },
            ServeArgs {
                heartbeat: Some(Duration::from_secs(3)),
                node_ttl: Some(Duration::from_secs(3)),
                ..ServeArgs::default()
            },
            ServeArgs {
                advertise_url: Some("10.0.0.1:8080".into()),
                ..ServeArgs::default()
            },
        ] {
            assert!(matches!(NodeConfig::from_args(bad), Err(ConfigError::Invalid(_))));
        }
    }
}
