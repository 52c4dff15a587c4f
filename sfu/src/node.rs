//! The media node as the HTTP layer sees it: places rooms on workers and
//! routes each session's commands to the worker that owns its peer.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use signaling::media::RoomInfo;
use signaling::{
    IcePatch, IceRestartAnswer, LayerPref, MediaError, MediaNode, PlayRequest, PublishRequest, RoomId,
    SessionId,
};

use hls_bridge::http::HlsService;
use wave_metrics::{Kind, family, sample, single};

use crate::engine::{Command, EngineConfig, IngestItem, IngestOpen, Reply, WorkerId};
use crate::stats::Line;
use crate::worker::{self, RelayInboxes, WorkerHandle};

/// Each session's worker and room.
type Sessions = Arc<Mutex<HashMap<SessionId, (usize, RoomId)>>>;

/// Workers that died (a panic), for `/healthz`, `/metrics` and the drain.
#[derive(Default)]
struct Down {
    count: std::sync::atomic::AtomicUsize,
    notify: tokio::sync::Notify,
}

/// All media workers of one process.
pub struct Node {
    workers: Vec<WorkerHandle>,
    sessions: Sessions,
    max_peers: usize,
    /// Checked here as well as by each engine: a spread room has peers on several.
    max_room_peers: usize,
    started: std::time::Instant,
    /// LL-HLS under `/hls/`, fed by the workers.
    hls: Option<Arc<HlsService>>,
    /// Place a room's viewers on the least loaded worker, fed from the
    /// room's home worker through relays (`--spread-viewers`).
    spread: bool,
    /// The gateway to other nodes (QUIC), when the node relays.
    relay: Option<relay::Relay>,
    down: Arc<Down>,
    /// The HTTP front door's session table (set once the server starts).
    http_sessions: Arc<std::sync::OnceLock<signaling::Sessions>>,
    /// The RTSP pulls, set once the cluster is joined ([`Node::set_pulls`]).
    pulls: std::sync::OnceLock<Arc<crate::ingest::rtsp::Pulls<Node>>>,
}

/// A room's home worker among `count`: its publishers, HLS and (without
/// spreading) every viewer. The relay's gateway uses the same.
pub fn room_home(room: &RoomId, count: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    room.hash(&mut h);
    (h.finish() % count.max(1) as u64) as usize
}

