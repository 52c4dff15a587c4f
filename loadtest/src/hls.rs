//! `loadtest hls`: simulated LL-HLS viewers behaving like hls.js in
//! low-latency mode (plus the preload-hint prefetch Safari does): fetch the
//! multivariant playlist, pick a variant (and its default audio rendition),
//! tune in at PART-HOLD-BACK behind the live edge, then loop blocking
//! playlist reloads (`_HLS_msn`/`_HLS_part`) while fetching the hinted part,
//! and fetch every new part the answer lists. One tokio task per viewer on a
//! few runtime threads; each viewer has its own hyper client (HTTP/1.1
//! keep-alive connections, or one h2c connection), as a browser would.
//!
//! Measured per viewer, all against the wall clock of this machine (node
//! and load tester share it on loopback):
//! - part delay: the instant the whole part is held minus the wall time its
//!   media ends (parent segment's PROGRAM-DATE-TIME plus the parts before
//!   it). This is "available → held" with availability at the media's end;
//!   it includes the packager's wait for the next frame.
//! - reload delay: a blocking playlist answer's arrival minus the media end
//!   of the first new part it lists; and the raw time the request was held.
//! - playlist round trip of non-blocking playlist requests.
//! - errors (non-2xx, timeouts, connection failures), stalls (no new part
//!   for more than 3 part targets).
//!
//! Without `--room` the run publishes its own stream (the WHIP publisher of
//! the WebRTC scenarios, through [`run::run`] with no viewers) so a node
//! packages it as LL-HLS; with `--room` it watches what is already there.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::{debug, warn};

use crate::error::Error;
use crate::hls_playlist::{self as pl, MediaPlaylist, Multivariant};
use crate::hls_report::{HlsReport, ServerHls, ServerSample};
use crate::http::Signaling;
use crate::run::{self, LayerChoice, RunConfig};
use crate::stats::{Histogram, Summary};

/// Everything an LL-HLS run needs.
#[derive(Debug, Clone)]
pub struct HlsConfig {
    /// Base URL of the origin.
    pub url: String,
    /// Multivariant playlist path; `{room}` is replaced.
    pub path: String,
    pub room: String,
    pub viewers: usize,
    /// Viewer starts per second.
    pub rate: f64,
    /// Measured time after the last viewer started.
    pub duration: Duration,
    pub timeout: Duration,
    pub layer: LayerChoice,
    /// Follow the variant's audio rendition too (hls.js does).
    pub audio: bool,
    /// HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    pub h2: bool,
    /// Fetch the preload-hinted part alongside each blocking reload.
    pub prefetch_hint: bool,
    pub seed: u64,
    /// The publisher's run (no viewers) when the load tester publishes.
    pub publish: Option<RunConfig>,
    pub metrics_path: Option<String>,
    pub server_pid: Option<u32>,
    pub progress: bool,
}

impl HlsConfig {
    fn master_url(&self) -> String {
        format!(
            "{}{}",
            self.url.trim_end_matches('/'),
            self.path.replace("{room}", &self.room)
        )
    }
}

/// Counters every viewer task updates, read by the progress line and the
/// window's request rate.
#[derive(Debug, Default)]
pub struct Live {
    /// Set while the measured window runs: samples outside it are dropped.
    pub measuring: AtomicBool,
    pub started: AtomicU64,
    pub tuned: AtomicU64,
    pub failed: AtomicU64,
    pub playlist_requests: AtomicU64,
    pub part_requests: AtomicU64,
    pub parts: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
}

/// What one viewer measured.
#[derive(Debug, Default)]
pub struct ViewerHls {
    pub id: u32,
    /// Start → first part held, ms.
    pub tune_in_ms: Option<f64>,
    pub part_us: Vec<u32>,
    pub reload_us: Vec<u32>,
    pub reload_wait_us: Vec<u32>,
    pub playlist_us: Vec<u32>,
    pub parts: u64,
    pub bytes: u64,
    pub stalls: u64,
    pub stall_ms: f64,
    /// Failures by kind: HTTP status ("404"), "timeout", "connect", "body", "playlist".
    pub failures: BTreeMap<String, u64>,
    /// Why the viewer never got a part.
    pub error: Option<String>,
}

