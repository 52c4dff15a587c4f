//! RTSP pull (`POST /v1/ingest/{room}`): one tokio task per pull around
//! `retina`'s client. A pull connects (DESCRIBE, SETUP of the H.264
//! stream and of one AAC or G.711 stream, PLAY), claims its room as an
//! RTMP publish does and becomes the room's ingest source on its home
//! worker; the frames `retina` depacketizes go through the shared
//! [`Source`] to RTP. When the camera drops, the source leaves the room
//! and the pull tries again after a backoff ([`Retry`], Sans-IO).
//!
//! Bounds: [`MAX_PULLS`] per node (finished ones count until deleted);
//! 5 s from connect to PLAY answered, 10 s without a frame; the frame
//! sizes of [`Source`]. A URL's credentials go to `retina` as
//! [`Credentials`] and are cut from the URL itself: logs, answers and
//! listings show `rtsp://***@host/…`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use retina::client::{Credentials, Demuxed, PlayOptions, Session, SessionOptions, SetupOptions, Transport};
use retina::codec::{CodecItem, FrameFormat, ParametersRef, VideoParametersCodec};
use serde::Serialize;
use signaling::PullRequest;
use signaling::cluster::Cluster;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};
use url::Url;
use wave_metrics::{Kind, single};
use wave_vocab::{MediaError, RoomId, SessionId};

use super::audio::{Law, ToOpus};
use super::ntp_now;
use super::source::{AvcConfig, Source};
use crate::engine::IngestOpen;
use crate::ingest::IngestNode;

/// Pulls one node keeps (each holds a task and, while playing, a TCP or
/// UDP flow from a camera).
pub const MAX_PULLS: usize = 16;
/// From TCP connect to PLAY answered: a camera on a LAN answers in well
/// under a second; one that accepts and says nothing is given up on.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// No frame for this long: the camera is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Failed attempts in a row before a pull that never played gives up
/// (1 + 2 + 4 + 8 + 16 s of backoff between them): a wrong URL or a
/// camera that answers nonsense shows `failed`. A pull that has played
/// retries until deleted or its token expires.
const ATTEMPTS_BEFORE_PLAYING: u32 = 6;
/// Longest failure reason kept (the API's and the log's).
const MAX_REASON: usize = 300;

/// A pull as `GET /v1/ingest/{room}/{id}` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum PullState {
    Connecting,
    Playing,
    /// The last attempt failed; the next starts after `backoff_ms`.
    Retrying {
        attempt: u32,
        backoff_ms: u64,
        reason: String,
    },
    /// Given up: a camera that never played, or nothing to play.
    Failed {
        reason: String,
    },
    /// The token's `exp` passed.
    Ended {
        reason: String,
    },
}

/// Why one attempt ended; each is a label of
/// `wave_ingest_rtsp_failures_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer (or no PLAY) within [`CONNECT_TIMEOUT`].
    Timeout(String),
    /// Connection refused, or an answer that is not RTSP or says no.
    Protocol(String),
    /// The camera asks for credentials it was not given, or refuses them.
    Auth(String),
    /// No H.264 stream to play: trying again will not help.
    Codec(String),
    /// The room is published elsewhere, or the node refused the source.
    Room(String),
    /// The camera stopped sending or closed the stream while playing.
    Dropped(String),
}

const FAILURES: [&str; 6] = ["timeout", "protocol", "auth", "codec", "room", "dropped"];

impl Failure {
    fn index(&self) -> usize {
        match self {
            Failure::Timeout(_) => 0,
            Failure::Protocol(_) => 1,
            Failure::Auth(_) => 2,
            Failure::Codec(_) => 3,
            Failure::Room(_) => 4,
            Failure::Dropped(_) => 5,
        }
    }

    fn reason(&self) -> String {
        let (label, why) = match self {
            Failure::Timeout(w)
            | Failure::Protocol(w)
            | Failure::Auth(w)
            | Failure::Codec(w)
            | Failure::Room(w)
            | Failure::Dropped(w) => (FAILURES[self.index()], w),
        };
        format!("{label}: {why}")
    }
}

/// When a pull tries again (Sans-IO): attempts' outcomes in, the pull's
/// next state out.
#[derive(Debug, Default)]
pub struct Retry {
    /// Failed attempts since the last that played.
    failed: u32,
    played: bool,
}

