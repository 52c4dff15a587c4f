//! LL-HLS over HTTP (hyper 1): an [`HlsStore`] the node pushes each room's
//! [`RoomSnapshot`] into, and an [`HlsService`] that answers
//! `/hls/{room}/...` from it (checklist C13–C15, C19, Appendix B).
//!
//! Paths: `/hls/{room}/index.m3u8` (multivariant), `/hls/{room}/manifest.mpd`
//! (DASH), `/hls/{room}/{session}/{rendition}/index.m3u8` and the files next
//! to it (`init_{n}.mp4`, `seg_{msn}.m4s`, `part_{msn}_{i}.m4s`), and
//! `/hls/{room}/thumbnail.jpg` / `.png` (the latest top-layer IDR).
//!
//! - Blocking playlist reload (`_HLS_msn`, `_HLS_part`): held until the
//!   part (or segment) exists, never answered early; the whole playlist
//!   even for an MSN that left the window; 400 for `_HLS_part` without
//!   `_HLS_msn`, for an MSN past the last + 2 and a part past the Advance
//!   Part Limit; 503 after 3 target durations; directives ignored once the
//!   playlist ended.
//! - A part named by the PRELOAD-HINT is held until it is whole, then sent
//!   in one piece; anything neither published nor hinted is a 404.
//! - `Cache-Control` per Appendix B.1: blocking playlist 6 TD, its 404
//!   4 TD, plain playlists ½ TD (404: 1 TD), hinted parts 6 TD, published
//!   files immutable. Playlists gzipped when the client accepts it. CORS
//!   open (`*`): what needs a grant is the URL, not the page.
//! - Access ([`HlsAccess`]): public, or every request needs `?token=`: a
//!   signed URL token (HMAC-SHA256 over room and expiry, [`sign_token`]),
//!   or anything the embedder's [`Authorizer`] accepts (the node: a JWT
//!   with a subscribe grant for the room). Missing: 401; refused: 403.
//!   Playlists carry fresh signed tokens into every URI they name, on a
//!   [`TOKEN_WINDOW`] grid so that all viewers of a room in one window get
//!   the same URLs (one CDN entry per room and window): rendition
//!   playlists in the multivariant playlist until the request's grant ends
//!   (players keep that URL for the whole session), parts, segments, init
//!   segments and rendition reports for one to two windows (a reload
//!   brings fresh ones).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};
use wave_metrics::{Bounds, Histogram, Kind, family, single};

use crate::playlist;
use crate::segmenter::{RenditionSnapshot, RoomSnapshot};
use crate::thumbnail::{ImageFormat, Keyframe};

const PLAYLIST: &str = "application/vnd.apple.mpegurl";
const DASH: &str = "application/dash+xml";
/// Playlists shorter than this are not worth compressing.
const GZIP_MIN: usize = 512;

/// A room's snapshot and the instant the node published it (where the
/// blocked-answer delay starts: the worker publishes as soon as the
/// packager closed a part).
#[derive(Debug, Clone)]
struct Published {
    snap: Arc<RoomSnapshot>,
    at: Instant,
    /// Media playlists rendered from this snapshot: the requests a new
    /// part wakes all want the same bytes, so they are rendered (and
    /// gzipped) once.
    rendered: Arc<Mutex<Vec<Rendered>>>,
}

/// One rendered media playlist body.
#[derive(Debug)]
struct Rendered {
    rendition: String,
    skip: bool,
    suffix: String,
    gzip: bool,
    body: Bytes,
    compressed: bool,
}

/// Distinct renderings kept per snapshot (renditions × skip × gzip, and
/// a few signed-URL suffixes).
const RENDERED_MAX: usize = 32;

type Snapshot = Option<Published>;

/// Bucket bounds of [`HlsMetrics::blocked_answer`], 50 µs to 2.5 s.
#[derive(Debug)]
pub struct AnswerBounds;

impl Bounds for AnswerBounds {
    const US: &'static [u64] = &[
        50, 100, 200, 500, 1_000, 1_500, 2_000, 3_000, 4_000, 5_000, 7_500, 10_000, 15_000, 25_000, 50_000,
        100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    ];
}

/// What the HTTP layer counts (rendered on the node's `/metrics`).
#[derive(Debug, Default)]
pub struct HlsMetrics {
    pub requests: AtomicU64,
    pub playlist_requests: AtomicU64,
    pub media_requests: AtomicU64,
    /// Blocking requests being held right now.
    pub blocking_held: AtomicU64,
    pub blocking_total: AtomicU64,
    /// Readiness checks of held requests: one when a request is held, one
    /// per wake-up after (only its rendition's progress wakes it).
    pub blocking_checks: AtomicU64,
    pub bad_requests: AtomicU64,
    pub timeouts: AtomicU64,
    pub not_found: AtomicU64,
    pub forbidden: AtomicU64,
    /// Plain Media Playlist requests held for a rendition's first whole
    /// segment ([`Wait::FirstSegment`]): the server's own choice, not a
    /// client's blocking reload, so counted apart from `blocking_*` and
    /// kept out of `blocked_answer`.
    pub first_segment_waits: AtomicU64,
    /// Of those, held right now.
    pub first_segment_held: AtomicU64,
    /// Of those, answered with parts only after the blocking limit.
    pub first_segment_timeouts: AtomicU64,
    /// Delay from a snapshot's publication (a part completed) to the
    /// answer of a playlist request that was blocked waiting for it.
    pub blocked_answer: Histogram<AnswerBounds>,
}

