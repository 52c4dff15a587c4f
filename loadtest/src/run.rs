//! Runs a scenario: encodes the media, starts the shards, joins publishers
//! and viewers over WHIP/WHEP at the planned times, measures for the
//! duration, and builds the report.

use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, info};

use crate::error::Error;
use crate::http::Signaling;
use crate::janus;
use crate::media::{self, MediaSet};
use crate::peer::{self, Peer, Publisher, Role, Shared, Viewer, ViewerStats};
use crate::report::{ClientCost, Report};
use crate::server::{Probe, ServerCost};
use crate::shard::{self, Shard, ShardResult};

/// Which simulcast layer a viewer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerChoice {
    Low,
    Mid,
    High,
    /// No cap: the server picks by bandwidth.
    Auto,
}

impl LayerChoice {
    pub fn index(self) -> Option<usize> {
        match self {
            LayerChoice::Low => Some(0),
            LayerChoice::Mid => Some(1),
            LayerChoice::High => Some(2),
            LayerChoice::Auto => None,
        }
    }

    fn query(self) -> Option<&'static str> {
        match self {
            LayerChoice::Low => Some("low"),
            LayerChoice::Mid => Some("mid"),
            LayerChoice::High => Some("high"),
            LayerChoice::Auto => None,
        }
    }
}

/// How viewers reach the media. Only WebRTC (WHEP) exists today; LL-HLS
/// viewers (playlist and part requests against the hls-bridge) are the
/// next variant, measured into the same report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewerTransport {
    Whep,
}

/// The server's signaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// WHIP/WHEP (WAVE, or any WHIP/WHEP server).
    Whip,
    /// Janus VideoRoom over its REST API; `--url` is the REST root
    /// (`http://127.0.0.1:8088/janus`). Viewers answer Janus's offer.
    Janus,
}

/// The shape of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plan {
    /// `publishers` rooms, each watched by `viewers` viewers.
    Fanout,
    /// One room; `publishers` peers each publish and watch every other one
    /// (a WHEP session per watched publisher).
    Meeting,
    /// One publisher, `viewers` viewers; then `rate` per second of them
    /// leave (DELETE) and as many new ones join, for the duration.
    Churn { rate: f64 },
}

impl Plan {
    pub fn name(&self) -> &'static str {
        match self {
            Plan::Fanout => "fanout",
            Plan::Meeting => "meeting",
            Plan::Churn { .. } => "churn",
        }
    }
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub plan: Plan,
    /// The node publishers (and the metrics read) go to.
    pub url: String,
    /// Nodes viewers are spread over, in turn; empty: `url`.
    pub viewer_urls: Vec<String>,
    pub whip_path: String,
    pub whep_path: String,
    pub metrics_path: Option<String>,
    pub token: Option<String>,
    pub seed: u64,
    pub publishers: usize,
    /// Viewers watch this room, which something else publishes; no
    /// publisher of the load tester's joins (`--publisher none`).
    pub external_room: Option<String>,
    /// Viewers per publisher (fanout), in all (churn); unused in a meeting.
    pub viewers: usize,
    pub layer: LayerChoice,
    pub transport: ViewerTransport,
    pub target: Target,
    /// One media address for every peer instead of a 127/8 address each.
    pub local_ip: Option<std::net::IpAddr>,
    /// Viewer joins per second.
    pub rate: f64,
    /// Measured time after the last join.
    pub duration: Duration,
    pub threads: usize,
    pub timeout: Duration,
    pub retries: u32,
    pub bitrates: [u32; 3],
    pub loop_frames: usize,
    pub gop: usize,
    pub server_pid: Option<u32>,
    /// One viewer in this many stays a full str0m peer (see `Viewer`).
    pub full_every: u32,
    pub progress: bool,
}

/// A viewer to join: when, where, which layer.
#[derive(Debug, Clone)]
pub struct Join {
    pub at: Duration,
    pub publisher: usize,
    pub layer: LayerChoice,
}

/// A joined viewer that can be made to leave.
#[derive(Debug, Clone)]
struct Live {
    local: std::net::SocketAddr,
    tx: shard::Handle,
    location: Option<String>,
}

