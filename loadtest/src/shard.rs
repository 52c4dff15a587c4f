//! A media thread: one UDP socket and many peers. Each peer has its own
//! loopback address (127.S.x.y) on the shard's port, so the server sees
//! distinct 5-tuples while the shard needs one socket; datagrams are routed
//! to peers by their destination address (IP_PKTINFO) and sent with the
//! peer's source address. Receives and sends are batched through quinn-udp.
//!
//! The thread sleeps in `ppoll` on its socket and an eventfd (woken by
//! commands) until the earliest peer deadline (`wake::Deadlines`): an idle
//! shard costs nothing, a busy one receives in `recvmmsg` batches.

use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SendError, Sender, TryRecvError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, Transmit as UdpTransmit, UdpSocketState};
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use str0m::net::{Protocol, Receive};
use str0m::{Input, Output};
use tracing::{debug, warn};

use crate::peer::{Peer, PublisherStats, Role, Shared, ViewerStats};
use crate::rtp::RtpHeader;
use crate::stats::Histogram;
use crate::wake::{Deadlines, round_up};

const BATCH: usize = 32;
const BUF: usize = 2048;
/// Receive batches per wake-up before due timers get their turn.
const BATCHES_PER_WAKE: usize = 8;
/// How long received-packet tallies may wait before they reach the progress counters.
const TALLY_EVERY: Duration = Duration::from_millis(10);
/// The receive buffer a shard asks for beyond the system's maximum, bytes.
const RECV_BUFFER_FORCED: usize = 32 << 20;
/// The grid header-counted viewers' str0m timeouts are rounded up to.
const COARSE_TIMER: Duration = Duration::from_millis(100);

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
    /// How late publishers wrote their frames behind schedule, µs.
    pub send_lateness_us: Histogram,
    pub send_errors: u64,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    /// RTP packets and payload bytes received since the progress counters were last updated.
    tally_packets: u64,
    tally_bytes: u64,
}

/// Sends a shard its commands and wakes its thread.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: Sender<Command>,
    waker: Arc<OwnedFd>,
}

impl Handle {
    /// Queues `cmd` and wakes the shard; fails when the shard has stopped.
    pub fn send(&self, cmd: Command) -> Result<(), SendError<Command>> {
        self.tx.send(cmd)?;
        // An eventfd write only fails when its counter would overflow: it is then readable anyway.
        let _ = rustix::io::write(&*self.waker, &1u64.to_ne_bytes());
        Ok(())
    }
}

/// A running shard: its port and command channel.
pub struct Shard {
    pub index: usize,
    pub port: u16,
    /// The socket's inode, its key in `/proc/net/udp` (for its drop counter).
    pub inode: Option<u64>,
    handle: Handle,
    wakeups: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    next_addr: u32,
}

