//! Command line (clap, every flag also from the environment) and the
//! optional TOML file, whose keys are the flags' names: a flag given on the
//! command line or in the environment wins over the file.

use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::run::{LayerChoice, Plan, RunConfig, Target, ViewerTransport};

#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Simulated WHIP publishers and WHEP viewers against a WebRTC SFU"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Scenario,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// P publishers, each watched by N viewers.
    Fanout(FanoutArgs),
    /// N peers in one room, each publishing and watching every other.
    Meeting(MeetingArgs),
    /// N viewers of one publisher; then viewers leave and join at a rate.
    Churn(ChurnArgs),
    /// Start a release `sfu` per fixed scenario, measure the floor, write BENCHMARKS.md.
    Bench(BenchArgs),
    /// LL-HLS viewers (blocking playlist reloads, parts) of one room.
    Hls(HlsArgs),
    /// Start a release `sfu`, publish, run LL-HLS viewers, write BENCHMARKS.md.
    BenchHls(BenchHlsArgs),
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct HlsArgs {
    /// LL-HLS viewers.
    #[arg(long, env = "LOADTEST_VIEWERS", default_value_t = 10)]
    pub viewers: usize,
    /// Watch this room (already published, any LL-HLS origin); without it
    /// the load tester publishes its own stream to room `lt{seed}-0`.
    #[arg(long, env = "LOADTEST_ROOM")]
    pub room: Option<String>,
    /// Multivariant playlist path; `{room}` is replaced.
    #[arg(long, env = "LOADTEST_HLS_PATH", default_value = "/hls/{room}/index.m3u8")]
    pub hls_path: String,
    /// Variant: lowest, middle or highest bandwidth (auto: lowest).
    #[arg(long, env = "LOADTEST_LAYER", value_enum, default_value_t = LayerChoice::Low)]
    pub layer: LayerChoice,
    /// Video only: do not follow the audio rendition.
    #[arg(long, env = "LOADTEST_HLS_NO_AUDIO")]
    pub no_audio: bool,
    /// HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1 keep-alive.
    #[arg(long, env = "LOADTEST_H2C")]
    pub h2c: bool,
    /// Do not fetch the preload-hinted part (hls.js 1.x does not).
    #[arg(long, env = "LOADTEST_HLS_NO_HINT")]
    pub no_hint: bool,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct BenchHlsArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub hls: HlsArgs,
    /// The node binary (default: `sfu` next to this binary).
    #[arg(long, env = "LOADTEST_SFU")]
    pub sfu: Option<PathBuf>,
    /// Markdown file whose LL-HLS benchmark section is replaced ("" for none).
    #[arg(long, env = "LOADTEST_BENCH_OUT", default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// `--workers` of the node.
    #[arg(long, env = "LOADTEST_NODE_WORKERS", default_value_t = 1)]
    pub node_workers: usize,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct BenchArgs {
    /// The node binary (default: `sfu` next to this binary).
    #[arg(long, env = "LOADTEST_SFU")]
    pub sfu: Option<PathBuf>,
    /// Markdown file whose benchmark section is replaced.
    #[arg(long, env = "LOADTEST_BENCH_OUT", default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// `--workers` of the node.
    #[arg(long, env = "LOADTEST_NODE_WORKERS", default_value_t = 1)]
    pub node_workers: usize,
    /// Only the scenarios whose names start with one of these (comma-separated), e.g. `fanout,churn`;
    /// `cascade` is one room across three nodes (needs `nats-server`).
    #[arg(long, env = "LOADTEST_ONLY", value_delimiter = ',')]
    pub only: Vec<String>,
}

/// Flags every scenario takes.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct Common {
    /// Base URL of the server (WHIP/WHEP endpoints and metrics are below
    /// it). Several, comma separated, spread a
    /// cluster's load: publishers and metrics go to the first, viewers to
    /// the others in turn.
    #[arg(
        long,
        env = "LOADTEST_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// The server's signaling: `whip` (WHIP/WHEP below `--url`) or `janus`
    /// (Janus VideoRoom; `--url` is the REST root, e.g.
    /// `http://127.0.0.1:8088/janus`, and `--metrics-path ""` with
    /// `--server-pid` for its cost).
    #[arg(long, env = "LOADTEST_TARGET", value_enum, default_value_t = Target::Whip, global = true)]
    pub target: Target,
    /// One source address for every peer's media instead of a 127/8
    /// address each; datagrams are then told apart by the server's address,
    /// so the server must give each peer its own port (Janus does). Janus
    /// needs it: it gathers no loopback candidates, so its media is on this
    /// host's own address (`scripts/janus-config.sh`).
    #[arg(long, env = "LOADTEST_LOCAL_IP", global = true)]
    pub local_ip: Option<std::net::IpAddr>,
    /// Bearer token sent with every WHIP/WHEP request.
    #[arg(long, env = "LOADTEST_TOKEN", global = true)]
    pub token: Option<String>,
    /// WHIP endpoint path; `{room}` is replaced.
    #[arg(
        long,
        env = "LOADTEST_WHIP_PATH",
        default_value = "/whip/{room}",
        global = true
    )]
    pub whip_path: String,
    /// WHEP endpoint path; `{room}` is replaced, `layer=` is appended unless auto.
    #[arg(
        long,
        env = "LOADTEST_WHEP_PATH",
        default_value = "/whep/{room}",
        global = true
    )]
    pub whep_path: String,
    /// Prometheus metrics path for server cost ("" for none).
    #[arg(
        long,
        env = "LOADTEST_METRICS_PATH",
        default_value = "/metrics",
        global = true
    )]
    pub metrics_path: String,
    /// Read the server's CPU and memory from /proc/<pid> (same machine).
    #[arg(long, env = "LOADTEST_SERVER_PID", global = true)]
    pub server_pid: Option<u32>,
    /// Seed for room names, join times and RTP origins.
    #[arg(long, env = "LOADTEST_SEED", default_value_t = 1, global = true)]
    pub seed: u64,
    /// Viewer joins per second.
    #[arg(long, env = "LOADTEST_RATE", default_value_t = 50.0, global = true)]
    pub rate: f64,
    /// Seconds measured after the last viewer joined.
    #[arg(long, env = "LOADTEST_DURATION", default_value_t = 10.0, global = true)]
    pub duration: f64,
    /// Media threads (each one UDP socket, many peers); 0 = one per core.
    #[arg(long, env = "LOADTEST_THREADS", default_value_t = 0, global = true)]
    pub threads: usize,
    /// Seconds before a signaling request or a publisher's connection gives up.
    #[arg(long, env = "LOADTEST_TIMEOUT", default_value_t = 10.0, global = true)]
    pub timeout: f64,
    /// Retries when the server answers 429/503/409 (honouring Retry-After).
    #[arg(long, env = "LOADTEST_RETRIES", default_value_t = 3, global = true)]
    pub retries: u32,
    /// Target bitrate of the low, mid and high layers, bit/s.
    #[arg(long, env = "LOADTEST_LOW_BPS", default_value_t = 150_000, global = true)]
    pub low_bps: u32,
    #[arg(long, env = "LOADTEST_MID_BPS", default_value_t = 500_000, global = true)]
    pub mid_bps: u32,
    #[arg(long, env = "LOADTEST_HIGH_BPS", default_value_t = 1_200_000, global = true)]
    pub high_bps: u32,
    /// Frames encoded once and looped (30 per second).
    #[arg(long, env = "LOADTEST_LOOP_FRAMES", default_value_t = 60, global = true)]
    pub loop_frames: usize,
    /// Keyframe interval in frames.
    #[arg(long, env = "LOADTEST_GOP", default_value_t = 30, global = true)]
    pub gop: usize,
    /// Write the report as JSON to this file.
    #[arg(long, env = "LOADTEST_JSON", global = true)]
    pub json: Option<PathBuf>,
    /// Thresholds, e.g. `loss<0.5%,join_p95<300ms`; exit 3 when one is missed.
    #[arg(long, env = "LOADTEST_EXPECT", global = true)]
    pub expect: Option<String>,
    /// One viewer in K of those asking for the low layer stays a full str0m
    /// peer for the whole run; the others are full peers only until their
    /// first keyframe (join time is measured for all), then count media from the cleartext RTP header (sequence →
    /// loss before retransmission, size → bitrate, timestamp → jitter and
    /// freezes) without SRTP, while STUN/DTLS/RTCP still go to str0m.
    /// Forwarding latency and loss after NACK come from the full viewers
    /// only. Viewers of other layers (or auto) stay full: they would send no
    /// transport feedback, and a server's bandwidth estimate then moves them
    /// off their layer unseen. 1 = every viewer full (costly: the tester becomes the limit).
    #[arg(long, env = "LOADTEST_FULL_EVERY", default_value_t = 10, global = true)]
    pub full_every: u32,
    /// No live progress line.
    #[arg(long, env = "LOADTEST_QUIET", global = true)]
    pub quiet: bool,
    /// TOML file with any of these flags (names with `_` or `-`).
    #[arg(long, env = "LOADTEST_CONFIG", global = true)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct FanoutArgs {
    /// Publishers (one room each).
    #[arg(long, env = "LOADTEST_PUBLISHERS", default_value_t = 1)]
    pub publishers: usize,
    /// Viewers per publisher.
    #[arg(long, env = "LOADTEST_VIEWERS", default_value_t = 10)]
    pub viewers: usize,
    /// Layer every viewer asks for.
    #[arg(long, env = "LOADTEST_LAYER", value_enum, default_value_t = LayerChoice::Low)]
    pub layer: LayerChoice,
    /// Who publishes: `own`, the load tester's simulcast publishers (one
    /// room each), or `none`, viewers only of `--room`, which something
    /// else publishes (an RTMP encoder, an RTSP pull, a browser).
    /// Forwarding latency needs the load tester's own frames: `none`
    /// reports join time, loss, jitter, freezes and bitrate.
    #[arg(long, env = "LOADTEST_PUBLISHER", value_enum, default_value_t = PublisherChoice::Own)]
    #[serde(default)]
    pub publisher: PublisherChoice,
    /// The room viewers watch with `--publisher none`.
    #[arg(long, env = "LOADTEST_ROOM")]
    pub room: Option<String>,
}

