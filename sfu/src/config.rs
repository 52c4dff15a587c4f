//! `sfu serve` configuration. Every key is declared once, as a field of
//! [`ServeArgs`]: the field is the flag (with its environment variable)
//! and, by its name, the key of the `--config` TOML file. The file is read
//! first, flags and variables win, and [`NodeConfig::from_args`] fills in
//! the defaults and checks the result.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
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

/// Declares the `sfu serve` keys: one struct that is both the clap flags
/// and the serde TOML keys (`Option`, `Vec` or `bool` fields), and its
/// field-by-field [`Merge`], so a new key is one field and nothing else.
/// The struct stays flat (no `serde(flatten)`) so that a bad value in the
/// file is reported at its line.
macro_rules! keys {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident: $ty:ty, )*
        }
    ) => {
        #[derive(Debug, Default, Args, Deserialize)]
        #[serde(default)]
        $(#[$meta])*
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        impl Merge for $name {
            fn merge(flags: Self, file: Self) -> Self {
                $name {
                    $( $field: Merge::merge(flags.$field, file.$field), )*
                }
            }
        }
    };
}

/// Flags (and variables) over the file: a value given on the command line
/// replaces the file's; a `bool` switch is on if either turns it on.
trait Merge {
    fn merge(flags: Self, file: Self) -> Self;
}

impl<T> Merge for Option<T> {
    fn merge(flags: Self, file: Self) -> Self {
        flags.or(file)
    }
}

impl<T> Merge for Vec<T> {
    fn merge(flags: Self, file: Self) -> Self {
        if flags.is_empty() { file } else { flags }
    }
}

impl Merge for bool {
    fn merge(flags: Self, file: Self) -> Self {
        flags || file
    }
}

