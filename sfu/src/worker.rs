//! The thin driver around one [`Engine`]: a thread with its own current-thread
//! tokio runtime and UDP socket. It reads the clock, feeds datagrams (batched
//! with recvmmsg/GRO through quinn-udp), commands and timeouts to the engine,
//! and sends what the engine produced through a [`SendQueue`]: one
//! `sendmmsg(2)` (rustix) per batch of datagrams to different destinations,
//! GSO through quinn-udp where several datagrams of one size go to one
//! destination. What the socket does not take yet waits for it to be writable.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hls_bridge::http::HlsStore;

use quinn_udp::{RecvMeta, Transmit as UdpTransmit, UdpSocketState};
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use wave_vocab::{MediaError, SessionId};

use relay::{Inbox, Message as RelayMessage, WorkerId};

use crate::engine::{Command, Engine, EngineConfig, Event, HlsUpdate, Output, Reply, Transmit};
use crate::sendq::{Batch, MAX_BATCH, Message, SendQueue};
pub use crate::stats::WorkerStats;

/// What the control plane sends a worker.
pub struct Request {
    pub command: Command,
    pub reply: oneshot::Sender<Result<Reply, MediaError>>,
}

/// Every worker's inbox, indexed by worker: each worker hands its engine's
/// relay messages to the others through them (`relay::inproc`).
pub type RelayInboxes = Arc<[Arc<Inbox>]>;

/// The control plane's handle on one worker.
pub struct WorkerHandle {
    pub index: usize,
    pub local_addr: SocketAddr,
    pub stats: Arc<WorkerStats>,
    tx: mpsc::Sender<Request>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl WorkerHandle {
    /// Sends a command and waits for the engine's reply.
    pub async fn call(&self, command: Command) -> Result<Reply, MediaError> {
        let down = || MediaError::Unavailable(format!("media worker {} is down", self.index));
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { command, reply })
            .await
            .map_err(|_| down())?;
        rx.await.map_err(|_| down())?
    }

    /// Waits for the worker thread to end (after its channel closed).
    pub fn join(&self) {
        let handle = self.thread.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle
            && h.join().is_err()
        {
            warn!(worker = self.index, "worker thread panicked");
        }
    }
}

/// Reads the clock: the one place the media plane asks for time.
fn now() -> Instant {
    Instant::now()
}

/// Test-only fault injection: a WHIP to the room this variable names makes
/// the worker that takes it panic (the supervision tests' only way in).
const FAULT_ROOM_VAR: &str = "WAVE_FAULT_PANIC_ROOM";

/// Calls `on_down` when the thread that holds it unwinds from a panic: a
/// media worker (its index) or the embedded TURN thread.
pub struct Supervised {
    pub index: usize,
    pub what: &'static str,
    pub on_down: Arc<dyn Fn(usize) + Send + Sync>,
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                thread = self.what,
                index = self.index,
                "thread panicked: its sessions are ended and the node drains, then exits non-zero"
            );
            (self.on_down)(self.index);
        }
    }
}

/// Binds `bind` and starts a worker thread. `advertised` is the address put in
/// candidates (the public IP when configured, else the bound address).
/// `on_down` is called from the thread if it panics.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    index: usize,
    bind: SocketAddr,
    advertised_ip: Option<std::net::IpAddr>,
    mut config: EngineConfig,
    on_closed: Arc<dyn Fn(SessionId) + Send + Sync>,
    hls: Option<Arc<HlsStore>>,
    relays: RelayInboxes,
    on_down: Arc<dyn Fn(usize) + Send + Sync>,
) -> io::Result<WorkerHandle> {
    let socket = StdUdpSocket::bind(bind)?;
    socket.set_nonblocking(true)?;
    let local_addr = socket.local_addr()?;
    let advertised = SocketAddr::new(advertised_ip.unwrap_or(local_addr.ip()), local_addr.port());
    config.candidates = vec![advertised];
    config.seed ^= index as u64;
    // The driver reads the wall clock once; the engine dates HLS media from it.
    config.wall_clock = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let engine = Engine::new(config, now()).map_err(|e| io::Error::other(e.to_string()))?;
    let stats = Arc::new(WorkerStats::default());
    let (tx, rx) = mpsc::channel(1024);
    let thread_stats = stats.clone();
    let thread = std::thread::Builder::new()
        .name(format!("sfu-worker-{index}"))
        .spawn(move || {
            let _supervised = Supervised {
                index,
                what: "media worker",
                on_down,
            };
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    warn!(worker = index, error = %e, "cannot start worker runtime");
                    return;
                }
            };
            let me = WorkerId(index);
            // The driver's socket registers with this thread's runtime.
            let result = runtime.block_on(async move {
                Driver::new(
                    engine,
                    socket,
                    advertised,
                    thread_stats,
                    on_closed,
                    hls,
                    (me, relays),
                )?
                .run(rx)
                .await
            });
            if let Err(e) = result {
                warn!(worker = index, error = %e, "worker stopped");
            }
        })?;
    info!(worker = index, %local_addr, %advertised, "media worker listening");
    Ok(WorkerHandle {
        index,
        local_addr,
        stats,
        tx,
        thread: Mutex::new(Some(thread)),
    })
}

