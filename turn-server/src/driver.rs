//! The tokio driver: sockets, the clock and the OS RNG around the Sans-IO
//! [`Server`].
//!
//! One task owns the core, the client UDP socket (batched receive with
//! `quinn-udp`) and every relay socket. A relay socket's readiness waker
//! queues its address on a shared ready list and wakes the worker, which
//! reads only the sockets on that list straight into its own buffer: no task,
//! channel hop, copy or allocation per peer datagram. TCP/TLS connections
//! each have a small reader task that moves frames to the core over one
//! bounded channel.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quinn_udp::{RecvMeta, UdpSocketState};
use rand::Rng as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, trace, warn};

use crate::config::Config;
use crate::core::{
    AllocationId, Destination, Event, Family, FiveTuple, Now, Server, Stats, Transport, stream_frame_len,
};
use crate::metrics;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("UDP socket: {0}")]
    Udp(io::Error),
}

/// Addresses the server actually listens on (ports resolved when 0 was
/// asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddrs {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

/// A server whose listeners are bound but not yet serving.
pub struct Bound {
    config: Config,
    udp: UdpSocket,
    tcp: TcpListener,
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    metrics: Option<TcpListener>,
    local: LocalAddrs,
}

/// Binds every listener named in `config`.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let (udp, tcp) = bind_udp_tcp(config.listen)?;
    let tls = match &config.tls {
        Some(tls) => {
            let acceptor = tls_acceptor(&tls.cert, &tls.key)?;
            let listener = TcpListener::bind(tls.listen)
                .await
                .map_err(|source| Error::Bind {
                    what: "TLS",
                    addr: tls.listen,
                    source,
                })?;
            Some((listener, acceptor))
        }
        None => None,
    };
    let metrics = match config.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| Error::Bind {
            what: "metrics",
            addr,
            source,
        })?),
        None => None,
    };
    let local = LocalAddrs {
        udp: udp.local_addr().map_err(Error::Udp)?,
        tcp: tcp.local_addr().map_err(Error::Udp)?,
        tls: tls.as_ref().and_then(|(l, _)| l.local_addr().ok()),
        metrics: metrics.as_ref().and_then(|l| l.local_addr().ok()),
    };
    Ok(Bound {
        config,
        udp,
        tcp,
        tls,
        metrics,
        local,
    })
}

/// Binds and serves until `shutdown` completes: the embedding entry point.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}

impl Bound {
    pub fn local_addrs(&self) -> LocalAddrs {
        self.local
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let Bound {
            config,
            udp,
            tcp,
            tls,
            metrics,
            local,
        } = self;
        let now = Instant::now();
        let mut seed = [0u8; 32];
        rand::rng().fill(&mut seed);
        let mut server_cfg = config.server.clone();
        let advertised_ip = config.external_ip.unwrap_or(config.relay_ip);
        let mut own = vec![local.udp, local.tcp];
        own.extend(local.tls);
        server_cfg
            .peer_filter
            .set_own_addresses(own, (advertised_ip, config.relay_ports.0, config.relay_ports.1));
        let core = Server::new(server_cfg, seed, now);
        let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
        let (stats_tx, stats_rx) = watch::channel(Stats::default());

        let mut tasks = Vec::new();
        let limit = Arc::new(Semaphore::new(config.max_connections));
        tasks.push(AbortOnDrop(tokio::spawn(accept_loop(
            tcp,
            None,
            Transport::Tcp,
            tx.clone(),
            limit.clone(),
        ))));
        if let Some((listener, acceptor)) = tls {
            tasks.push(AbortOnDrop(tokio::spawn(accept_loop(
                listener,
                Some(acceptor),
                Transport::Tls,
                tx.clone(),
                limit,
            ))));
        }
        if let Some(listener) = metrics {
            tasks.push(AbortOnDrop(tokio::spawn(metrics::serve(listener, stats_rx))));
        }
        let state = UdpSocketState::new((&udp).into()).map_err(Error::Udp)?;
        info!(udp = %local.udp, tcp = %local.tcp, tls = ?local.tls, metrics = ?local.metrics, "turn-server listening");
        let mut worker = Worker {
            core,
            udp,
            udp_state: state,
            local,
            relay_ip: config.relay_ip,
            advertised_ip,
            relay_ports: config.relay_ports,
            relays: HashMap::new(),
            ready: Arc::new(ReadyList::default()),
            streams: HashMap::new(),
            _tx: tx,
            stats: stats_tx,
            send_errors: 0,
        };
        worker.run(rx, shutdown).await
    }
}

/// Frames and datagrams queued for the core before new ones are dropped.
const INBOUND_CAPACITY: usize = 8192;
/// A stream client must send its first frame this soon.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Random relay ports tried before scanning the range.
const RANDOM_PORT_ATTEMPTS: usize = 16;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// `recvmmsg` batches read from one relay socket before the worker moves
/// on, so one busy peer cannot starve the rest.
const RELAY_READ_ROUNDS: usize = 4;