impl HlsMetrics {
    /// Prometheus text lines.
    pub fn render(&self, out: &mut String) {
        let lines: [(&str, Kind, &str, &AtomicU64); 13] = [
            (
                "wave_hls_requests_total",
                Kind::Counter,
                "Requests under /hls/.",
                &self.requests,
            ),
            (
                "wave_hls_playlist_requests_total",
                Kind::Counter,
                "Playlist and DASH manifest requests.",
                &self.playlist_requests,
            ),
            (
                "wave_hls_media_requests_total",
                Kind::Counter,
                "Init section, segment, part and thumbnail requests.",
                &self.media_requests,
            ),
            (
                "wave_hls_blocking_held",
                Kind::Gauge,
                "Blocking playlist and preload-hint requests held now.",
                &self.blocking_held,
            ),
            (
                "wave_hls_blocking_requests_total",
                Kind::Counter,
                "Blocking requests held, in all.",
                &self.blocking_total,
            ),
            (
                "wave_hls_blocking_checks_total",
                Kind::Counter,
                "Readiness checks of held requests.",
                &self.blocking_checks,
            ),
            (
                "wave_hls_bad_requests_total",
                Kind::Counter,
                "Requests answered 400.",
                &self.bad_requests,
            ),
            (
                "wave_hls_blocking_timeouts_total",
                Kind::Counter,
                "Blocking requests answered 503 after 3 target durations.",
                &self.timeouts,
            ),
            (
                "wave_hls_not_found_total",
                Kind::Counter,
                "Requests answered 404.",
                &self.not_found,
            ),
            (
                "wave_hls_forbidden_total",
                Kind::Counter,
                "Requests answered 403 (signed URLs).",
                &self.forbidden,
            ),
            (
                "wave_hls_first_segment_waits_total",
                Kind::Counter,
                "Plain media playlist requests held for the rendition's first whole segment.",
                &self.first_segment_waits,
            ),
            (
                "wave_hls_first_segment_held",
                Kind::Gauge,
                "Plain media playlist requests held for a first segment now.",
                &self.first_segment_held,
            ),
            (
                "wave_hls_first_segment_timeouts_total",
                Kind::Counter,
                "First-segment waits answered with parts only after the blocking limit.",
                &self.first_segment_timeouts,
            ),
        ];
        for (name, kind, help, value) in lines {
            single(out, name, kind, help, value.load(Ordering::Relaxed));
        }
        let name = "wave_hls_blocked_answer_seconds";
        family(
            out,
            name,
            Kind::Histogram,
            "Part published to the blocked playlist request for it answered.",
        );
        self.blocked_answer.render(name, "", out);
    }
}

/// The rooms' latest snapshots. The node publishes; requests wait on it.
///
/// Blocked requests wait on their rendition's channel, which changes only
/// when that rendition made progress (a part, a segment, an init section,
/// its end): a part of one rendition wakes the requests waiting for that
/// rendition and no others (no thundering herd of audio waiters on every
/// video part, or of all waiters on every snapshot of the room).
#[derive(Debug, Default)]
pub struct HlsStore {
    rooms: Mutex<HashMap<String, RoomChannels>>,
}

#[derive(Debug)]
struct RoomChannels {
    /// The latest snapshot, read by requests that do not block.
    latest: watch::Sender<Snapshot>,
    /// Per rendition: the latest snapshot in which it made progress.
    renditions: HashMap<String, RenditionChannel>,
}

#[derive(Debug)]
struct RenditionChannel {
    progress: Progress,
    tx: watch::Sender<Snapshot>,
}

/// What a held request of one rendition can be waiting for: its last part,
/// last complete segment, end, next init section and set of files.
type Progress = (Option<(u64, u32)>, Option<u64>, bool, Option<u32>, usize);

fn progress(r: &RenditionSnapshot) -> Progress {
    (
        r.last_part(),
        r.last_complete_msn(),
        r.ended,
        r.next_map(),
        r.files.len(),
    )
}

