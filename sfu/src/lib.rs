//! WAVE's media node: the Sans-IO engine over str0m, the UDP workers that
//! drive it, and `run`, which composes a whole node.

pub mod config;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod ingest;
pub mod node;
pub mod sendq;
pub mod stats;
pub mod turn;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};
use wave_vocab::RoomId;

use crate::config::NodeConfig;
use crate::engine::EngineConfig;
use crate::node::Node;
use crate::turn::{EmbeddedTurn, RestIceServers};

/// What a running node exposes to whoever started it (tests, the binary).
/// `sfu serve` prints it as one JSON line on stdout once it listens
/// (`{"http":"127.0.0.1:8080","media":["127.0.0.1:40000"],"turn":null}`):
/// the one line a script starting a node on port 0 reads back.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Bound {
    pub http: SocketAddr,
    pub media: Vec<SocketAddr>,
    /// The embedded TURN server's UDP (and TCP, same port) listener.
    pub turn: Option<SocketAddr>,
    /// The QUIC relay endpoint other nodes dial, when the node relays.
    #[serde(default)]
    pub relay: Option<SocketAddr>,
    /// The RTMP ingest listener (`--rtmp-listen`).
    #[serde(default)]
    pub rtmp: Option<SocketAddr>,
}

/// Runs one node: media workers, then the HTTP front door. When `drain`
/// resolves the node drains (new sessions 503, `/healthz` 503) until its
/// sessions end, [`NodeConfig::drain_timeout`] passes or `stop` resolves;
/// `stop` alone stops at once. Then it leaves the registry and closes every
/// peer (RTCP BYE, DTLS close_notify) before this returns. `on_bound` learns
/// the actual addresses (port 0 picks).
pub async fn run(
    config: NodeConfig,
    drain: impl Future<Output = ()>,
    stop: impl Future<Output = ()>,
    on_bound: impl FnOnce(Bound),
) -> anyhow::Result<()> {
    config.check()?;
    // A certificate that does not load stops the node before it binds anything.
    let tls = match &config.tls {
        Some(files) => Some(signaling::tls::ReloadingCert::load(files.clone()).map_err(anyhow::Error::msg)?),
        None => None,
    };
    wave_dtls::select(config.dtls);
    if config.auth_secret.is_none() {
        warn!(http = %config.http, "no --auth-secret: the node is open to anyone who can reach loopback");
    }
    let engine = EngineConfig {
        ice_lite: config.ice_lite,
        max_peers: config.max_peers,
        max_room_peers: config.max_room_peers,
        initial_bwe_bps: config.initial_bwe_bps,
        seed: rand::random(),
        hls: config.hls,
        hls_linger: config.hls_linger,
        hls_ladder: config.hls_ladder,
        keyframe_cache: config.keyframe_cache,
        // The AAC transcoders and ladders run on threads of their own, off
        // the media workers.
        hls_codecs: Arc::new(hls_bridge::runner::ThreadHost),
        ..EngineConfig::default()
    };
    let hls = config.hls.map(|_| {
        Arc::new(hls_bridge::http::HlsService::new(
            hls_bridge::http::HlsStore::new(),
            hls_access(&config),
        ))
    });
    let bind = SocketAddr::new(config.media_ip, config.media_port);
    let http_sessions = Arc::new(std::sync::OnceLock::new());
    let node = Arc::new(Node::start(
        config.workers,
        bind,
        config.public_ip,
        engine,
        config.max_peers,
        http_sessions.clone(),
        hls,
        config.spread_viewers,
        config.cluster.relay,
        relay_pki(config.cluster.relay_pki.as_ref())?,
    )?);
    let media = node.media_addrs();
    let (mut turn, ice_server_source) = start_turn(&config, &media, &node).await?;
    let listener = tokio::net::TcpListener::bind(config.http).await?;
    let rtmp = match config.rtmp_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
        None => None,
    };
    let bound = Bound {
        http: listener.local_addr()?,
        media,
        turn: turn.as_ref().map(|t| t.local_addrs().udp),
        relay: node.relay().map(relay::Relay::local_addr),
        rtmp: rtmp
            .as_ref()
            .map(tokio::net::TcpListener::local_addr)
            .transpose()?,
    };
    info!(http = %bound.http, media = ?bound.media, turn = ?bound.turn, "node ready");
    on_bound(bound.clone());

    let http = signaling::HttpConfig {
        auth_secret: config.auth_secret.map(String::into_bytes),
        ice_servers: config.ice_servers,
        ice_server_source,
        chat: config.chat.clone(),
        hlsjs_dir: Some(config.hlsjs_dir.clone()),
        token_policy: config.token_policy.clone(),
        connection_limit: config.connection_limit,
        trusted_proxies: config.trusted_proxies.clone(),
        tls: tls.clone(),
        ..signaling::HttpConfig::default()
    };
    let relay = node
        .relay()
        .map(|r| (r, advertised_relay(r.local_addr(), config.public_ip)));
    let cluster = join_cluster(&config.cluster, &bound, tls.is_some(), config.max_peers, relay).await?;
    if let Some(relay) = node.relay() {
        tokio::spawn(trust_registry(cluster.clone(), relay.clone()));
        tokio::spawn(route_waiting(cluster.clone(), node.clone(), relay.clone()));
    }
    let pull_records = cluster
        .bus()
        .kv(ingest::records::BUCKET, ingest::records::RECORD_TTL)
        .await?;
    let pulls = Arc::new(ingest::rtsp::Pulls::new(
        Arc::downgrade(&node),
        cluster.clone(),
        pull_records,
        ingest::records::Sealer::new(http.auth_secret.as_deref()),
    ));
    node.set_pulls(pulls.clone());
    tokio::spawn(pulls.clone().run_records());
    let rtmp_auth = ingest::rtmp::RtmpAuth {
        secret: http.auth_secret.clone(),
        policy: config.token_policy.clone(),
    };
    let server = signaling::Server::new(node.clone(), http).with_cluster(cluster.clone());
    // Ends with the runtime; each publish's source leaves with its connection.
    if let Some(rtmp) = rtmp {
        let context = ingest::rtmp::RtmpContext {
            auth: rtmp_auth,
            cluster: cluster.clone(),
            drain: server.drain(),
        };
        info!(rtmp = ?bound.rtmp, "RTMP ingest listening");
        tokio::spawn(ingest::rtmp::serve(rtmp, node.clone(), context));
    }
    let _ = http_sessions.set(server.sessions());
    let (stop_heartbeats, heartbeats_stopped) = tokio::sync::oneshot::channel::<()>();
    let heartbeats = tokio::spawn(signaling::cluster::run_heartbeats(
        cluster,
        node.clone(),
        async move {
            let _ = heartbeats_stopped.await;
        },
    ));
    // TURN stops with the HTTP front door; its thread is joined below.
    let turn_stop = turn.as_mut().map(EmbeddedTurn::stop_handle);
    let (draining, sessions, drain_timeout) = (server.drain(), server.sessions(), config.drain_timeout);
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (watched, failure) = (node.clone(), failed.clone());
    let shutdown = async move {
        let mut stop = std::pin::pin!(stop);
        let drained = tokio::select! {
            () = drain => true,
            () = stop.as_mut() => false,
            // A dead worker: drain what the others hold, then exit non-zero
            // so that a supervisor restarts the node.
            () = watched.worker_down() => {
                failure.store(true, std::sync::atomic::Ordering::Relaxed);
                true
            }
        };
        if drained {
            drain_sessions(&draining, &sessions, drain_timeout, stop.as_mut()).await;
        }
        if let Some(stop) = turn_stop {
            stop.stop();
        }
    };
    server.serve(listener, shutdown).await?;
    // Pulls end here and are marked released: a live node adopts them.
    if tokio::time::timeout(Duration::from_millis(500), pulls.release())
        .await
        .is_err()
    {
        warn!("marking the pulls released timed out; they are adopted once this node has left");
    }
    // Leave the registry (drop this node and its claims) before closing peers.
    let _ = stop_heartbeats.send(());
    if tokio::time::timeout(Duration::from_millis(500), heartbeats)
        .await
        .is_err()
    {
        warn!("leaving the registry timed out; entries expire by themselves");
    }

    // Links close at once (the peers' mirrored sources end now, not at the idle timeout).
    if let Some(relay) = node.relay() {
        relay.close();
    }
    info!("closing peers");
    let closing = node.clone();
    let closed = tokio::time::timeout(Duration::from_millis(1500), async move {
        closing.shutdown().await;
        let _ = tokio::task::spawn_blocking(move || {
            closing.join();
            if let Some(t) = turn {
                t.join();
            }
        })
        .await;
    })
    .await;
    if closed.is_err() {
        warn!("workers did not stop in time");
    }
    if failed.load(std::sync::atomic::Ordering::Relaxed) {
        anyhow::bail!("a media worker panicked; the node drained and stopped");
    }
    Ok(())
}

