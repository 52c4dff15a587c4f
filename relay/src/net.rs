//! The gateway's driver: QUIC links to other nodes (quinn) and the
//! hand-off to the node's workers.
//!
//! One connection per pair of nodes, dialled by the edge. Each side opens
//! one unidirectional stream for its control messages (watch, announce,
//! source gone, keyframe request; a 2-byte length before each frame) and
//! sends media as QUIC datagrams, one frame each (a frame larger than the
//! path allows goes on the stream). A lost datagram is not resent: the
//! viewers' own loss recovery asks for a keyframe, which travels upstream
//! merged with the origin's (see ARCHITECTURE.md, "Relay").
//!
//! Every buffer a peer can fill is bounded: received media waits in a
//! channel of [`INBOUND`] messages (further media is dropped and counted),
//! control frames to a peer wait in one of [`CONTROL_QUEUE`] (a peer that
//! does not read past it is disconnected), and a frame that does not
//! decode closes its connection. None of it stops the node's local
//! viewers.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use wave_vocab::RoomId;

use crate::gateway::{Gateway, GatewayOutput, LinkId, Topic};
use crate::inproc::Inbox;
use crate::message::{Message, WorkerId};
use crate::tls::{self, Fingerprint, Identity, Trust};
use crate::wire::{self, MAX_FRAME};

/// Messages from links waiting for the gateway.
pub const INBOUND: usize = 8192;
/// Control frames waiting to be written to one peer.
pub const CONTROL_QUEUE: usize = 1024;
/// How long a silent link lives (keep-alives every fourth of it): a
/// parent killed outright is noticed this late, and its children re-parent.
const IDLE: Duration = Duration::from_millis(1500);
/// How long a node whose link died (or could not be dialled) is passed
/// over as a parent.
pub const LOST_FOR: Duration = Duration::from_secs(10);
/// Attempts to dial a node (a node that just appeared may not trust us yet:
/// its view of the registry refreshes every heartbeat).
const DIAL_ATTEMPTS: u32 = 4;

/// What each control stream starts with: the protocol and the wire version.
pub const STREAM_HEADER: [u8; 5] = [b'W', b'R', b'L', b'Y', wire::VERSION];

/// QUIC application error codes a link is closed with.
const CLOSE_DONE: u32 = 0;
const CLOSE_BAD_FRAME: u32 = 1;
const CLOSE_SLOW: u32 = 2;

/// Counters of the relay links, for `/metrics`.
#[derive(Default, Debug)]
pub struct RelayStats {
    pub links_opened: AtomicU64,
    pub links_closed: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub frames_in: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Media received but dropped: the gateway's queue was full.
    pub dropped_in: AtomicU64,
    /// Media handed to a worker's full inbox and dropped there.
    pub dropped_workers: AtomicU64,
    /// Handshakes refused (a certificate the registry does not hold).
    pub refused_peers: AtomicU64,
    /// Links closed for a frame that did not decode.
    pub bad_frames: AtomicU64,
    /// Links closed because the peer did not read its control stream.
    pub slow_peers: AtomicU64,
    /// Watches over a link's room bound, refused.
    pub refused_watches: AtomicU64,
    /// Rooms watched upstream, links watching rooms here (gauges).
    pub upstream_rooms: AtomicU64,
    /// Packets asked again of an origin, and packets resent to edges.
    pub nacked: AtomicU64,
    pub retransmissions: AtomicU64,
    /// Links that started carrying a layer from its cached keyframe group.
    pub keyframe_replays: AtomicU64,
    pub downstream_links: AtomicU64,
    /// Watches and routes refused as loops; rooms moved to a new parent.
    pub loops: AtomicU64,
    pub reparents: AtomicU64,
    /// Latency a hop adds to a relayed packet: its residence at the sending
    /// node (from its arrival there to its departure) plus half the link's
    /// round trip.
    pub hop: wave_metrics::Histogram<HopBounds>,
}