impl Shard {
    /// Binds `0.0.0.0:0` (every 127/8 address reaches it) and starts the thread.
    pub fn spawn(index: usize, shared: Arc<Shared>) -> std::io::Result<Shard> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        let port = socket.local_addr()?.port();
        let inode = socket_inode(&socket);
        let state = UdpSocketState::new((&socket).into())?;
        let _ = state.set_send_buffer_size((&socket).into(), 8 << 20);
        let _ = state.set_recv_buffer_size((&socket).into(), 8 << 20);
        // Past `net.core.rmem_max` where allowed (CAP_NET_ADMIN): a shard
        // descheduled on a full machine then queues ~100 ms of datagrams at
        // 2,000 viewers instead of dropping them (tester socket drops).
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, RECV_BUFFER_FORCED);
        let waker = Arc::new(rustix::event::eventfd(
            0,
            EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC,
        )?);
        let wakeups = Arc::new(AtomicU64::new(0));
        let (tx, rx) = channel();
        let thread = {
            let (waker, wakeups) = (waker.clone(), wakeups.clone());
            std::thread::Builder::new()
                .name(format!("loadtest-shard-{index}"))
                .spawn(move || run(socket, state, rx, waker, wakeups, shared))?
        };
        Ok(Shard {
            index,
            port,
            inode,
            handle: Handle { tx, waker },
            wakeups,
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

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Datagrams the kernel dropped at this shard's socket so far (its
    /// receive queue was full: the shard, not the server, lost them).
    pub fn socket_drops(&self) -> Option<u64> {
        udp_drops(&[self.inode?])
    }

    /// How many times the thread has woken from its wait so far.
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// Stops the thread and returns its measurements.
    pub fn stop(mut self) -> ShardResult {
        let (tx, rx) = channel();
        if self.handle.send(Command::Stop(tx)).is_err() {
            return ShardResult::default();
        }
        let r = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        r
    }
}

impl Drop for Shard {
    /// A shard dropped without `stop` (an aborted run) still ends its thread,
    /// which would otherwise sleep with nothing to wake it.
    fn drop(&mut self) {
        if self.thread.take().is_some() {
            let (tx, _) = channel();
            let _ = self.handle.send(Command::Stop(tx));
        }
    }
}

/// A socket's inode (`/proc/self/fd/N` links to `socket:[inode]`).
pub fn socket_inode(socket: &UdpSocket) -> Option<u64> {
    use std::os::fd::AsRawFd as _;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Datagrams the kernel dropped at these sockets since they were opened
/// (receive queue full), from `/proc/net/udp` and `/proc/net/udp6`; `None`
/// when the table cannot be read (not Linux) or lists none of them.
pub fn udp_drops(inodes: &[u64]) -> Option<u64> {
    let mut found = None;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            for (inode, drops) in parse_udp_drops(&text) {
                if inodes.contains(&inode) {
                    *found.get_or_insert(0) += drops;
                }
            }
        }
    }
    found
}

/// `(inode, drops)` of every socket in a `/proc/net/udp` table (the
/// `inode` and `drops` columns; the header and malformed lines are skipped).
pub fn parse_udp_drops(text: &str) -> impl Iterator<Item = (u64, u64)> + '_ {
    text.lines().filter_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if !cols.first()?.ends_with(':') {
            return None;
        }
        Some((cols.get(9)?.parse().ok()?, cols.get(12)?.parse().ok()?))
    })
}

/// Peers indexed by their address's last two octets (what `allocate`
/// hands out): a datagram finds its peer without hashing.
#[derive(Default)]
struct Slots {
    peers: Vec<Option<Peer>>,
    /// Peers on a shared media address (`Peer::route`), by the server's address.
    by_remote: std::collections::HashMap<SocketAddr, usize>,
}

impl Slots {
    fn index(ip: IpAddr) -> Option<usize> {
        let IpAddr::V4(v4) = ip else { return None };
        let [_, _, hi, lo] = v4.octets();
        let (hi, lo) = (usize::from(hi).checked_sub(1)?, usize::from(lo).checked_sub(1)?);
        (hi < 254 && lo < 254).then_some(hi * 254 + lo)
    }

    /// Places `peer` in the slot its address names and returns that slot.
    fn insert(&mut self, peer: Peer) -> Option<usize> {
        let Some(i) = Slots::index(peer.local.ip()) else {
            warn!(local = %peer.local, "peer address outside the shard's range");
            return None;
        };
        if self.peers.len() <= i {
            self.peers.resize_with(i + 1, || None);
        }
        if let Some(r) = peer.route {
            self.by_remote.insert(r.remote, i);
        }
        self.peers[i] = Some(peer);
        Some(i)
    }

    fn get_mut(&mut self, ip: IpAddr) -> Option<(usize, &mut Peer)> {
        let i = Slots::index(ip)?;
        Some((i, self.peers.get_mut(i)?.as_mut()?))
    }

    /// The peer a datagram from `src` to `dst` is for: by `dst` when it is
    /// a peer's own 127/8 address, else by the server's address `src`.
    fn find(&mut self, dst: IpAddr, src: SocketAddr) -> Option<(usize, &mut Peer)> {
        if dst.is_loopback() || self.by_remote.is_empty() {
            return self.get_mut(dst);
        }
        let i = *self.by_remote.get(&src)?;
        Some((i, self.peers.get_mut(i)?.as_mut()?))
    }