impl HlsStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Replaces room `room`'s snapshot and wakes the requests waiting on
    /// the renditions that made progress. Cheap (no rendering): the node
    /// calls it on its media worker the moment the packager closed a part.
    pub fn publish(&self, room: &str, snapshot: RoomSnapshot) {
        let published = Published {
            snap: Arc::new(snapshot),
            at: Instant::now(),
            rendered: Arc::default(),
        };
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let channels = match rooms.get_mut(room) {
            Some(c) => {
                c.latest.send_replace(Some(published.clone()));
                c
            }
            None => rooms.entry(room.to_string()).or_insert(RoomChannels {
                latest: watch::channel(Some(published.clone())).0,
                renditions: HashMap::new(),
            }),
        };
        for (name, r) in &published.snap.renditions {
            let now = progress(r);
            match channels.renditions.get_mut(name) {
                Some(c) if c.progress == now => {}
                Some(c) => {
                    c.progress = now;
                    c.tx.send_replace(Some(published.clone()));
                }
                None => {
                    channels.renditions.insert(
                        name.clone(),
                        RenditionChannel {
                            progress: now,
                            tx: watch::channel(Some(published.clone())).0,
                        },
                    );
                }
            }
        }
    }

    /// The room's latest snapshot as it changes (`None` once it is gone).
    fn watch_latest(&self, room: &str) -> Option<watch::Receiver<Snapshot>> {
        self.rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(room)
            .map(|c| c.latest.subscribe())
    }

    /// Forgets a room: its URLs answer 404 and held requests end.
    pub fn remove(&self, room: &str) {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner()).remove(room);
    }

    pub fn rooms(&self) -> usize {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn latest(&self, room: &str) -> Option<Snapshot> {
        self.rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(room)
            .map(|c| c.latest.borrow().clone())
    }

    /// The channels a request blocked on `rendition` of `room` waits on:
    /// its rendition's, and the room's latest snapshot (read once woken,
    /// without taking the store's lock again: ~1,000 requests wake
    /// together on one part).
    fn subscribe(
        &self,
        room: &str,
        rendition: &str,
    ) -> Option<(watch::Receiver<Snapshot>, watch::Receiver<Snapshot>)> {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let c = rooms.get(room)?;
        let r = c.renditions.get(rendition)?;
        Some((r.tx.subscribe(), c.latest.subscribe()))
    }
}

/// Decides whether `token` (not a signed URL token) lets its holder read
/// `room`'s HLS at `now`: the grant's end (seconds since the Unix epoch),
/// or why not.
pub type Authorizer = Box<dyn Fn(&str, &str, SystemTime) -> Result<u64, &'static str> + Send + Sync>;

/// Signed tokens the service writes expire on this grid (seconds): one to
/// two windows after they are written for media files, the grant's end
/// rounded up to it for rendition playlists.
pub const TOKEN_WINDOW: u64 = 60;

/// Who may read `/hls/`.
pub struct HlsAccess {
    /// Key of the signed URL tokens; `None`: public.
    key: Option<Vec<u8>>,
    authorize: Option<Authorizer>,
}

impl HlsAccess {
    /// Anyone may read.
    pub fn public() -> Self {
        HlsAccess {
            key: None,
            authorize: None,
        }
    }

    /// Every request needs a token signed with `key` ([`sign_token`]).
    pub fn signed(key: impl Into<Vec<u8>>) -> Self {
        HlsAccess {
            key: Some(key.into()),
            authorize: None,
        }
    }

    /// Every request needs a token signed with a key derived from
    /// `master` (an HMAC of a fixed label under it), so that the signed
    /// URL tokens of a node with only an auth secret never double as
    /// anything signed with that secret itself.
    pub fn signed_derived(master: &[u8]) -> Self {
        // Invariant: HMAC accepts keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(master).expect("HMAC takes any key length");
        mac.update(b"wave hls signed url key v1");
        Self::signed(mac.finalize().into_bytes().to_vec())
    }

    /// Also accepts what `authorize` accepts (for example a JWT), on a
    /// service that needs tokens.
    pub fn with_authorizer(
        mut self,
        authorize: impl Fn(&str, &str, SystemTime) -> Result<u64, &'static str> + Send + Sync + 'static,
    ) -> Self {
        self.authorize = Some(Box::new(authorize));
        self
    }

    pub fn is_public(&self) -> bool {
        self.key.is_none()
    }

    /// The grant `token` carries for `room`: its end, in Unix seconds.
    fn check(&self, key: &[u8], room: &str, token: &str, now: SystemTime) -> Result<u64, &'static str> {
        let looks_signed = token
            .split_once('-')
            .is_some_and(|(e, _)| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()));
        match &self.authorize {
            Some(authorize) if !looks_signed => authorize(room, token, now),
            _ => verify_token(key, room, token, unix_secs(now)),
        }
    }
}

impl fmt::Debug for HlsAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HlsAccess")
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("authorize", &self.authorize.is_some())
            .finish()
    }
}

/// The `/hls/` request handler.
#[derive(Debug)]
pub struct HlsService {
    store: Arc<HlsStore>,
    access: HlsAccess,
    /// Overrides the 3 TD hold limit (tests).
    block_limit: Option<Duration>,
    pub metrics: HlsMetrics,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NotFound(&'static str),
    BadRequest(&'static str),
    Unauthorized(&'static str),
    Forbidden(&'static str),
    Timeout,
}

struct Query<'a> {
    token: Option<&'a str>,
    msn: Option<u64>,
    part: Option<u32>,
    skip: bool,
}

fn parse_query(q: &str) -> Result<Query<'_>, Refusal> {
    let mut out = Query {
        token: None,
        msn: None,
        part: None,
        skip: false,
    };
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "token" => out.token = Some(v),
            "_HLS_msn" => out.msn = Some(v.parse().map_err(|_| Refusal::BadRequest("bad _HLS_msn"))?),
            "_HLS_part" => out.part = Some(v.parse().map_err(|_| Refusal::BadRequest("bad _HLS_part"))?),
            "_HLS_skip" => out.skip = v == "YES" || v == "v2",
            _ => {}
        }
    }
    if out.part.is_some() && out.msn.is_none() {
        return Err(Refusal::BadRequest("_HLS_part without _HLS_msn"));
    }
    Ok(out)
}