/// Buckets of the hop latency histogram: 1, 2, 5 per decade, 50 µs to 1 s.
#[derive(Debug)]
pub struct HopBounds;

impl wave_metrics::Bounds for HopBounds {
    const US: &'static [u64] = &[
        50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
    ];
}

/// The hop latency histogram's name in `/metrics`.
pub const HOP_METRIC: &str = "wave_relay_hop_seconds";

impl RelayStats {
    /// Appends the hop latency histogram (family lines included).
    pub fn render_histograms(&self, out: &mut String) {
        wave_metrics::family(
            out,
            HOP_METRIC,
            wave_metrics::Kind::Histogram,
            "Latency a relay hop added to received packets: the sender's residence plus half the link round trip.",
        );
        self.hop.render(HOP_METRIC, "", out);
    }

    /// `(name, kind is counter, help, value)` for each counter.
    pub fn lines(&self) -> Vec<(&'static str, bool, &'static str, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let open = g(&self.links_opened).saturating_sub(g(&self.links_closed));
        vec![
            ("wave_relay_links", false, "Open QUIC links to other nodes.", open),
            (
                "wave_relay_links_opened_total",
                true,
                "QUIC links opened (dialled or accepted).",
                g(&self.links_opened),
            ),
            (
                "wave_relay_frames_sent_total",
                true,
                "Relay frames sent to other nodes.",
                g(&self.frames_out),
            ),
            (
                "wave_relay_bytes_sent_total",
                true,
                "Relay frame bytes sent to other nodes.",
                g(&self.bytes_out),
            ),
            (
                "wave_relay_frames_received_total",
                true,
                "Relay frames received from other nodes.",
                g(&self.frames_in),
            ),
            (
                "wave_relay_bytes_received_total",
                true,
                "Relay frame bytes received from other nodes.",
                g(&self.bytes_in),
            ),
            (
                "wave_relay_media_dropped_total",
                true,
                "Relayed media dropped at a full queue.",
                g(&self.dropped_in) + g(&self.dropped_workers),
            ),
            (
                "wave_relay_refused_peers_total",
                true,
                "Relay handshakes refused: certificate not in the registry.",
                g(&self.refused_peers),
            ),
            (
                "wave_relay_bad_frames_total",
                true,
                "Relay links closed for a frame that did not decode.",
                g(&self.bad_frames),
            ),
            (
                "wave_relay_slow_peers_total",
                true,
                "Relay links closed because the peer stopped reading.",
                g(&self.slow_peers),
            ),
            (
                "wave_relay_refused_watches_total",
                true,
                "Room watches refused over a link's bound.",
                g(&self.refused_watches),
            ),
            (
                "wave_relay_nacked_total",
                true,
                "Relayed packets lost on a link and asked again of the origin.",
                g(&self.nacked),
            ),
            (
                "wave_relay_retransmissions_total",
                true,
                "Relayed packets resent to an edge from the origin's recent packets.",
                g(&self.retransmissions),
            ),
            (
                "wave_relay_keyframe_replays_total",
                true,
                "Links that started carrying a layer from its cached keyframe group instead of waiting for a keyframe.",
                g(&self.keyframe_replays),
            ),
            (
                "wave_relay_loops_refused_total",
                true,
                "Room watches or routes refused because they would close a loop.",
                g(&self.loops),
            ),
            (
                "wave_relay_reparents_total",
                true,
                "Rooms that lost their parent node and were fed again through another.",
                g(&self.reparents),
            ),
            (
                "wave_relay_upstream_rooms",
                false,
                "Rooms this node watches on another node.",
                g(&self.upstream_rooms),
            ),
            (
                "wave_relay_downstream_links",
                false,
                "Links that watch rooms of this node.",
                g(&self.downstream_links),
            ),
        ]
    }
}