impl ViewerHls {
    fn fail(&mut self, live: &Live, kind: String) {
        live.errors.fetch_add(1, Ordering::Relaxed);
        *self.failures.entry(kind).or_default() += 1;
    }

    fn merge(&mut self, other: ViewerHls) {
        self.part_us.extend(other.part_us);
        self.reload_us.extend(other.reload_us);
        self.reload_wait_us.extend(other.reload_wait_us);
        self.playlist_us.extend(other.playlist_us);
        self.parts += other.parts;
        self.bytes += other.bytes;
        self.stalls += other.stalls;
        self.stall_ms += other.stall_ms;
        for (k, v) in other.failures {
            *self.failures.entry(k).or_default() += v;
        }
    }
}

/// Why one request failed.
#[derive(Debug)]
enum Failure {
    Status(u16),
    Timeout,
    Connect(String),
    Body(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(s) => write!(f, "HTTP {s}"),
            Failure::Timeout => f.write_str("timed out"),
            Failure::Connect(e) => write!(f, "connection failed: {e}"),
            Failure::Body(e) => write!(f, "body: {e}"),
        }
    }
}

impl Failure {
    fn kind(&self) -> String {
        match self {
            Failure::Status(s) => s.to_string(),
            Failure::Timeout => "timeout".into(),
            Failure::Connect(_) => "connect".into(),
            Failure::Body(_) => "body".into(),
        }
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// One viewer's HTTP side: its own connection pool.
struct Http {
    client: HttpClient,
    timeout: Duration,
}

impl Http {
    fn new(h2: bool, timeout: Duration) -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let mut builder = Client::builder(TokioExecutor::new());
        builder.http2_only(h2).pool_idle_timeout(Duration::from_secs(30));
        Http {
            client: builder.build(connector),
            timeout,
        }
    }

    /// GETs `url`; the body decoded when gzipped. `timeout` bounds the
    /// whole exchange (a blocking request may be held by the server).
    async fn get(&self, url: &str, timeout: Duration) -> Result<Bytes, Failure> {
        let req = Request::get(url)
            .header(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"))
            .body(Empty::new())
            .map_err(|e| Failure::Connect(format!("bad URL {url}: {e}")))?;
        let fut = async {
            let res = self
                .client
                .request(req)
                .await
                .map_err(|e| Failure::Connect(format!("{url}: {e}")))?;
            let status = res.status();
            let gzip = res
                .headers()
                .get(header::CONTENT_ENCODING)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(|e| Failure::Body(format!("{url}: {e}")))?
                .to_bytes();
            if status != StatusCode::OK {
                debug!(%url, %status, "HLS request refused");
                return Err(Failure::Status(status.as_u16()));
            }
            if gzip {
                let mut out = Vec::with_capacity(body.len() * 4);
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_end(&mut out)
                    .map_err(|e| Failure::Body(format!("{url}: gzip: {e}")))?;
                return Ok(Bytes::from(out));
            }
            Ok(body)
        };
        match tokio::time::timeout(timeout.max(self.timeout), fut).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout),
        }
    }
}

fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn us(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

fn ms_to_us(ms: f64) -> u32 {
    (ms.max(0.0) * 1000.0).min(f64::from(u32::MAX)) as u32
}

/// Picks the variant a viewer asking for `layer` plays: the lowest,
/// middle or highest bandwidth (auto: the lowest, where players start).
pub fn pick_variant(m: &Multivariant, layer: LayerChoice) -> Option<&pl::Variant> {
    let mut v: Vec<&pl::Variant> = m.variants.iter().collect();
    v.sort_by_key(|v| v.bandwidth);
    let i = match layer {
        LayerChoice::Low | LayerChoice::Auto => 0,
        LayerChoice::Mid => v.len() / 2,
        LayerChoice::High => v.len().saturating_sub(1),
    };
    v.get(i).copied()
}

/// The audio rendition a player takes for `variant`: the group's default.
pub fn pick_audio<'a>(m: &'a Multivariant, variant: &pl::Variant) -> Option<&'a pl::AudioRendition> {
    let group = variant.audio.as_deref()?;
    let mut in_group = m.audio.iter().filter(|a| a.group == group);
    let first = in_group.clone().next();
    in_group.find(|a| a.default).or(first)
}