/// A signed-URL token for `room` valid until `expires` (seconds since the
/// UNIX epoch): `{expires}-{hex HMAC-SHA256(secret, "{room}\n{expires}")}`.
/// `_HLS_*` directives stay outside the signature (players add them).
pub fn sign_token(secret: &[u8], room: &str, expires: u64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(room.as_bytes());
    mac.update(b"\n");
    mac.update(expires.to_string().as_bytes());
    let sig = mac.finalize().into_bytes();
    let hex: String = sig.iter().map(|b| format!("{b:02x}")).collect();
    format!("{expires}-{hex}")
}

/// The expiry of a valid signed URL token for `room`.
fn verify_token(secret: &[u8], room: &str, token: &str, now: u64) -> Result<u64, &'static str> {
    let (expires, sig) = token.split_once('-').ok_or("malformed token")?;
    let expires: u64 = expires.parse().map_err(|_| "malformed token")?;
    let bytes: Vec<u8> = (0..sig.len() / 2)
        .map(|i| u8::from_str_radix(sig.get(2 * i..2 * i + 2).unwrap_or("zz"), 16))
        .collect::<Result<_, _>>()
        .map_err(|_| "malformed token")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "bad secret")?;
    mac.update(room.as_bytes());
    mac.update(b"\n");
    mac.update(expires.to_string().as_bytes());
    mac.verify_slice(&bytes)
        .map_err(|_| "token signature does not match this room")?;
    if expires <= now {
        return Err("token expired");
    }
    Ok(expires)
}

/// The `?token=` suffixes a response writes for a grant ending at
/// `grant_end`: (rendition playlists, everything else).
fn token_suffixes(key: &[u8], room: &str, grant_end: u64, now: u64) -> (String, String) {
    let rendition = grant_end.div_ceil(TOKEN_WINDOW).saturating_mul(TOKEN_WINDOW);
    let files = (now / TOKEN_WINDOW + 2).saturating_mul(TOKEN_WINDOW);
    (
        format!("?token={}", sign_token(key, room, rendition)),
        format!("?token={}", sign_token(key, room, files)),
    )
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Whether a blocking request for `(msn, part)` can be answered.
fn reload_ready(r: &RenditionSnapshot, msn: u64, part: Option<u32>) -> bool {
    if r.ended {
        return true;
    }
    match part {
        None => {
            r.last_complete_msn().is_some_and(|m| m >= msn) || r.last_part().is_some_and(|(m, _)| m > msn)
        }
        Some(p) => r.last_part().is_some_and(|last| last >= (msn, p)),
    }
}

/// §6.2.5.2: 400 for an MSN past the last + 2 or a part past the Advance
/// Part Limit.
fn reload_in_range(
    room: &RoomSnapshot,
    r: &RenditionSnapshot,
    msn: u64,
    part: Option<u32>,
) -> Result<(), Refusal> {
    let last_msn = r.last_msn().unwrap_or(0);
    if msn > last_msn + 2 {
        return Err(Refusal::BadRequest("_HLS_msn more than 2 past the last segment"));
    }
    let pt = room.config.part_target.as_secs_f64();
    let limit = if pt < 1.0 { (3.0 / pt).ceil() as u32 } else { 3 };
    if let Some(p) = part {
        let base = match r.last_part() {
            Some((m, i)) if m == msn => i,
            _ if msn > last_msn => 0,
            _ => u32::MAX - limit,
        };
        if p > base.saturating_add(limit) {
            return Err(Refusal::BadRequest("_HLS_part past the Advance Part Limit"));
        }
    }
    Ok(())
}

struct Held<'a>(&'a AtomicU64);