    fn remove(&mut self, ip: IpAddr) -> Option<(usize, Peer)> {
        let i = Slots::index(ip)?;
        let p = self.peers.get_mut(i)?.take()?;
        if let Some(r) = p.route {
            self.by_remote.remove(&r.remote);
        }
        Some((i, p))
    }

    fn drain(&mut self) -> impl Iterator<Item = Peer> + '_ {
        self.by_remote.clear();
        self.peers.drain(..).flatten()
    }
}

struct State {
    peers: Slots,
    /// When each slot's peer next needs a timeout or a frame.
    wake: Deadlines,
    result: ShardResult,
    shared: Arc<Shared>,
    out: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
}

impl State {
    /// Sets the deadline of the peer in `slot` from its state: str0m's next
    /// timeout, a publisher's next frame, or `now` for a dead peer (retired then).
    fn schedule(&mut self, slot: usize, now: Instant) {
        if let Some(Some(peer)) = self.peers.peers.get(slot) {
            self.wake.set(slot, wake_at(peer, now, self.shared.epoch));
        }
    }

    /// Runs the peers whose deadline passed: frames, str0m timeouts, retiring the dead.
    fn run_due(&mut self, now: Instant, due: &mut Vec<usize>) {
        self.wake.take_due(now, due);
        for &slot in due.iter() {
            let Some(Some(peer)) = self.peers.peers.get_mut(slot) else {
                continue;
            };
            if !peer.dead {
                let due_media = match &peer.role {
                    Role::Publisher(p) => p.next_due().is_some_and(|d| d <= now),
                    Role::Viewer(_) => false,
                };
                if due_media && let Role::Publisher(p) = &mut peer.role {
                    p.write_due(
                        &mut peer.rtc,
                        &self.shared,
                        now,
                        &mut self.result.send_lateness_us,
                    );
                }
                if due_media || peer.next_timeout <= now {
                    if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                        debug!(error = %e, "peer timeout failed");
                        peer.dead = true;
                    }
                    poll(peer, &self.shared, &mut self.result, now, &mut self.out);
                }
            }
            if peer.dead {
                if let Some(p) = self.peers.peers[slot].take() {
                    retire(p, &mut self.result, &self.shared, now, false);
                }
            } else {
                self.schedule(slot, now);
            }
        }
    }
}

/// When a peer next needs the shard. A header-counted viewer's str0m only
/// keeps ICE consent and RTCP going (seconds apart, nothing time-critical),
/// so its timeouts are rounded up to the shard's `COARSE_TIMER` grid: the
/// bulk of the viewers then come due together, a handful of wake-ups a
/// second instead of one per viewer timeout.
fn wake_at(peer: &Peer, now: Instant, epoch: Instant) -> Instant {
    if peer.dead {
        return now;
    }
    match &peer.role {
        Role::Publisher(p) => p
            .next_due()
            .map_or(peer.next_timeout, |d| d.min(peer.next_timeout)),
        Role::Viewer(v) if v.header_counted() => round_up(peer.next_timeout, epoch, COARSE_TIMER),
        Role::Viewer(_) => peer.next_timeout,
    }
}

/// Reads the waker's counter back to zero (it is non-blocking: nothing to read is fine).
fn drain_waker(fd: &OwnedFd) {
    let mut buf = [0u8; 8];
    let _ = rustix::io::read(fd, &mut buf);
}

