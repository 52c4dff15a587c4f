//! A media thread: one UDP socket and many peers. Each peer has its own
//! loopback address (127.S.x.y) on the shard's port, so the server sees
//! distinct 5-tuples while the shard needs one socket; datagrams are routed
//! to peers by their destination address (IP_PKTINFO) and sent with the
//! peer's source address. Receives and sends are batched through quinn-udp.

use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, Transmit as UdpTransmit, UdpSocketState};
use str0m::net::{Protocol, Receive};
use str0m::{Input, Output};
use tracing::{debug, warn};

use crate::peer::{Peer, PublisherStats, Role, Shared, ViewerStats};
use crate::rtp::RtpHeader;
use crate::stats::Histogram;

const BATCH: usize = 32;
const BUF: usize = 2048;
/// How often due timeouts and publisher frames are checked.
const TICK: Duration = Duration::from_millis(1);

/// Orders a shard takes.
pub enum Command {
    Add(Box<Peer>),
    /// A viewer leaves (churn); its stats come back with the others at the end.
    Leave(SocketAddr),
    Stop(Sender<ShardResult>),
}

/// What a shard measured.
#[derive(Default)]
pub struct ShardResult {
    pub viewers: Vec<ViewerStats>,
    pub publishers: Vec<PublisherStats>,
    pub latency_us: Histogram,
    pub send_errors: u64,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    /// RTP packets and payload bytes received since the progress counters were last updated.
    tally_packets: u64,
    tally_bytes: u64,
}

/// A running shard: its port and command channel.
pub struct Shard {
    pub index: usize,
    pub port: u16,
    tx: Sender<Command>,
    thread: Option<JoinHandle<()>>,
    next_addr: u32,
}

impl Shard {
    /// Binds `0.0.0.0:0` (every 127/8 address reaches it) and starts the thread.
    pub fn spawn(index: usize, shared: Arc<Shared>) -> std::io::Result<Shard> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        let port = socket.local_addr()?.port();
        let state = UdpSocketState::new((&socket).into())?;
        let _ = state.set_send_buffer_size((&socket).into(), 8 << 20);
        let _ = state.set_recv_buffer_size((&socket).into(), 8 << 20);
        socket.set_read_timeout(Some(TICK))?;
        let (tx, rx) = channel();
        let thread = std::thread::Builder::new()
            .name(format!("loadtest-shard-{index}"))
            .spawn(move || run(socket, state, rx, shared))?;
        Ok(Shard {
            index,
            port,
            tx,
            thread: Some(thread),
            next_addr: 0,
        })
    }

    /// A fresh local address for a peer on this shard.
    pub fn allocate(&mut self) -> SocketAddr {
        let n = self.next_addr;
        self.next_addr += 1;
        // 254 hosts per /24, avoiding .0 and .255.
        let (hi, lo) = (n / 254 % 254 + 1, n % 254 + 1);
        let ip = Ipv4Addr::new(127, 10 + self.index as u8, hi as u8, lo as u8);
        SocketAddr::new(IpAddr::V4(ip), self.port)
    }

    pub fn sender(&self) -> Sender<Command> {
        self.tx.clone()
    }

    /// Stops the thread and returns its measurements.
    pub fn stop(mut self) -> ShardResult {
        let (tx, rx) = channel();
        if self.tx.send(Command::Stop(tx)).is_err() {
            return ShardResult::default();
        }
        let r = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        r
    }
}

/// Peers indexed by their address's last two octets (what `allocate`
/// hands out): a datagram finds its peer without hashing.
#[derive(Default)]
struct Slots {
    peers: Vec<Option<Peer>>,
}

impl Slots {
    fn index(ip: IpAddr) -> Option<usize> {
        let IpAddr::V4(v4) = ip else { return None };
        let [_, _, hi, lo] = v4.octets();
        let (hi, lo) = (usize::from(hi).checked_sub(1)?, usize::from(lo).checked_sub(1)?);
        (hi < 254 && lo < 254).then_some(hi * 254 + lo)
    }