const BATCH: usize = 32;
/// Receive batches read in one loop turn before the turn's sends and relays.
const RECV_TURN: usize = 16;
const BUF: usize = 2048;
/// Socket send buffer asked for: a keyframe fan-out burst (2,000 viewers × a
/// few KiB) must fit while the NIC drains. Linux caps the request at
/// `net.core.wmem_max` (then doubles it); the effective size is logged.
const SEND_BUFFER: usize = 8 << 20;
/// Unsent bytes the worker keeps while the socket would block, beyond which
/// new datagrams are dropped and counted in `wave_udp_send_errors_total`.
const SEND_QUEUE_BYTES: usize = 8 << 20;

/// The loop around one engine: its socket, its send queue, its relay
/// inboxes, and where its LL-HLS snapshots and closed sessions go.
struct Driver {
    engine: Engine,
    socket: tokio::net::UdpSocket,
    state: UdpSocketState,
    advertised: SocketAddr,
    queue: SendQueue,
    /// The socket would block: the queue waits for writability.
    blocked: bool,
    stats: Arc<WorkerStats>,
    on_closed: Arc<dyn Fn(SessionId) + Send + Sync>,
    hls: Option<Arc<HlsStore>>,
    me: WorkerId,
    inboxes: RelayInboxes,
    /// Messages for each other worker, handed once per drain.
    outbox: Vec<Vec<RelayMessage>>,
    /// Test-only: a publish to this room panics the worker ([`FAULT_ROOM_VAR`], read once).
    fault_room: Option<String>,
}

impl Driver {
    fn new(
        engine: Engine,
        socket: StdUdpSocket,
        advertised: SocketAddr,
        stats: Arc<WorkerStats>,
        on_closed: Arc<dyn Fn(SessionId) + Send + Sync>,
        hls: Option<Arc<HlsStore>>,
        (me, inboxes): (WorkerId, RelayInboxes),
    ) -> io::Result<Driver> {
        let state = UdpSocketState::new((&socket).into())?;
        // Fan-out bursts: a large send buffer keeps them from being dropped locally.
        let _ = state.set_send_buffer_size((&socket).into(), SEND_BUFFER);
        let _ = state.set_recv_buffer_size((&socket).into(), 8 << 20);
        match state.send_buffer_size((&socket).into()) {
            Ok(n) if n < SEND_BUFFER / 4 => {
                warn!(
                    send_buffer = n,
                    wanted = SEND_BUFFER,
                    "small UDP send buffer: raise net.core.wmem_max"
                )
            }
            Ok(n) => debug!(send_buffer = n, "UDP send buffer"),
            Err(e) => debug!(error = %e, "cannot read the UDP send buffer size"),
        }
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        let queue = SendQueue::new(state.max_gso_segments(), SEND_QUEUE_BYTES);
        Ok(Driver {
            engine,
            socket,
            state,
            advertised,
            queue,
            blocked: false,
            stats,
            on_closed,
            hls,
            me,
            outbox: inboxes.iter().map(|_| Vec::new()).collect(),
            fault_room: std::env::var(FAULT_ROOM_VAR).ok(),
            inboxes,
        })
    }