/// Who may read `/hls/`: anyone with `--public-hls` or on an open node;
/// else a subscribe token for the room (`?token=`) or a signed URL token
/// (`--hls-secret`'s, or the ones the playlists carry). Without
/// `--hls-secret` the signing key is derived from `--auth-secret`.
fn hls_access(config: &NodeConfig) -> hls_bridge::http::HlsAccess {
    use hls_bridge::http::HlsAccess;
    if config.public_hls {
        return HlsAccess::public();
    }
    let access = match (&config.hls_secret, &config.auth_secret) {
        (Some(hls), _) => HlsAccess::signed(hls.clone().into_bytes()),
        (None, Some(auth)) => HlsAccess::signed_derived(auth.as_bytes()),
        (None, None) => return HlsAccess::public(),
    };
    let Some(secret) = config.auth_secret.clone().map(String::into_bytes) else {
        return access;
    };
    let policy = config.token_policy.clone();
    access.with_authorizer(move |room, token, now| {
        let room = signaling::RoomId::parse(room).ok_or("not a room name")?;
        let claims = signaling::auth::verify_with(&secret, &policy, token, now).map_err(|e| match e {
            signaling::auth::AuthError::Expired => "token expired",
            signaling::auth::AuthError::NotYetValid => "token not valid yet",
            signaling::auth::AuthError::WrongAudience => "token is for another audience",
            signaling::auth::AuthError::TooLong { .. } => "token lifetime is longer than this node allows",
            _ => "invalid token",
        })?;
        if !claims.allows(&room, signaling::auth::Grant::Subscribe) {
            return Err("token does not grant subscribe in this room");
        }
        Ok(claims.exp)
    })
}