/// Why a request is held (which metrics count it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The client asked to block: `_HLS_msn`/`_HLS_part`, or a part named
    /// by a preload hint (`wave_hls_blocking_*`).
    Blocking,
    /// A plain Media Playlist request for a rendition without a whole
    /// segment yet (`wave_hls_first_segment_*`).
    FirstSegment,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HlsService {
    pub fn new(store: Arc<HlsStore>, access: HlsAccess) -> Self {
        Self {
            store,
            access,
            block_limit: None,
            metrics: HlsMetrics::default(),
        }
    }

    /// Holds blocking requests at most `limit` instead of 3 target
    /// durations.
    pub fn with_block_limit(mut self, limit: Duration) -> Self {
        self.block_limit = Some(limit);
        self
    }

    pub fn store(&self) -> &Arc<HlsStore> {
        &self.store
    }

    /// Whether `path` belongs to this service.
    pub fn matches(path: &str) -> bool {
        path.starts_with("/hls/")
    }

    /// Answers one request under `/hls/`.
    pub async fn handle<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        let method = req.method();
        if method == Method::OPTIONS {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            let h = resp.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, HEAD, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("*"),
            );
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
            return resp;
        }
        if method != Method::GET && method != Method::HEAD {
            let mut resp = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "GET, HEAD or OPTIONS only",
                "no-store",
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
            return resp;
        }
        let gzip = req
            .headers()
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
        let path = req.uri().path();
        let query = req.uri().query().unwrap_or("");
        let mut resp = match self.route(path, query, gzip).await {
            Ok(resp) => resp,
            Err((refusal, td)) => self.refuse(path, refusal, td),
        };
        if method == Method::HEAD {
            *resp.body_mut() = Full::new(Bytes::new());
        }
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Age, Date"),
        );
        resp
    }

    /// A player reads the multivariant playlist once, so a rendition
    /// missing from it stays missing for that viewer: a simulcast layer
    /// whose first part closes a moment after the others' would never be
    /// offered to anyone who tuned in during that moment. While the stream
    /// is younger than `wait` and some rendition has packets but no part
    /// yet, the request waits for it, at most until the stream is `wait`
    /// old; then it gets what has media.
    async fn settled_ladder(
        &self,
        room: &str,
        mut snap: Arc<RoomSnapshot>,
        wait: Duration,
    ) -> Arc<RoomSnapshot> {
        let unsettled = |s: &RoomSnapshot| s.renditions.values().any(|r| !r.has_media());
        if !unsettled(&snap) {
            return snap;
        }
        let Some(started) = snap.started() else {
            return snap;
        };
        let age = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(started);
        let (Some(left), Some(mut rx)) = (wait.checked_sub(age), self.store.watch_latest(room)) else {
            return snap;
        };
        let deadline = tokio::time::Instant::now() + left;
        while let Ok(Ok(())) = tokio::time::timeout_at(deadline, rx.changed()).await {
            let Some(latest) = rx.borrow_and_update().clone() else {
                break;
            };
            snap = latest.snap;
            if !unsettled(&snap) {
                break;
            }
        }
        snap
    }

    fn refuse(&self, path: &str, refusal: Refusal, td: u32) -> Response<Full<Bytes>> {
        let m = &self.metrics;
        match refusal {
            Refusal::NotFound(why) => {
                m.not_found.fetch_add(1, Ordering::Relaxed);
                debug!(path, why, "HLS 404");
                text(StatusCode::NOT_FOUND, why, &format!("public, max-age={td}"))
            }
            Refusal::BadRequest(why) => {
                m.bad_requests.fetch_add(1, Ordering::Relaxed);
                debug!(path, why, "HLS 400");
                text(StatusCode::BAD_REQUEST, why, "no-store")
            }
            Refusal::Unauthorized(why) => {
                m.forbidden.fetch_add(1, Ordering::Relaxed);
                debug!(path, why, "HLS 401");
                text(StatusCode::UNAUTHORIZED, why, "no-store")
            }
            Refusal::Forbidden(why) => {
                m.forbidden.fetch_add(1, Ordering::Relaxed);
                debug!(path, why, "HLS 403");
                text(StatusCode::FORBIDDEN, why, "no-store")
            }
            Refusal::Timeout => {
                m.timeouts.fetch_add(1, Ordering::Relaxed);
                warn!(path, "HLS blocking request timed out");
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "nothing new within 3 target durations",
                    "no-store",
                )
            }
        }
    }

    async fn route(
        &self,
        path: &str,
        query: &str,
        gzip: bool,
    ) -> Result<Response<Full<Bytes>>, (Refusal, u32)> {
        let rest = path
            .strip_prefix("/hls/")
            .ok_or((Refusal::NotFound("not an HLS path"), 1))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let room = parts[0];
        let q = parse_query(query).map_err(|r| (r, 1))?;
        let (rendition_suffix, suffix) = match &self.access.key {
            None => (String::new(), String::new()),
            Some(key) => {
                let now = SystemTime::now();
                let token = q
                    .token
                    .filter(|t| !t.is_empty())
                    .ok_or((Refusal::Unauthorized("token required"), 1))?;
                let grant_end = self
                    .access
                    .check(key, room, token, now)
                    .map_err(|why| (Refusal::Forbidden(why), 1))?;
                token_suffixes(key, room, grant_end, unix_secs(now))
            }
        };
        let published = self
            .store
            .latest(room)
            .ok_or((Refusal::NotFound("no such room"), 1))?
            .ok_or((Refusal::NotFound("room has no media"), 1))?;
        let snap = published.snap.clone();
        let td = snap.config.target_duration();
        let half = td.div_ceil(2).max(1);
        let nf = |why| (Refusal::NotFound(why), td);
        match parts[1..] {
            ["index.m3u8"] => {
                self.metrics.playlist_requests.fetch_add(1, Ordering::Relaxed);
                let snap = self
                    .settled_ladder(room, snap, Duration::from_secs(u64::from(td)))
                    .await;
                let body = playlist::multivariant(&snap, &rendition_suffix)
                    .ok_or(nf("no rendition has media yet"))?;
                Ok(respond(
                    body.into(),
                    PLAYLIST,
                    &format!("public, max-age={half}"),
                    gzip,
                ))
            }
            ["manifest.mpd"] => {
                self.metrics.playlist_requests.fetch_add(1, Ordering::Relaxed);
                let body = playlist::dash_mpd(&snap, &suffix).ok_or(nf("no complete segment yet"))?;
                Ok(respond(
                    body.into(),
                    DASH,
                    &format!("public, max-age={half}"),
                    gzip,
                ))
            }
            [file @ ("thumbnail.jpg" | "thumbnail.png")] => {
                self.metrics.media_requests.fetch_add(1, Ordering::Relaxed);
                thumbnail(&snap, file).await
            }
            [session, rendition, file] => {
                if session != snap.session {
                    return Err(nf("unknown session"));
                }
                if file == "index.m3u8" {
                    self.metrics.playlist_requests.fetch_add(1, Ordering::Relaxed);
                    self.media_playlist(room, published, rendition, &q, &suffix, gzip)
                        .await
                } else {
                    self.metrics.media_requests.fetch_add(1, Ordering::Relaxed);
                    self.media_file(room, snap, rendition, file).await
                }
            }
            _ => Err(nf("unknown HLS path")),
        }
    }

    fn limit(&self, td: u32) -> Duration {
        self.block_limit.unwrap_or(Duration::from_secs(3 * u64::from(td)))
    }

    /// Waits until `ready` holds for `rendition` of `room`, at most 3 TD;
    /// woken only when that rendition makes progress. `why` picks the
    /// metrics that count the wait.
    async fn hold(
        &self,
        why: Wait,
        room: &str,
        rendition: &str,
        td: u32,
        ready: impl Fn(&RenditionSnapshot) -> bool,
    ) -> Result<Published, (Refusal, u32)> {
        let (mut rx, latest) = self
            .store
            .subscribe(room, rendition)
            .ok_or((Refusal::NotFound("room ended"), td))?;
        let m = &self.metrics;
        let (total, held) = match why {
            Wait::Blocking => (&m.blocking_total, &m.blocking_held),
            Wait::FirstSegment => (&m.first_segment_waits, &m.first_segment_held),
        };
        total.fetch_add(1, Ordering::Relaxed);
        held.fetch_add(1, Ordering::Relaxed);
        let _held = Held(held);
        let wait = rx.wait_for(|s| {
            if why == Wait::Blocking {
                m.blocking_checks.fetch_add(1, Ordering::Relaxed);
            }
            s.as_ref()
                .and_then(|s| s.snap.renditions.get(rendition))
                .is_some_and(&ready)
        });
        let woken = match tokio::time::timeout(self.limit(td), wait).await {
            Ok(Ok(s)) => s.clone().ok_or((Refusal::NotFound("room ended"), td))?,
            Ok(Err(_)) => return Err((Refusal::NotFound("room ended"), td)),
            Err(_) => return Err((Refusal::Timeout, td)),
        };
        // Answer from the room's newest snapshot (its RENDITION-REPORTs
        // are the freshest); the delay still counts from the publication
        // that made this request ready.
        let latest = latest.borrow().clone();
        match latest {
            Some(latest)
                if latest.snap.session == woken.snap.session
                    && latest.snap.renditions.get(rendition).is_some_and(&ready) =>
            {
                Ok(Published {
                    at: woken.at,
                    ..latest
                })
            }
            _ => Ok(woken),
        }
    }

    async fn media_playlist(
        &self,
        room: &str,
        mut published: Published,
        rendition: &str,
        q: &Query<'_>,
        suffix: &str,
        gzip: bool,
    ) -> Result<Response<Full<Bytes>>, (Refusal, u32)> {
        let td = published.snap.config.target_duration();
        let r = published
            .snap
            .renditions
            .get(rendition)
            .ok_or((Refusal::NotFound("unknown rendition"), td))?;
        let blocking = q.msn.is_some() && !r.ended;
        // hls.js takes a Media Playlist without a whole segment for an empty
        // one and retries after a back-off of 1-2 s (audio: 2 s), so a viewer
        // tuning in during a rendition's first segment would start seconds
        // late. Such a request waits for that first segment (at most the
        // blocking limit; then it gets the parts there are).
        if q.msn.is_none() && !r.ended && r.segments.is_empty() {
            let whole = |r: &RenditionSnapshot| r.ended || !r.segments.is_empty();
            published = match self.hold(Wait::FirstSegment, room, rendition, td, whole).await {
                Ok(p) => p,
                Err((Refusal::Timeout, _)) => {
                    self.metrics
                        .first_segment_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    self.store.latest(room).flatten().unwrap_or(published)
                }
                Err(e) => return Err(e),
            };
        }
        let r = published
            .snap
            .renditions
            .get(rendition)
            .ok_or((Refusal::NotFound("unknown rendition"), td))?;
        let mut held_until = None;
        if let (Some(msn), false) = (q.msn, r.ended) {
            reload_in_range(&published.snap, r, msn, q.part).map_err(|e| (e, td))?;
            if !reload_ready(r, msn, q.part) {
                let part = q.part;
                published = self
                    .hold(Wait::Blocking, room, rendition, td, |r| {
                        reload_ready(r, msn, part)
                    })
                    .await?;
                held_until = Some(published.at);
            }
        }
        let not_found_age = if blocking { 4 * td } else { td };
        let (body, compressed) = rendered(&published, rendition, q.skip, suffix, gzip)
            .ok_or((Refusal::NotFound("rendition has no media yet"), not_found_age))?;
        let cache = if blocking {
            format!("public, max-age={}", 6 * td)
        } else {
            format!("public, max-age={}", td.div_ceil(2).max(1))
        };
        let resp = respond_encoded(body, compressed, PLAYLIST, &cache);
        if let Some(at) = held_until {
            self.metrics.blocked_answer.observe(at.elapsed());
        }
        Ok(resp)
    }

    async fn media_file(
        &self,
        room: &str,
        snap: Arc<RoomSnapshot>,
        rendition: &str,
        file: &str,
    ) -> Result<Response<Full<Bytes>>, (Refusal, u32)> {
        let td = snap.config.target_duration();
        let r = snap
            .renditions
            .get(rendition)
            .ok_or((Refusal::NotFound("unknown rendition"), td))?;
        let content_type = if r.kind.is_video() {
            "video/mp4"
        } else {
            "audio/mp4"
        };
        if let Some(bytes) = r.files.get(file) {
            return Ok(respond(
                bytes.clone(),
                content_type,
                "public, max-age=86400, immutable",
                false,
            ));
        }
        let hinted = r.next_part().map(|(m, i)| format!("part_{m}_{i}.m4s")).as_deref() == Some(file)
            || r.next_map().map(|n| format!("init_{n}.mp4")).as_deref() == Some(file);
        if !hinted {
            return Err((Refusal::NotFound("neither published nor hinted"), td));
        }
        // C14: held until the whole part exists, then sent in one piece.
        let snap = self
            .hold(Wait::Blocking, room, rendition, td, |r| {
                r.files.contains_key(file) || r.ended
            })
            .await?
            .snap;
        let bytes = snap
            .renditions
            .get(rendition)
            .and_then(|r| r.files.get(file))
            .ok_or((Refusal::NotFound("the stream ended before this part"), td))?;
        Ok(respond(
            bytes.clone(),
            content_type,
            &format!("public, max-age={}", 6 * td),
            false,
        ))
    }
}