/// The join schedule: `count` viewers at `rate` per second with ±25%
/// seeded jitter on each gap, spread round-robin over the publishers.
pub fn schedule(count: usize, publishers: usize, rate: f64, layer: LayerChoice, seed: u64) -> Vec<Join> {
    let mut rng = StdRng::seed_from_u64(seed);
    let gap = if rate > 0.0 { 1.0 / rate } else { 0.0 };
    let mut t = 0.0;
    (0..count)
        .map(|i| {
            let j = Join {
                at: Duration::from_secs_f64(t),
                publisher: i % publishers.max(1),
                layer,
            };
            t += gap * rng.random_range(0.75..1.25);
            j
        })
        .collect()
}

/// A meeting's subscriptions: every peer watches every other peer's
/// publisher, joined in a seeded order at `rate` per second.
pub fn meeting_schedule(peers: usize, rate: f64, layer: LayerChoice, seed: u64) -> Vec<Join> {
    let pairs: Vec<usize> = (0..peers)
        .flat_map(|watcher| (0..peers).filter(move |p| *p != watcher))
        .collect();
    let mut plan = schedule(pairs.len(), 1, rate, layer, seed);
    for (j, p) in plan.iter_mut().zip(pairs) {
        j.publisher = p;
    }
    plan
}

fn room(cfg: &RunConfig, publisher: usize) -> String {
    if let Some(room) = &cfg.external_room {
        return room.clone();
    }
    match cfg.plan {
        Plan::Fanout => format!("lt{}-{publisher}", cfg.seed),
        Plan::Meeting | Plan::Churn { .. } => format!("lt{}-0", cfg.seed),
    }
}

fn endpoint(cfg: &RunConfig, path: &str, room: &str) -> String {
    format!(
        "{}{}",
        cfg.url.trim_end_matches('/'),
        path.replace("{room}", room)
    )
}