    /// Runs until the control plane closed the worker and every peer is gone.
    async fn run(mut self, mut rx: mpsc::Receiver<Request>) -> io::Result<()> {
        let inbox = self.inboxes.get(self.me.0).cloned().unwrap_or_default();
        let mut relayed: Vec<(WorkerId, RelayMessage)> = Vec::new();
        let gro = self.state.gro_segments().max(1);
        let chunk = BUF * gro.min(4);
        let mut flat = vec![0u8; chunk * BATCH];
        let mut meta = [RecvMeta::default(); BATCH];
        let mut closing = false;
        loop {
            let deadline = tokio::time::Instant::from_std(self.drain());
            self.stats.publish(&self.engine.stats());
            if closing && self.engine.peer_count() == 0 {
                // Every close_notify was written; let it leave before the socket drops.
                let unsent = self.queue.clear();
                if unsent > 0 {
                    self.stats.send_errors.fetch_add(unsent as u64, Ordering::Relaxed);
                    debug!(unsent, "datagrams left unsent at shutdown");
                }
                return Ok(());
            }
            tokio::select! {
                biased;
                req = rx.recv(), if !closing => match req {
                    Some(Request { command, reply }) => {
                        closing = matches!(command, Command::CloseAll);
                        if let Command::Publish { room, .. } = &command
                            && self.fault_room.as_deref() == Some(room.as_str())
                        {
                            panic!("fault injected: a publish to {room}");
                        }
                        let _ = reply.send(self.engine.handle_command(now(), command));
                    }
                    None => {
                        let _ = self.engine.handle_command(now(), Command::CloseAll);
                        closing = true;
                    }
                },
                ready = self.socket.ready(Interest::READABLE) => {
                    ready?;
                    self.receive(&mut flat, chunk, &mut meta);
                    // Other workers' mirrors get the batch's packets before this
                    // worker spends its fan-out on them, so both fan out at once.
                    self.drain();
                    // One flush of the viewers written to, for the whole batch.
                    self.engine.handle_timeout(now());
                },
                // Drained below, every turn: a socket that is always readable
                // under load would otherwise starve this branch.
                () = inbox.notified() => {},
                _ = tokio::time::sleep_until(deadline) => {
                    self.engine.handle_timeout(now());
                }
                // Only while datagrams wait: the socket would block on the last try.
                ready = self.socket.writable(), if !self.queue.is_empty() => {
                    ready?;
                    self.blocked = false;
                }
            }
            if inbox.take(&mut relayed) {
                let t = now();
                for (from, msg) in relayed.drain(..) {
                    self.engine.handle_relay(t, from, msg);
                }
                // One flush of the viewers written to, as for a batch of datagrams.
                self.engine.handle_timeout(now());
            }
        }
    }