keys! {
    /// Flags of `sfu serve`. Each overrides the same key of `--config`.
    #[serde(deny_unknown_fields)]
    pub struct ServeArgs {
        /// TOML file with any of the keys below (snake_case); flags override it.
        #[arg(long, env = "SFU_CONFIG")]
        #[serde(skip)]
        pub config: Option<PathBuf>,
        /// HTTP listen address for WHIP/WHEP/REST and the page [default: 127.0.0.1:8080].
        #[arg(long, env = "SFU_HTTP")]
        pub http: Option<SocketAddr>,
        /// PEM certificate chain (leaf first) for HTTPS on --http (HTTP/2 and
        /// HTTP/1.1 by ALPN); reloaded when the file changes, no restart
        /// [default: plain HTTP]. Needs --tls-key.
        #[arg(long, env = "SFU_TLS_CERT")]
        pub tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long, env = "SFU_TLS_KEY")]
        pub tls_key: Option<PathBuf>,
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
        /// Start a viewer on a layer from the layer's latest keyframe-started
        /// group (≤ 1 s old) instead of asking the publisher for a keyframe
        /// [default: true].
        #[arg(long, env = "SFU_KEYFRAME_CACHE")]
        pub keyframe_cache: Option<bool>,
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
        /// DTLS stack: `openssl` (speaks to every client of the interop
        /// matrix: RSA and ECDSA peers, both roles) or `dimpl` (str0m's own,
        /// about a third of the CPU per handshake, but it fails with
        /// GStreamer's RSA and FFmpeg's P-224 certificates) [default: openssl].
        #[arg(long, env = "SFU_DTLS")]
        pub dtls: Option<wave_dtls::Backend>,
        /// Bandwidth estimate (bit/s) a viewer starts from [default: 2500000].
        #[arg(long, env = "SFU_INITIAL_BWE")]
        pub initial_bwe: Option<u64>,
        // TURN: the embedded server, or an external one to advertise.
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
        #[arg(long, env = "SFU_TURN_TTL")]
        pub turn_ttl: Option<HumanDuration>,
        // LL-HLS.
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
        #[arg(long, env = "SFU_HLS_DVR")]
        pub hls_dvr: Option<HumanDuration>,
        /// How long an ended room's LL-HLS playlists (EXT-X-ENDLIST) stay
        /// served after its publisher left before the room's HLS state is
        /// removed [default: 60s].
        #[arg(long, env = "SFU_HLS_LINGER")]
        pub hls_linger: Option<HumanDuration>,
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
        #[arg(long, env = "SFU_MAX_TOKEN_TTL")]
        pub max_token_ttl: Option<HumanDuration>,
        /// Concurrent HTTP connections from one client (an IPv4 address or an
        /// IPv6 /64; loopback peers such as a local reverse proxy are exempt);
        /// more are answered 503 and closed [default: 256].
        #[arg(long, env = "SFU_MAX_HTTP_CONNECTIONS_PER_CLIENT")]
        pub max_http_connections_per_client: Option<usize>,
        /// Concurrent HTTP connections in total [default: 8192].
        #[arg(long, env = "SFU_MAX_HTTP_CONNECTIONS")]
        pub max_http_connections: Option<usize>,
        /// Reverse proxy in front of the node (an address or CIDR block):
        /// its `X-Forwarded-For` names the client for the POST rate limit
        /// and logs, and it is spared the per-client connection cap.
        /// Repeat the flag (or separate with `,`) for several [default:
        /// none: forwarding headers are ignored].
        #[arg(long = "trusted-proxy", env = "SFU_TRUSTED_PROXIES", value_delimiter = ',')]
        pub trusted_proxies: Vec<String>,
        // The cluster control plane.
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
        #[arg(long, env = "SFU_HEARTBEAT")]
        pub heartbeat: Option<HumanDuration>,
        /// A node and its room claims are dropped this long after its last heartbeat [default: 3s].
        #[arg(long, env = "SFU_NODE_TTL")]
        pub node_ttl: Option<HumanDuration>,
        /// Relative capacity for placing new rooms (a node of weight 2 gets about twice the rooms) [default: 1].
        #[arg(long, env = "SFU_NODE_WEIGHT")]
        pub node_weight: Option<f64>,
        /// UDP address of this node's QUIC relay endpoint, which other nodes
        /// dial to watch its rooms [default: the media IP, an ephemeral port;
        /// advertised in the node registry].
        #[arg(long, env = "SFU_RELAY_LISTEN")]
        pub relay_listen: Option<SocketAddr>,
        /// Children per node in a room's relay tree: the room's origin feeds
        /// this many nodes directly, each of them this many more, and so on
        /// (1: a chain) [default: 8].
        #[arg(long, env = "SFU_RELAY_FANOUT")]
        pub relay_fanout: Option<usize>,
        /// Do not relay rooms between nodes: a node answers WHIP and WHEP for
        /// a room held by another node with 307 to it [default: relay when
        /// --nats is set].
        #[arg(long, env = "SFU_NO_RELAY")]
        pub no_relay: bool,
        /// PEM certificate chain of this node's relay endpoint, signed by
        /// --relay-ca (serverAuth and clientAuth uses) [default: a fresh
        /// self-signed certificate, pinned by the node registry].
        #[arg(long, env = "SFU_RELAY_CERT")]
        pub relay_cert: Option<PathBuf>,
        /// PEM private key of --relay-cert.
        #[arg(long, env = "SFU_RELAY_KEY")]
        pub relay_key: Option<PathBuf>,
        /// PEM CA certificate(s) of the cluster: relay peers must present a
        /// chain leading to one (instead of the registry's fingerprints).
        #[arg(long, env = "SFU_RELAY_CA")]
        pub relay_ca: Option<PathBuf>,
        /// On SIGTERM or Ctrl-C, refuse new WHIP/WHEP sessions (503 +
        /// Retry-After, `/healthz` 503) and let open ones run up to this long,
        /// then leave the registry and exit 0; a second signal stops at once;
        /// `0s` stops at once [default: 30s].
        #[arg(long, env = "SFU_DRAIN_TIMEOUT")]
        pub drain_timeout: Option<HumanDuration>,
        /// TCP address of an RTMP listener: encoders push
        /// `rtmp://HOST:PORT/live/{room}?token=JWT` (H.264 + AAC) into the
        /// room as its publisher. An open node listens on loopback only
        /// [default: off].
        #[arg(long, env = "SFU_RTMP_LISTEN")]
        pub rtmp_listen: Option<SocketAddr>,
        // Chat.
        /// Messages sent to a client on join, at most [default: 100].
        #[arg(long, env = "SFU_CHAT_HISTORY")]
        pub chat_history: Option<usize>,
        /// Messages older than this are not kept or sent on join [default: 10m].
        #[arg(long, env = "SFU_CHAT_HISTORY_AGE")]
        pub chat_history_age: Option<HumanDuration>,
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
        pub chat_banned_words: Vec<String>,
        /// Let viewers and anonymous members post links (streamers and moderators always may).
        #[arg(long, env = "SFU_CHAT_ALLOW_LINKS")]
        pub chat_allow_links: bool,
        /// On a node without `--auth-secret`, let anyone ban, time out and
        /// delete (`POST /v1/moderation/{room}/actions`); without this flag an
        /// open node refuses moderation with 403.
        #[arg(long, env = "SFU_OPEN_MODERATION")]
        pub open_moderation: bool,
        /// A room fans chat out at most once per this window: messages closer
        /// together go to each member in one socket write, up to the window
        /// later; `0ms` turns pacing off [default: 10ms].
        #[arg(long, env = "SFU_CHAT_FANOUT_WINDOW")]
        pub chat_fanout_window: Option<HumanDuration>,
    }
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
    /// `--tls-cert`, `--tls-key`: HTTPS on `http`.
    pub tls: Option<signaling::tls::TlsFiles>,
    pub media_ip: IpAddr,
    pub media_port: u16,
    pub public_ip: Option<IpAddr>,
    pub auth_secret: Option<String>,
    pub workers: usize,
    /// A room's viewers spread over the workers (see `--spread-viewers`).
    pub spread_viewers: bool,
    /// Viewers start from a layer's cached keyframe group (`--keyframe-cache`).
    pub keyframe_cache: bool,
    pub http_threads: usize,
    pub max_peers: usize,
    pub max_room_peers: usize,
    pub ice_servers: Vec<signaling::IceServer>,
    pub ice_lite: bool,
    pub dtls: wave_dtls::Backend,
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
    /// Proxies whose `X-Forwarded-For` is believed (`--trusted-proxy`).
    pub trusted_proxies: signaling::TrustedProxies,
    pub cluster: ClusterArgs,
    pub chat: signaling::chat::ChatConfig,
    /// How long open sessions may run after the first stop signal.
    pub drain_timeout: Duration,
    /// The RTMP ingest listener; `None`: off.
    pub rtmp_listen: Option<SocketAddr>,
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
    /// The QUIC relay's listen address; `None` with `--no-relay` or
    /// without NATS (a single node relays nothing).
    pub relay: Option<SocketAddr>,
    /// `--relay-cert`, `--relay-key`, `--relay-ca`: an operator's PKI.
    pub relay_pki: Option<RelayPki>,
    /// Children per node in a room's relay tree (≥ 1).
    pub relay_fanout: usize,
}

/// The files of an operator's relay PKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPki {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
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
            relay: None,
            relay_pki: None,
            relay_fanout: 8,
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
            tls: None,
            media_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            media_port: 0,
            public_ip: None,
            auth_secret: None,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            spread_viewers: true,
            keyframe_cache: true,
            // One per core the process may run on, at least 2: a node
            // pinned to a core it shares did worse with one (BENCHMARKS.md).
            http_threads: std::thread::available_parallelism().map_or(2, |n| n.get().max(2)),
            max_peers: 10_000,
            max_room_peers: 5_000,
            ice_servers: Vec::new(),
            ice_lite: true,
            dtls: wave_dtls::Backend::Openssl,
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
            trusted_proxies: signaling::TrustedProxies::default(),
            cluster: ClusterArgs::default(),
            chat: signaling::chat::ChatConfig::default(),
            drain_timeout: Duration::from_secs(30),
            rtmp_listen: None,
        }
    }
}