/// One viewer's view of the run.
struct Viewer {
    http: Http,
    live: Arc<Live>,
    deadline: Instant,
    prefetch_hint: bool,
    /// A blocking request is given up after this (3 TD + margin).
    block_timeout: Duration,
}

/// Parts already held, by URI (a short memory: parts move on).
#[derive(Default)]
struct Held {
    recent: VecDeque<(String, f64, Instant)>,
}

impl Held {
    fn get(&self, uri: &str) -> Option<(f64, Instant)> {
        self.recent
            .iter()
            .find(|(u, ..)| u == uri)
            .map(|(_, w, i)| (*w, *i))
    }

    fn insert(&mut self, uri: String, wall: f64, at: Instant) {
        if self.recent.len() >= 64 {
            self.recent.pop_front();
        }
        self.recent.push_back((uri, wall, at));
    }
}

impl Viewer {
    fn measuring(&self) -> bool {
        self.live.measuring.load(Ordering::Relaxed)
    }

    async fn playlist(&self, url: &str, s: &mut ViewerHls, timeout: Duration) -> Option<MediaPlaylist> {
        self.live.playlist_requests.fetch_add(1, Ordering::Relaxed);
        match self.http.get(url, timeout).await {
            Ok(body) => match std::str::from_utf8(&body)
                .map_err(|_| Error::Http("playlist is not UTF-8".into()))
                .and_then(pl::parse_media)
            {
                Ok(p) => Some(p),
                Err(e) => {
                    debug!(%url, error = %e, "unusable media playlist");
                    s.fail(&self.live, "playlist".into());
                    None
                }
            },
            Err(f) => {
                debug!(%url, failure = %f, "playlist request failed");
                s.fail(&self.live, f.kind());
                None
            }
        }
    }

    /// GETs a part (or init) and returns when it is held.
    async fn part(&self, url: &str, s: &mut ViewerHls) -> Option<(f64, Instant)> {
        self.live.part_requests.fetch_add(1, Ordering::Relaxed);
        match self.http.get(url, self.block_timeout).await {
            Ok(body) => {
                self.live.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                s.bytes += body.len() as u64;
                Some((wall_ms(), Instant::now()))
            }
            Err(f) => {
                debug!(%url, failure = %f, "part request failed");
                s.fail(&self.live, f.kind());
                None
            }
        }
    }