/// What the gateway task is told.
enum Cmd {
    Route(Topic, LinkId),
    Drop(Topic),
    Links(RoomId, tokio::sync::oneshot::Sender<serde_json::Value>),
    Unrouted(tokio::sync::oneshot::Sender<Vec<Topic>>),
    Up(LinkId, LinkTx, Option<Fingerprint>),
    Down(LinkId),
    Frame(LinkId, Message),
}

/// How the gateway task writes to one link.
struct LinkTx {
    conn: quinn::Connection,
    control: mpsc::Sender<Bytes>,
}

/// Why a room could not be routed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot reach the origin's relay at {0}: {1}")]
    Dial(SocketAddr, String),
    #[error("relay stopped")]
    Stopped,
}

/// A node's relay: its QUIC endpoint and its gateway. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    /// The cluster CA, when peers are checked against it (not the registry).
    ca: Option<Arc<rustls::RootCertStore>>,
    /// The relay's own thread and current-thread runtime: the gateway, the
    /// endpoint and every link task run there, so a relayed frame crosses
    /// no thread but the worker's hand-off.
    rt: tokio::runtime::Handle,
    endpoint: quinn::Endpoint,
    identity: Identity,
    trust: Trust,
    tx: mpsc::Sender<Cmd>,
    /// Dialled links by the remote node's fingerprint.
    dialled: tokio::sync::Mutex<HashMap<Fingerprint, (LinkId, quinn::Connection)>>,
    next_link: AtomicU64,
    stats: Arc<RelayStats>,
    /// Rooms with a route (read by the node's router without a round trip).
    routed: Arc<Mutex<HashMap<Topic, LinkId>>>,
    /// Nodes whose link died or could not be dialled, and when.
    lost: Mutex<HashMap<Fingerprint, Instant>>,
}

impl Relay {
    /// Binds `listen` and starts the gateway for a node of `workers`
    /// workers, whose inboxes are `inboxes` (one more at the end: the
    /// gateway's own). Starts a thread of its own.
    pub fn start(
        listen: SocketAddr,
        workers: usize,
        home: Box<dyn Fn(&RoomId) -> WorkerId + Send>,
        inboxes: Arc<[Arc<Inbox>]>,
    ) -> io::Result<Relay> {
        Relay::start_with(listen, workers, home, inboxes, None)
    }