/// Refuses new sessions and waits until the open ones have ended, `timeout`
/// has passed or `stop` resolves; returns at once when `timeout` is zero.
async fn drain_sessions(
    draining: &signaling::Drain,
    sessions: &signaling::Sessions,
    timeout: Duration,
    stop: Pin<&mut impl Future<Output = ()>>,
) {
    if timeout.is_zero() {
        return;
    }
    draining.start();
    info!(
        sessions = sessions.len(),
        ?timeout,
        "draining: new sessions get 503, open ones run until they end"
    );
    let ended = async {
        while !sessions.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        () = ended => info!("drained: every session has ended"),
        () = tokio::time::sleep(timeout) => info!(sessions = sessions.len(), "drain timeout: closing the open sessions"),
        () = stop => info!(sessions = sessions.len(), "second stop signal: closing the open sessions now"),
    }
}

/// The control plane: NATS when configured, else the in-process bus.
async fn join_cluster(
    args: &crate::config::ClusterArgs,
    bound: &Bound,
    https: bool,
    max_peers: usize,
    relay: Option<(&relay::Relay, SocketAddr)>,
) -> anyhow::Result<signaling::cluster::Cluster> {
    use signaling::bus::Bus;
    use signaling::cluster::{Cluster, ClusterConfig};
    let bus = match &args.nats {
        Some(opts) => Bus::connect(opts).await?,
        None => Bus::in_process(),
    };
    let http_url = args
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("{}://{}", if https { "https" } else { "http" }, bound.http));
    let mut config = ClusterConfig::new(args.node_id.clone(), http_url);
    config.media_addr = bound.media.first().map(ToString::to_string);
    config.max_peers = u32::try_from(max_peers).unwrap_or(u32::MAX);
    config.heartbeat = args.heartbeat;
    config.ttl = args.ttl;
    config.weight = args.weight;
    config.relay_fanout = args.relay_fanout;
    if let Some((relay, advertised)) = relay {
        config.relay_addr = Some(advertised.to_string());
        config.relay_fingerprint = Some(relay.fingerprint().to_string());
    }
    info!(node = %args.node_id, nats = bus.is_nats(), url = %config.http_url, "joining the control plane");
    Ok(Cluster::new(bus, config).await?)
}