/// `thumbnail.jpg` / `thumbnail.png`: the latest top-layer IDR, decoded on
/// the first request for it (on tokio's blocking pool: a 720p IDR takes
/// milliseconds) and cached in the snapshot's [`Keyframe`] until the next
/// IDR replaces it. 404 before the first IDR. Cached by clients and CDNs
/// for one segment target, the keyframe period.
async fn thumbnail(snap: &RoomSnapshot, file: &str) -> Result<Response<Full<Bytes>>, (Refusal, u32)> {
    let format = file
        .rsplit_once('.')
        .and_then(|(_, ext)| ImageFormat::from_extension(ext))
        .ok_or((Refusal::NotFound("unknown image format"), 1))?;
    let keyframe: Arc<Keyframe> = snap
        .thumbnail
        .clone()
        .ok_or((Refusal::NotFound("no keyframe yet"), 1))?;
    let rendered = if keyframe.is_rendered(format) {
        keyframe.render(format)
    } else {
        let k = keyframe.clone();
        match tokio::task::spawn_blocking(move || k.render(format)).await {
            Ok(r) => r,
            Err(e) => Err(crate::Error::Image(e.to_string())),
        }
    };
    let image = rendered.map_err(|e| {
        warn!(error = %e, "thumbnail: the latest keyframe does not decode");
        (Refusal::NotFound("the latest keyframe does not decode"), 1)
    })?;
    let max_age = snap.config.segment_target.as_secs().max(1);
    Ok(respond(
        Bytes::from_owner(SharedImage(image)),
        format.content_type(),
        &format!("public, max-age={max_age}"),
        false,
    ))
}