    /// [`Relay::start`] with an operator's certificate, key and cluster CA
    /// (`None`: a fresh certificate, peers pinned through the registry).
    pub fn start_with(
        listen: SocketAddr,
        workers: usize,
        home: Box<dyn Fn(&RoomId) -> WorkerId + Send>,
        inboxes: Arc<[Arc<Inbox>]>,
        pki: Option<(Identity, Arc<rustls::RootCertStore>)>,
    ) -> io::Result<Relay> {
        if inboxes.len() != workers + 1 {
            return Err(io::Error::other(
                "the relay needs one inbox per worker and its own",
            ));
        }
        let trust = Trust::default();
        let (identity, authority, ca) = match pki {
            Some((identity, roots)) => (identity, tls::Authority::Ca(roots.clone()), Some(roots)),
            None => (
                Identity::generate().map_err(io::Error::other)?,
                tls::Authority::Registry(trust.clone()),
                None,
            ),
        };
        let server = tls::server_config(&identity, authority).map_err(io::Error::other)?;
        let server = QuicServerConfig::try_from(server).map_err(io::Error::other)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
        server.transport_config(transport());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let rt = runtime.handle().clone();
        let endpoint = {
            let _in = rt.enter();
            quinn::Endpoint::server(server, listen)?
        };
        std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        let (tx, rx) = mpsc::channel(INBOUND);
        let stats = Arc::new(RelayStats::default());
        let relay = Relay {
            inner: Arc::new(Inner {
                rt: rt.clone(),
                endpoint,
                identity,
                ca,
                trust,
                tx,
                dialled: tokio::sync::Mutex::new(HashMap::new()),
                next_link: AtomicU64::new(1),
                stats: stats.clone(),
                routed: Arc::new(Mutex::new(HashMap::new())),
                lost: Mutex::new(HashMap::new()),
            }),
        };
        info!(addr = %relay.local_addr(), fingerprint = %relay.fingerprint(), "relay listening (QUIC)");
        let mut gateway = Gateway::new(workers, home);
        gateway.set_tag(relay.fingerprint().tag());
        rt.spawn(run_gateway(
            gateway,
            inboxes,
            rx,
            stats,
            relay.inner.routed.clone(),
        ));
        rt.spawn(accept(relay.clone()));
        Ok(relay)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner
            .endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// This node's certificate fingerprint (published in the registry).
    pub fn fingerprint(&self) -> Fingerprint {
        self.inner.identity.fingerprint
    }

    /// The fingerprints accepted from dialling nodes.
    pub fn trust(&self) -> &Trust {
        &self.inner.trust
    }

    pub fn stats(&self) -> &RelayStats {
        &self.inner.stats
    }

    /// The worker id the node's workers address the gateway by.
    pub fn gateway_id(workers: usize) -> WorkerId {
        WorkerId(workers)
    }

    /// This node's tag: the origin of its own publishers' topics.
    pub fn tag(&self) -> u64 {
        self.fingerprint().tag()
    }

    /// Whether `topic` has a live route to its origin.
    pub fn is_routed(&self, topic: &Topic) -> bool {
        self.inner
            .routed
            .lock()
            .map(|r| r.contains_key(topic))
            .unwrap_or(false)
    }

    /// Topics of `room` with a live route.
    pub fn routed_topics(&self, room: &RoomId) -> Vec<Topic> {
        self.inner
            .routed
            .lock()
            .map(|r| r.keys().filter(|t| t.room == *room).cloned().collect())
            .unwrap_or_default()
    }

    /// Routes `topic` to its parent (its origin, or a relay node nearer to
    /// it) at `addr` holding certificate `fp`: dials it (or reuses the
    /// link) and tells the gateway.
    pub async fn route(&self, topic: &Topic, addr: SocketAddr, fp: Fingerprint) -> Result<(), RelayError> {
        let link = match self.link_to(addr, fp).await {
            Ok(link) => link,
            Err(e) => {
                self.lost(fp);
                return Err(e);
            }
        };
        if let Ok(mut r) = self.inner.routed.lock() {
            r.insert(topic.clone(), link);
        }
        self.inner
            .tx
            .send(Cmd::Route(topic.clone(), link))
            .await
            .map_err(|_| RelayError::Stopped)
    }

    /// Forgets `topic`: its origin no longer publishes the room.
    pub async fn drop_topic(&self, topic: &Topic) {
        if let Ok(mut r) = self.inner.routed.lock() {
            r.remove(topic);
        }
        let _ = self.inner.tx.send(Cmd::Drop(topic.clone())).await;
    }

    /// Topics to route: watched here (by workers or child links) with no
    /// parent (never routed, or their parent went away).
    pub async fn unrouted(&self) -> Vec<Topic> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.inner.tx.send(Cmd::Unrouted(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Nodes (by certificate) whose link died or could not be dialled in
    /// the last [`LOST_FOR`]: not to be chosen as parents for now.
    pub fn recently_lost(&self) -> Vec<Fingerprint> {
        let Ok(mut lost) = self.inner.lost.lock() else {
            return Vec::new();
        };
        lost.retain(|_, at| at.elapsed() < LOST_FOR);
        lost.keys().copied().collect()
    }

    fn lost(&self, fp: Fingerprint) {
        if let Ok(mut lost) = self.inner.lost.lock() {
            lost.insert(fp, Instant::now());
        }
    }

    async fn link_to(&self, addr: SocketAddr, fp: Fingerprint) -> Result<LinkId, RelayError> {
        let mut dialled = self.inner.dialled.lock().await;
        if let Some((id, conn)) = dialled.get(&fp)
            && conn.close_reason().is_none()
        {
            return Ok(*id);
        }
        let tls = tls::client_config_with(&self.inner.identity, fp, self.inner.ca.clone())
            .map_err(|e| RelayError::Dial(addr, e.to_string()))?;
        let quic = QuicClientConfig::try_from(tls).map_err(|e| RelayError::Dial(addr, e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic));
        client.transport_config(transport());
        let mut last = String::new();
        for attempt in 0..DIAL_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let connecting = match self
                .inner
                .endpoint
                .connect_with(client.clone(), addr, tls::SERVER_NAME)
            {
                Ok(c) => c,
                Err(e) => return Err(RelayError::Dial(addr, e.to_string())),
            };
            match tokio::time::timeout(IDLE, connecting).await {
                Ok(Ok(conn)) => {
                    // The TLS handshake completes here before the peer has
                    // checked our certificate: its stream header confirms it.
                    let (ready, confirmed) = tokio::sync::oneshot::channel();
                    let id = self.open_link(conn.clone(), Some(ready)).await?;
                    match tokio::time::timeout(IDLE, confirmed).await {
                        Ok(Ok(())) => {
                            dialled.insert(fp, (id, conn));
                            return Ok(id);
                        }
                        _ => {
                            conn.close(CLOSE_DONE.into(), b"not confirmed");
                            last = conn
                                .close_reason()
                                .map_or_else(|| "peer did not confirm the link".into(), |r| r.to_string());
                        }
                    }
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "handshake timed out".into(),
            }
            debug!(%addr, attempt, error = %last, "relay dial failed");
        }
        Err(RelayError::Dial(addr, last))
    }

    /// Registers a connection with the gateway and starts its readers.
    async fn open_link(
        &self,
        conn: quinn::Connection,
        ready: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<LinkId, RelayError> {
        let id = LinkId(self.inner.next_link.fetch_add(1, Ordering::Relaxed));
        let (control, rx) = mpsc::channel(CONTROL_QUEUE);
        let peer = peer_fingerprint(&conn);
        self.inner
            .tx
            .send(Cmd::Up(
                id,
                LinkTx {
                    conn: conn.clone(),
                    control,
                },
                peer,
            ))
            .await
            .map_err(|_| RelayError::Stopped)?;
        self.inner.stats.links_opened.fetch_add(1, Ordering::Relaxed);
        info!(link = id.0, peer = %conn.remote_address(), "relay link up");
        let rt = &self.inner.rt;
        // Set once the peer's stream header arrived (it accepted us).
        let confirmed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        rt.spawn(write_control(conn.clone(), rx));
        rt.spawn(read_control(
            id,
            conn.clone(),
            self.clone(),
            ready,
            confirmed.clone(),
        ));
        rt.spawn(read_datagrams(id, conn.clone(), self.clone()));
        let relay = self.clone();
        rt.spawn(async move {
            let reason = conn.closed().await;
            info!(link = id.0, peer = %conn.remote_address(), %reason, "relay link down");
            relay.inner.stats.links_closed.fetch_add(1, Ordering::Relaxed);
            // An accepted link closed by the peer (stopping, or cut off) or
            // by silence: not a parent for a while. (A dial the peer refused
            // because its registry view lags is retried, not held against it.)
            let ours = matches!(reason, quinn::ConnectionError::LocallyClosed);
            if let (Some(fp), false, true) = (peer, ours, confirmed.load(Ordering::Relaxed)) {
                relay.lost(fp);
            }
            if let Ok(mut r) = relay.inner.routed.lock() {
                r.retain(|_, l| *l != id);
            }
            let _ = relay.inner.tx.send(Cmd::Down(id)).await;
        });
        Ok(id)
    }

    /// A decoded frame from a link; `Err` closes that link. Media is queued
    /// for the gateway while its queue has room (else dropped and counted);
    /// a control message is returned for the stream's reader to await.
    fn received(
        &self,
        link: LinkId,
        conn: &quinn::Connection,
        frame: &[u8],
        media: bool,
    ) -> Result<Option<Message>, ()> {
        let stats = &self.inner.stats;
        stats.frames_in.fetch_add(1, Ordering::Relaxed);
        stats.bytes_in.fetch_add(frame.len() as u64, Ordering::Relaxed);
        if let Some(us) = wire::residence(frame) {
            let half_rtt = u64::try_from(conn.rtt().as_micros() / 2).unwrap_or(u64::MAX);
            stats.hop.observe_us(u64::from(us).saturating_add(half_rtt));
        }
        let msg = match wire::decode(frame, Instant::now()) {
            Ok(m) => m,
            Err(e) => {
                warn!(link = link.0, peer = %conn.remote_address(), error = %e, "bad relay frame, closing the link");
                stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                conn.close(CLOSE_BAD_FRAME.into(), b"bad frame");
                return Err(());
            }
        };
        if media && !msg.is_media() {
            warn!(link = link.0, "control message in a datagram, closing the link");
            stats.bad_frames.fetch_add(1, Ordering::Relaxed);
            conn.close(CLOSE_BAD_FRAME.into(), b"control in a datagram");
            return Err(());
        }
        if !msg.is_media() {
            // Control is never dropped: the stream's reader waits for room.
            return Ok(Some(msg));
        }
        match self.inner.tx.try_send(Cmd::Frame(link, msg)) {
            Ok(()) => Ok(None),
            Err(mpsc::error::TrySendError::Full(_)) => {
                stats.dropped_in.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
        }
    }

    /// How `room` crosses this node's links, for `/v1/rooms/{room}`:
    /// `{"parent": {"peer", "layers"}, "children": [{"peer", "layers"}]}`,
    /// a layer as `[source, track, layer]` in the origin's numbering.
    pub async fn room_links(&self, room: &RoomId) -> serde_json::Value {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.inner.tx.send(Cmd::Links(room.clone(), tx)).await.is_err() {
            return serde_json::Value::Null;
        }
        rx.await.unwrap_or_default()
    }

    /// Closes every link (node shutdown).
    pub fn close(&self) {
        self.inner.endpoint.close(CLOSE_DONE.into(), b"node stopping");
    }
}

/// The SHA-256 of the certificate the peer presented.
fn peer_fingerprint(conn: &quinn::Connection) -> Option<Fingerprint> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    certs.first().map(Fingerprint::of)
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE).ok());
    t.keep_alive_interval(Some(IDLE / 4));
    // One stream each way carries control; peers open no others.
    t.max_concurrent_uni_streams(1u8.into());
    t.max_concurrent_bidi_streams(0u8.into());
    t.datagram_receive_buffer_size(Some(4 << 20));
    t.datagram_send_buffer_size(4 << 20);
    Arc::new(t)
}

async fn accept(relay: Relay) {
    while let Some(incoming) = relay.inner.endpoint.accept().await {
        let relay = relay.clone();
        let rt = relay.inner.rt.clone();
        rt.spawn(async move {
            let peer = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    let _ = relay.open_link(conn, None).await;
                }
                Err(e) => {
                    relay.inner.stats.refused_peers.fetch_add(1, Ordering::Relaxed);
                    warn!(%peer, error = %e, "relay connection refused");
                }
            }
        });
    }
}