/// The operator's relay certificate, key and cluster CA, read and checked.
fn relay_pki(
    files: Option<&crate::config::RelayPki>,
) -> anyhow::Result<Option<(relay::tls::Identity, Arc<rustls::RootCertStore>)>> {
    let Some(f) = files else { return Ok(None) };
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).map_err(|e| anyhow::anyhow!("{what} {}: {e}", p.display()))
    };
    let identity =
        relay::tls::Identity::from_pem(&read(&f.cert, "--relay-cert")?, &read(&f.key, "--relay-key")?)
            .map_err(anyhow::Error::msg)?;
    let roots = relay::tls::ca_roots(&read(&f.ca, "--relay-ca")?).map_err(anyhow::Error::msg)?;
    info!(fingerprint = %identity.fingerprint, "relay links checked against the cluster CA");
    Ok(Some((identity, roots)))
}

/// The relay address other nodes dial: the bound one, or with an
/// unspecified IP (`0.0.0.0`) the `--public-ip` at the same port.
fn advertised_relay(bound: SocketAddr, public_ip: Option<std::net::IpAddr>) -> SocketAddr {
    match (bound.ip().is_unspecified(), public_ip) {
        (true, Some(ip)) => SocketAddr::new(ip, bound.port()),
        (true, None) => {
            warn!(%bound, "the relay listens on an unspecified address and no --public-ip says where other nodes reach it: set --relay-listen or --public-ip");
            bound
        }
        (false, _) => bound,
    }
}

/// Keeps the relay's accepted certificates equal to the fingerprints the
/// registry lists for live nodes (refreshed at every heartbeat's view).
async fn trust_registry(cluster: signaling::cluster::Cluster, relay: relay::Relay) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let fingerprints = cluster
            .live_nodes()
            .into_iter()
            .filter(|n| n.id != *cluster.node_id())
            .filter_map(|n| n.relay_fingerprint?.parse().ok());
        relay.trust().set(fingerprints);
    }
}

