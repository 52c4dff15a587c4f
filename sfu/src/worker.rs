//! The thin driver around one [`Engine`]: a thread with its own current-thread
//! tokio runtime and UDP socket. It reads the clock, feeds datagrams (batched
//! with recvmmsg/GRO through quinn-udp), commands and timeouts to the engine,
//! and sends what the engine produced through a [`SendQueue`]: one
//! `sendmmsg(2)` (rustix) per batch of datagrams to different destinations,
//! GSO through quinn-udp where several datagrams of one size go to one
//! destination. What the socket does not take yet waits for it to be writable.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hls_bridge::http::HlsStore;

use quinn_udp::{RecvMeta, Transmit as UdpTransmit, UdpSocketState};
use signaling::{MediaError, SessionId};
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::engine::{
    Command, Engine, EngineConfig, EngineStats, Event, HlsUpdate, Relay, Reply, Transmit, WorkerId,
};
use crate::sendq::{Batch, MAX_BATCH, Message, SendQueue};

/// What the control plane sends a worker.
pub struct Request {
    pub command: Command,
    pub reply: oneshot::Sender<Result<Reply, MediaError>>,
}

/// Counters a worker publishes after each loop turn, read by `/metrics`.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub rooms: AtomicU64,
    pub publishers: AtomicU64,
    pub viewers: AtomicU64,
    pub packets_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub rtp_forwarded: AtomicU64,
    pub layer_switches: AtomicU64,
    pub keyframe_requests: AtomicU64,
    pub nacks_received: AtomicU64,
    pub nacks_sent: AtomicU64,
    pub dropped_datagrams: AtomicU64,
    pub send_errors: AtomicU64,
    pub hls_rooms: AtomicU64,
    pub hls_parts: AtomicU64,
    pub hls_segments: AtomicU64,
    pub hls_aac_dropped: AtomicU64,
    /// Media packets this worker handed to other workers' mirrors.
    pub relay_handed: AtomicU64,
    /// Media packets it dropped because the other worker's queue was full.
    pub relay_dropped: AtomicU64,
}

/// Media packets one worker's relay queue holds before further ones are
/// dropped (and counted): ~1 s of a 3-layer publisher plus audio, far more
/// than a worker loop turn produces.
const RELAY_QUEUE: usize = 4096;

/// What other workers hand one worker ([`Relay`]): a bounded queue filled a
/// batch at a time (one lock per batch per loop turn, never per viewer) and
/// a wake-up for the worker's loop.
#[derive(Default)]
pub struct RelayInbox {
    queue: Mutex<Vec<(WorkerId, Relay)>>,
    /// Set after a push, so the owner's every-turn check takes no lock
    /// when nothing came.
    pending: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl RelayInbox {
    /// Appends a batch from worker `from` and wakes the owner; returns how
    /// many media packets were handed and how many dropped (queue full).
    /// Control messages are never dropped: mirrors must stay consistent.
    fn push(&self, from: WorkerId, batch: &mut Vec<Relay>) -> (u64, u64) {
        let (mut handed, mut dropped) = (0, 0);
        match self.queue.lock() {
            Ok(mut q) => {
                for relay in batch.drain(..) {
                    let media = relay.is_media();
                    if media && q.len() >= RELAY_QUEUE {
                        dropped += 1;
                        continue;
                    }
                    handed += u64::from(media);
                    q.push((from, relay));
                }
            }
            Err(_) => {
                dropped = batch.drain(..).filter(Relay::is_media).count() as u64;
            }
        }
        self.pending.store(true, Ordering::Release);
        self.wake.notify_one();
        (handed, dropped)
    }

    /// Moves everything queued into `into` (the lock is held for a swap);
    /// whether there was anything. Without a lock when nothing was pushed.
    fn take(&self, into: &mut Vec<(WorkerId, Relay)>) -> bool {
        if !self.pending.swap(false, Ordering::Acquire) {
            return false;
        }
        if let Ok(mut q) = self.queue.lock() {
            std::mem::swap(&mut *q, into);
        }
        !into.is_empty()
    }
}

/// Every worker's inbox, indexed by worker; each worker hands its engine's
/// relays to the others through it.
pub type RelayInboxes = Arc<[Arc<RelayInbox>]>;

impl WorkerStats {
    fn publish(&self, s: &EngineStats) {
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&self.rooms, s.rooms);
        set(&self.publishers, s.publishers);
        set(&self.viewers, s.viewers);
        set(&self.packets_in, s.packets_in);
        set(&self.bytes_in, s.bytes_in);
        set(&self.packets_out, s.packets_out);
        set(&self.bytes_out, s.bytes_out);
        set(&self.rtp_forwarded, s.rtp_forwarded);
        set(&self.layer_switches, s.layer_switches);
        set(&self.keyframe_requests, s.keyframe_requests);
        set(&self.nacks_received, s.nacks_received);
        set(&self.nacks_sent, s.nacks_sent);
        set(&self.dropped_datagrams, s.dropped_datagrams);
        set(&self.hls_rooms, s.hls_rooms);
        set(&self.hls_parts, s.hls_parts);
        set(&self.hls_segments, s.hls_segments);
        set(&self.hls_aac_dropped, s.hls_aac_dropped);
    }
}

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
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { command, reply })
            .await
            .map_err(|_| MediaError::Overloaded { retry_after_secs: 1 })?;
        rx.await
            .map_err(|_| MediaError::Overloaded { retry_after_secs: 1 })?
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