    /// Follows one media playlist until the deadline or its end.
    async fn follow(&self, url: &str, started: Instant, video: bool) -> ViewerHls {
        let mut s = ViewerHls::default();
        let t = Instant::now();
        let Some(mut list) = self.playlist(url, &mut s, Duration::ZERO).await else {
            s.error = Some("media playlist failed".into());
            return s;
        };
        s.playlist_us.push(us(t.elapsed()));
        if let Some(map) = &list.map {
            self.part(&pl::resolve(url, map), &mut s).await;
        }
        // Tune in PART-HOLD-BACK behind the live edge, as hls.js does.
        let part_target = list.part_target.unwrap_or(list.target_duration);
        let behind = (list.part_hold_back.unwrap_or(3.0 * part_target) / part_target).ceil() as usize;
        let mut held = Held::default();
        let start = list.parts.len().saturating_sub(behind.max(1));
        for p in &list.parts[start..] {
            if let Some((w, at)) = self.part(&pl::resolve(url, &p.uri), &mut s).await {
                held.insert(p.uri.clone(), w, at);
            }
        }
        if held.recent.is_empty() {
            s.error = Some("no part at tune-in".into());
            return s;
        }
        if video {
            s.tune_in_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            self.live.tuned.fetch_add(1, Ordering::Relaxed);
        }
        let stall_after = Duration::from_secs_f64(3.0 * part_target);
        let mut last_new = Instant::now();
        while Instant::now() < self.deadline && !list.ended {
            let (msn, part) = list.next_directives();
            if !list.can_block_reload {
                // A plain live playlist: poll every part target.
                tokio::time::sleep(stall_after / 3).await;
            }
            let reload_url = if list.can_block_reload {
                pl::with_directives(url, msn, part)
            } else {
                url.to_owned()
            };
            let hint = list
                .hint
                .as_ref()
                .filter(|h| self.prefetch_hint && held.get(h).is_none())
                .cloned();
            let sent = Instant::now();
            let mut rs = ViewerHls::default();
            let (next, hinted) =
                tokio::join!(self.playlist(&reload_url, &mut rs, self.block_timeout), async {
                    match &hint {
                        Some(h) => {
                            let mut hs = ViewerHls::default();
                            let r = self.part(&pl::resolve(url, h), &mut hs).await;
                            Some((h.clone(), r, hs))
                        }
                        None => None,
                    }
                });
            let answered = wall_ms();
            let measuring = self.measuring();
            s.merge(rs);
            if let Some((uri, r, hs)) = hinted {
                s.merge(hs);
                if let Some((w, at)) = r {
                    held.insert(uri, w, at);
                }
            }
            let Some(next) = next else {
                // The failure is counted; resync without directives, as hls.js does.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Some(p) = self.playlist(url, &mut s, Duration::ZERO).await {
                    list = p;
                }
                continue;
            };
            if list.can_block_reload && measuring {
                s.reload_wait_us.push(us(sent.elapsed()));
            }
            let before = list.last_part();
            let fresh: Vec<pl::Part> = next
                .parts
                .iter()
                .filter(|p| before.is_none_or(|b| (p.msn, p.index) > b))
                .cloned()
                .collect();
            if let (Some(first), true) = (fresh.first(), measuring && list.can_block_reload)
                && let Some(end) = first.end_ms
            {
                s.reload_us.push(ms_to_us(answered - end));
            }
            for p in &fresh {
                let got = match held.get(&p.uri) {
                    Some(h) => Some(h),
                    None => {
                        let r = self.part(&pl::resolve(url, &p.uri), &mut s).await;
                        if let Some((w, at)) = r {
                            held.insert(p.uri.clone(), w, at);
                        }
                        r
                    }
                };
                let Some((wall, at)) = got else { continue };
                s.parts += 1;
                self.live.parts.fetch_add(1, Ordering::Relaxed);
                let gap = at.saturating_duration_since(last_new);
                last_new = last_new.max(at);
                if !self.measuring() {
                    continue;
                }
                if let Some(end) = p.end_ms {
                    s.part_us.push(ms_to_us(wall - end));
                }
                if gap > stall_after {
                    s.stalls += 1;
                    s.stall_ms += gap.as_secs_f64() * 1000.0;
                }
            }
            list = next;
        }
        let quiet = Instant::now().saturating_duration_since(last_new);
        if !list.ended && quiet > stall_after && self.measuring() {
            s.stalls += 1;
            s.stall_ms += quiet.as_secs_f64() * 1000.0;
        }
        s
    }

    /// The whole viewer: multivariant, variant (+ audio), follow.
    async fn run(self, id: u32, master: String, layer: LayerChoice, audio: bool) -> ViewerHls {
        let started = Instant::now();
        let mut s = ViewerHls {
            id,
            ..ViewerHls::default()
        };
        self.live.started.fetch_add(1, Ordering::Relaxed);
        self.live.playlist_requests.fetch_add(1, Ordering::Relaxed);
        let t = Instant::now();
        let multivariant = match self.http.get(&master, Duration::ZERO).await {
            Ok(body) => std::str::from_utf8(&body)
                .map_err(|_| Error::Http("playlist is not UTF-8".into()))
                .and_then(pl::parse_multivariant),
            Err(f) => {
                s.fail(&self.live, f.kind());
                Err(Error::Http(format!("multivariant playlist: {f}")))
            }
        };
        let m = match multivariant {
            Ok(m) => m,
            Err(e) => {
                s.error = Some(short(&e));
                self.live.failed.fetch_add(1, Ordering::Relaxed);
                return s;
            }
        };
        s.playlist_us.push(us(t.elapsed()));
        let Some(variant) = pick_variant(&m, layer) else {
            s.error = Some("no variant".into());
            return s;
        };
        let video_url = pl::resolve(&master, &variant.uri);
        let audio_url = pick_audio(&m, variant)
            .filter(|_| audio)
            .map(|a| pl::resolve(&master, &a.uri));
        let (v, a) = tokio::join!(self.follow(&video_url, started, true), async {
            match &audio_url {
                Some(u) => Some(self.follow(u, started, false).await),
                None => None,
            }
        });
        s.tune_in_ms = v.tune_in_ms;
        s.error = v.error.clone();
        s.merge(v);
        if let Some(a) = a {
            if s.error.is_none() {
                s.error = a.error.clone().map(|e| format!("audio: {e}"));
            }
            s.merge(a);
        }
        if s.error.is_some() {
            self.live.failed.fetch_add(1, Ordering::Relaxed);
        }
        s
    }
}