enum Inbound {
    Opened {
        five: FiveTuple,
        writer: mpsc::Sender<Vec<u8>>,
    },
    Frame {
        five: FiveTuple,
        frame: Vec<u8>,
    },
    Closed {
        five: FiveTuple,
    },
}

struct Relay {
    socket: UdpSocket,
    state: UdpSocketState,
    /// Queues this relay on [`ReadyList`] when its socket turns readable.
    waker: Waker,
}

/// Relay sockets that turned readable since the worker last looked. The
/// wakers run on the runtime's I/O driver, the worker drains the list; the
/// lock is held for one push or one swap.
#[derive(Default)]
struct ReadyList {
    relays: Mutex<Vec<SocketAddr>>,
    notify: Notify,
}

impl ReadyList {
    fn push(&self, relay: SocketAddr) {
        let mut list = self.relays.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = list.is_empty();
        list.push(relay);
        drop(list);
        if was_empty {
            self.notify.notify_one();
        }
    }

    /// Moves the queued relays into `out` (emptied first).
    fn take(&self, out: &mut Vec<SocketAddr>) {
        out.clear();
        let mut list = self.relays.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *list, out);
    }
}

/// The waker registered on one relay socket's read readiness.
struct RelayWake {
    relay: SocketAddr,
    ready: Arc<ReadyList>,
}

impl Wake for RelayWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.push(self.relay);
    }
}

struct Worker {
    core: Server,
    udp: UdpSocket,
    udp_state: UdpSocketState,
    local: LocalAddrs,
    relay_ip: IpAddr,
    advertised_ip: IpAddr,
    relay_ports: (u16, u16),
    /// By advertised relay address.
    relays: HashMap<SocketAddr, Relay>,
    ready: Arc<ReadyList>,
    streams: HashMap<FiveTuple, mpsc::Sender<Vec<u8>>>,
    /// Keeps the inbound channel open whatever the accept loops do.
    _tx: mpsc::Sender<Inbound>,
    stats: watch::Sender<Stats>,
    send_errors: u64,
}