/// Every quarter second: the rooms this node has viewers of, and the
/// streams other nodes watch here, are fed from every node with publishers
/// of the room (its claim holder and the nodes listing it as a second
/// origin), each stream through its parent in that stream's relay tree,
/// skipping nodes whose link just died. The registry is asked for a room's
/// claim only while one of its streams is not fed; a stream whose origin
/// no longer publishes the room is dropped then. While the registry is
/// unreachable the rooms wait and this retries.
async fn route_waiting(cluster: signaling::cluster::Cluster, node: Arc<Node>, relay: relay::Relay) {
    use signaling::MediaNode;
    let mut tick = tokio::time::interval(relay::gateway::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let me = cluster.node_id().clone();
    let tag_of = |n: &signaling::cluster::NodeInfo| -> Option<u64> {
        Some(
            n.relay_fingerprint
                .as_ref()?
                .parse::<relay::Fingerprint>()
                .ok()?
                .tag(),
        )
    };
    loop {
        tick.tick().await;
        let unrouted = relay.unrouted().await;
        let mut rooms: std::collections::BTreeSet<RoomId> = node
            .rooms()
            .await
            .into_iter()
            .filter(|r| !r.viewers.is_empty())
            .map(|r| r.room)
            .collect();
        rooms.extend(unrouted.iter().map(|t| t.room.clone()));
        for room in rooms {
            let waiting: Vec<&relay::Topic> = unrouted.iter().filter(|t| t.room == room).collect();
            let fed = !relay.routed_topics(&room).is_empty();
            // The claim holder: known here, or asked while a stream waits.
            let owner = if cluster.owns(&room) {
                Some(me.clone())
            } else if !waiting.is_empty() || !fed {
                match cluster.owner(&room).await {
                    Ok(claim) => claim.map(|c| c.node),
                    Err(_) => continue,
                }
            } else {
                None
            };
            let origins = cluster.origins(&room, owner.as_ref());
            let tags: Vec<u64> = origins.iter().filter_map(tag_of).collect();
            if owner.is_some() || !waiting.is_empty() {
                for topic in waiting.iter().filter(|t| !tags.contains(&t.origin)) {
                    info!(%room, origin = format!("{:016x}", topic.origin), "stream dropped: its node no longer publishes the room");
                    relay.drop_topic(topic).await;
                }
            }
            let avoid = node.unreachable_relays();
            for origin in origins.iter().filter(|o| o.id != me) {
                let (Some(tag), Some(source)) = (tag_of(origin), origin.relay_fingerprint.clone()) else {
                    continue;
                };
                if relay.is_routed(&relay::Topic::new(room.clone(), tag)) {
                    continue;
                }
                let Some(parent) = cluster.relay_parent(&room, &origin.id, &avoid) else {
                    continue;
                };
                let (Some(relay_addr), Some(fingerprint)) = (parent.relay_addr, parent.relay_fingerprint)
                else {
                    continue;
                };
                let via = signaling::Origin {
                    node: parent.id.to_string(),
                    relay_addr,
                    fingerprint,
                    source,
                };
                if crate::node::route(&relay, &room, &via).await.is_ok() {
                    info!(%room, parent = %via.node, origin = %origin.id, "room fed over the relay");
                    node.adopt(&room).await;
                }
            }
        }
    }
}

/// Starts the embedded TURN server (allow-listing the node's media
/// addresses, keeping its relay ports off them) and builds the source of
/// per-session credentials; `(None, None)` when the node advertises no TURN.
async fn start_turn(
    config: &NodeConfig,
    media: &[SocketAddr],
    node: &Arc<Node>,
) -> anyhow::Result<(Option<EmbeddedTurn>, Option<Arc<dyn signaling::IceServerSource>>)> {
    let Some(turn) = &config.turn else {
        return Ok((None, None));
    };
    let mut urls = turn.urls.clone();
    let embedded = match &turn.embedded {
        Some(e) => {
            let mut cfg = turn_server::Config::loopback(&e.realm, Some(&turn.secret));
            cfg.listen = e.listen;
            cfg.relay_ip = e.relay_ip;
            cfg.external_ip = config.public_ip;
            cfg.relay_ports = turn::relay_ports_avoiding(e.relay_ports, e.relay_ip, media);
            cfg.server.peer_filter = turn::media_allow_list(media, config.public_ip, e.relay_ip);
            let watched = node.clone();
            let server = EmbeddedTurn::start(cfg, Arc::new(move |_| watched.thread_down())).await?;
            if urls.is_empty() {
                let udp = server.local_addrs().udp;
                let host = match (udp.ip().is_unspecified(), config.public_ip) {
                    (false, _) => udp,
                    (true, Some(ip)) => SocketAddr::new(ip, udp.port()),
                    (true, None) => SocketAddr::new(e.relay_ip, udp.port()),
                };
                urls = vec![
                    format!("turn:{host}?transport=udp"),
                    format!("turn:{host}?transport=tcp"),
                ];
            }
            Some(server)
        }
        None => None,
    };
    info!(?urls, ttl = ?turn.ttl, embedded = embedded.is_some(), "advertising TURN");
    let source: Arc<dyn signaling::IceServerSource> =
        Arc::new(RestIceServers::new(turn.secret.clone(), urls, turn.ttl));
    Ok((embedded, Some(source)))
}
