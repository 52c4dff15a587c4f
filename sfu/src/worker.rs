//! The thin driver around one [`Engine`]: a thread with its own current-thread
//! tokio runtime and UDP socket. It reads the clock, feeds datagrams (batched
//! with recvmmsg/GRO through quinn-udp), commands and timeouts to the engine,
//! and sends what the engine produced (GSO through quinn-udp where several
//! datagrams of one size go to one destination).

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

use crate::engine::{Command, Engine, EngineConfig, EngineStats, Event, HlsUpdate, Reply, Transmit};

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
}

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
            let result = runtime.block_on(run(engine, socket, advertised, rx, thread_stats, on_closed, hls));
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
const BUF: usize = 2048;

async fn run(
    mut engine: Engine,
    socket: StdUdpSocket,
    advertised: SocketAddr,
    mut rx: mpsc::Receiver<Request>,
    stats: Arc<WorkerStats>,
    on_closed: Arc<dyn Fn(SessionId) + Send + Sync>,
    hls: Option<Arc<HlsStore>>,
) -> io::Result<()> {
    let state = UdpSocketState::new((&socket).into())?;
    // Fan-out bursts: a large send buffer keeps them from being dropped locally.
    let _ = state.set_send_buffer_size((&socket).into(), 8 << 20);
    let _ = state.set_recv_buffer_size((&socket).into(), 8 << 20);
    let socket = tokio::net::UdpSocket::from_std(socket)?;
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
                loop {
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
                // One flush of the viewers written to, for the whole batch.
                engine.handle_timeout(now());
            },
            _ = tokio::time::sleep_until(deadline) => {
                engine.handle_timeout(now());
            }
        }
        flush(&mut engine, &socket, &state, &stats);
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
            flush(&mut engine, &socket, &state, &stats);
            return Ok(());
        }
    }
}

/// Sends every pending transmit, coalescing runs to one destination into GSO batches.
fn flush(engine: &mut Engine, socket: &tokio::net::UdpSocket, state: &UdpSocketState, stats: &WorkerStats) {
    let max_segments = state.max_gso_segments().max(1);
    let mut batch: Vec<u8> = Vec::with_capacity(BUF * 8);
    let mut pending: Option<(SocketAddr, usize, usize)> = None; // (destination, segment size, count)
    let send = |batch: &mut Vec<u8>, dest: SocketAddr, seg: usize, count: usize| {
        let transmit = UdpTransmit {
            destination: dest,
            ecn: None,
            contents: batch,
            segment_size: (count > 1).then_some(seg),
            src_ip: None,
        };
        if let Err(e) = socket.try_io(Interest::WRITABLE, || state.try_send(socket.into(), &transmit)) {
            stats.send_errors.fetch_add(1, Ordering::Relaxed);
            debug!(error = %e, %dest, "send failed");
        }
        batch.clear();
    };
    while let Some(Transmit {
        destination,
        contents,
        ..
    }) = engine.poll_transmit()
    {
        if let Some((dest, seg, count)) = pending {
            // GSO: equal segments to one destination; only the last may be shorter.
            let joins = dest == destination && contents.len() == seg && count < max_segments;
            if joins {
                batch.extend_from_slice(&contents);
                pending = Some((dest, seg, count + 1));
                continue;
            }
            send(&mut batch, dest, seg, count);
        }
        batch.extend_from_slice(&contents);
        pending = Some((destination, contents.len(), 1));
    }
    if let Some((dest, seg, count)) = pending {
        send(&mut batch, dest, seg, count);
    }
}