impl NodeConfig {
    /// Defaults, then the `--config` file, then the flags.
    pub fn from_args(args: ServeArgs) -> Result<NodeConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<ServeArgs>(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    source: Box::new(e),
                })?
            }
            None => ServeArgs::default(),
        };
        let k = Merge::merge(args, file);
        let d = NodeConfig::default();
        let auth_secret = k.auth_secret.clone().filter(|s| !s.is_empty());
        let media_ip = k.media_ip.unwrap_or(d.media_ip);
        let config = NodeConfig {
            http: k.http.unwrap_or(d.http),
            tls: match (&k.tls_cert, &k.tls_key) {
                (None, None) => None,
                (Some(cert), Some(key)) => Some(signaling::tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => {
                    return Err(ConfigError::Invalid(
                        "--tls-cert and --tls-key go together".into(),
                    ));
                }
            },
            media_ip,
            media_port: k.media_port.unwrap_or(d.media_port),
            public_ip: k.public_ip,
            workers: k.workers.unwrap_or(d.workers).max(1),
            spread_viewers: k.spread_viewers.unwrap_or(d.spread_viewers),
            keyframe_cache: k.keyframe_cache.unwrap_or(d.keyframe_cache),
            http_threads: k.http_threads.unwrap_or(d.http_threads).max(1),
            max_peers: k.max_peers.unwrap_or(d.max_peers),
            max_room_peers: k.max_room_peers.unwrap_or(d.max_room_peers),
            ice_servers: k
                .ice_servers
                .iter()
                .map(|s| parse_ice_server(s))
                .collect::<Result<_, _>>()?,
            ice_lite: !k.full_ice,
            dtls: k.dtls.unwrap_or(d.dtls),
            initial_bwe_bps: k.initial_bwe.unwrap_or(d.initial_bwe_bps),
            turn: k.turn(auth_secret.as_deref(), media_ip)?,
            auth_secret,
            hls: k.hls()?,
            hls_secret: k.hls_secret.clone().filter(|s| !s.is_empty()),
            hls_linger: k.hls_linger.map_or(d.hls_linger, |l| l.0),
            hls_ladder: k.hls_ladder,
            hlsjs_dir: k.hlsjs_dir.clone().unwrap_or(d.hlsjs_dir),
            public_hls: k.public_hls,
            token_policy: signaling::auth::TokenPolicy {
                audience: k.token_audience.clone().filter(|a| !a.is_empty()),
                max_ttl: k
                    .max_token_ttl
                    .map_or(d.token_policy.max_ttl, |t| (!t.0.is_zero()).then_some(t.0)),
            },
            connection_limit: signaling::ConnectionLimit {
                loopback_exempt: d.connection_limit.loopback_exempt,
                per_client: k
                    .max_http_connections_per_client
                    .unwrap_or(d.connection_limit.per_client),
                total: k.max_http_connections.unwrap_or(d.connection_limit.total),
            },
            trusted_proxies: signaling::TrustedProxies::parse_all(&k.trusted_proxies)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?,
            cluster: k.cluster(d.cluster, d.media_ip)?,
            chat: k.chat()?,
            drain_timeout: k.drain_timeout.map_or(d.drain_timeout, |t| t.0),
            rtmp_listen: k.rtmp_listen,
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
        if let Some(relay) = self.cluster.relay
            && self.auth_secret.is_none()
            && !relay.ip().is_loopback()
        {
            return Err(ConfigError::Invalid(format!(
                "refusing to relay on {relay} without --auth-secret: an open node relays on loopback only"
            )));
        }
        if let Some(rtmp) = self.rtmp_listen
            && self.auth_secret.is_none()
            && !rtmp.ip().is_loopback()
        {
            return Err(ConfigError::Invalid(format!(
                "refusing RTMP ingest on {rtmp} without --auth-secret: an open node listens on loopback only"
            )));
        }
        if let Some(e) = self.turn.as_ref().and_then(|t| t.embedded.as_ref())
            && self.auth_secret.is_none()
        {
            if !e.listen.ip().is_loopback() {
                return Err(ConfigError::Invalid(format!(
                    "refusing to serve TURN on {} without --auth-secret: an open node binds loopback only",
                    e.listen
                )));
            }
            if !e.relay_ip.is_loopback() {
                return Err(ConfigError::Invalid(format!(
                    "refusing to relay TURN on {} (--turn-relay-ip) without --auth-secret: an open node binds loopback only",
                    e.relay_ip
                )));
            }
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

// Each part of the node configuration, from the merged keys.
impl ServeArgs {
    /// TURN off, embedded, or external.
    fn turn(&self, auth_secret: Option<&str>, media_ip: IpAddr) -> Result<Option<TurnConfig>, ConfigError> {
        for url in &self.turn_urls {
            if !(url.starts_with("turn:") || url.starts_with("turns:")) {
                return Err(ConfigError::Invalid(format!(
                    "--turn-url {url:?} must be a turn: or turns: URI"
                )));
            }
        }
        let ttl = self.turn_ttl.map_or(Duration::from_secs(3600), |t| t.0);
        if ttl.is_zero() {
            return Err(ConfigError::Invalid("--turn-ttl must be positive".into()));
        }
        let secret = self.turn_secret.clone().filter(|s| !s.is_empty());
        if !self.turn {
            let given = [
                (self.turn_listen.is_some(), "--turn-listen"),
                (self.turn_realm.is_some(), "--turn-realm"),
                (self.turn_relay_ip.is_some(), "--turn-relay-ip"),
                (self.turn_relay_ports.is_some(), "--turn-relay-ports"),
            ];
            if let Some((_, flag)) = given.iter().find(|(set, _)| *set) {
                return Err(ConfigError::Invalid(format!("{flag} needs --turn")));
            }
            return match (self.turn_urls.is_empty(), secret) {
                (true, None) => Ok(None),
                (false, Some(secret)) => Ok(Some(TurnConfig {
                    embedded: None,
                    urls: self.turn_urls.clone(),
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
            .turn_listen
            .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 3478)));
        let relay_ip = self.turn_relay_ip.unwrap_or(if listen.ip().is_unspecified() {
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
        let secret = secret
            .or_else(|| auth_secret.map(str::to_owned))
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
        let PortRange(lo, hi) = self.turn_relay_ports.unwrap_or(PortRange(49152, 65535));
        Ok(Some(TurnConfig {
            embedded: Some(EmbeddedTurnConfig {
                listen,
                realm: self.turn_realm.clone().unwrap_or_else(|| "wave".into()),
                relay_ip,
                relay_ports: (lo, hi),
            }),
            urls: self.turn_urls.clone(),
            secret,
            ttl,
        }))
    }

    /// The LL-HLS packaging settings, checked; `None` with `--no-hls`.
    fn hls(&self) -> Result<Option<hls_bridge::HlsConfig>, ConfigError> {
        if self.no_hls {
            return Ok(None);
        }
        let mut hls = hls_bridge::HlsConfig::default();
        if let Some(ms) = self.hls_part_ms {
            hls.part_target = Duration::from_millis(ms);
        }
        if let Some(ms) = self.hls_segment_ms {
            hls.segment_target = Duration::from_millis(ms);
        }
        if let Some(dvr) = self.hls_dvr {
            hls.dvr_window = dvr.0;
        }
        let hls = hls.validated().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(Some(hls))
    }

    /// The control-plane settings over `d`, checked.
    fn cluster(&self, d: ClusterArgs, media_ip_default: IpAddr) -> Result<ClusterArgs, ConfigError> {
        let heartbeat = self.heartbeat.map_or(d.heartbeat, |h| h.0);
        let ttl = self.node_ttl.map_or(d.ttl, |t| t.0);
        if heartbeat.is_zero() || ttl <= heartbeat {
            return Err(ConfigError::Invalid(
                "--node-ttl must be longer than --heartbeat (and both positive)".into(),
            ));
        }
        let weight = self.node_weight.unwrap_or(d.weight);
        if !(weight.is_finite() && weight > 0.0) {
            return Err(ConfigError::Invalid(format!(
                "--node-weight {weight}: must be a positive number"
            )));
        }
        let node_id = match &self.node_id {
            Some(id) => signaling::cluster::NodeId::parse(id)
                .ok_or_else(|| ConfigError::Invalid(format!("--node-id {id:?}: 1-64 of [A-Za-z0-9_-]")))?,
            None => d.node_id,
        };
        let nats = match self.nats.clone().filter(|u| !u.is_empty()) {
            Some(url) => Some(signaling::bus::NatsOptions {
                url,
                credentials: self.nats_creds.clone(),
                tls_ca: self.nats_ca.clone(),
                name: Some(format!("sfu {node_id}")),
            }),
            None if self.nats_creds.is_some() || self.nats_ca.is_some() => {
                return Err(ConfigError::Invalid(
                    "--nats-creds and --nats-ca need --nats".into(),
                ));
            }
            None => None,
        };
        if let Some(u) = &self.advertise_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!(
                "--advertise-url {u:?} must be an http(s) URL"
            )));
        }
        if self.no_relay && self.relay_listen.is_some() {
            return Err(ConfigError::Invalid(
                "--no-relay and --relay-listen contradict each other: pick one".into(),
            ));
        }
        // Relaying needs other nodes (NATS); its port defaults to an
        // ephemeral one on the media IP.
        let relay = match (&nats, self.no_relay) {
            (Some(_), false) => Some(
                self.relay_listen
                    .unwrap_or_else(|| SocketAddr::new(self.media_ip.unwrap_or(media_ip_default), 0)),
            ),
            _ => None,
        };
        let relay_fanout = self.relay_fanout.unwrap_or(d.relay_fanout);
        if relay_fanout == 0 {
            return Err(ConfigError::Invalid(
                "--relay-fanout 0: a node must feed at least one other".into(),
            ));
        }
        let relay_pki = match (&self.relay_cert, &self.relay_key, &self.relay_ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(RelayPki {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            }),
            _ => {
                return Err(ConfigError::Invalid(
                    "--relay-cert, --relay-key and --relay-ca go together".into(),
                ));
            }
        };
        Ok(ClusterArgs {
            nats,
            node_id,
            advertise_url: self.advertise_url.clone(),
            heartbeat,
            ttl,
            weight,
            relay,
            relay_pki,
            relay_fanout,
        })
    }

    /// The chat settings over the defaults, checked.
    fn chat(&self) -> Result<signaling::chat::ChatConfig, ConfigError> {
        let mut c = signaling::chat::ChatConfig::default();
        let rate = |given: Option<f64>, default: f64, flag: &str| -> Result<f64, ConfigError> {
            let v = given.unwrap_or(default);
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(ConfigError::Invalid(format!(
                    "--{flag} must be a positive number"
                )))
            }
        };
        let r = c.rates;
        c.rates.streamer = rate(self.chat_rate_streamer, r.streamer, "chat-rate-streamer")?;
        c.rates.moderator = rate(self.chat_rate_moderator, r.moderator, "chat-rate-moderator")?;
        c.rates.viewer = rate(self.chat_rate_viewer, r.viewer, "chat-rate-viewer")?;
        c.rates.anonymous = rate(self.chat_rate_anonymous, r.anonymous, "chat-rate-anonymous")?;
        c.history_len = self.chat_history.unwrap_or(c.history_len);
        c.history_age = self.chat_history_age.map_or(c.history_age, |a| a.0);
        if c.history_age.is_zero() {
            return Err(ConfigError::Invalid("--chat-history-age must be positive".into()));
        }
        c.filter.max_chars = self.chat_max_chars.unwrap_or(c.filter.max_chars).max(1);
        c.filter.banned_words = self
            .chat_banned_words
            .iter()
            .map(|w| w.trim().to_lowercase())
            .filter(|w| !w.is_empty())
            .collect();
        c.filter.block_links = !self.chat_allow_links;
        c.open_moderation = self.open_moderation;
        c.fanout_window = self.chat_fanout_window.map_or(c.fanout_window, |w| w.0);
        if c.fanout_window > Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "--chat-fanout-window must be at most 1s".into(),
            ));
        }
        Ok(c)
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

/// A duration key: humantime's forms (`500ms`, `30s`, `10m`, `1h`, `7d`,
/// `1h 30m`) or bare seconds (`3600`), the same in a flag, its variable and
/// the TOML file (where an integer is seconds too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(HumanDuration)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = HumanDuration;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as \"500ms\", \"30s\" or \"1h\", or whole seconds")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                s.parse().map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, s: u64) -> Result<HumanDuration, E> {
                Ok(HumanDuration(Duration::from_secs(s)))
            }

            fn visit_i64<E: serde::de::Error>(self, s: i64) -> Result<HumanDuration, E> {
                let s = u64::try_from(s)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(s), &self))?;
                self.visit_u64(s)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Bare seconds (`3600`), else humantime (`90s`, `10m`, `6h`, `7d`, `250ms`, `1h 30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(seconds) = s.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); e.g. 500ms, 30s, 10m, 1h"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::{CommandFactory, FromArgMatches};

    use super::*;

    /// A `--config` file, removed when dropped.
    struct TomlFile(PathBuf);

    impl TomlFile {
        fn new(name: &str, toml: &str) -> TomlFile {
            let path =
                std::env::temp_dir().join(format!("wave-sfu-config-{}-{name}.toml", std::process::id()));
            std::fs::write(&path, toml).unwrap();
            TomlFile(path)
        }
    }

    impl Drop for TomlFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// `sfu serve ARGV` as the binary parses it, blind to any `SFU_*`
    /// variable the test process happens to have.
    fn serve(argv: &[&str]) -> Result<NodeConfig, ConfigError> {
        let command = Cli::command().mut_subcommand("serve", |s| s.mut_args(|a| a.env(None::<&str>)));
        let matches = command
            .try_get_matches_from(["sfu", "serve"].iter().chain(argv))
            .unwrap_or_else(|e| panic!("sfu serve {argv:?}: {e}"));
        let CliCommand::Serve(args) = Cli::from_arg_matches(&matches).unwrap().command else {
            panic!("parsed as another subcommand");
        };
        NodeConfig::from_args(*args)
    }

    /// `sfu serve --config FILE ARGV` with `toml` in FILE.
    fn serve_with(name: &str, toml: &str, argv: &[&str]) -> Result<NodeConfig, ConfigError> {
        let file = TomlFile::new(name, toml);
        let path = file.0.to_str().unwrap();
        serve(&[&["--config", path], argv].concat())
    }

    /// One key: its TOML line, the same setting as flags, the keys it needs
    /// beside it (in the file either way), and the part of the resolved
    /// configuration it sets.
    struct Sample {
        toml: &'static str,
        flags: &'static [&'static str],
        needs: &'static str,
        shows: fn(&NodeConfig) -> String,
    }

    impl Sample {
        fn key(&self) -> &'static str {
            self.toml.split(' ').next().unwrap()
        }

        /// The key in the file and the flags on the command line give the
        /// same configuration, and one that differs from leaving both out.
        fn check(&self) -> Result<(), String> {
            let key = self.key();
            let shown = |name: &str, toml: &str, argv: &[&str]| {
                serve_with(&format!("{key}-{name}"), toml, argv)
                    .map(|c| (self.shows)(&c))
                    .map_err(|e| format!("{key} ({name}): {e}"))
            };
            let unset = shown("unset", self.needs, &[])?;
            let file = shown("file", &format!("{}\n{}\n", self.needs, self.toml), &[])?;
            let flags = shown("flags", self.needs, self.flags)?;
            if file == unset {
                return Err(format!("{key}: `{}` leaves {unset} unchanged", self.toml));
            }
            if file != flags {
                return Err(format!(
                    "{key}: the file gives {file}, {:?} gives {flags}",
                    self.flags
                ));
            }
            Ok(())
        }
    }

    fn sample(
        toml: &'static str,
        flags: &'static [&'static str],
        shows: fn(&NodeConfig) -> String,
    ) -> Sample {
        Sample {
            toml,
            flags,
            needs: "",
            shows,
        }
    }

    fn needing(needs: &'static str, s: Sample) -> Sample {
        Sample { needs, ..s }
    }

    fn samples() -> Vec<Sample> {
        fn turn(c: &NodeConfig) -> TurnConfig {
            c.turn.clone().expect("TURN on")
        }
        fn embedded(c: &NodeConfig) -> EmbeddedTurnConfig {
            turn(c).embedded.expect("embedded TURN")
        }
        fn hls(c: &NodeConfig) -> hls_bridge::HlsConfig {
            c.hls.expect("LL-HLS on")
        }
        vec![
            sample("http = \"127.0.0.1:9000\"", &["--http", "127.0.0.1:9000"], |c| {
                c.http.to_string()
            }),
            sample("media_ip = \"127.0.0.2\"", &["--media-ip", "127.0.0.2"], |c| {
                c.media_ip.to_string()
            }),
            sample("media_port = 40000", &["--media-port", "40000"], |c| {
                c.media_port.to_string()
            }),
            sample("public_ip = \"192.0.2.1\"", &["--public-ip", "192.0.2.1"], |c| {
                format!("{:?}", c.public_ip)
            }),
            sample("auth_secret = \"s3cret\"", &["--auth-secret", "s3cret"], |c| {
                format!("{:?}", c.auth_secret)
            }),
            sample("workers = 7", &["--workers", "7"], |c| c.workers.to_string()),
            sample("spread_viewers = false", &["--spread-viewers", "false"], |c| {
                c.spread_viewers.to_string()
            }),
            sample("keyframe_cache = false", &["--keyframe-cache", "false"], |c| {
                c.keyframe_cache.to_string()
            }),
            sample("http_threads = 7", &["--http-threads", "7"], |c| {
                c.http_threads.to_string()
            }),
            sample("max_peers = 7", &["--max-peers", "7"], |c| {
                c.max_peers.to_string()
            }),
            sample("max_room_peers = 7", &["--max-room-peers", "7"], |c| {
                c.max_room_peers.to_string()
            }),
            sample(
                "ice_servers = [\"stun:127.0.0.1:3478\", \"turn:127.0.0.1:3478,u,p\"]",
                &[
                    "--ice-server",
                    "stun:127.0.0.1:3478",
                    "--ice-server",
                    "turn:127.0.0.1:3478,u,p",
                ],
                |c| {
                    let servers = c.ice_servers.iter();
                    format!(
                        "{:?}",
                        servers
                            .map(|s| (&s.urls, &s.username, &s.credential))
                            .collect::<Vec<_>>()
                    )
                },
            ),
            sample("full_ice = true", &["--full-ice"], |c| c.ice_lite.to_string()),
            sample("dtls = \"dimpl\"", &["--dtls", "dimpl"], |c| c.dtls.to_string()),
            sample("initial_bwe = 1000000", &["--initial-bwe", "1000000"], |c| {
                c.initial_bwe_bps.to_string()
            }),
            sample("turn = true", &["--turn"], |c| {
                format!("{:?}", c.turn.as_ref().map(|t| &t.embedded))
            }),
            needing(
                "turn = true",
                sample(
                    "turn_listen = \"127.0.0.1:3479\"",
                    &["--turn-listen", "127.0.0.1:3479"],
                    |c| embedded(c).listen.to_string(),
                ),
            ),
            needing(
                "turn = true",
                sample("turn_realm = \"example\"", &["--turn-realm", "example"], |c| {
                    embedded(c).realm
                }),
            ),
            needing(
                "turn = true",
                sample("turn_secret = \"t0ken\"", &["--turn-secret", "t0ken"], |c| {
                    turn(c).secret
                }),
            ),
            needing(
                "turn = true",
                sample(
                    "turn_relay_ip = \"127.0.0.3\"",
                    &["--turn-relay-ip", "127.0.0.3"],
                    |c| embedded(c).relay_ip.to_string(),
                ),
            ),
            needing(
                "turn = true",
                sample(
                    "turn_relay_ports = \"50000-50100\"",
                    &["--turn-relay-ports", "50000-50100"],
                    |c| format!("{:?}", embedded(c).relay_ports),
                ),
            ),
            needing(
                "turn = true",
                sample(
                    "turn_urls = [\"turn:127.0.0.1:3478\"]",
                    &["--turn-url", "turn:127.0.0.1:3478"],
                    |c| format!("{:?}", c.turn.as_ref().map(|t| &t.urls)),
                ),
            ),
            needing(
                "turn = true",
                sample("turn_ttl = \"10m\"", &["--turn-ttl", "10m"], |c| {
                    format!("{:?}", turn(c).ttl)
                }),
            ),
            sample("no_hls = true", &["--no-hls"], |c| c.hls.is_none().to_string()),
            sample("hls_part_ms = 500", &["--hls-part-ms", "500"], |c| {
                format!("{:?}", hls(c).part_target)
            }),
            sample("hls_segment_ms = 4000", &["--hls-segment-ms", "4000"], |c| {
                format!("{:?}", hls(c).segment_target)
            }),
            sample("hls_dvr = \"2m\"", &["--hls-dvr", "2m"], |c| {
                format!("{:?}", hls(c).dvr_window)
            }),
            sample("hls_linger = \"5s\"", &["--hls-linger", "5s"], |c| {
                format!("{:?}", c.hls_linger)
            }),
            sample("hls_ladder = true", &["--hls-ladder"], |c| {
                c.hls_ladder.to_string()
            }),
            sample("hls_secret = \"h\"", &["--hls-secret", "h"], |c| {
                format!("{:?}", c.hls_secret)
            }),
            sample(
                "hlsjs_dir = \"/srv/hls.js\"",
                &["--hlsjs-dir", "/srv/hls.js"],
                |c| c.hlsjs_dir.display().to_string(),
            ),
            sample("public_hls = true", &["--public-hls"], |c| {
                c.public_hls.to_string()
            }),
            sample("token_audience = \"a\"", &["--token-audience", "a"], |c| {
                format!("{:?}", c.token_policy.audience)
            }),
            sample("max_token_ttl = \"2h\"", &["--max-token-ttl", "2h"], |c| {
                format!("{:?}", c.token_policy.max_ttl)
            }),
            sample(
                "max_http_connections_per_client = 9",
                &["--max-http-connections-per-client", "9"],
                |c| c.connection_limit.per_client.to_string(),
            ),
            sample(
                "trusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\"]",
                &["--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "192.0.2.7"],
                |c| format!("{:?}", c.trusted_proxies),
            ),
            sample(
                "max_http_connections = 99",
                &["--max-http-connections", "99"],
                |c| c.connection_limit.total.to_string(),
            ),
            sample(
                "nats = \"nats://127.0.0.1:4222\"",
                &["--nats", "nats://127.0.0.1:4222"],
                |c| format!("{:?}", c.cluster.nats.as_ref().map(|n| &n.url)),
            ),
            needing(
                "nats = \"nats://127.0.0.1:4222\"",
                sample(
                    "nats_creds = \"/etc/wave/node.creds\"",
                    &["--nats-creds", "/etc/wave/node.creds"],
                    |c| format!("{:?}", c.cluster.nats.as_ref().map(|n| &n.credentials)),
                ),
            ),
            needing(
                "nats = \"nats://127.0.0.1:4222\"",
                sample(
                    "nats_ca = \"/etc/wave/ca.pem\"",
                    &["--nats-ca", "/etc/wave/ca.pem"],
                    |c| format!("{:?}", c.cluster.nats.as_ref().map(|n| &n.tls_ca)),
                ),
            ),
            sample("node_id = \"edge-1\"", &["--node-id", "edge-1"], |c| {
                c.cluster.node_id.to_string()
            }),
            sample(
                "advertise_url = \"https://edge-1.example.com\"",
                &["--advertise-url", "https://edge-1.example.com"],
                |c| format!("{:?}", c.cluster.advertise_url),
            ),
            sample("heartbeat = \"500ms\"", &["--heartbeat", "500ms"], |c| {
                format!("{:?}", c.cluster.heartbeat)
            }),
            sample("node_ttl = \"5s\"", &["--node-ttl", "5s"], |c| {
                format!("{:?}", c.cluster.ttl)
            }),
            sample("drain_timeout = \"5s\"", &["--drain-timeout", "5s"], |c| {
                format!("{:?}", c.drain_timeout)
            }),
            sample(
                "rtmp_listen = \"127.0.0.1:1935\"",
                &["--rtmp-listen", "127.0.0.1:1935"],
                |c| format!("{:?}", c.rtmp_listen),
            ),
            sample("node_weight = 2.5", &["--node-weight", "2.5"], |c| {
                c.cluster.weight.to_string()
            }),
            sample("relay_fanout = 2", &["--relay-fanout", "2"], |c| {
                c.cluster.relay_fanout.to_string()
            }),
            needing(
                "nats = \"nats://127.0.0.1:4222\"",
                sample(
                    "relay_listen = \"127.0.0.1:7400\"",
                    &["--relay-listen", "127.0.0.1:7400"],
                    |c| format!("{:?}", c.cluster.relay),
                ),
            ),
            needing(
                "nats = \"nats://127.0.0.1:4222\"",
                sample("no_relay = true", &["--no-relay"], |c| {
                    format!("{:?}", c.cluster.relay)
                }),
            ),
            sample(
                "tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"",
                &["--tls-cert", "/c.pem", "--tls-key", "/k.pem"],
                |c| format!("{:?}", c.tls),
            ),
            sample(
                "tls_key = \"/k.pem\"\ntls_cert = \"/c.pem\"",
                &["--tls-key", "/k.pem", "--tls-cert", "/c.pem"],
                |c| format!("{:?}", c.tls),
            ),
            // The three go together: each sample gives all three.
            sample(
                "relay_cert = \"/c.pem\"\nrelay_key = \"/k.pem\"\nrelay_ca = \"/ca.pem\"",
                &[
                    "--relay-cert",
                    "/c.pem",
                    "--relay-key",
                    "/k.pem",
                    "--relay-ca",
                    "/ca.pem",
                ],
                |c| format!("{:?}", c.cluster.relay_pki),
            ),
            sample(
                "relay_key = \"/k.pem\"\nrelay_cert = \"/c.pem\"\nrelay_ca = \"/ca.pem\"",
                &[
                    "--relay-key",
                    "/k.pem",
                    "--relay-cert",
                    "/c.pem",
                    "--relay-ca",
                    "/ca.pem",
                ],
                |c| format!("{:?}", c.cluster.relay_pki),
            ),
            sample(
                "relay_ca = \"/ca.pem\"\nrelay_cert = \"/c.pem\"\nrelay_key = \"/k.pem\"",
                &[
                    "--relay-ca",
                    "/ca.pem",
                    "--relay-cert",
                    "/c.pem",
                    "--relay-key",
                    "/k.pem",
                ],
                |c| format!("{:?}", c.cluster.relay_pki),
            ),
            sample("chat_history = 7", &["--chat-history", "7"], |c| {
                c.chat.history_len.to_string()
            }),
            sample("chat_history_age = \"1h\"", &["--chat-history-age", "1h"], |c| {
                format!("{:?}", c.chat.history_age)
            }),
            sample(
                "chat_rate_streamer = 5.5",
                &["--chat-rate-streamer", "5.5"],
                |c| c.chat.rates.streamer.to_string(),
            ),
            sample(
                "chat_rate_moderator = 5.5",
                &["--chat-rate-moderator", "5.5"],
                |c| c.chat.rates.moderator.to_string(),
            ),
            sample("chat_rate_viewer = 5.5", &["--chat-rate-viewer", "5.5"], |c| {
                c.chat.rates.viewer.to_string()
            }),
            sample(
                "chat_rate_anonymous = 5.5",
                &["--chat-rate-anonymous", "5.5"],
                |c| c.chat.rates.anonymous.to_string(),
            ),
            sample("chat_max_chars = 80", &["--chat-max-chars", "80"], |c| {
                c.chat.filter.max_chars.to_string()
            }),
            sample(
                "chat_banned_words = [\"Spam\", \"eggs\"]",
                &["--chat-banned-words", "Spam,eggs"],
                |c| format!("{:?}", c.chat.filter.banned_words),
            ),
            sample("chat_allow_links = true", &["--chat-allow-links"], |c| {
                c.chat.filter.block_links.to_string()
            }),
            sample("open_moderation = true", &["--open-moderation"], |c| {
                c.chat.open_moderation.to_string()
            }),
            sample(
                "chat_fanout_window = \"25ms\"",
                &["--chat-fanout-window", "25ms"],
                |c| format!("{:?}", c.chat.fanout_window),
            ),
        ]
    }

    #[test]
    fn every_serve_flag_has_a_variable_and_a_toml_key_that_does_the_same() {
        let command = Cli::command();
        let serve_command = command.find_subcommand("serve").expect("a serve subcommand");
        let samples = samples();
        let mut flags = BTreeSet::new();
        let mut failures = Vec::new();
        for arg in serve_command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            // `--config` names the file itself.
            if matches!(long, "config" | "help" | "version") {
                continue;
            }
            let key = arg.get_id().as_str();
            flags.insert(key);
            if arg.get_env().is_none() {
                failures.push(format!("--{long} has no environment variable"));
            }
            let Some(sample) = samples.iter().find(|s| s.key() == key) else {
                failures.push(format!(
                    "--{long}: no sample for its TOML key `{key}` in this test"
                ));
                continue;
            };
            if let Err(e) = sample.check() {
                failures.push(format!("--{long}: {e}"));
            }
        }
        for s in &samples {
            if !flags.contains(s.key()) {
                failures.push(format!("sample `{}` names no flag", s.toml));
            }
        }
        assert!(flags.len() >= 45, "found only {} flags: {flags:?}", flags.len());
        assert!(
            failures.is_empty(),
            "{} of {} flags:\n{}",
            failures.len(),
            flags.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn flags_override_file_and_open_nodes_stay_on_loopback() {
        let file = "http = \"127.0.0.1:9000\"\nworkers = 3\nmax_peers = 7\nhls_part_ms = 500\n\
                    spread_viewers = false\nice_servers = [\"stun:127.0.0.1:1\"]\n";
        let argv = [
            "--workers",
            "1",
            "--hls-part-ms",
            "400",
            "--spread-viewers",
            "true",
            "--ice-server",
            "stun:127.0.0.1:2",
        ];
        let c = serve_with("override", file, &argv).unwrap();
        assert_eq!(c.http.port(), 9000);
        assert_eq!((c.workers, c.max_peers), (1, 7));
        assert_eq!(c.hls.unwrap().part_target, Duration::from_millis(400));
        assert!(c.spread_viewers);
        assert_eq!(c.ice_servers[0].urls, ["stun:127.0.0.1:2"]);

        let err = serve_with("unknown", "workers = 2\nbogus = 1\n", &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("unknown field `bogus`"), "{err}");
        let err = serve_with("config-key", "config = \"other.toml\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("unknown field `config`"), "{err}");
        let err = serve(&["--config", "/nonexistent/wave.toml"]).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");

        let open_public = serve(&["--http", "0.0.0.0:8080"]);
        assert!(matches!(open_public, Err(ConfigError::Invalid(_))));
        let open_public_file = serve_with("open", "http = \"0.0.0.0:8080\"\n", &[]);
        assert!(matches!(open_public_file, Err(ConfigError::Invalid(_))));
        let secured = serve(&[
            "--http",
            "0.0.0.0:8080",
            "--media-ip",
            "0.0.0.0",
            "--auth-secret",
            "s3cret",
        ]);
        assert!(secured.is_ok());
        // An open node's RTMP ingest listens on loopback only.
        let open_rtmp = serve(&["--rtmp-listen", "0.0.0.0:1935"]).unwrap_err();
        assert!(open_rtmp.to_string().contains("RTMP"), "{open_rtmp}");
        assert!(serve(&["--rtmp-listen", "127.0.0.1:1935"]).is_ok());
        assert!(serve(&["--rtmp-listen", "0.0.0.0:1935", "--auth-secret", "s3cret"]).is_ok());
    }

    #[test]
    fn durations_take_humantime_or_seconds_in_flags_and_file() {
        for (text, want) in [
            ("90", Duration::from_secs(90)),
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("10m", Duration::from_secs(600)),
            ("1h", Duration::from_secs(3600)),
            ("1h 30m", Duration::from_secs(5400)),
            ("7d", Duration::from_secs(7 * 86_400)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
            let flag = serve(&["--hls-linger", text]).unwrap();
            assert_eq!(flag.hls_linger, want, "--hls-linger {text}");
            let file = serve_with("linger", &format!("hls_linger = \"{text}\"\n"), &[]).unwrap();
            assert_eq!(file.hls_linger, want, "hls_linger = \"{text}\"");
        }
        let seconds = serve_with("linger-int", "hls_linger = 3600\n", &[]).unwrap();
        assert_eq!(seconds.hls_linger, Duration::from_secs(3600));

        for bad in ["", "1q", "-1", "ms"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        for bad in ["hls_linger = \"1q\"", "hls_linger = -1", "hls_linger = true"] {
            let err = serve_with("linger-bad", &format!("workers = 1\n{bad}\n"), &[]).unwrap_err();
            assert!(matches!(err, ConfigError::Parse { .. }), "{bad}: {err}");
            let shown = err.to_string();
            assert!(
                shown.contains("line 2") && shown.contains(bad),
                "not at its line: {shown}"
            );
        }
        let err = Cli::try_parse_from(["sfu", "serve", "--hls-dvr", "soon"]).unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
    }

    #[test]
    fn token_policy_and_connection_caps_have_defaults_and_bounds() {
        let d = serve(&[]).unwrap();
        assert!(!d.public_hls);
        assert_eq!(d.token_policy.max_ttl, Some(Duration::from_secs(86_400)));
        assert_eq!(d.connection_limit, signaling::ConnectionLimit::default());
        // 0: one-room tokens of any lifetime.
        let unbounded = serve(&["--max-token-ttl", "0"]).unwrap();
        assert_eq!(unbounded.token_policy.max_ttl, None);
        assert!(matches!(
            serve(&["--public-hls", "--hls-secret", "k"]),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            serve(&["--max-http-connections-per-client", "0"]),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn chat_fanout_window_defaults_reads_and_is_bounded() {
        let window = |w: &[&str]| serve(w).map(|c| c.chat.fanout_window);
        assert_eq!(window(&[]).unwrap(), signaling::chat::DEFAULT_FANOUT_WINDOW);
        assert_eq!(window(&["--chat-fanout-window", "0ms"]).unwrap(), Duration::ZERO);
        assert_eq!(
            window(&["--chat-fanout-window", "25ms"]).unwrap(),
            Duration::from_millis(25)
        );
        assert!(matches!(
            window(&["--chat-fanout-window", "2s"]),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn turn_is_embedded_external_or_off() {
        assert!(serve(&[]).unwrap().turn.is_none());

        let t = serve(&["--turn", "--auth-secret", "node"]).unwrap().turn.unwrap();
        let e = t.embedded.unwrap();
        assert_eq!(e.listen, "127.0.0.1:3478".parse().unwrap());
        assert_eq!((e.realm.as_str(), e.relay_ports), ("wave", (49152, 65535)));
        assert_eq!(t.secret, "node", "the node's secret by default");
        assert!(t.urls.is_empty(), "derived from the bound listener");

        let open = serve(&["--turn"]);
        assert_eq!(open.unwrap().turn.unwrap().secret.len(), 32, "a random secret");

        let t = serve(&[
            "--turn-url",
            "turn:turn.example.com:3478",
            "--turn-secret",
            "shared",
        ])
        .unwrap()
        .turn
        .unwrap();
        assert!(t.embedded.is_none());
        assert_eq!(t.ttl, Duration::from_secs(3600));

        for bad in [
            &["--turn-url", "turn:x:3478"][..],
            &["--turn-secret", "s"],
            &["--turn-listen", "127.0.0.1:3478"],
            &["--turn", "--turn-url", "stun:x:3478"],
            &["--turn", "--turn-listen", "0.0.0.0:3478"],
            // An open node's relay ports stay on loopback too.
            &["--turn", "--turn-relay-ip", "0.0.0.0"],
            &["--turn", "--turn-relay-ip", "192.0.2.10"],
        ] {
            assert!(
                matches!(serve(bad), Err(ConfigError::Invalid(_))),
                "accepted a bad TURN setup: {bad:?}"
            );
        }
    }

    #[test]
    fn ice_servers_parse() {
        let s = parse_ice_server("turn:127.0.0.1:3478?transport=udp,user,pass").unwrap();
        assert_eq!(s.username.as_deref(), Some("user"));
        assert!(parse_ice_server("http://x").is_err());
    }

    #[test]
    fn cluster_flags_default_to_the_in_process_bus() {
        let d = serve(&[]).unwrap();
        assert!(d.cluster.nats.is_none());
        assert!(signaling::cluster::NodeId::parse(d.cluster.node_id.as_str()).is_some());
        assert_eq!(d.cluster.heartbeat, Duration::from_secs(1));

        let argv = [
            "--nats",
            "nats://127.0.0.1:4222",
            "--node-id",
            "edge-1",
            "--heartbeat",
            "200ms",
            "--node-ttl",
            "1s",
        ];
        let n = serve(&argv).unwrap();
        assert_eq!(n.cluster.nats.unwrap().url, "nats://127.0.0.1:4222");
        assert_eq!(n.cluster.node_id.as_str(), "edge-1");

        for bad in [
            &["--node-id", "a.b"][..],
            &["--nats-creds", "x.creds"],
            &["--heartbeat", "3s", "--node-ttl", "3s"],
            &["--advertise-url", "10.0.0.1:8080"],
        ] {
            assert!(matches!(serve(bad), Err(ConfigError::Invalid(_))), "{bad:?}");
        }
    }
}