/// Binds `bind` and starts a worker thread. `advertised` is the address put in
/// candidates (the public IP when configured, else the bound address).
pub fn spawn(
    index: usize,
    bind: SocketAddr,
    advertised_ip: Option<std::net::IpAddr>,
    mut config: EngineConfig,
    on_closed: Arc<dyn Fn(SessionId) + Send + Sync>,
    hls: Option<Arc<HlsStore>>,
    relays: RelayInboxes,
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
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    warn!(worker = index, error = %e, "cannot start worker runtime");
                    return;
                }
            };
            let me = WorkerId(index);
            let result = runtime.block_on(run(
                engine,
                socket,
                advertised,
                rx,
                thread_stats,
                on_closed,
                hls,
                (me, relays),
            ));
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

#[allow(clippy::too_many_arguments)]
async fn run(
    mut engine: Engine,
    socket: StdUdpSocket,
    advertised: SocketAddr,
    mut rx: mpsc::Receiver<Request>,
    stats: Arc<WorkerStats>,
    on_closed: Arc<dyn Fn(SessionId) + Send + Sync>,
    hls: Option<Arc<HlsStore>>,
    (me, inboxes): (WorkerId, RelayInboxes),
) -> io::Result<()> {
    let inbox = inboxes.get(me.0).cloned().unwrap_or_default();
    let mut relayed: Vec<(WorkerId, Relay)> = Vec::new();
    let mut outbox: Vec<Vec<Relay>> = inboxes.iter().map(|_| Vec::new()).collect();
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
    let mut queue = SendQueue::new(state.max_gso_segments(), SEND_QUEUE_BYTES);
    let gro = state.gro_segments().max(1);
    let chunk = BUF * gro.min(4);
    let mut flat = vec![0u8; chunk * BATCH];
    let mut meta = [RecvMeta::default(); BATCH];
    let mut closing = false;

    loop {
        let deadline = tokio::time::Instant::from_std(engine.poll_timeout());
        tokio::select! {
            biased;
            req = rx.recv(), if !closing => match req {
                Some(Request { command, reply }) => {
                    let is_close = matches!(command, Command::CloseAll);
                    let result = engine.handle_command(now(), command);
                    let _ = reply.send(result);
                    if is_close {
                        closing = true;
                    }
                }
                None => {
                    let _ = engine.handle_command(now(), Command::CloseAll);
                    closing = true;
                }
            },
            ready = socket.ready(Interest::READABLE) => {
                ready?;
                // At most RECV_TURN batches per loop turn: a worker behind on
                // its socket still sends, hands relays on and reads commands
                // between them (the socket stays ready for the next turn).
                for _ in 0..RECV_TURN {
                    let mut bufs: Vec<IoSliceMut<'_>> = flat.chunks_mut(chunk).map(IoSliceMut::new).collect();
                    let res = socket.try_io(Interest::READABLE, || state.recv((&socket).into(), &mut bufs, &mut meta));
                    let n = match res {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            debug!(error = %e, "recv failed");
                            break;
                        }
                    };
                    let t = now();
                    for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
                        let to = match m.dst_ip {
                            Some(ip) if !ip.is_unspecified() && advertised.ip().is_loopback() => SocketAddr::new(ip, advertised.port()),
                            _ => advertised,
                        };
                        for segment in buf[..m.len].chunks(m.stride.max(1)) {
                            engine.handle_receive(t, m.addr, to, segment);
                        }
                    }
                    if n < BATCH {
                        break;
                    }
                }
                // Other workers' mirrors get the batch's packets before this
                // worker spends its fan-out on them, so both fan out at once.
                hand_relays(&mut engine, me, &inboxes, &mut outbox, &stats);
                // One flush of the viewers written to, for the whole batch.
                engine.handle_timeout(now());
            },
            // Drained below, every turn: a socket that is always readable
            // under load would otherwise starve this branch.
            () = inbox.wake.notified() => {},
            _ = tokio::time::sleep_until(deadline) => {
                engine.handle_timeout(now());
            }
            // Only while datagrams wait: the socket would block on the last try.
            ready = socket.writable(), if !queue.is_empty() => {
                ready?;
            }
        }
        if inbox.take(&mut relayed) {
            let t = now();
            for (from, relay) in relayed.drain(..) {
                engine.handle_relay(t, from, relay);
            }
            // One flush of the viewers written to, as for a batch of datagrams.
            engine.handle_timeout(now());
        }
        flush(&mut engine, &mut queue, &socket, &state, &stats);
        hand_relays(&mut engine, me, &inboxes, &mut outbox, &stats);
        while let Some(event) = engine.poll_event() {
            match event {
                Event::SessionClosed { session, .. } => on_closed(session),
            }
        }
        while let Some(update) = engine.poll_hls() {
            let Some(store) = &hls else { continue };
            match update {
                HlsUpdate::Publish(room, snapshot) => store.publish(room.as_str(), snapshot),
                HlsUpdate::Remove(room) => store.remove(room.as_str()),
            }
        }
        stats.publish(&engine.stats());
        if closing && engine.peer_count() == 0 {
            // Every close_notify was written; let it leave before the socket drops.
            flush(&mut engine, &mut queue, &socket, &state, &stats);
            let unsent = queue.clear();
            if unsent > 0 {
                stats.send_errors.fetch_add(unsent as u64, Ordering::Relaxed);
                debug!(unsent, "datagrams left unsent at shutdown");
            }
            return Ok(());
        }
    }
}