    /// Reads up to [`RECV_TURN`] batches of datagrams into the engine: a
    /// worker behind on its socket still sends, hands relays on and reads
    /// commands between them (the socket stays ready for the next turn).
    fn receive(&mut self, flat: &mut [u8], chunk: usize, meta: &mut [RecvMeta; BATCH]) {
        for _ in 0..RECV_TURN {
            let mut bufs: Vec<IoSliceMut<'_>> = flat.chunks_mut(chunk).map(IoSliceMut::new).collect();
            let res = self.socket.try_io(Interest::READABLE, || {
                self.state.recv((&self.socket).into(), &mut bufs, meta)
            });
            let n = match res {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!(error = %e, "recv failed");
                    break;
                }
            };
            let t = now();
            let advertised = self.advertised;
            for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
                let to = match m.dst_ip {
                    Some(ip) if !ip.is_unspecified() && advertised.ip().is_loopback() => {
                        SocketAddr::new(ip, advertised.port())
                    }
                    _ => advertised,
                };
                for segment in buf[..m.len].chunks(m.stride.max(1)) {
                    self.engine.handle_receive(t, m.addr, to, segment);
                }
            }
            if n < BATCH {
                break;
            }
        }
    }

    /// Does what the engine produced until it asks for a timeout, and
    /// returns that instant: datagrams queued and sent (a batch at a time as
    /// they fill: a keyframe fan-out is megabytes, it goes out while the
    /// rest is queued), relay messages handed to the other workers (one lock
    /// and one wake-up per destination), LL-HLS snapshots stored, closed
    /// sessions reported.
    fn drain(&mut self) -> Instant {
        self.queue.set_max_segments(self.state.max_gso_segments());
        let next = loop {
            match self.engine.poll_output() {
                Output::Transmit(t) => self.transmit(t),
                Output::Relay(to, msg) => match self.outbox.get_mut(to.0) {
                    Some(batch) if to != self.me => batch.push(msg),
                    _ => debug!(to = to.0, "relay for no other worker dropped"),
                },
                Output::Hls(update) => {
                    let Some(store) = &self.hls else { continue };
                    match update {
                        HlsUpdate::Publish(room, snapshot) => store.publish(room.as_str(), snapshot),
                        HlsUpdate::Remove(room) => store.remove(room.as_str()),
                    }
                }
                Output::Event(Event::SessionClosed { session, .. }) => (self.on_closed)(session),
                Output::Timeout(at) => break at,
            }
        };
        self.hand_relays();
        if !self.blocked {
            self.blocked = send_queued(&mut self.queue, &self.socket, &self.state, &self.stats);
        }
        next
    }

    fn transmit(&mut self, t: Transmit) {
        if let Err(dropped) = self.queue.push(t.destination, &t.contents) {
            self.stats
                .send_errors
                .fetch_add(dropped.datagrams as u64, Ordering::Relaxed);
            debug!(dest = %dropped.destination, "send queue full, datagram dropped");
        }
        if !self.blocked && self.queue.pending_messages() >= MAX_BATCH {
            self.blocked = send_queued(&mut self.queue, &self.socket, &self.state, &self.stats);
        }
    }

    /// Hands what the engine produced for other workers to their inboxes.
    fn hand_relays(&mut self) {
        for (batch, inbox) in self.outbox.iter_mut().zip(self.inboxes.iter()) {
            if batch.is_empty() {
                continue;
            }
            let handed = inbox.push(self.me, batch);
            self.stats.relay_handed.fetch_add(handed.media, Ordering::Relaxed);
            if handed.dropped > 0 {
                self.stats
                    .relay_dropped
                    .fetch_add(handed.dropped, Ordering::Relaxed);
                debug!(dropped = handed.dropped, "relay queue full, media dropped");
            }
        }
    }
}

/// Sends queued batches until the queue is empty (`false`) or the socket
/// would block (`true`: the rest waits for writability). Failed datagrams are
/// dropped and counted in `stats.send_errors`. Public for the send benchmark.
pub fn send_queued(
    queue: &mut SendQueue,
    socket: &tokio::net::UdpSocket,
    state: &UdpSocketState,
    stats: &WorkerStats,
) -> bool {
    loop {
        let result = match queue.poll_batch() {
            None => return false,
            Some(Batch::Gso {
                destination,
                segment,
                contents,
            }) => {
                let transmit = UdpTransmit {
                    destination,
                    ecn: None,
                    contents,
                    segment_size: Some(segment),
                    src_ip: None,
                };
                socket
                    .try_io(Interest::WRITABLE, || state.try_send(socket.into(), &transmit))
                    .map(|()| 1)
            }
            Some(Batch::Many { messages, bytes }) => {
                socket.try_io(Interest::WRITABLE, || send_many(socket, state, messages, bytes))
            }
        };
        match result {
            // The kernel's contract is at least one; zero is treated as blocked.
            Ok(0) => return true,
            Ok(sent) => queue.handle_sent(sent),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) => {
                if let Some(dropped) = queue.handle_refused() {
                    stats
                        .send_errors
                        .fetch_add(dropped.datagrams as u64, Ordering::Relaxed);
                    debug!(error = %e, dest = %dropped.destination, "send failed");
                }
            }
        }
    }
}