/// A rendered thumbnail served without copying it.
struct SharedImage(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedImage {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The media playlist of `rendition` in `published`, rendered and encoded
/// once per snapshot and variant of the request; (body, gzipped).
fn rendered(
    published: &Published,
    rendition: &str,
    skip: bool,
    suffix: &str,
    gzip: bool,
) -> Option<(Bytes, bool)> {
    let mut cache = published.rendered.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = cache
        .iter()
        .find(|r| r.rendition == rendition && r.skip == skip && r.gzip == gzip && r.suffix == suffix)
    {
        return Some((r.body.clone(), r.compressed));
    }
    let text = playlist::media_playlist(&published.snap, rendition, skip, suffix)?;
    let (body, compressed) = encode(text.into(), gzip);
    if cache.len() >= RENDERED_MAX {
        cache.remove(0);
    }
    cache.push(Rendered {
        rendition: rendition.to_string(),
        skip,
        suffix: suffix.to_string(),
        gzip,
        body: body.clone(),
        compressed,
    });
    Some((body, compressed))
}

/// `body` gzipped when the client takes it and it is worth it; (bytes, gzipped).
fn encode(body: Bytes, gzip: bool) -> (Bytes, bool) {
    if gzip && body.len() >= GZIP_MIN {
        let mut enc =
            flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 3), flate2::Compression::fast());
        if enc.write_all(&body).is_ok()
            && let Ok(out) = enc.finish()
        {
            return (Bytes::from(out), true);
        }
    }
    (body, false)
}