async fn write_control(conn: quinn::Connection, mut rx: mpsc::Receiver<Bytes>) {
    let mut stream = match conn.open_uni().await {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "cannot open the relay control stream");
            return;
        }
    };
    if stream.write_all(&STREAM_HEADER).await.is_err() {
        return;
    }
    while let Some(frame) = rx.recv().await {
        if stream.write_all(&frame).await.is_err() {
            return;
        }
    }
    let _ = stream.finish();
}

async fn read_control(
    link: LinkId,
    conn: quinn::Connection,
    relay: Relay,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
    confirmed: Arc<std::sync::atomic::AtomicBool>,
) {
    let Ok(mut stream) = conn.accept_uni().await else {
        return;
    };
    let mut header = [0u8; STREAM_HEADER.len()];
    if stream.read_exact(&mut header).await.is_err() {
        return;
    }
    if header != STREAM_HEADER {
        relay.inner.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
        warn!(
            link = link.0,
            ?header,
            "relay stream of another protocol or version, closing the link"
        );
        conn.close(CLOSE_BAD_FRAME.into(), b"bad frame: stream header");
        return;
    }
    confirmed.store(true, Ordering::Relaxed);
    if let Some(ready) = ready {
        let _ = ready.send(());
    }
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let len = usize::from(u16::from_be_bytes(len));
        if len > MAX_FRAME {
            relay.inner.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
            warn!(link = link.0, len, "oversized relay frame, closing the link");
            conn.close(CLOSE_BAD_FRAME.into(), b"oversized frame");
            return;
        }
        if stream.read_exact(&mut buf[..len]).await.is_err() {
            return;
        }
        match relay.received(link, &conn, &buf[..len], false) {
            Ok(Some(msg)) => {
                if relay.inner.tx.send(Cmd::Frame(link, msg)).await.is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(()) => return,
        }
    }
}