struct Ctx {
    cfg: RunConfig,
    sig: Arc<Signaling>,
    shared: Arc<Shared>,
    media: Arc<MediaSet>,
    cert: str0m::config::DtlsCert,
    shards: Mutex<Vec<Shard>>,
    /// Publishers' session URLs, by index.
    publisher_sessions: Mutex<Vec<Option<String>>>,
    live: Mutex<Vec<Live>>,
    failed: Mutex<Vec<ViewerStats>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ctx {
    /// Picks the least loaded shard (round-robin) and a fresh address on it.
    fn place(&self, n: usize) -> (std::net::SocketAddr, shard::Handle) {
        let mut shards = lock(&self.shards);
        let i = n % shards.len();
        let s = &mut shards[i];
        (s.allocate(), s.handle())
    }

    /// Datagrams dropped at every shard's socket so far.
    fn shard_socket_drops(&self) -> Option<u64> {
        let inodes: Vec<u64> = lock(&self.shards).iter().filter_map(|s| s.inode).collect();
        shard::udp_drops(&inodes)
    }

    /// Wake-ups of every media thread so far.
    fn shard_wakeups(&self) -> u64 {
        lock(&self.shards).iter().map(Shard::wakeups).sum()
    }

    /// The address a peer's HTTP requests come from: its own on a loopback target.
    fn http_from(&self, local: std::net::SocketAddr) -> Option<std::net::IpAddr> {
        let loopback = self.cfg.url.contains("://127.") || self.cfg.url.contains("://localhost");
        loopback.then_some(local.ip())
    }

    /// The address str0m uses for a peer placed at `local`.
    fn media_addr(&self, local: std::net::SocketAddr) -> std::net::SocketAddr {
        self.cfg
            .local_ip
            .map_or(local, |ip| std::net::SocketAddr::new(ip, local.port()))
    }

    /// With `--local-ip`, where the peer's media goes (the server's candidate).
    fn route(&self, local: std::net::SocketAddr, sdp: &str) -> Result<Option<peer::Route>, Error> {
        let Some(_) = self.cfg.local_ip else {
            return Ok(None);
        };
        let remote = peer::host_candidate(sdp)
            .ok_or_else(|| Error::Rtc("--local-ip: the server's SDP has no host candidate".into()))?;
        Ok(Some(peer::Route {
            local: self.media_addr(local),
            remote,
        }))
    }

    async fn join_publisher(&self, index: usize) -> Result<(), Error> {
        let (local, tx) = self.place(index);
        let (mut rtc, offer, pending, amid, vmid) =
            peer::publisher_offer(&self.cert, self.media_addr(local), Instant::now())?;
        let session = match self.cfg.target {
            Target::Whip => {
                let url = endpoint(&self.cfg, &self.cfg.whip_path, &room(&self.cfg, index));
                self.sig.offer(&url, &offer, self.http_from(local)).await?
            }
            Target::Janus => crate::http::Session {
                answer: janus::publish(
                    &self.sig,
                    &self.cfg.url,
                    &room(&self.cfg, index),
                    &janus::feed(index),
                    &offer,
                )
                .await?,
                // Janus ends with its process.
                location: None,
            },
        };
        peer::accept_answer(&mut rtc, pending, &session.answer)?;
        if self.cfg.target == Target::Janus {
            peer::kick(&mut rtc, Instant::now())?;
        }
        let route = self.route(local, &session.answer)?;
        let mut sessions = lock(&self.publisher_sessions);
        if sessions.len() <= index {
            sessions.resize(index + 1, None);
        }
        sessions[index] = session.location;
        drop(sessions);
        let publisher = Publisher::new(
            index as u32,
            self.media.clone(),
            amid,
            vmid,
            self.cfg.seed ^ index as u64,
        );
        let peer = Peer {
            local,
            route,
            rtc,
            role: Role::Publisher(Box::new(publisher)),
            next_timeout: Instant::now(),
            dead: false,
        };
        tx.send(shard::Command::Add(Box::new(peer)))
            .map_err(|_| Error::Media("shard stopped".into()))
    }

    async fn join_viewer(&self, id: u32, join: &Join) -> Result<(), Error> {
        let ViewerTransport::Whep = self.cfg.transport;
        let (local, tx) = self.place(self.cfg.publishers + id as usize);
        let posted = Instant::now();
        let room = room(&self.cfg, join.publisher);
        // In a meeting the viewer names the publisher it watches: the last
        // segment of its WHIP session URL is the session id.
        let watched = match self.cfg.plan {
            Plan::Meeting => lock(&self.publisher_sessions)
                .get(join.publisher)
                .cloned()
                .flatten()
                .and_then(|l| l.rsplit('/').next().map(str::to_owned)),
            _ => None,
        };
        let full = id.is_multiple_of(self.cfg.full_every.max(1));
        let mut viewer = Viewer::new(id, room.clone(), join.layer.index(), posted, full);
        self.shared.progress.posted.fetch_add(1, Ordering::Relaxed);
        let result = async {
            if self.cfg.target == Target::Janus {
                let feed = janus::feed(join.publisher);
                let (h, offer) =
                    janus::subscribe(&self.sig, &self.cfg.url, &room, &feed, join.layer.index()).await?;
                let (rtc, answer) = peer::viewer_answer(&self.cert, self.media_addr(local), posted, &offer)?;
                let route = self.route(local, &offer)?;
                janus::start(&self.sig, &h, &answer).await?;
                return Ok::<_, Error>((rtc, None, route));
            }
            let (mut rtc, offer, pending) = peer::viewer_offer(&self.cert, self.media_addr(local), posted)?;
            let base = match self.cfg.viewer_urls.len() {
                0 => &self.cfg.url,
                n => &self.cfg.viewer_urls[id as usize % n],
            };
            let mut url = format!(
                "{}{}",
                base.trim_end_matches('/'),
                self.cfg.whep_path.replace("{room}", &room)
            );
            let params = [
                ("layer", join.layer.query().map(str::to_owned)),
                ("publisher", watched),
            ];
            for (k, v) in params {
                if let Some(v) = v {
                    url.push(if url.contains('?') { '&' } else { '?' });
                    url.push_str(&format!("{k}={v}"));
                }
            }
            let session = self.sig.offer(&url, &offer, self.http_from(local)).await?;
            peer::accept_answer(&mut rtc, pending, &session.answer)?;
            let route = self.route(local, &session.answer)?;
            Ok::<_, Error>((rtc, session.location, route))
        }
        .await;
        match result {
            Ok((rtc, location, route)) => {
                viewer.stats.answer_ms = Some(posted.elapsed().as_secs_f64() * 1000.0);
                self.shared.progress.answered.fetch_add(1, Ordering::Relaxed);
                lock(&self.live).push(Live {
                    local,
                    tx: tx.clone(),
                    location,
                });
                let peer = Peer {
                    local,
                    route,
                    rtc,
                    role: Role::Viewer(Box::new(viewer)),
                    next_timeout: Instant::now(),
                    dead: false,
                };
                tx.send(shard::Command::Add(Box::new(peer)))
                    .map_err(|_| Error::Media("shard stopped".into()))
            }
            Err(e) => {
                self.shared.progress.failed.fetch_add(1, Ordering::Relaxed);
                viewer.stats.error = Some(short_error(&e));
                lock(&self.failed).push(viewer.stats);
                Err(e)
            }
        }
    }
}

/// An error message grouped for the report (no per-session details).
fn short_error(e: &Error) -> String {
    match e {
        Error::Status { status, .. } => format!("HTTP {status}"),
        Error::Timeout(_) => "signaling timeout".into(),
        Error::Http(_) => "HTTP connection failed".into(),
        other => other.to_string(),
    }
}

fn progress_line(shared: &Shared, start: Instant, planned: usize, last_bytes: &mut u64) -> String {
    let p = &shared.progress;
    let bytes = p.bytes.load(Ordering::Relaxed);
    let mbps = (bytes - *last_bytes) as f64 * 8.0 / 1e6;
    *last_bytes = bytes;
    format!(
        "t={:>5.1}s publishers {} | viewers posted {}/{planned} answered {} connected {} media {} failed {} left {} | {:.1} Mbit/s, {} packets",
        start.elapsed().as_secs_f64(),
        p.publishers_sending.load(Ordering::Relaxed),
        p.posted.load(Ordering::Relaxed),
        p.answered.load(Ordering::Relaxed),
        p.connected.load(Ordering::Relaxed),
        p.media.load(Ordering::Relaxed),
        p.failed.load(Ordering::Relaxed),
        p.left.load(Ordering::Relaxed),
        mbps,
        p.packets.load(Ordering::Relaxed),
    )
}

/// Runs the scenario and returns its report.
pub async fn run(cfg: RunConfig) -> Result<Report, Error> {
    let t_encode = Instant::now();
    let (frames, gop, bitrates) = (cfg.loop_frames, cfg.gop, cfg.bitrates);
    let media = tokio::task::spawn_blocking(move || media::encode(frames, gop, bitrates))
        .await
        .map_err(|e| Error::Media(format!("encoder task: {e}")))??;
    info!(
        elapsed_ms = t_encode.elapsed().as_millis() as u64,
        low_kbps = media.video[0].bitrate() / 1000,
        mid_kbps = media.video[1].bitrate() / 1000,
        high_kbps = media.video[2].bitrate() / 1000,
        "media encoded"
    );
    let layer_kbps = [0, 1, 2].map(|l| media.video[l].bitrate() / 1000);
    let shared = Arc::new(Shared::new(cfg.publishers));
    let mut shards = Vec::new();
    for i in 0..cfg.threads.max(1) {
        shards.push(Shard::spawn(i, shared.clone())?);
    }
    let sig = Arc::new(Signaling::new(cfg.token.clone(), cfg.timeout, cfg.retries));
    let probe = Probe {
        metrics_url: cfg
            .metrics_path
            .as_ref()
            .map(|p| format!("{}{p}", cfg.url.trim_end_matches('/'))),
        pid: cfg.server_pid,
    };
    let ctx = Arc::new(Ctx {
        cfg: cfg.clone(),
        sig: sig.clone(),
        shared: shared.clone(),
        media: Arc::new(media),
        cert: peer::dtls_cert()?,
        shards: Mutex::new(shards),
        publisher_sessions: Mutex::new(Vec::new()),
        live: Mutex::new(Vec::new()),
        failed: Mutex::new(Vec::new()),
    });
    let start = Instant::now();
    let progress_task = cfg.progress.then(|| {
        let shared = shared.clone();
        let planned = planned_viewers(&cfg);
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let line = progress_line(&shared, start, planned, &mut last);
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{line}");
                let _ = err.flush();
            }
        })
    });

    // Publishers first; viewers of a room without one would be refused (409).
    let mut publisher_errors = Vec::new();
    let own_publishers = if cfg.external_room.is_some() {
        0
    } else {
        cfg.publishers
    };
    for p in 0..own_publishers {
        if let Err(e) = ctx.join_publisher(p).await {
            debug!(publisher = p, error = %e, "publisher failed to join");
            publisher_errors.push(short_error(&e));
        }
    }
    let deadline = Instant::now() + cfg.timeout;
    let expected = (own_publishers - publisher_errors.len()) as u64;
    while shared.progress.publishers_sending.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the first frames of every layer reach the server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_viewers = probe.sample(&sig).await;

    let plan = match cfg.plan {
        Plan::Fanout => schedule(
            cfg.publishers * cfg.viewers,
            cfg.publishers,
            cfg.rate,
            cfg.layer,
            cfg.seed,
        ),
        Plan::Meeting => meeting_schedule(cfg.publishers, cfg.rate, cfg.layer, cfg.seed),
        Plan::Churn { .. } => schedule(cfg.viewers, 1, cfg.rate, cfg.layer, cfg.seed),
    };
    let mut next_id = plan.len() as u32;
    let ramp_start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(plan.len());
    for (i, join) in plan.into_iter().enumerate() {
        tokio::time::sleep_until(ramp_start + join.at).await;
        tasks.push(spawn_viewer(&ctx, i as u32, join));
    }
    for t in tasks {
        let _ = t.await;
    }
    // Give the last viewers their keyframe before the measured window.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let window_start = probe.sample(&sig).await;
    let window_packets0 = shared.progress.packets.load(Ordering::Relaxed);
    let wakeups0 = ctx.shard_wakeups();
    let drops0 = ctx.shard_socket_drops();
    let client0 = wave_metrics::process::sample();
    match cfg.plan {
        Plan::Churn { rate } if rate > 0.0 => {
            // Each tick one seeded-random viewer leaves and a new one joins.
            let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x00c4_0c4e);
            let gap = Duration::from_secs_f64(1.0 / rate);
            let end = tokio::time::Instant::now() + cfg.duration;
            let mut tick = tokio::time::interval(gap);
            tick.tick().await;
            let mut tasks = Vec::new();
            // The last second only lets the last joins finish (their keyframe).
            let churn_end = end.checked_sub(Duration::from_secs(1)).unwrap_or(end);
            while tokio::time::Instant::now() + gap <= churn_end {
                tick.tick().await;
                let leaving = {
                    let mut live = lock(&ctx.live);
                    let n = live.len();
                    (n > 0).then(|| live.swap_remove(rng.random_range(0..n)))
                };
                if let Some(l) = leaving {
                    let _ = l.tx.send(shard::Command::Leave(l.local));
                    if let Some(loc) = l.location {
                        let sig = sig.clone();
                        // The shard drops the peer first, so the server's close is not taken for a failure.
                        tasks.push(tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            sig.delete(&loc).await
                        }));
                    }
                }
                let join = Join {
                    at: Duration::ZERO,
                    publisher: 0,
                    layer: cfg.layer,
                };
                tasks.push(spawn_viewer(&ctx, next_id, join));
                next_id += 1;
            }
            tokio::time::sleep_until(end).await;
            for t in tasks {
                let _ = t.await;
            }
        }
        _ => tokio::time::sleep(cfg.duration).await,
    }
    let window_end = probe.sample(&sig).await;
    let window_packets = shared.progress.packets.load(Ordering::Relaxed) - window_packets0;
    let wakeups = ctx.shard_wakeups() - wakeups0;
    let drops_window = ctx
        .shard_socket_drops()
        .zip(drops0)
        .map(|(b, a)| b.saturating_sub(a));
    let client = ClientCost::compute(
        wave_metrics::process::sample().cpu_seconds - client0.cpu_seconds,
        window_end
            .at
            .saturating_duration_since(window_start.at)
            .as_secs_f64(),
        window_packets,
        wakeups,
    );
    let planned = next_id as usize;
    if let Some(t) = progress_task {
        t.abort();
        eprintln!("\r{}", progress_line(&shared, start, planned, &mut 0));
    }

    // Stop the media and collect, then end the sessions politely. The
    // sockets' drop counters go with them: read them first (since opening).
    let drops = ctx.shard_socket_drops();
    let shards = std::mem::take(&mut *lock(&ctx.shards));
    let results: Vec<ShardResult> =
        tokio::task::spawn_blocking(move || shards.into_iter().map(Shard::stop).collect())
            .await
            .map_err(|e| Error::Media(format!("shard stop: {e}")))?;
    let live_viewers = lock(&ctx.live).len();
    let locations: Vec<String> = std::mem::take(&mut *lock(&ctx.live))
        .into_iter()
        .filter_map(|l| l.location)
        .chain(
            std::mem::take(&mut *lock(&ctx.publisher_sessions))
                .into_iter()
                .flatten(),
        )
        .collect();
    let deletes = locations.into_iter().map(|l| {
        let sig = sig.clone();
        async move { sig.delete(&l).await }
    });
    let _ = tokio::time::timeout(cfg.timeout, futures_join_all(deletes)).await;

    let mut viewers: Vec<ViewerStats> = std::mem::take(&mut *lock(&ctx.failed));
    let mut publishers = Vec::new();
    let mut latency = crate::stats::Histogram::default();
    let mut send_lateness = crate::stats::Histogram::default();
    let mut send_errors = 0;
    for r in results {
        viewers.extend(r.viewers);
        publishers.extend(r.publishers);
        latency.merge(&r.latency_us);
        send_lateness.merge(&r.send_lateness_us);
        send_errors += r.send_errors;
    }
    for e in publisher_errors {
        publishers.push(crate::peer::PublisherStats {
            error: Some(e),
            ..Default::default()
        });
    }
    viewers.sort_by_key(|v| v.id);
    let server = ServerCost::compute(
        &before_viewers,
        &window_start,
        &window_end,
        live_viewers,
        Some(window_packets),
    );
    let mut report = Report::build(
        cfg.plan.name(),
        cfg.seed,
        cfg.duration.as_secs_f64(),
        planned,
        &viewers,
        &publishers,
        &latency,
        server,
        sig.outcomes(),
        send_errors,
    );
    report.publisher_layer_kbps = layer_kbps;
    report.external_room = cfg.external_room.clone();
    report.client = client;
    report.tester_socket_drops = drops;
    report.tester_socket_drops_window = drops_window;
    report.send_lateness_ms = send_lateness.summary_ms();
    Ok(report)
}