fn respond(body: Bytes, content_type: &'static str, cache: &str, gzip: bool) -> Response<Full<Bytes>> {
    let (body, compressed) = encode(body, gzip);
    respond_encoded(body, compressed, content_type, cache)
}

fn respond_encoded(
    body: Bytes,
    compressed: bool,
    content_type: &'static str,
    cache: &str,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(cache) {
        h.insert(header::CACHE_CONTROL, v);
    }
    if content_type == PLAYLIST || content_type == DASH {
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    if compressed {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}

fn text(status: StatusCode, why: &str, cache: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{why}\n"))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(cache) {
        h.insert(header::CACHE_CONTROL, v);
    }
    resp
}

/// Serves `service` alone on `listener` (HTTP/1.1 and h2c), for a bridge
/// running on its own machine and for tests; the node mounts
/// [`HlsService::handle`] in its own server instead.
pub async fn serve(listener: TcpListener, service: Arc<HlsService>) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let service = service.clone();
                async move { Ok::<_, Infallible>(service.handle(&req).await) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(%peer, error = %e, "HLS connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let t = sign_token(b"k", "room1", 1000);
        assert_eq!(verify_token(b"k", "room1", &t, 999), Ok(1000));
        assert_eq!(verify_token(b"k", "room1", &t, 1000), Err("token expired"));
        assert!(verify_token(b"k", "room2", &t, 999).is_err());
        assert!(verify_token(b"other", "room1", &t, 999).is_err());
        assert!(verify_token(b"k", "room1", "1000-zz", 999).is_err());
        assert!(verify_token(b"k", "room1", "nonsense", 999).is_err());
        let forged = t.replace("1000-", "2000-");
        assert!(verify_token(b"k", "room1", &forged, 999).is_err());
    }

    #[test]
    fn queries() {
        assert!(matches!(parse_query("_HLS_part=1"), Err(Refusal::BadRequest(_))));
        assert!(matches!(parse_query("_HLS_msn=x"), Err(Refusal::BadRequest(_))));
        let q = parse_query("_HLS_part=2&_HLS_msn=5&_HLS_skip=YES&token=a").unwrap();
        assert_eq!(
            (q.msn, q.part, q.skip, q.token),
            (Some(5), Some(2), true, Some("a"))
        );
    }

    #[test]
    fn metrics_page_keeps_its_sample_lines() {
        let m = HlsMetrics::default();
        m.requests.fetch_add(3, Ordering::Relaxed);
        m.blocked_answer.observe(Duration::from_micros(40));
        m.blocked_answer.observe(Duration::from_millis(3));
        let mut page = String::new();
        m.render(&mut page);
        let samples: Vec<&str> = page.lines().filter(|l| !l.starts_with('#')).collect();
        let mut want = vec![
            "wave_hls_requests_total 3".to_owned(),
            "wave_hls_playlist_requests_total 0".into(),
            "wave_hls_media_requests_total 0".into(),
            "wave_hls_blocking_held 0".into(),
            "wave_hls_blocking_requests_total 0".into(),
            "wave_hls_blocking_checks_total 0".into(),
            "wave_hls_bad_requests_total 0".into(),
            "wave_hls_blocking_timeouts_total 0".into(),
            "wave_hls_not_found_total 0".into(),
            "wave_hls_forbidden_total 0".into(),
            "wave_hls_first_segment_waits_total 0".into(),
            "wave_hls_first_segment_held 0".into(),
            "wave_hls_first_segment_timeouts_total 0".into(),
        ];
        let les = [
            "0.00005", "0.0001", "0.0002", "0.0005", "0.001", "0.0015", "0.002", "0.003", "0.004", "0.005",
            "0.0075", "0.01", "0.015", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf",
        ];
        for (i, le) in les.iter().enumerate() {
            // 40 µs is in every bucket, 3 ms from le="0.003" on.
            let n = if i < 7 { 1 } else { 2 };
            want.push(format!(
                "wave_hls_blocked_answer_seconds_bucket{{le=\"{le}\"}} {n}"
            ));
        }
        want.push("wave_hls_blocked_answer_seconds_sum 0.00304".into());
        want.push("wave_hls_blocked_answer_seconds_count 2".into());
        assert_eq!(samples, want);
        assert!(page.contains("# TYPE wave_hls_blocked_answer_seconds histogram\n"));
    }
}