impl Node {
    /// Starts `count` workers on consecutive ports from `bind` (port 0: each
    /// an ephemeral port). With `spread`, a room's viewers go to the least
    /// loaded worker, not only the room's own.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        count: usize,
        bind: SocketAddr,
        public_ip: Option<IpAddr>,
        config: EngineConfig,
        max_peers: usize,
        http_sessions: Arc<std::sync::OnceLock<signaling::Sessions>>,
        hls: Option<Arc<HlsService>>,
        spread: bool,
        relay_listen: Option<SocketAddr>,
        relay_pki: Option<(relay::tls::Identity, Arc<rustls::RootCertStore>)>,
    ) -> std::io::Result<Node> {
        let sessions: Sessions = Arc::default();
        let down: Arc<Down> = Arc::default();
        let count = count.max(1);
        let max_room_peers = config.max_room_peers;
        let mut workers = Vec::with_capacity(count);
        // One inbox per worker, and the relay gateway's after them.
        let gateways = usize::from(relay_listen.is_some());
        let inboxes: RelayInboxes = (0..count + gateways)
            .map(|_| Arc::new(relay::Inbox::default()))
            .collect();
        let relay = match relay_listen {
            Some(listen) => Some(relay::Relay::start_with(
                listen,
                count,
                Box::new(move |room| WorkerId(room_home(room, count))),
                inboxes.clone(),
                relay_pki,
            )?),
            None => None,
        };
        for i in 0..count {
            let port = if bind.port() == 0 {
                0
            } else {
                bind.port() + i as u16
            };
            let addr = SocketAddr::new(bind.ip(), port);
            let map = sessions.clone();
            let http = http_sessions.clone();
            // A session the engine ended (idle, DTLS close) leaves both tables.
            let on_closed = Arc::new(move |s: SessionId| {
                if let Ok(mut m) = map.lock() {
                    m.remove(&s);
                }
                if let Some(h) = http.get() {
                    h.ended(&s);
                }
            });
            // A worker that panicked: its sessions leave both tables (their
            // WHIP/WHEP resources answer 404), and the node is told to drain.
            let (map, http, gone) = (sessions.clone(), http_sessions.clone(), down.clone());
            let on_down = Arc::new(move |w: usize| {
                let ended: Vec<SessionId> = match map.lock() {
                    Ok(mut m) => {
                        let ended: Vec<SessionId> = m
                            .iter()
                            .filter(|(_, (i, _))| *i == w)
                            .map(|(s, _)| s.clone())
                            .collect();
                        for s in &ended {
                            m.remove(s);
                        }
                        ended
                    }
                    Err(_) => Vec::new(),
                };
                if let Some(h) = http.get() {
                    for s in &ended {
                        h.ended(s);
                    }
                }
                gone.count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                gone.notify.notify_one();
            });
            let store = hls.as_ref().map(|h| h.store().clone());
            workers.push(worker::spawn(
                i,
                addr,
                public_ip,
                config.clone(),
                on_closed,
                store,
                inboxes.clone(),
                on_down,
            )?);
        }
        Ok(Node {
            workers,
            sessions,
            max_peers,
            max_room_peers,
            started: std::time::Instant::now(),
            hls,
            spread: spread && count > 1,
            relay,
            down,
            http_sessions,
            pulls: std::sync::OnceLock::new(),
        })
    }

    /// Takes the node's RTSP pull table (once; later calls are ignored).
    pub fn set_pulls(&self, pulls: Arc<crate::ingest::rtsp::Pulls<Node>>) {
        let _ = self.pulls.set(pulls);
    }

    /// Another supervised thread (the embedded TURN server) died: the node
    /// reports unhealthy and drains, as for a worker.
    pub fn thread_down(&self) {
        self.down.count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.down.notify.notify_one();
    }

    /// Resolves when a media worker or the TURN thread has died (a panic).
    pub async fn worker_down(&self) {
        if self.down.count.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            self.down.notify.notified().await;
        }
    }

    /// The relay gateway, when the node relays.
    pub fn relay(&self) -> Option<&relay::Relay> {
        self.relay.as_ref()
    }

    /// Feeds the viewers of `room` waiting here from the relay gateway (the
    /// room's origin turned out to be another node): each worker holding
    /// one mirrors the room from the gateway.
    pub async fn adopt(&self, room: &RoomId) {
        if self.relay.is_none() {
            return;
        }
        let workers: std::collections::BTreeSet<usize> = match self.sessions.lock() {
            Ok(m) => m.values().filter(|(_, r)| r == room).map(|(i, _)| *i).collect(),
            Err(_) => return,
        };
        let home = relay::Relay::gateway_id(self.workers.len());
        for i in workers {
            let command = Command::Mirror {
                room: room.clone(),
                home,
            };
            if let Err(e) = self.workers[i].call(command).await {
                tracing::debug!(%room, worker = i, error = %e, "viewers here stay with the local room");
            }
        }
    }

    /// The UDP addresses the workers listen on.
    pub fn media_addrs(&self) -> Vec<SocketAddr> {
        self.workers.iter().map(|w| w.local_addr).collect()
    }

    /// Closes every peer (RTCP BYE, DTLS close_notify) and stops the workers.
    pub async fn shutdown(&self) {
        for w in &self.workers {
            let _ = w.call(Command::CloseAll).await;
        }
    }

    /// Waits for the worker threads to end after `shutdown`; blocks.
    pub fn join(&self) {
        for w in &self.workers {
            w.join();
        }
    }

    /// A room's home worker: its publishers, HLS and (without spreading)
    /// every viewer.
    fn worker_for_room(&self, room: &RoomId) -> usize {
        room_home(room, self.workers.len())
    }

    fn worker_for_session(&self, session: &SessionId) -> Result<&WorkerHandle, MediaError> {
        let index = self
            .sessions
            .lock()
            .ok()
            .and_then(|m| m.get(session).map(|(i, _)| *i))
            .ok_or(MediaError::NotFound)?;
        Ok(&self.workers[index])
    }

    /// Opens a session on the room's home worker, or for a viewer with
    /// spreading on, on the worker with the fewest sessions (ties: the home,
    /// which needs no relay). `command` gets the other engines a viewer is
    /// fed from: the room's home worker when it is another, and on a node
    /// that relays the gateway (publishers of the room on other nodes).
    async fn open(
        &self,
        room: &RoomId,
        session: SessionId,
        viewer: bool,
        command: impl FnOnce(Vec<WorkerId>) -> Command,
    ) -> Result<String, MediaError> {
        match self.open_session(room, session, viewer, command).await? {
            Reply::Answer(sdp) => Ok(sdp),
            other => Err(MediaError::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// [`Node::open`]'s work, whatever the engine replies.
    async fn open_session(
        &self,
        room: &RoomId,
        session: SessionId,
        viewer: bool,
        command: impl FnOnce(Vec<WorkerId>) -> Command,
    ) -> Result<Reply, MediaError> {
        let home = self.worker_for_room(room);
        let index = {
            let mut m = self
                .sessions
                .lock()
                .map_err(|_| MediaError::Internal("session table poisoned".into()))?;
            if m.len() >= self.max_peers {
                return Err(MediaError::Overloaded { retry_after_secs: 5 });
            }
            if m.values().filter(|(_, r)| r == room).count() >= self.max_room_peers {
                return Err(MediaError::RoomFull {
                    room: room.clone(),
                    retry_after_secs: 5,
                });
            }
            let index = if viewer && self.spread {
                let mut load = vec![0usize; self.workers.len()];
                for (i, _) in m.values() {
                    load[*i] += 1;
                }
                (0..load.len())
                    .min_by_key(|&i| (load[i], i != home))
                    .unwrap_or(home)
            } else {
                home
            };
            m.insert(session.clone(), (index, room.clone()));
            index
        };
        let mut homes = Vec::new();
        if index != home {
            homes.push(WorkerId(home));
        }
        if viewer && self.relay.is_some() {
            homes.push(relay::Relay::gateway_id(self.workers.len()));
        }
        let mut command = command(homes);
        // A viewer on another worker than the room's may arrive before
        // that worker has a mirror of the room's publisher: the room's
        // worker says which video codecs it sends, so an offer without
        // them is refused (406) here too.
        if index != home
            && let Command::Play {
                publisher,
                room_video,
                ..
            } = &mut command
        {
            let ask = Command::RoomVideo {
                room: room.clone(),
                publisher: publisher.clone(),
            };
            if let Ok(Reply::RoomVideo(codecs)) = self.workers[home].call(ask).await {
                *room_video = codecs;
            }
        }
        match self.workers[index].call(command).await {
            Ok(reply) => Ok(reply),
            Err(e) => {
                if let Ok(mut m) = self.sessions.lock() {
                    m.remove(&session);
                }
                Err(e)
            }
        }
    }
}

/// Routes `room`'s stream from the node with the publishers through the
/// relay to `origin` (its parent in the stream's tree; dialling it if needed).
pub async fn route(
    relay: &relay::Relay,
    room: &RoomId,
    origin: &signaling::Origin,
) -> Result<(), MediaError> {
    let unavailable = |why: String| {
        tracing::warn!(%room, origin = %origin.node, %why, "cannot relay the room from its origin");
        MediaError::Upstream(format!("node {} cannot be reached over the relay", origin.node))
    };
    let addr: SocketAddr = origin
        .relay_addr
        .parse()
        .map_err(|_| unavailable(format!("bad relay address {:?}", origin.relay_addr)))?;
    let fp: relay::Fingerprint = origin.fingerprint.parse().map_err(unavailable)?;
    let source: relay::Fingerprint = origin.source.parse().map_err(unavailable)?;
    let topic = relay::Topic::new(room.clone(), source.tag());
    relay
        .route(&topic, addr, fp)
        .await
        .map_err(|e| unavailable(e.to_string()))
}

impl crate::ingest::IngestNode for Node {
    async fn open_ingest(&self, open: IngestOpen) -> Result<(), MediaError> {
        let (room, session) = (open.room.clone(), open.session.clone());
        self.open_session(&room, session, false, |_| Command::Ingest(open))
            .await
            .map(|_| ())
    }

    async fn ingest(&self, session: &SessionId, packets: Vec<IngestItem>) -> Result<(), MediaError> {
        let command = Command::IngestMedia {
            session: session.clone(),
            packets,
        };
        self.worker_for_session(session)?.call(command).await.map(|_| ())
    }

    async fn end_ingest(&self, session: &SessionId) -> Result<(), MediaError> {
        self.delete(session).await
    }
}

impl MediaNode for Node {
    async fn start_pull(&self, req: signaling::PullRequest) -> Result<(), MediaError> {
        let pulls = self
            .pulls
            .get()
            .ok_or_else(|| MediaError::Unavailable("the pull table is not ready".into()))?;
        pulls.start(req).await
    }

    async fn pull(&self, room: &RoomId, id: &SessionId) -> Option<serde_json::Value> {
        self.pulls.get()?.get(room, id).await
    }

    async fn stop_pull(&self, room: &RoomId, id: &SessionId) -> Result<bool, MediaError> {
        match self.pulls.get() {
            Some(p) => p.stop(room, id).await,
            None => Ok(false),
        }
    }

    async fn room_pulls(&self, room: &RoomId) -> Vec<serde_json::Value> {
        match self.pulls.get() {
            Some(p) => p.in_room(room).await,
            None => Vec::new(),
        }
    }

    async fn publish(&self, req: PublishRequest) -> Result<String, MediaError> {
        let command = |_| Command::Publish {
            room: req.room.clone(),
            session: req.session.clone(),
            identity: req.identity,
            offer: req.offer,
        };
        self.open(&req.room, req.session.clone(), false, command).await
    }

    async fn play(&self, req: PlayRequest) -> Result<String, MediaError> {
        if let (Some(origin), Some(relay)) = (&req.origin, &self.relay) {
            route(relay, &req.room, origin).await?;
        }
        let command = |homes| Command::Play {
            room: req.room.clone(),
            session: req.session.clone(),
            identity: req.identity,
            offer: req.offer,
            publisher: req.publisher,
            max_layer: req.max_layer,
            homes,
            room_video: Vec::new(),
        };
        self.open(&req.room, req.session.clone(), true, command).await
    }

    async fn patch(
        &self,
        session: &SessionId,
        patch: IcePatch,
    ) -> Result<Option<IceRestartAnswer>, MediaError> {
        let worker = self.worker_for_session(session)?;
        match worker
            .call(Command::Patch {
                session: session.clone(),
                patch,
            })
            .await?
        {
            Reply::Patched(answer) => Ok(answer),
            other => Err(MediaError::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn set_layer(&self, session: &SessionId, layer: Option<LayerPref>) -> Result<(), MediaError> {
        let worker = self.worker_for_session(session)?;
        worker
            .call(Command::SetLayer {
                session: session.clone(),
                layer,
            })
            .await
            .map(|_| ())
    }

    async fn delete(&self, session: &SessionId) -> Result<(), MediaError> {
        let worker = self.worker_for_session(session)?;
        let result = worker
            .call(Command::Delete {
                session: session.clone(),
            })
            .await
            .map(|_| ());
        if let Ok(mut m) = self.sessions.lock() {
            m.remove(session);
        }
        result
    }

    async fn rooms(&self) -> Vec<RoomInfo> {
        let mut rooms = Vec::new();
        for w in &self.workers {
            if let Ok(Reply::Rooms(r)) = w.call(Command::Rooms).await {
                rooms.extend(r);
            }
        }
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        // A spread room is on several workers: one entry, every peer once
        // (publishers are listed by their home only).
        let mut merged: Vec<RoomInfo> = Vec::with_capacity(rooms.len());
        for r in rooms {
            match merged.last_mut() {
                Some(last) if last.room == r.room => {
                    last.publishers.extend(r.publishers);
                    last.viewers.extend(r.viewers);
                }
                _ => merged.push(r),
            }
        }
        // A room with no session left is bookkeeping, not a room: its home
        // keeps it until the unwatch from a worker whose last viewer just
        // left arrives (a relay, a moment later).
        merged.retain(|r| !r.publishers.is_empty() || !r.viewers.is_empty());
        merged
    }

    async fn other(
        &self,
        req: hyper::Request<()>,
    ) -> Option<hyper::Response<http_body_util::Full<bytes::Bytes>>> {
        let hls = self.hls.as_ref()?;
        HlsService::matches(req.uri().path()).then_some(())?;
        Some(hls.handle(&req).await)
    }

    fn unreachable_relays(&self) -> Vec<String> {
        self.relay
            .iter()
            .flat_map(|r| r.recently_lost())
            .map(|fp| fp.to_string())
            .collect()
    }

    fn healthy(&self) -> bool {
        self.down.count.load(std::sync::atomic::Ordering::Relaxed) == 0
    }

    async fn room_links(&self, room: &RoomId) -> serde_json::Value {
        match &self.relay {
            Some(relay) => relay.room_links(room).await,
            None => serde_json::Value::Null,
        }
    }

    async fn metrics(&self, out: &mut String) {
        // The workers' table, summed over workers, then what is per worker
        // or per node.
        let mut totals: Vec<Line> = Vec::new();
        for w in &self.workers {
            let lines = w.stats.lines();
            if totals.is_empty() {
                totals = lines;
            } else {
                for (t, l) in totals.iter_mut().zip(lines) {
                    t.value += l.value;
                }
            }
        }
        for l in totals.iter().filter(|l| !l.hls || self.hls.is_some()) {
            single(out, l.name, l.kind, l.help, l.value);
        }
        single(
            out,
            "wave_workers",
            Kind::Gauge,
            "Media worker threads.",
            self.workers.len() as u64,
        );
        family(
            out,
            "wave_worker_viewers",
            Kind::Gauge,
            "WHEP sessions per media worker.",
        );
        for w in &self.workers {
            sample(
                out,
                "wave_worker_viewers",
                &format!("worker=\"{}\"", w.index),
                w.stats.viewers.load(Ordering::Relaxed),
            );
        }
        if let Some(hls) = &self.hls {
            hls.metrics.render(out);
        }
        if let Some(relay) = &self.relay {
            for (name, counter, help, v) in relay.stats().lines() {
                let kind = if counter { Kind::Counter } else { Kind::Gauge };
                single(out, name, kind, help, v);
            }
            relay.stats().render_histograms(out);
        }
        wave_dtls::render_metrics(out);
        crate::ingest::render_metrics(out);
        crate::ingest::rtsp::render_metrics(self.pulls.get().map_or(0, |p| p.count()), out);
        let p = wave_metrics::process::sample();
        let process: [(&str, Kind, &str, String); 5] = [
            (
                "process_cpu_seconds_total",
                Kind::Counter,
                "User and system CPU time.",
                format!("{:.3}", p.cpu_seconds),
            ),
            (
                "process_resident_memory_bytes",
                Kind::Gauge,
                "Resident memory.",
                p.rss_bytes.to_string(),
            ),
            (
                "process_uptime_seconds",
                Kind::Gauge,
                "Seconds since the node started.",
                format!("{:.1}", self.started.elapsed().as_secs_f64()),
            ),
            (
                "wave_session_index_entries",
                Kind::Gauge,
                "Entries in the node's session tables (worker by session, HTTP resources): 0 on an idle node.",
                (self.sessions.lock().map_or(0, |m| m.len())
                    + self.http_sessions.get().map_or(0, signaling::Sessions::len))
                .to_string(),
            ),
            (
                "wave_thread_panics_total",
                Kind::Counter,
                "Media worker or TURN threads that died of a panic (the node then drains and exits non-zero).",
                self.down
                    .count
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .to_string(),
            ),
        ];
        for (name, kind, help, v) in process {
            single(out, name, kind, help, v);
        }
    }
}