fn short(e: &Error) -> String {
    let s = e.to_string();
    s.split(": http://")
        .next()
        .unwrap_or(&s)
        .chars()
        .take(120)
        .collect()
}

/// Reads the node's HLS counters, CPU and blocked-answer histogram.
async fn sample_server(sig: &Signaling, metrics: Option<&str>, pid: Option<u32>) -> ServerSample {
    let mut s = ServerSample {
        at: Instant::now(),
        ..ServerSample::default()
    };
    if let Some(url) = metrics
        && let Ok(text) = sig.get(url).await
    {
        s.cpu_seconds = wave_metrics::value(&text, "process_cpu_seconds_total");
        s.requests = wave_metrics::value(&text, "wave_hls_requests_total");
        s.blocked = wave_metrics::BucketCounts::parse(&text, crate::hls_report::BLOCKED_HISTOGRAM, "");
    }
    if let Some(pid) = pid {
        let cpu = wave_metrics::process::sample_pid(pid).map(|p| p.cpu_seconds);
        s.cpu_seconds = cpu.or(s.cpu_seconds);
    }
    s
}

fn progress_line(live: &Live, start: Instant, planned: usize, last: &mut (u64, u64)) -> String {
    let req = live.playlist_requests.load(Ordering::Relaxed) + live.part_requests.load(Ordering::Relaxed);
    let parts = live.parts.load(Ordering::Relaxed);
    let line = format!(
        "t={:>5.1}s hls viewers started {}/{planned} tuned {} failed {} | {} req/s, {} parts/s, {} errors",
        start.elapsed().as_secs_f64(),
        live.started.load(Ordering::Relaxed),
        live.tuned.load(Ordering::Relaxed),
        live.failed.load(Ordering::Relaxed),
        req - last.0,
        parts - last.1,
        live.errors.load(Ordering::Relaxed),
    );
    *last = (req, parts);
    line
}