/// Hands what the engine produced for other workers to their inboxes: one
/// lock and one wake-up per destination per loop turn.
fn hand_relays(
    engine: &mut Engine,
    me: WorkerId,
    inboxes: &[Arc<RelayInbox>],
    outbox: &mut [Vec<Relay>],
    stats: &WorkerStats,
) {
    while let Some((to, relay)) = engine.poll_relay() {
        match outbox.get_mut(to.0) {
            Some(batch) if to != me => batch.push(relay),
            _ => debug!(to = to.0, "relay for no other worker dropped"),
        }
    }
    for (batch, inbox) in outbox.iter_mut().zip(inboxes) {
        if batch.is_empty() {
            continue;
        }
        let (handed, dropped) = inbox.push(me, batch);
        stats.relay_handed.fetch_add(handed, Ordering::Relaxed);
        if dropped > 0 {
            stats.relay_dropped.fetch_add(dropped, Ordering::Relaxed);
            debug!(dropped, "relay queue full, media dropped");
        }
    }
}

/// Queues every transmit the engine produced and sends what the socket takes,
/// a batch at a time as they fill (a keyframe fan-out is megabytes: it goes
/// out while the rest is queued, not after).
fn flush(
    engine: &mut Engine,
    queue: &mut SendQueue,
    socket: &tokio::net::UdpSocket,
    state: &UdpSocketState,
    stats: &WorkerStats,
) {
    queue.set_max_segments(state.max_gso_segments());
    let mut blocked = false;
    loop {
        let mut more = false;
        while let Some(Transmit {
            destination,
            contents,
            ..
        }) = engine.poll_transmit()
        {
            if let Err(dropped) = queue.push(destination, &contents) {
                stats
                    .send_errors
                    .fetch_add(dropped.datagrams as u64, Ordering::Relaxed);
                debug!(dest = %dropped.destination, "send queue full, datagram dropped");
            }
            if !blocked && queue.pending_messages() >= MAX_BATCH {
                more = true;
                break;
            }
        }
        if !blocked {
            blocked = send_queued(queue, socket, state, stats);
        }
        if !more {
            return;
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