    fn insert(&mut self, peer: Peer) {
        let Some(i) = Slots::index(peer.local.ip()) else {
            warn!(local = %peer.local, "peer address outside the shard's range");
            return;
        };
        if self.peers.len() <= i {
            self.peers.resize_with(i + 1, || None);
        }
        self.peers[i] = Some(peer);
    }

    fn get_mut(&mut self, ip: IpAddr) -> Option<&mut Peer> {
        self.peers.get_mut(Slots::index(ip)?)?.as_mut()
    }

    fn remove(&mut self, ip: IpAddr) -> Option<Peer> {
        self.peers.get_mut(Slots::index(ip)?)?.take()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Peer> {
        self.peers.iter_mut().flatten()
    }

    fn drain(&mut self) -> impl Iterator<Item = Peer> + '_ {
        self.peers.drain(..).flatten()
    }
}

struct State {
    peers: Slots,
    result: ShardResult,
    shared: Arc<Shared>,
    out: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
}

fn run(socket: UdpSocket, udp: UdpSocketState, rx: Receiver<Command>, shared: Arc<Shared>) {
    let gro = udp.gro_segments().max(1);
    let chunk = BUF * gro.min(4);
    let mut flat = vec![0u8; chunk * BATCH];
    let mut bufs: Vec<IoSliceMut<'_>> = flat.chunks_mut(chunk).map(IoSliceMut::new).collect();
    let mut meta = [RecvMeta::default(); BATCH];
    let mut st = State {
        peers: Slots::default(),
        result: ShardResult::default(),
        shared,
        out: Vec::new(),
    };
    let mut next_tick = Instant::now();
    loop {
        loop {
            match rx.try_recv() {
                Ok(Command::Add(peer)) => {
                    let mut peer = *peer;
                    let now = Instant::now();
                    poll(&mut peer, &st.shared, &mut st.result, now, &mut st.out);
                    st.peers.insert(peer);
                }
                Ok(Command::Leave(addr)) => match st.peers.remove(addr.ip()) {
                    Some(p) => retire(p, &mut st.result, &st.shared, Instant::now(), true),
                    None => debug!(local = %addr, "leave: no such peer"),
                },
                Ok(Command::Stop(reply)) => {
                    let now = Instant::now();
                    for p in st.peers.drain() {
                        retire(p, &mut st.result, &st.shared, now, false);
                    }
                    let _ = reply.send(std::mem::take(&mut st.result));
                    return;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        // Receive a batch (blocks at most one tick).
        let n = {
            match udp.recv((&socket).into(), &mut bufs, &mut meta) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    0
                }
                Err(e) => {
                    debug!(error = %e, "recv failed");
                    0
                }
            }
        };
        let now = Instant::now();
        for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
            let Some(dst) = m.dst_ip else { continue };
            let Some(peer) = st.peers.get_mut(dst) else {
                continue;
            };
            for seg in buf[..m.len].chunks(m.stride.max(1)) {
                st.result.datagrams_in += 1;
                if let Role::Viewer(v) = &mut peer.role {
                    if v.header_counted()
                        && let Some(h) = RtpHeader::parse(seg)
                    {
                        if let Some(bytes) = v.count_header(&h, seg.len(), &st.shared, now) {
                            st.result.tally_packets += 1;
                            st.result.tally_bytes += bytes as u64;
                        }
                        continue;
                    }
                    v.set_datagram_len(seg.len());
                }
                let Ok(r) = Receive::new(Protocol::Udp, m.addr, peer.local, seg) else {
                    continue;
                };
                if let Err(e) = peer.rtc.handle_input(Input::Receive(now, r)) {
                    debug!(error = %e, "peer input failed");
                    peer.dead = true;
                    break;
                }
                // str0m's rule: drain after every input (RTP mode holds one packet).
                poll(peer, &st.shared, &mut st.result, now, &mut st.out);
            }
        }
        flush(&socket, &udp, &mut st);
        // Timeouts and due media, once per tick.
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + TICK;
            for peer in st.peers.iter_mut() {
                let due_media = match &peer.role {
                    Role::Publisher(p) => p.next_due().is_some_and(|d| d <= now),
                    Role::Viewer(_) => false,
                };
                if due_media && let Role::Publisher(p) = &mut peer.role {
                    p.write_due(&mut peer.rtc, &st.shared, now);
                }
                if due_media || peer.next_timeout <= now {
                    if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                        debug!(error = %e, "peer timeout failed");
                        peer.dead = true;
                    }
                    poll(peer, &st.shared, &mut st.result, now, &mut st.out);
                }
            }
            flush(&socket, &udp, &mut st);
            for slot in st.peers.peers.iter_mut() {
                if slot.as_ref().is_some_and(|p| p.dead)
                    && let Some(p) = slot.take()
                {
                    retire(p, &mut st.result, &st.shared, now, false);
                }
            }
            // The progress line's counters, once per tick rather than per packet.
            let progress = &st.shared.progress;
            progress
                .packets
                .fetch_add(std::mem::take(&mut st.result.tally_packets), Ordering::Relaxed);
            progress
                .bytes
                .fetch_add(std::mem::take(&mut st.result.tally_bytes), Ordering::Relaxed);
        }
    }
}