impl Retry {
    /// An attempt reached PLAY and the room took the source.
    pub fn handle_playing(&mut self) {
        self.played = true;
        self.failed = 0;
    }

    /// An attempt ended with `failure`: `Retrying` with the backoff to wait,
    /// or `Failed`.
    pub fn handle_failure(&mut self, failure: &Failure) -> PullState {
        self.failed += 1;
        let reason = failure.reason();
        let permanent = matches!(failure, Failure::Codec(_) | Failure::Auth(_));
        if permanent || (!self.played && self.failed >= ATTEMPTS_BEFORE_PLAYING) {
            return PullState::Failed {
                reason: format!("{reason} (after {} attempts)", self.failed),
            };
        }
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << (self.failed - 1).min(16))
            .min(MAX_BACKOFF);
        PullState::Retrying {
            attempt: self.failed,
            backoff_ms: backoff.as_millis() as u64,
            reason,
        }
    }
}

/// The URL `retina` is given (no userinfo), its credentials, and the
/// form shown to people (`rtsp://***@host/…` when it had credentials).
pub fn split_credentials(url: &str) -> Result<(Url, Option<Credentials>, String), MediaError> {
    // The parser's message could quote the URL: it is not passed on.
    let bad = || MediaError::BadRequest("url is not an rtsp://host/… URL".into());
    let mut url = Url::parse(url).map_err(|_| bad())?;
    if url.scheme() != "rtsp" || url.host_str().is_none_or(str::is_empty) {
        return Err(bad());
    }
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let creds = (!url.username().is_empty() || url.password().is_some()).then(|| Credentials {
        username: decode(url.username()),
        password: decode(url.password().unwrap_or("")),
    });
    url.set_password(None).map_err(|()| bad())?;
    url.set_username("").map_err(|()| bad())?;
    let mut shown = url.clone();
    if creds.is_some() {
        shown.set_username("***").map_err(|()| bad())?;
    }
    Ok((url, creds, shown.to_string()))
}

/// The node's pulls: the table `GET` and `/v1/rooms/{room}` read, and
/// what each task needs of the node.
pub struct Pulls<N> {
    node: Weak<N>,
    cluster: Cluster,
    table: Mutex<BTreeMap<SessionId, Entry>>,
}

struct Entry {
    room: RoomId,
    /// Without credentials.
    url: String,
    transport: &'static str,
    state: PullState,
    /// Dropped to stop the task.
    _stop: oneshot::Sender<()>,
}

/// Process-wide counters (one pull table per node).
static PLAYING: AtomicU64 = AtomicU64::new(0);
static STARTED: AtomicU64 = AtomicU64::new(0);
static FAILED: [AtomicU64; FAILURES.len()] = [const { AtomicU64::new(0) }; FAILURES.len()];

impl<N: IngestNode> Pulls<N> {
    pub fn new(node: Weak<N>, cluster: Cluster) -> Pulls<N> {
        Pulls {
            node,
            cluster,
            table: Mutex::new(BTreeMap::new()),
        }
    }

    /// Starts pulling `req.url` into `req.room`.
    pub fn start(self: &Arc<Self>, req: PullRequest) -> Result<(), MediaError> {
        let (url, creds, shown) = split_credentials(&req.url)?;
        let (stop, stopped) = oneshot::channel();
        {
            let mut table = self.lock()?;
            if table.len() >= MAX_PULLS {
                return Err(MediaError::Overloaded { retry_after_secs: 5 });
            }
            table.insert(
                req.id.clone(),
                Entry {
                    room: req.room.clone(),
                    url: shown.clone(),
                    transport: if req.tcp { "tcp" } else { "udp" },
                    state: PullState::Connecting,
                    _stop: stop,
                },
            );
        }
        STARTED.fetch_add(1, Ordering::Relaxed);
        info!(room = %req.room, pull = %req.id, url = %shown, "RTSP pull starting");
        let task = Task {
            pulls: self.clone(),
            id: req.id,
            room: req.room,
            url,
            shown,
            creds,
            tcp: req.tcp,
            identity: req.identity,
        };
        let until = req.until;
        tokio::spawn(async move { task.run(until, stopped).await });
        Ok(())
    }