/// Viewers the initial plan joins (churn adds more as it runs).
fn planned_viewers(cfg: &RunConfig) -> usize {
    match cfg.plan {
        Plan::Fanout => cfg.publishers * cfg.viewers,
        Plan::Meeting => cfg.publishers * cfg.publishers.saturating_sub(1),
        Plan::Churn { .. } => cfg.viewers,
    }
}

fn spawn_viewer(ctx: &Arc<Ctx>, id: u32, join: Join) -> tokio::task::JoinHandle<()> {
    let ctx = ctx.clone();
    tokio::spawn(async move {
        if let Err(e) = ctx.join_viewer(id, &join).await {
            debug!(viewer = id, error = %e, "viewer failed to join");
        }
    })
}

/// Awaits all futures concurrently (spawned, so they overlap).
async fn futures_join_all<F>(futs: impl Iterator<Item = F>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    for h in handles {
        let _ = h.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_reproducible_from_the_seed() {
        let a = schedule(100, 3, 50.0, LayerChoice::Low, 7);
        let b = schedule(100, 3, 50.0, LayerChoice::Low, 7);
        let c = schedule(100, 3, 50.0, LayerChoice::Low, 8);
        let times = |s: &[Join]| s.iter().map(|j| j.at).collect::<Vec<_>>();
        assert_eq!(times(&a), times(&b));
        assert_ne!(times(&a), times(&c));
        // ~2 s for 100 joins at 50/s, spread over the publishers.
        let last = a.last().unwrap().at.as_secs_f64();
        assert!((1.6..2.4).contains(&last), "{last}");
        assert_eq!(a.iter().filter(|j| j.publisher == 0).count(), 34);
    }

    #[test]
    fn meeting_watches_every_other_peer() {
        let m = meeting_schedule(4, 100.0, LayerChoice::Auto, 1);
        assert_eq!(m.len(), 12);
        for p in 0..4 {
            assert_eq!(m.iter().filter(|j| j.publisher == p).count(), 3);
        }
    }
}