impl Worker {
    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<Inbound>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        tokio::pin!(shutdown);
        let gro = self.udp_state.gro_segments().max(1);
        let buf_len = (MAX_DATAGRAM).max(1500 * gro);
        let batch = quinn_udp::BATCH_SIZE.min(32);
        let mut bufs = vec![0u8; buf_len * batch];
        let mut iovs: Vec<IoSliceMut<'_>> = bufs.chunks_mut(buf_len).map(IoSliceMut::new).collect();
        let mut metas = vec![RecvMeta::default(); batch];
        let mut woken = Vec::new();
        let ready = self.ready.clone();
        let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(sleep);
        loop {
            let deadline = self.core.poll_timeout();
            if let Some(deadline) = deadline {
                sleep.as_mut().reset(deadline.into());
            }
            tokio::select! {
                () = &mut shutdown => break,
                r = self.udp.readable() => {
                    r.map_err(Error::Udp)?;
                    self.read_udp(&mut iovs, &mut metas);
                }
                () = ready.notify.notified() => {
                    self.read_relays(&mut woken, &mut iovs, &mut metas);
                }
                msg = rx.recv() => {
                    // `self._tx` keeps the channel open; `None` cannot happen.
                    let Some(msg) = msg else { break };
                    let now = clock();
                    self.handle_inbound(now, msg);
                    for _ in 0..256 {
                        let Ok(msg) = rx.try_recv() else { break };
                        self.handle_inbound(now, msg);
                    }
                }
                () = &mut sleep, if deadline.is_some() => {
                    self.core.handle_timeout(clock());
                }
            }
            self.drain();
        }
        info!("turn-server stopped");
        Ok(())
    }

    fn read_udp(&mut self, iovs: &mut [IoSliceMut<'_>], metas: &mut [RecvMeta]) {
        let five_base = self.local.udp;
        // Bounded so a flood on the client port cannot starve relay traffic.
        for _ in 0..8 {
            let (n, empty) = match recv_batch(&self.udp, &self.udp_state, iovs, metas) {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "udp recv");
                    return;
                }
            };
            let now = clock();
            for (meta, iov) in metas.iter().zip(iovs.iter()).take(n) {
                let five = FiveTuple {
                    client: meta.addr,
                    server: five_base,
                    transport: Transport::Udp,
                };
                let stride = meta.stride.max(1);
                for datagram in iov[..meta.len].chunks(stride) {
                    self.core.handle_client(now, five, datagram);
                }
            }
            self.drain();
            if empty {
                return;
            }
        }
    }

    /// Reads the relay sockets whose wakers fired, each until it would block
    /// (or its rounds run out), handing the core slices of the batch buffers.
    fn read_relays(
        &mut self,
        woken: &mut Vec<SocketAddr>,
        iovs: &mut [IoSliceMut<'_>],
        metas: &mut [RecvMeta],
    ) {
        self.ready.take(woken);
        let now = clock();
        for &relay in woken.iter() {
            let Some(r) = self.relays.get(&relay) else {
                continue;
            };
            // Stays true when the rounds run out before the socket is empty.
            let mut again = true;
            for _ in 0..RELAY_READ_ROUNDS {
                let (n, empty) = match recv_batch(&r.socket, &r.state, iovs, metas) {
                    Ok(x) => x,
                    // ICMP errors surface as recv errors on unconnected sockets.
                    Err(e) => {
                        trace!(%relay, error = %e, "relay recv");
                        continue;
                    }
                };
                for (meta, iov) in metas.iter().zip(iovs.iter()).take(n) {
                    for datagram in iov[..meta.len].chunks(meta.stride.max(1)) {
                        self.core.handle_peer(now, relay, meta.addr, datagram);
                    }
                }
                if empty {
                    // Re-arms the waker; Ready means data raced in.
                    let mut cx = Context::from_waker(&r.waker);
                    again = r.socket.poll_recv_ready(&mut cx).is_ready();
                    break;
                }
            }
            if again {
                self.ready.push(relay);
            }
            // Per relay, so the core's transmit queue stays one relay's
            // rounds long however many relays woke.
            self.drain();
        }
    }

    fn handle_inbound(&mut self, now: Now, msg: Inbound) {
        match msg {
            Inbound::Opened { five, writer } => {
                self.streams.insert(five, writer);
            }
            Inbound::Frame { five, frame } => self.core.handle_client(now, five, &frame),
            Inbound::Closed { five } => {
                self.streams.remove(&five);
                self.core.handle_connection_closed(five);
            }
        }
    }

    /// Performs everything the core asked for, until it asks for nothing.
    fn drain(&mut self) {
        loop {
            let mut idle = true;
            while let Some(t) = self.core.poll_transmit() {
                idle = false;
                match t.destination {
                    Destination::Client(five) if five.transport == Transport::Udp => {
                        self.send_udp(five.client, &t.payload);
                    }
                    Destination::Client(five) => {
                        if let Some(w) = self.streams.get(&five)
                            && w.try_send(t.payload).is_err()
                        {
                            self.send_errors += 1;
                        }
                    }
                    Destination::Peer { relay, peer } => {
                        let Some(r) = self.relays.get(&relay) else {
                            continue;
                        };
                        if let Err(e) = r.socket.try_send_to(&t.payload, peer) {
                            trace!(error = %e, "relay send");
                            self.send_errors += 1;
                        }
                    }
                }
            }
            while let Some(ev) = self.core.poll_event() {
                idle = false;
                match ev {
                    Event::BindRelay {
                        allocation,
                        family,
                        even_port,
                    } => {
                        let result = self.bind_relay(allocation, family, even_port);
                        self.core.handle_relay_bound(clock(), allocation, result);
                    }
                    Event::ReleaseRelay { relay, .. } => {
                        self.relays.remove(&relay);
                    }
                }
            }
            if idle {
                break;
            }
        }
        self.stats.send_if_modified(|s| {
            let new = self.core.stats();
            let changed = *s != new;
            *s = new;
            changed
        });
    }

    fn send_udp(&mut self, to: SocketAddr, payload: &[u8]) {
        let transmit = quinn_udp::Transmit {
            destination: to,
            ecn: None,
            contents: payload,
            segment_size: None,
            src_ip: None,
        };
        let res = self.udp.try_io(tokio::io::Interest::WRITABLE, || {
            self.udp_state.try_send((&self.udp).into(), &transmit)
        });
        if let Err(e) = res {
            trace!(error = %e, "udp send");
            self.send_errors += 1;
        }
    }

    fn bind_relay(
        &mut self,
        allocation: AllocationId,
        family: Family,
        even_port: bool,
    ) -> Result<SocketAddr, ()> {
        let ip = self.relay_ip;
        if (family == Family::V4) != ip.is_ipv4() {
            return Err(());
        }
        let (lo, hi) = self.relay_ports;
        let mut rng = rand::rng();
        let start = rng.random_range(lo..=hi);
        let random: Vec<u16> = (0..RANDOM_PORT_ATTEMPTS)
            .map(|_| rng.random_range(lo..=hi))
            .collect();
        let scan = (0..=u32::from(hi - lo))
            .map(move |i| lo + ((u32::from(start - lo) + i) % (u32::from(hi - lo) + 1)) as u16);
        for port in random.into_iter().chain(scan) {
            if even_port && port % 2 == 1 {
                continue;
            }
            let advertised = SocketAddr::new(self.advertised_ip, port);
            if self.relays.contains_key(&advertised) {
                continue;
            }
            let Ok(socket) = std::net::UdpSocket::bind(SocketAddr::new(ip, port)) else {
                continue;
            };
            if socket.set_nonblocking(true).is_err() {
                return Err(());
            }
            let Ok(socket) = UdpSocket::from_std(socket) else {
                return Err(());
            };
            let waker = Waker::from(Arc::new(RelayWake {
                relay: advertised,
                ready: self.ready.clone(),
            }));
            // The first read pass registers the waker.
            self.ready.push(advertised);
            let Ok(state) = UdpSocketState::new((&socket).into()) else {
                return Err(());
            };
            self.relays.insert(advertised, Relay { socket, state, waker });
            return Ok(advertised);
        }
        warn!(%allocation, "no free relay port");
        Err(())
    }
}