/// Who publishes the rooms viewers watch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublisherChoice {
    /// The load tester's own publishers.
    #[default]
    Own,
    /// Nobody here: the room is published already.
    None,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct MeetingArgs {
    /// Peers in the room.
    #[arg(long, env = "LOADTEST_PEERS", default_value_t = 10)]
    pub peers: usize,
    /// Layer every subscription asks for.
    #[arg(long, env = "LOADTEST_LAYER", value_enum, default_value_t = LayerChoice::Low)]
    pub layer: LayerChoice,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct ChurnArgs {
    /// Viewers kept watching.
    #[arg(long, env = "LOADTEST_VIEWERS", default_value_t = 200)]
    pub viewers: usize,
    /// Leaves (and as many joins) per second after the ramp.
    #[arg(long, env = "LOADTEST_CHURN", default_value_t = 20.0)]
    pub churn: f64,
    /// Layer every viewer asks for.
    #[arg(long, env = "LOADTEST_LAYER", value_enum, default_value_t = LayerChoice::Low)]
    pub layer: LayerChoice,
}

/// Overrides the fields of `value` that `matches` did not get from the
/// command line or the environment with the TOML table's.
fn merge<T: Serialize + for<'de> Deserialize<'de>>(
    value: &T,
    matches: &ArgMatches,
    table: &toml::Table,
    used: &mut Vec<String>,
) -> Result<T, Error> {
    let mut json = serde_json::to_value(value).map_err(|e| Error::Config(e.to_string()))?;
    let obj = json
        .as_object_mut()
        .ok_or_else(|| Error::Config("flags are not a table".into()))?;
    for (key, v) in table {
        let id = key.replace('-', "_");
        if !obj.contains_key(&id) {
            continue;
        }
        used.push(key.clone());
        let from_user = matches.ids().any(|i| i.as_str() == id)
            && matches!(
                matches.value_source(&id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
        if !from_user {
            let v = serde_json::to_value(v).map_err(|e| Error::Config(format!("{key}: {e}")))?;
            obj.insert(id, v);
        }
    }
    serde_json::from_value(json).map_err(|e| Error::Config(e.to_string()))
}

/// Parses the command line, then applies the TOML file if one is named.
pub fn parse() -> Result<Cli, Error> {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).map_err(|e| Error::Config(e.to_string()))?;
    let Some(path) = cli.common.config.clone() else {
        return Ok(cli);
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let mut used = Vec::new();
    let (_, sub) = matches
        .subcommand()
        .ok_or_else(|| Error::Config("no scenario".into()))?;
    let mut common = merge(&cli.common, &matches, &table, &mut used)?;
    common.config = Some(path.clone());
    cli.command = match &cli.command {
        Scenario::Fanout(a) => Scenario::Fanout(merge(a, sub, &table, &mut used)?),
        Scenario::Meeting(a) => Scenario::Meeting(merge(a, sub, &table, &mut used)?),
        Scenario::Churn(a) => Scenario::Churn(merge(a, sub, &table, &mut used)?),
        Scenario::Bench(a) => Scenario::Bench(merge(a, sub, &table, &mut used)?),
        Scenario::Hls(a) => Scenario::Hls(merge(a, sub, &table, &mut used)?),
        Scenario::BenchHls(a) => Scenario::BenchHls(merge(a, sub, &table, &mut used)?),
    };
    cli.common = common;
    if let Some(unknown) = table.keys().find(|k| !used.contains(k)) {
        return Err(Error::Config(format!(
            "{}: unknown key `{unknown}`",
            path.display()
        )));
    }
    Ok(cli)
}

impl Cli {
    /// The run this command line describes.
    pub fn run_config(&self) -> Result<RunConfig, Error> {
        let c = &self.common;
        let secs = |v: f64, what: &str| {
            Duration::try_from_secs_f64(v)
                .map_err(|_| Error::Config(format!("{what}: {v} is not a duration")))
        };
        let (plan, publishers, viewers, layer) = match &self.command {
            Scenario::Fanout(a) => (Plan::Fanout, a.publishers, a.viewers, a.layer),
            Scenario::Meeting(a) => (Plan::Meeting, a.peers, 0, a.layer),
            Scenario::Churn(a) => (Plan::Churn { rate: a.churn }, 1, a.viewers, a.layer),
            // The template of the benchmark's cases; each sets its own shape.
            Scenario::Bench(_) => (Plan::Fanout, 1, 0, LayerChoice::Low),
            // The LL-HLS runs' publisher.
            Scenario::Hls(_) | Scenario::BenchHls(_) => (Plan::Fanout, 1, 0, LayerChoice::Low),
        };
        if publishers == 0 {
            return Err(Error::Config("at least one publisher".into()));
        }
        let external_room = match &self.command {
            Scenario::Fanout(a) => match (a.publisher, &a.room) {
                (PublisherChoice::Own, None) => None,
                (PublisherChoice::Own, Some(_)) => {
                    return Err(Error::Config(
                        "--room is for --publisher none (the load tester names its own rooms)".into(),
                    ));
                }
                (PublisherChoice::None, None) => {
                    return Err(Error::Config(
                        "--publisher none needs --room, the room to watch".into(),
                    ));
                }
                (PublisherChoice::None, Some(_)) if a.publishers != 1 => {
                    return Err(Error::Config(
                        "--publisher none watches one room: leave --publishers at 1".into(),
                    ));
                }
                (PublisherChoice::None, Some(room)) => Some(room.clone()),
            },
            _ => None,
        };
        if publishers > 16_000 {
            return Err(Error::Config(
                "at most 16,000 publishers (the frame tag's width)".into(),
            ));
        }
        if c.full_every == 0 {
            return Err(Error::Config("full_every must be at least 1".into()));
        }
        if c.loop_frames == 0 || c.gop == 0 {
            return Err(Error::Config("loop_frames and gop must be positive".into()));
        }
        let urls: Vec<String> = c
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        let Some((url, others)) = urls.split_first() else {
            return Err(Error::Config("--url is empty".into()));
        };
        Ok(RunConfig {
            plan,
            url: url.clone(),
            viewer_urls: others.to_vec(),
            whip_path: c.whip_path.clone(),
            whep_path: c.whep_path.clone(),
            metrics_path: (!c.metrics_path.is_empty()).then(|| c.metrics_path.clone()),
            token: c.token.clone(),
            seed: c.seed,
            publishers,
            external_room,
            viewers,
            layer,
            transport: ViewerTransport::Whep,
            target: c.target,
            local_ip: c.local_ip,
            rate: c.rate,
            duration: secs(c.duration, "duration")?,
            threads: match c.threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
            timeout: secs(c.timeout, "timeout")?,
            retries: c.retries,
            bitrates: [c.low_bps, c.mid_bps, c.high_bps],
            loop_frames: c.loop_frames,
            gop: c.gop,
            server_pid: c.server_pid,
            full_every: c.full_every,
            progress: !c.quiet,
        })
    }
}