    /// A pull's state as JSON (`id`, `room`, `url`, `transport`, `state`…).
    pub fn get(&self, room: &RoomId, id: &SessionId) -> Option<serde_json::Value> {
        let table = self.lock().ok()?;
        let e = table.get(id).filter(|e| &e.room == room)?;
        Some(describe(id, e))
    }

    /// Stops and forgets a pull; `false` when there is none.
    pub fn stop(&self, room: &RoomId, id: &SessionId) -> bool {
        let Ok(mut table) = self.lock() else {
            return false;
        };
        if table.get(id).is_none_or(|e| &e.room != room) {
            return false;
        }
        // Dropping the entry drops its stop sender: the task ends.
        table.remove(id).is_some()
    }

    /// The pulls into `room`, by id.
    pub fn in_room(&self, room: &RoomId) -> Vec<serde_json::Value> {
        let Ok(table) = self.lock() else {
            return Vec::new();
        };
        table
            .iter()
            .filter(|(_, e)| &e.room == room)
            .map(|(id, e)| describe(id, e))
            .collect()
    }

    fn set(&self, id: &SessionId, state: PullState) {
        if let Ok(mut table) = self.lock()
            && let Some(e) = table.get_mut(id)
        {
            e.state = state;
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<SessionId, Entry>>, MediaError> {
        self.table
            .lock()
            .map_err(|_| MediaError::Internal("pull table poisoned".into()))
    }

    /// The number of pulls (any state) in the table.
    pub fn count(&self) -> usize {
        self.lock().map_or(0, |t| t.len())
    }
}

fn describe(id: &SessionId, e: &Entry) -> serde_json::Value {
    let mut v = serde_json::to_value(&e.state).unwrap_or_default();
    v["id"] = id.to_string().into();
    v["room"] = e.room.to_string().into();
    v["url"] = e.url.clone().into();
    v["transport"] = e.transport.into();
    v
}

/// The `wave_ingest_rtsp_*` families for `/metrics`.
pub fn render_metrics(pulls: usize, out: &mut String) {
    single(
        out,
        "wave_ingest_rtsp_pulls",
        Kind::Gauge,
        "RTSP pulls on this node, in any state.",
        pulls as u64,
    );
    single(
        out,
        "wave_ingest_rtsp_playing",
        Kind::Gauge,
        "RTSP pulls playing into a room.",
        PLAYING.load(Ordering::Relaxed),
    );
    single(
        out,
        "wave_ingest_rtsp_started_total",
        Kind::Counter,
        "RTSP pulls started.",
        STARTED.load(Ordering::Relaxed),
    );
    super::by_reason(
        out,
        "wave_ingest_rtsp_failures_total",
        "RTSP pull attempts that failed or dropped, by reason.",
        &FAILURES,
        &FAILED,
    );
}

/// How one attempt ended.
enum End {
    /// Deleted: the entry is gone already.
    Stopped,
    Expired,
    Failed(Failure),
}

struct Task<N> {
    pulls: Arc<Pulls<N>>,
    id: SessionId,
    room: RoomId,
    /// Without credentials.
    url: Url,
    /// As logs show it (`***` for credentials).
    shown: String,
    creds: Option<Credentials>,
    tcp: bool,
    identity: Option<String>,
}

/// A camera answering PLAY: its frames and the streams they belong to.
struct Playing {
    demuxed: Demuxed,
    video: usize,
    audio: Option<(usize, String)>,
}

impl<N: IngestNode> Task<N> {
    async fn run(self, until: Option<SystemTime>, mut stop: oneshot::Receiver<()>) {
        let deadline = until.map(|t| {
            let left = t.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::Instant::now() + left
        });
        let expiry = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        let mut retry = Retry::default();
        loop {
            self.pulls.set(&self.id, PullState::Connecting);
            let connected = tokio::select! {
                _ = &mut stop => End::Stopped,
                () = &mut expiry => End::Expired,
                r = tokio::time::timeout(CONNECT_TIMEOUT, self.connect()) => match r {
                    Err(_) => End::Failed(Failure::Timeout(format!(
                        "no answer to DESCRIBE, SETUP and PLAY within {} s",
                        CONNECT_TIMEOUT.as_secs()
                    ))),
                    Ok(Err(f)) => End::Failed(f),
                    Ok(Ok(playing)) => self.play(playing, &mut retry, &mut stop, &mut expiry).await,
                },
            };
            let failure = match connected {
                End::Stopped => {
                    info!(room = %self.room, pull = %self.id, "RTSP pull stopped");
                    return;
                }
                End::Expired => {
                    info!(room = %self.room, pull = %self.id, "RTSP pull ended: the token expired");
                    let reason = "the token expired".to_owned();
                    self.pulls.set(&self.id, PullState::Ended { reason });
                    return;
                }
                End::Failed(f) => f,
            };
            FAILED[failure.index()].fetch_add(1, Ordering::Relaxed);
            let next = retry.handle_failure(&failure);
            warn!(room = %self.room, pull = %self.id, url = %self.shown, reason = %failure.reason(), "RTSP pull attempt failed");
            let backoff = match &next {
                PullState::Retrying { backoff_ms, .. } => Duration::from_millis(*backoff_ms),
                _ => {
                    self.pulls.set(&self.id, next);
                    return;
                }
            };
            self.pulls.set(&self.id, next);
            tokio::select! {
                _ = &mut stop => return,
                () = &mut expiry => {
                    let reason = "the token expired".to_owned();
                    self.pulls.set(&self.id, PullState::Ended { reason });
                    return;
                }
                () = tokio::time::sleep(backoff) => {}
            }
        }
    }

    /// DESCRIBE, SETUP of the streams WAVE plays, PLAY.
    async fn connect(&self) -> Result<Playing, Failure> {
        let options = SessionOptions::default()
            .creds(self.creds.clone())
            .user_agent("WAVE".into());
        let mut session = Session::describe(self.url.clone(), options)
            .await
            .map_err(rtsp_failure)?;
        let streams = session.streams();
        let video = streams
            .iter()
            .position(|s| s.media() == "video" && s.encoding_name() == "h264")
            .ok_or_else(|| {
                let offered: Vec<String> = streams
                    .iter()
                    .map(|s| format!("{}/{}", s.media(), s.encoding_name()))
                    .collect();
                Failure::Codec(format!("no H.264 video among {offered:?}"))
            })?;
        let audio = streams.iter().enumerate().find_map(|(i, s)| {
            let name = s.encoding_name();
            (s.media() == "audio" && matches!(name, "mpeg4-generic" | "pcmu" | "pcma"))
                .then(|| (i, name.to_owned()))
        });
        let setup = || {
            let transport = if self.tcp {
                Transport::Tcp(Default::default())
            } else {
                Transport::Udp(Default::default())
            };
            SetupOptions::default()
                .transport(transport)
                .frame_format(FrameFormat::MP4)
        };
        session.setup(video, setup()).await.map_err(rtsp_failure)?;
        if let Some((i, _)) = &audio {
            session.setup(*i, setup()).await.map_err(rtsp_failure)?;
        }
        let playing = session.play(PlayOptions::default()).await.map_err(rtsp_failure)?;
        let demuxed = playing.demuxed().map_err(rtsp_failure)?;
        Ok(Playing {
            demuxed,
            video,
            audio,
        })
    }

    /// Claims the room, opens the source and feeds it until the camera
    /// drops, the pull is deleted or the token expires.
    async fn play(
        &self,
        mut playing: Playing,
        retry: &mut Retry,
        stop: &mut oneshot::Receiver<()>,
        expiry: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> End {
        let Some(node) = self.pulls.node.upgrade() else {
            return End::Stopped;
        };
        match self.pulls.cluster.claim_to_publish(&self.room).await {
            Ok(None) => {}
            Ok(Some(owner)) => {
                return End::Failed(Failure::Room(format!(
                    "room {} is published on node {}",
                    self.room, owner.node
                )));
            }
            Err(e) => {
                return End::Failed(Failure::Room(format!("the room registry is unreachable: {e}")));
            }
        }
        let session = SessionId::random();
        let open = IngestOpen {
            room: self.room.clone(),
            session: session.clone(),
            identity: self.identity.clone(),
        };
        if let Err(e) = node.open_ingest(open).await {
            return End::Failed(Failure::Room(e.to_string()));
        }
        retry.handle_playing();
        PLAYING.fetch_add(1, Ordering::Relaxed);
        self.pulls.set(&self.id, PullState::Playing);
        info!(room = %self.room, pull = %self.id, session = %session, "RTSP pull playing");
        let end = self.feed(&node, &session, &mut playing, stop, expiry).await;
        PLAYING.fetch_sub(1, Ordering::Relaxed);
        let _ = node.end_ingest(&session).await;
        end
    }

    async fn feed(
        &self,
        node: &N,
        session: &SessionId,
        playing: &mut Playing,
        stop: &mut oneshot::Receiver<()>,
        expiry: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> End {
        let mut source = Source::new(ntp_now());
        let mut video_config = false;
        // `None`: not configured yet; `Some(false)`: a codec that failed to open.
        let mut audio_ready: Option<bool> = None;
        loop {
            let item = tokio::select! {
                _ = &mut *stop => return End::Stopped,
                () = &mut *expiry => return End::Expired,
                r = tokio::time::timeout(IDLE_TIMEOUT, playing.demuxed.next()) => r,
            };
            let item = match item {
                Err(_) => {
                    let why = format!("no frame for {} s", IDLE_TIMEOUT.as_secs());
                    return End::Failed(Failure::Dropped(why));
                }
                Ok(None) => return End::Failed(Failure::Dropped("the camera ended the stream".into())),
                Ok(Some(Err(e))) => return End::Failed(Failure::Dropped(first_line(&e))),
                Ok(Some(Ok(item))) => item,
            };
            let now = Instant::now();
            let made = match item {
                CodecItem::VideoFrame(f) if f.stream_id() == playing.video => {
                    if (f.has_new_parameters() || !video_config)
                        && let Some(config) = avc_config(&playing.demuxed, playing.video)
                    {
                        source.handle_h264_config(config);
                        video_config = true;
                    }
                    let (ts_ms, ticks) = clock(f.timestamp(), 90_000);
                    source.handle_h264(now, ts_ms, ticks, f.data())
                }
                CodecItem::AudioFrame(f) if Some(f.stream_id()) == playing.audio.as_ref().map(|a| a.0) => {
                    if audio_ready.is_none() {
                        let ready = audio_decoder(&playing.demuxed, playing.audio.as_ref());
                        audio_ready = Some(ready.is_ok());
                        match ready {
                            Ok(d) => source.handle_audio_config(d),
                            Err(e) => {
                                warn!(room = %self.room, pull = %self.id, error = %e, "RTSP audio not played")
                            }
                        }
                    }
                    if audio_ready == Some(true) {
                        let (ts_ms, _) = clock(f.timestamp(), 1000);
                        source.handle_audio_frame(now, ts_ms, f.data())
                    } else {
                        Ok(())
                    }
                }
                _ => Ok(()),
            };
            if let Err(e) = made {
                // One bad frame: skipped (the next keyframe recovers).
                debug!(room = %self.room, pull = %self.id, error = %e, "RTSP frame skipped");
            }
            let packets = source.take_packets();
            if packets.is_empty() {
                continue;
            }
            if let Err(e) = node.ingest(session, packets).await {
                return End::Failed(Failure::Room(format!("the room's worker refused media: {e}")));
            }
        }
    }
}

/// A `retina` error before PLAY as a failure: the camera refusing the
/// credentials (401/403) is `Auth`, anything else `Protocol`.
fn rtsp_failure(e: retina::Error) -> Failure {
    match e.status_code() {
        Some(401 | 403) => Failure::Auth(first_line(&e)),
        _ => Failure::Protocol(first_line(&e)),
    }
}

/// An error's first line, at most [`MAX_REASON`] bytes: `retina` appends
/// a hex dump of what the camera sent, which the API does not repeat.
fn first_line(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("");
    let mut line = first.strip_suffix("; buffered:").unwrap_or(first).to_owned();
    if line.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

/// The stream's H.264 parameters as the shared source takes them
/// (`FrameFormat::MP4`: 4-byte NAL unit lengths).
fn avc_config(demuxed: &Demuxed, stream: usize) -> Option<AvcConfig> {
    let Some(ParametersRef::Video(p)) = demuxed.streams().get(stream)?.parameters() else {
        return None;
    };
    let VideoParametersCodec::H264 { sps, pps } = p.codec_params() else {
        return None;
    };
    Some(AvcConfig {
        length_size: 4,
        sps: vec![sps.to_vec()],
        pps: vec![pps.to_vec()],
    })
}

fn audio_decoder(demuxed: &Demuxed, audio: Option<&(usize, String)>) -> Result<ToOpus, String> {
    let Some((i, name)) = audio else {
        return Err("no audio stream".into());
    };
    match name.as_str() {
        "pcmu" => ToOpus::g711(Law::Mu).map_err(|e| e.to_string()),
        "pcma" => ToOpus::g711(Law::A).map_err(|e| e.to_string()),
        _ => {
            let Some(ParametersRef::Audio(p)) = demuxed.streams().get(*i).and_then(|s| s.parameters()) else {
                return Err("AAC without its AudioSpecificConfig".into());
            };
            ToOpus::aac(p.extra_data()).map_err(|e| e.to_string())
        }
    }
}

/// A frame's time since the stream's first as (ms, ticks at `rate`).
fn clock(ts: retina::Timestamp, rate: i64) -> (u32, u32) {
    let clock = i64::from(ts.clock_rate().get());
    let elapsed = ts.elapsed();
    ((elapsed * 1000 / clock) as u32, (elapsed * rate / clock) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_cut_from_the_url_and_shown_redacted() {
        let (url, creds, shown) = split_credentials("rtsp://admin:p%40ss@10.0.0.7:554/stream1?ch=2").unwrap();
        assert_eq!(url.as_str(), "rtsp://10.0.0.7:554/stream1?ch=2");
        let creds = creds.unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("admin", "p@ss")
        );
        assert_eq!(shown, "rtsp://***@10.0.0.7:554/stream1?ch=2");
        assert!(!shown.contains("p%40ss") && !shown.contains("admin"));

        let (_, creds, shown) = split_credentials("rtsp://cam.local/live").unwrap();
        assert!(creds.is_none());
        assert_eq!(shown, "rtsp://cam.local/live");

        for bad in ["http://cam/x", "rtsp://", "not a url", "rtsp:///path"] {
            let e = split_credentials(bad).unwrap_err();
            assert!(matches!(e, MediaError::BadRequest(_)), "{bad}: {e:?}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_a_pull_that_never_played_gives_up() {
        let drop = Failure::Timeout("no answer".into());
        let mut r = Retry::default();
        let backoffs: Vec<PullState> = (0..ATTEMPTS_BEFORE_PLAYING)
            .map(|_| r.handle_failure(&drop))
            .collect();
        let ms: Vec<u64> = backoffs
            .iter()
            .filter_map(|s| match s {
                PullState::Retrying { backoff_ms, .. } => Some(*backoff_ms),
                _ => None,
            })
            .collect();
        assert_eq!(ms, vec![1000, 2000, 4000, 8000, 16_000]);
        let PullState::Failed { reason } = &backoffs[5] else {
            panic!("{:?}", backoffs[5]);
        };
        assert_eq!(reason, "timeout: no answer (after 6 attempts)");

        // Once it has played, a camera that drops is retried for good, the
        // backoff starting again and capped.
        let mut r = Retry::default();
        r.handle_failure(&drop);
        r.handle_playing();
        let dropped = Failure::Dropped("the camera ended the stream".into());
        let states: Vec<PullState> = (0..10).map(|_| r.handle_failure(&dropped)).collect();
        assert_eq!(
            states[0],
            PullState::Retrying {
                attempt: 1,
                backoff_ms: 1000,
                reason: "dropped: the camera ended the stream".into()
            }
        );
        assert!(matches!(
            states[9],
            PullState::Retrying {
                attempt: 10,
                backoff_ms: 30_000,
                ..
            }
        ));

        // Nothing to play, or credentials refused: no retry.
        let mut r = Retry::default();
        assert!(matches!(
            r.handle_failure(&Failure::Codec("no H.264".into())),
            PullState::Failed { .. }
        ));
    }

    #[test]
    fn states_serialize_as_the_api_reports_them() {
        let v = serde_json::to_value(PullState::Retrying {
            attempt: 2,
            backoff_ms: 2000,
            reason: "dropped: x".into(),
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"state": "retrying", "attempt": 2, "backoff_ms": 2000, "reason": "dropped: x"})
        );
        assert_eq!(
            serde_json::to_value(PullState::Playing).unwrap(),
            serde_json::json!({"state": "playing"})
        );
    }
}