/// One `recvmmsg` batch: the datagram count, and whether the socket is now
/// empty (tokio's readiness cleared).
///
/// A short batch means the queue is empty: the closure reports WouldBlock to
/// `try_io` after keeping the count, so tokio clears readiness without a
/// second, empty `recvmmsg`. Tokio clears only if no readiness event arrived
/// since this readiness was observed (it compares the event tick), so a
/// datagram landing meanwhile still wakes the worker.
fn recv_batch(
    socket: &UdpSocket,
    state: &UdpSocketState,
    iovs: &mut [IoSliceMut<'_>],
    metas: &mut [RecvMeta],
) -> io::Result<(usize, bool)> {
    let mut short = None;
    let res = socket.try_io(tokio::io::Interest::READABLE, || {
        let n = state.recv(socket.into(), iovs, metas)?;
        if n < iovs.len() {
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (res, short) {
        (_, Some(n)) => Ok((n, true)),
        (Ok(n), None) => Ok((n, false)),
        (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => Ok((0, true)),
        (Err(e), None) => Err(e),
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    transport: Transport,
    tx: mpsc::Sender<Inbound>,
    limit: Arc<Semaphore>,
) {
    let Ok(server) = listener.local_addr() else {
        return;
    };
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            debug!("connection limit reached");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let five = FiveTuple {
            client,
            server,
            transport,
        };
        let tx = tx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(FIRST_FRAME_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_stream(stream, five, tx).await,
                        _ => debug!("TLS handshake failed"),
                    }
                }
                None => serve_stream(stream, five, tx).await,
            }
        });
    }
}

async fn serve_stream<S>(stream: S, five: FiveTuple, tx: mpsc::Sender<Inbound>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(256);
    if tx.send(Inbound::Opened { five, writer: wtx }).await.is_err() {
        return;
    }
    let writer = AbortOnDrop(tokio::spawn(async move {
        while let Some(buf) = wrx.recv().await {
            if wr.write_all(&buf).await.is_err() {
                break;
            }
        }
    }));
    let mut first = true;
    loop {
        let mut header = [0u8; 4];
        let read = rd.read_exact(&mut header);
        let ok = if first {
            matches!(tokio::time::timeout(FIRST_FRAME_TIMEOUT, read).await, Ok(Ok(_)))
        } else {
            read.await.is_ok()
        };
        if !ok {
            break;
        }
        first = false;
        let Ok(len) = stream_frame_len(header) else {
            debug!("stream carried neither STUN nor ChannelData; closing");
            break;
        };
        let mut frame = vec![0u8; len];
        frame[..4].copy_from_slice(&header);
        if rd.read_exact(&mut frame[4..]).await.is_err() {
            break;
        }
        if tx.send(Inbound::Frame { five, frame }).await.is_err() {
            break;
        }
    }
    let _ = tx.send(Inbound::Closed { five }).await;
    drop(writer);
}

fn bind_udp_tcp(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), Error> {
    // With port 0, UDP picks the port and TCP must get the same one; retry
    // if something else holds it on TCP.
    let attempts = if listen.port() == 0 { 20 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = udp_socket(listen).map_err(|source| Error::Bind {
            what: "UDP",
            addr: listen,
            source,
        })?;
        let port = udp.local_addr().map_err(Error::Udp)?.port();
        let tcp_addr = SocketAddr::new(listen.ip(), port);
        match tcp_listener(tcp_addr) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => {
                last = Some(Error::Bind {
                    what: "TCP",
                    addr: tcp_addr,
                    source,
                })
            }
        }
    }
    Err(last.expect("at least one attempt"))
}

fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Generous buffers absorb bursts while the core works through a batch.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<tokio_rustls::TlsAcceptor, Error> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls(format!("certificate {}: {e}", cert.display())))?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| Error::Tls(format!("key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The driver's one clock reading.
fn clock() -> Now {
    Now {
        instant: Instant::now(),
        unix_secs: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