async fn read_datagrams(link: LinkId, conn: quinn::Connection, relay: Relay) {
    while let Ok(d) = conn.read_datagram().await {
        if relay.received(link, &conn, &d, true).is_err() {
            return;
        }
    }
}

/// The gateway task: worker inboxes and link frames in, worker inboxes and
/// links out.
async fn run_gateway(
    mut gateway: Gateway,
    inboxes: Arc<[Arc<Inbox>]>,
    mut rx: mpsc::Receiver<Cmd>,
    stats: Arc<RelayStats>,
    routed: Arc<Mutex<HashMap<Topic, LinkId>>>,
) {
    let me = gateway.id();
    let Some(inbox) = inboxes.get(me.0).cloned() else {
        return;
    };
    let mut links: HashMap<LinkId, LinkTx> = HashMap::new();
    let mut taken = Vec::new();
    let mut outbox: Vec<Vec<Message>> = (0..me.0).map(|_| Vec::new()).collect();
    let mut buf = Vec::with_capacity(2048);
    let mut tick = tokio::time::interval(crate::gateway::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = inbox.notified() => {}
            _ = tick.tick() => gateway.tick(),
            cmd = rx.recv() => match cmd {
                Some(cmd) => handle(&mut gateway, &mut links, cmd),
                None => return,
            },
        }
        // What else is queued, a bounded amount per turn.
        for _ in 0..256 {
            match rx.try_recv() {
                Ok(cmd) => handle(&mut gateway, &mut links, cmd),
                Err(_) => break,
            }
        }
        if inbox.take(&mut taken) {
            for (from, msg) in taken.drain(..) {
                gateway.handle_worker(from, msg);
            }
        }
        while let Some(out) = gateway.poll_output() {
            match out {
                GatewayOutput::Worker(w, msg) => {
                    if let Some(b) = outbox.get_mut(w.0) {
                        b.push(msg);
                    }
                }
                GatewayOutput::Link(l, msg) => {
                    let Some(tx) = links.get(&l) else { continue };
                    if !send(tx, &msg, &mut buf, &stats) {
                        // Cut off: nothing more is queued for it.
                        links.remove(&l);
                    }
                }
                GatewayOutput::Unroute(topic) => {
                    if let Ok(mut r) = routed.lock() {
                        r.remove(&topic);
                    }
                }
            }
        }
        for (w, batch) in outbox.iter_mut().enumerate() {
            if !batch.is_empty() {
                let handed = inboxes[w].push(me, batch);
                stats.dropped_workers.fetch_add(handed.dropped, Ordering::Relaxed);
            }
        }
        let (up, down) = gateway.link_counts();
        stats.upstream_rooms.store(up as u64, Ordering::Relaxed);
        stats.downstream_links.store(down as u64, Ordering::Relaxed);
        stats.refused_watches.store(gateway.refused(), Ordering::Relaxed);
        let (nacked, resent) = gateway.repairs();
        stats.nacked.store(nacked, Ordering::Relaxed);
        stats.retransmissions.store(resent, Ordering::Relaxed);
        stats.keyframe_replays.store(gateway.replays(), Ordering::Relaxed);
        let (loops, reparents) = gateway.tree_events();
        stats.loops.store(loops, Ordering::Relaxed);
        stats.reparents.store(reparents, Ordering::Relaxed);
    }
}