/// Waits until the multivariant playlist lists `variants` variants (the
/// stream is live on every layer).
async fn wait_live(http: &Http, master: &str, variants: usize, limit: Duration) -> Result<(), Error> {
    let until = Instant::now() + limit;
    loop {
        let why = match http.get(master, Duration::ZERO).await {
            Ok(body) => match pl::parse_multivariant(&String::from_utf8_lossy(&body)) {
                Ok(m) if m.variants.len() >= variants => return Ok(()),
                Ok(m) => format!("{} of {variants} variants", m.variants.len()),
                Err(e) => e.to_string(),
            },
            Err(f) => f.to_string(),
        };
        if Instant::now() >= until {
            return Err(Error::Timeout(format!(
                "{master} did not become live within {limit:?}: {why}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the LL-HLS scenario and returns its report.
pub async fn run(cfg: HlsConfig) -> Result<HlsReport, Error> {
    let master = cfg.master_url();
    let ramp = if cfg.rate > 0.0 {
        cfg.viewers as f64 / cfg.rate
    } else {
        0.0
    };
    // Our own publisher, for as long as the viewers need it (it goes live
    // within a second or two of its WHIP answer; what is left over is waited out).
    let publisher = cfg.publish.clone().map(|mut rc| {
        rc.viewers = 0;
        rc.publishers = 1;
        rc.plan = run::Plan::Fanout;
        rc.progress = false;
        rc.duration = Duration::from_secs_f64(ramp + cfg.duration.as_secs_f64() + 3.5);
        tokio::spawn(run::run(rc))
    });
    let probe_http = Http::new(false, cfg.timeout);
    let encode_allowance = if publisher.is_some() {
        Duration::from_secs(30)
    } else {
        Duration::ZERO
    };
    // Our publisher sends three simulcast layers: wait for all three.
    let variants = if publisher.is_some() { 3 } else { 1 };
    if let Err(e) = wait_live(&probe_http, &master, variants, cfg.timeout + encode_allowance).await {
        if let Some(p) = publisher {
            let _ = p.await;
        }
        return Err(e);
    }
    let sig = Signaling::new(None, cfg.timeout, 0);
    let metrics = cfg
        .metrics_path
        .as_ref()
        .map(|p| format!("{}{p}", cfg.url.trim_end_matches('/')));

    let live = Arc::new(Live::default());
    let start = Instant::now();
    let progress = cfg.progress.then(|| {
        let live = live.clone();
        let planned = cfg.viewers;
        tokio::spawn(async move {
            let mut last = (0, 0);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let line = progress_line(&live, start, planned, &mut last);
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{line}");
                let _ = err.flush();
            }
        })
    });
    let plan = run::schedule(cfg.viewers, 1, cfg.rate, cfg.layer, cfg.seed);
    let settle = Duration::from_millis(1500);
    let window_start = tokio::time::Instant::now() + plan.last().map_or(Duration::ZERO, |j| j.at) + settle;
    let window_end = window_start + cfg.duration;
    let deadline = window_end.into_std();
    let block_timeout = cfg.timeout.max(Duration::from_secs(12));
    let results = Arc::new(Mutex::new(Vec::with_capacity(cfg.viewers)));
    let ramp_start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(plan.len());
    for (i, join) in plan.iter().enumerate() {
        tokio::time::sleep_until(ramp_start + join.at).await;
        let viewer = Viewer {
            http: Http::new(cfg.h2, cfg.timeout),
            live: live.clone(),
            deadline,
            prefetch_hint: cfg.prefetch_hint,
            block_timeout,
        };
        let (master, results, layer, audio) = (master.clone(), results.clone(), join.layer, cfg.audio);
        tasks.push(tokio::spawn(async move {
            let r = viewer.run(i as u32, master, layer, audio).await;
            results.lock().unwrap_or_else(|p| p.into_inner()).push(r);
        }));
    }
    tokio::time::sleep_until(window_start).await;
    let s0 = sample_server(&sig, metrics.as_deref(), cfg.server_pid).await;
    let req0 = live.playlist_requests.load(Ordering::Relaxed) + live.part_requests.load(Ordering::Relaxed);
    let bytes0 = live.bytes.load(Ordering::Relaxed);
    live.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep_until(window_end).await;
    let s1 = sample_server(&sig, metrics.as_deref(), cfg.server_pid).await;
    let req1 = live.playlist_requests.load(Ordering::Relaxed) + live.part_requests.load(Ordering::Relaxed);
    let bytes1 = live.bytes.load(Ordering::Relaxed);
    live.measuring.store(false, Ordering::Relaxed);
    // Viewers stop at the deadline; a held request ends within its timeout.
    for t in tasks {
        if let Err(e) = t.await {
            warn!(error = %e, "viewer task failed");
        }
    }
    if let Some(p) = progress {
        p.abort();
        eprintln!("\r{}", progress_line(&live, start, cfg.viewers, &mut (0, 0)));
    }
    let publisher = match publisher {
        Some(p) => Some(
            p.await
                .map_err(|e| Error::Media(format!("publisher task: {e}")))?,
        ),
        None => None,
    };
    let mut viewers = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    viewers.sort_by_key(|v| v.id);
    let window = s1.at.saturating_duration_since(s0.at).as_secs_f64();
    let per_sec = |n: u64| if window > 0.0 { n as f64 / window } else { 0.0 };
    let (client_rps, client_mbps) = (per_sec(req1 - req0), per_sec(bytes1 - bytes0) * 8.0 / 1e6);
    let server = ServerHls::compute(&s0, &s1);
    let mut report = build_report(&cfg, &viewers, server, client_rps, client_mbps);
    match publisher {
        Some(Ok(r)) => {
            report.publisher = Some(if r.publishers_connected == 1 {
                "connected".into()
            } else {
                format!("not connected: {:?}", r.errors)
            })
        }
        Some(Err(e)) => report.publisher = Some(format!("failed: {e}")),
        None => {}
    }
    Ok(report)
}

/// The run's report from what the viewers measured and the node did.
fn build_report(
    cfg: &HlsConfig,
    viewers: &[ViewerHls],
    server: ServerHls,
    client_rps: f64,
    client_mbps: f64,
) -> HlsReport {
    let secs = cfg.duration.as_secs_f64();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for v in viewers {
        for (k, n) in &v.failures {
            *failures.entry(k.clone()).or_default() += n;
        }
        if let Some(e) = &v.error {
            *errors.entry(e.clone()).or_default() += 1;
        }
    }
    let joined = viewers.iter().filter(|v| v.tune_in_ms.is_some()).count();
    HlsReport {
        scenario: "hls".into(),
        seed: cfg.seed,
        room: cfg.room.clone(),
        transport: if cfg.h2 { "h2c" } else { "http/1.1" }.into(),
        duration_secs: secs,
        publisher: None,
        viewers_planned: cfg.viewers,
        viewers_joined: joined,
        viewers_failed: cfg.viewers.saturating_sub(joined),
        tune_in_ms: Summary::of(viewers.iter().filter_map(|v| v.tune_in_ms)),
        part_ms: histogram(viewers.iter().map(|v| &v.part_us)).summary_ms(),
        reload_ms: histogram(viewers.iter().map(|v| &v.reload_us)).summary_ms(),
        reload_wait_ms: histogram(viewers.iter().map(|v| &v.reload_wait_us)).summary_ms(),
        playlist_ms: histogram(viewers.iter().map(|v| &v.playlist_us)).summary_ms(),
        parts: viewers.iter().map(|v| v.part_us.len() as u64).sum(),
        mbit_per_sec: client_mbps,
        stalls: viewers.iter().map(|v| v.stalls).sum(),
        stall_ms: viewers.iter().map(|v| v.stall_ms).sum(),
        viewer_stalls: Summary::of(viewers.iter().map(|v| v.stalls as f64)),
        errors_total: failures.values().sum(),
        failures,
        errors,
        client_requests_per_sec: client_rps,
        server,
    }
}

/// Aggregates viewers' samples (microseconds) into one histogram.
fn histogram<'a>(samples: impl Iterator<Item = &'a Vec<u32>>) -> Histogram {
    let mut h = Histogram::default();
    for v in samples {
        for x in v {
            h.record(u64::from(*x));
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_and_audio_choice() {
        let text = "#EXTM3U\n\
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aac\",NAME=\"A\",DEFAULT=NO,URI=\"s/a2/index.m3u8\"\n\
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aac\",NAME=\"B\",DEFAULT=YES,URI=\"s/aac/index.m3u8\"\n\
#EXT-X-STREAM-INF:BANDWIDTH=900,AUDIO=\"aac\"\ns/v1/index.m3u8\n\
#EXT-X-STREAM-INF:BANDWIDTH=2000,AUDIO=\"aac\"\ns/v2/index.m3u8\n\
#EXT-X-STREAM-INF:BANDWIDTH=100\ns/v0/index.m3u8\n";
        let m = pl::parse_multivariant(text).unwrap();
        let uri = |l| pick_variant(&m, l).unwrap().uri.as_str();
        assert_eq!(uri(LayerChoice::Low), "s/v0/index.m3u8");
        assert_eq!(uri(LayerChoice::Mid), "s/v1/index.m3u8");
        assert_eq!(uri(LayerChoice::High), "s/v2/index.m3u8");
        let high = pick_variant(&m, LayerChoice::High).unwrap();
        assert_eq!(pick_audio(&m, high).unwrap().uri, "s/aac/index.m3u8");
        assert!(pick_audio(&m, pick_variant(&m, LayerChoice::Low).unwrap()).is_none());
    }

    #[test]
    fn held_parts_are_remembered_briefly() {
        let mut h = Held::default();
        let now = Instant::now();
        for i in 0..70 {
            h.insert(format!("p{i}"), f64::from(i), now);
        }
        assert!(h.get("p0").is_none());
        assert_eq!(h.get("p69").map(|x| x.0), Some(69.0));
    }
}