/// Drains one peer's outputs: datagrams to `out`, events to its role.
fn poll(
    peer: &mut Peer,
    shared: &Shared,
    result: &mut ShardResult,
    now: Instant,
    out: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
) {
    loop {
        match peer.rtc.poll_output() {
            Ok(Output::Timeout(t)) => {
                peer.next_timeout = t;
                if !peer.rtc.is_alive() && !peer.dead {
                    debug!(local = %peer.local, "peer closed");
                    peer.dead = true;
                }
                break;
            }
            Ok(Output::Transmit(t)) => out.push((t.source, t.destination, t.contents.into())),
            Ok(Output::Event(e)) => {
                if let str0m::Event::IceConnectionStateChange(str0m::IceConnectionState::Disconnected) = e {
                    debug!(local = %peer.local, "ICE disconnected");
                }
                if let str0m::Event::RtpPacket(p) = &e {
                    result.tally_packets += 1;
                    result.tally_bytes += p.payload.len() as u64;
                }
                match &mut peer.role {
                    Role::Publisher(p) => p.on_event(&peer.rtc, shared, now, &e),
                    Role::Viewer(v) => v.on_event(&peer.rtc, shared, &mut result.latency_us, now, e),
                }
            }
            Err(e) => {
                debug!(local = %peer.local, error = %e, "peer failed");
                peer.dead = true;
                break;
            }
        }
    }
}

/// Sends what the peers produced, each from its own source address.
fn flush(socket: &UdpSocket, udp: &UdpSocketState, st: &mut State) {
    for (src, dst, bytes) in st.out.drain(..) {
        let t = UdpTransmit {
            destination: dst,
            ecn: None,
            contents: &bytes,
            segment_size: None,
            src_ip: Some(src.ip()),
        };
        match udp.try_send(socket.into(), &t) {
            Ok(()) => st.result.datagrams_out += 1,
            Err(e) => {
                st.result.send_errors += 1;
                if st.result.send_errors < 5 {
                    warn!(error = %e, %dst, "send failed");
                }
            }
        }
    }
}

fn retire(peer: Peer, result: &mut ShardResult, shared: &Shared, now: Instant, left: bool) {
    let lost = peer.dead.then(|| "connection lost".to_owned());
    match peer.role {
        Role::Viewer(v) => {
            let mut s = v.finish(now);
            s.left = left;
            if left {
                shared.progress.left.fetch_add(1, Ordering::Relaxed);
            }
            if s.error.is_none() {
                s.error = lost;
            }
            result.viewers.push(s);
        }
        Role::Publisher(p) => {
            let mut s = p.stats.clone();
            if s.error.is_none() {
                s.error = lost;
            }
            result.publishers.push(s);
        }
    }
}