fn handle(gateway: &mut Gateway, links: &mut HashMap<LinkId, LinkTx>, cmd: Cmd) {
    match cmd {
        Cmd::Links(room, reply) => {
            let r = gateway.room_links(&room);
            let link = |(l, layers): &crate::gateway::Carried| {
                let peer = links.get(l).map(|t| t.conn.remote_address().to_string());
                let layers: Vec<[u64; 3]> = layers
                    .iter()
                    .map(|&(s, t, l)| [s.0, u64::from(t), u64::from(l)])
                    .collect();
                serde_json::json!({ "peer": peer, "layers": layers })
            };
            let _ = reply.send(serde_json::json!({
                "parents": r.parents.iter().map(link).collect::<Vec<_>>(),
                "children": r.children.iter().map(link).collect::<Vec<_>>(),
            }));
        }
        Cmd::Route(topic, link) if links.contains_key(&link) => gateway.route(topic, link),
        Cmd::Route(topic, link) => debug!(%topic, link = link.0, "route over a closed link ignored"),
        Cmd::Drop(topic) => gateway.drop_topic(&topic),
        Cmd::Unrouted(reply) => {
            let _ = reply.send(gateway.unrouted());
        }
        Cmd::Up(link, tx, peer) => {
            links.insert(link, tx);
            if let Some(fp) = peer {
                gateway.link_tag(link, fp.tag());
            }
        }
        Cmd::Down(link) => {
            links.remove(&link);
            gateway.link_down(link);
        }
        Cmd::Frame(link, msg) if links.contains_key(&link) => gateway.handle_link(link, msg),
        Cmd::Frame(..) => {}
    }
}