fn run(
    socket: UdpSocket,
    udp: UdpSocketState,
    rx: Receiver<Command>,
    waker: Arc<OwnedFd>,
    wakeups: Arc<AtomicU64>,
    shared: Arc<Shared>,
) {
    let gro = udp.gro_segments().max(1);
    let chunk = BUF * gro.min(4);
    let mut flat = vec![0u8; chunk * BATCH];
    let mut bufs: Vec<IoSliceMut<'_>> = flat.chunks_mut(chunk).map(IoSliceMut::new).collect();
    let mut meta = [RecvMeta::default(); BATCH];
    let mut st = State {
        peers: Slots::default(),
        wake: Deadlines::default(),
        result: ShardResult::default(),
        shared,
        out: Vec::new(),
    };
    let mut due = Vec::new();
    // When the received-packet tallies must reach the progress counters (set while some are pending).
    let mut tally_due: Option<Instant> = None;
    loop {
        loop {
            match rx.try_recv() {
                Ok(Command::Add(peer)) => {
                    let mut peer = *peer;
                    let now = Instant::now();
                    poll(&mut peer, &st.shared, &mut st.result, now, &mut st.out);
                    if let Some(slot) = st.peers.insert(peer) {
                        st.schedule(slot, now);
                    }
                }
                Ok(Command::Leave(addr)) => match st.peers.remove(addr.ip()) {
                    Some((slot, p)) => {
                        st.wake.clear(slot);
                        retire(p, &mut st.result, &st.shared, Instant::now(), true);
                    }
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
        // Due frames and timeouts.
        let now = Instant::now();
        st.run_due(now, &mut due);
        flush(&socket, &udp, &mut st);
        // The progress line's counters, at most once per TALLY_EVERY rather than per packet.
        if st.result.tally_packets > 0 || st.result.tally_bytes > 0 {
            match tally_due {
                Some(at) if at <= now => {
                    let progress = &st.shared.progress;
                    progress
                        .packets
                        .fetch_add(std::mem::take(&mut st.result.tally_packets), Ordering::Relaxed);
                    progress
                        .bytes
                        .fetch_add(std::mem::take(&mut st.result.tally_bytes), Ordering::Relaxed);
                    tally_due = None;
                }
                Some(_) => {}
                None => tally_due = Some(now + TALLY_EVERY),
            }
        }
        // Sleep until a datagram, a command or the next deadline.
        let next = [st.wake.earliest(), tally_due].into_iter().flatten().min();
        // None: until I/O or a command; zero when already due.
        let timeout = next
            .map(|at| at.saturating_duration_since(Instant::now()))
            .and_then(|d| Timespec::try_from(d).ok());
        let mut fds = [
            PollFd::new(&socket, PollFlags::IN),
            PollFd::new(&*waker, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                warn!(error = %e, "shard poll failed");
                std::thread::sleep(TALLY_EVERY);
                continue;
            }
        }
        wakeups.fetch_add(1, Ordering::Relaxed);
        let readable = !fds[0].revents().is_empty();
        if !fds[1].revents().is_empty() {
            drain_waker(&waker);
        }
        if !readable {
            continue;
        }
        // Receive batches while they come (recvmmsg), a bounded number before timers get their turn.
        for _ in 0..BATCHES_PER_WAKE {
            let n = match udp.recv((&socket).into(), &mut bufs, &mut meta) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(e) => {
                    debug!(error = %e, "recv failed");
                    0
                }
            };
            if n == 0 {
                break;
            }
            let now = Instant::now();
            for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
                let Some(dst) = m.dst_ip else { continue };
                let Some((slot, peer)) = st.peers.find(dst, m.addr) else {
                    continue;
                };
                let mut touched = false;
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
                    let Ok(r) = Receive::new(
                        Protocol::Udp,
                        m.addr,
                        peer.route.map_or(peer.local, |r| r.local),
                        seg,
                    ) else {
                        continue;
                    };
                    touched = true;
                    if let Err(e) = peer.rtc.handle_input(Input::Receive(now, r)) {
                        debug!(error = %e, "peer input failed");
                        peer.dead = true;
                        break;
                    }
                    // str0m's rule: drain after every input (RTP mode holds one packet).
                    poll(peer, &st.shared, &mut st.result, now, &mut st.out);
                }
                if touched {
                    st.wake.set(slot, wake_at(peer, now, st.shared.epoch));
                }
            }
            flush(&socket, &udp, &mut st);
            if n < BATCH {
                break;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_drops_column_by_inode() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
           12: 00000000:A41F 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4711 2 0000000000000000 0\n\
          130: 0100007F:4718 00000000:0000 07 00000000:005F1200 00:00000000 00000000  1000        0 998877 2 ffff8881f3a8c000 8785\n\
          garbage line\n";
        let rows: Vec<(u64, u64)> = parse_udp_drops(text).collect();
        assert_eq!(rows, [(4711, 0), (998877, 8785)]);
    }
}