/// One `sendmmsg(2)` of single datagrams, each to its own destination: how
/// many the kernel took (a nonblocking call may take fewer; an error means the
/// first one failed). quinn-udp has no sendmmsg and nix cannot report the
/// count without reading uninitialised headers, so rustix.
#[cfg(target_os = "linux")]
fn send_many(
    socket: &impl std::os::fd::AsFd,
    _state: &UdpSocketState,
    messages: &[Message],
    bytes: &[u8],
) -> io::Result<usize> {
    use std::io::IoSlice;

    use rustix::net::addr::SocketAddrArg;
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};

    let addrs: Vec<SocketAddrAny> = messages.iter().map(|m| m.destination.as_any()).collect();
    let iovs: Vec<[IoSlice<'_>; 1]> = messages
        .iter()
        .map(|m| [IoSlice::new(&bytes[m.start..m.start + m.len])])
        .collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> =
        messages.iter().map(|_| SendAncillaryBuffer::default()).collect();
    let mut headers: Vec<MMsgHdr<'_>> = addrs
        .iter()
        .zip(&iovs)
        .zip(controls.iter_mut())
        .map(|((addr, iov), control)| MMsgHdr::new_with_addr(addr, iov, control))
        .collect();
    loop {
        match rustix::net::sendmmsg(socket, &mut headers, SendFlags::empty()) {
            Err(rustix::io::Errno::INTR) => continue,
            result => return result.map_err(io::Error::from),
        }
    }
}

/// Elsewhere: one quinn-udp send per datagram.
#[cfg(not(target_os = "linux"))]
fn send_many(
    socket: &tokio::net::UdpSocket,
    state: &UdpSocketState,
    messages: &[Message],
    bytes: &[u8],
) -> io::Result<usize> {
    let Some(m) = messages.first() else { return Ok(0) };
    let transmit = UdpTransmit {
        destination: m.destination,
        ecn: None,
        contents: &bytes[m.start..m.start + m.len],
        segment_size: None,
        src_ip: None,
    };
    state.try_send(socket.into(), &transmit).map(|()| 1)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A real sendmmsg over loopback: every destination gets its own datagram,
    /// and the count the kernel reports is the batch.
    #[test]
    fn send_many_delivers_each_datagram_to_its_destination() {
        let sender = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let state = UdpSocketState::new((&sender).into()).unwrap();
        let receivers: Vec<StdUdpSocket> = (0..5)
            .map(|_| StdUdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut queue = SendQueue::new(1, 1 << 20);
        for (i, r) in receivers.iter().enumerate() {
            queue
                .push(r.local_addr().unwrap(), &vec![i as u8; 100 + i])
                .unwrap();
        }
        let Some(Batch::Many { messages, bytes }) = queue.poll_batch() else {
            panic!("expected one sendmmsg batch");
        };
        assert_eq!(messages.len(), receivers.len());
        assert_eq!(
            send_many(&sender, &state, messages, bytes).unwrap(),
            receivers.len()
        );
        queue.handle_sent(receivers.len());
        assert!(queue.is_empty());
        let from = sender.local_addr().unwrap();
        for (i, r) in receivers.iter().enumerate() {
            r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 2048];
            let (n, src) = r.recv_from(&mut buf).unwrap();
            assert_eq!(src, from);
            assert_eq!(&buf[..n], &vec![i as u8; 100 + i][..]);
        }
    }

    /// A destination the socket cannot reach (IPv6 on an IPv4 socket) is an
    /// error for that message alone; the queue drops it and sends the rest.
    #[test]
    fn a_refused_destination_is_dropped_and_the_batch_goes_on() {
        let sender = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let state = UdpSocketState::new((&sender).into()).unwrap();
        let good = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let mut queue = SendQueue::new(1, 1 << 20);
        queue.push("[::1]:9".parse().unwrap(), b"nope").unwrap();
        queue.push(good.local_addr().unwrap(), b"yes").unwrap();
        let mut refused = 0;
        while let Some(batch) = queue.poll_batch() {
            let Batch::Many { messages, bytes } = batch else {
                panic!("no GSO run expected");
            };
            match send_many(&sender, &state, messages, bytes) {
                Ok(n) => queue.handle_sent(n),
                Err(_) => refused += queue.handle_refused().unwrap().datagrams,
            }
        }
        assert_eq!(refused, 1);
        good.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = good.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"yes");
    }
}