/// One message onto a link: media as a datagram when it fits, the rest
/// (and media too large) on the control stream. `false`: the peer does not
/// read and its link was closed.
fn send(tx: &LinkTx, msg: &Message, buf: &mut Vec<u8>, stats: &RelayStats) -> bool {
    buf.clear();
    wire::encode(msg, buf);
    if let Message::Media { packet, .. } = msg {
        let us = u32::try_from(packet.arrival.elapsed().as_micros()).unwrap_or(u32::MAX);
        wire::stamp_residence(buf, us);
    }
    stats.frames_out.fetch_add(1, Ordering::Relaxed);
    stats.bytes_out.fetch_add(buf.len() as u64, Ordering::Relaxed);
    if msg.is_media() && tx.conn.max_datagram_size().is_some_and(|max| buf.len() <= max) {
        // A full send buffer drops the oldest datagram: bounded, and media.
        let _ = tx.conn.send_datagram(Bytes::copy_from_slice(buf));
        return true;
    }
    let mut frame = Vec::with_capacity(buf.len() + 2);
    frame.extend_from_slice(&(buf.len() as u16).to_be_bytes());
    frame.extend_from_slice(buf);
    match tx.control.try_send(Bytes::from(frame)) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => true,
        Err(mpsc::error::TrySendError::Full(_)) if msg.is_media() => {
            stats.dropped_in.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            warn!(peer = %tx.conn.remote_address(), "relay peer does not read its control stream, closing the link");
            stats.slow_peers.fetch_add(1, Ordering::Relaxed);
            tx.conn.close(CLOSE_SLOW.into(), b"control stream not read");
            false
        }
    }
}
