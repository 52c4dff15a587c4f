//! A small TURN client and server harness for the behaviour tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use stun_types::attribute::{ErrorCode, Nonce, Realm, Username, XorMappedAddress};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageType, MessageWriteVec, Method,
    TransactionId,
};
use stun_types::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;
use turn_server::Config;
use turn_server::core::stream_frame_len;
use turn_types::attribute::{
    ChannelNumber, Data, Lifetime, RequestedTransport, XorPeerAddress, XorRelayedAddress,
};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND};

pub const SECRET: &str = "test-secret";
pub const REALM: &str = "wave-test";
/// Upper bound for any single wait; tests never assert on durations.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn config() -> Config {
    let mut cfg = Config::loopback(REALM, Some(SECRET));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    // Below the kernel's ephemeral range, so loopback peers (ephemeral
    // ports on the relay's own IP) are never mistaken for our relay ports.
    cfg.relay_ports = (20000, 29999);
    cfg
}

/// A config whose peer filter allows the loopback peers tests use.
pub fn config_allowing_loopback() -> Config {
    let mut cfg = config();
    cfg.server.peer_filter = turn_server::filter::PeerFilter::new(vec!["127.0.0.0/8".parse().unwrap()]);
    cfg
}

pub struct TestServer {
    pub addrs: turn_server::LocalAddrs,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), turn_server::Error>>,
}

pub async fn start(cfg: Config) -> TestServer {
    let bound = turn_server::bind(cfg).await.expect("bind");
    let addrs = bound.local_addrs();
    let (stop, rx) = oneshot::channel();
    let task = tokio::spawn(bound.run(async {
        let _ = rx.await;
    }));
    TestServer {
        addrs,
        stop: Some(stop),
        task,
    }
}

impl TestServer {
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }

    pub async fn metrics(&self) -> String {
        let addr = self.addrs.metrics.expect("metrics enabled");
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        out
    }

    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.metrics().await;
        wave_metrics::value(&text, name).unwrap_or_else(|| panic!("metric {name} missing in\n{text}")) as u64
    }
}

/// REST credentials valid for an hour.
pub fn rest_user(user: &str) -> (String, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let c = turn_server::rest_credentials(SECRET, user, 3600, now, vec![]);
    (c.username, c.password)
}

pub enum Conn {
    Udp(UdpSocket),
    Tcp(Box<dyn Stream>),
}

pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// What arrived from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Stun(Vec<u8>),
    ChannelData { channel: u16, data: Vec<u8> },
}

pub struct Client {
    pub conn: Conn,
    pub server: SocketAddr,
    pub username: String,
    pub password: String,
    pub realm: String,
    pub nonce: Option<String>,
    pending: Vec<Incoming>,
    /// Transactions already answered: late answers to their
    /// retransmissions are dropped, not queued.
    answered: Vec<TransactionId>,
}

impl Client {
    pub async fn udp(server: SocketAddr, user: &str) -> Self {
        Self::udp_from("127.0.0.1:0".parse().unwrap(), server, user).await
    }

    pub async fn udp_from(bind: SocketAddr, server: SocketAddr, user: &str) -> Self {
        let sock = UdpSocket::bind(bind).await.unwrap();
        let (username, password) = rest_user(user);
        Self::new(Conn::Udp(sock), server, username, password)
    }

    pub async fn tcp(server: SocketAddr, user: &str) -> Self {
        let stream = TcpStream::connect(server).await.unwrap();
        let (username, password) = rest_user(user);
        Self::new(Conn::Tcp(Box::new(stream)), server, username, password)
    }

    pub fn new(conn: Conn, server: SocketAddr, username: String, password: String) -> Self {
        Self {
            conn,
            server,
            username,
            password,
            realm: REALM.to_owned(),
            nonce: None,
            pending: Vec::new(),
            answered: Vec::new(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        match &self.conn {
            Conn::Udp(s) => s.local_addr().unwrap(),
            Conn::Tcp(_) => panic!("use the TcpStream's address"),
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        match &mut self.conn {
            Conn::Udp(s) => {
                s.send_to(bytes, self.server).await.unwrap();
            }
            Conn::Tcp(s) => s.write_all(bytes).await.unwrap(),
        }
    }

    /// Next datagram or frame, or `None` after `wait`; a late answer to a
    /// retransmitted request already answered is skipped.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Incoming> {
        if !self.pending.is_empty() {
            return Some(self.pending.remove(0));
        }
        self.arrival(tokio::time::Instant::now() + wait, None).await
    }

    /// Next datagram or frame before `deadline`, skipping answers to
    /// transactions already answered other than `awaited` (a request the
    /// test sends twice on purpose).
    async fn arrival(
        &mut self,
        deadline: tokio::time::Instant,
        awaited: Option<TransactionId>,
    ) -> Option<Incoming> {
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let got = tokio::time::timeout(left, self.recv_one()).await.ok()?;
            let late = match &got {
                Incoming::Stun(bytes) => Message::from_bytes(bytes).is_ok_and(|m| {
                    let id = m.transaction_id();
                    Some(id) != awaited && self.answered.contains(&id)
                }),
                Incoming::ChannelData { .. } => false,
            };
            if !late {
                return Some(got);
            }
        }
    }

    pub async fn recv(&mut self) -> Incoming {
        self.recv_within(WAIT).await.expect("nothing arrived")
    }

    async fn recv_one(&mut self) -> Incoming {
        let bytes = match &mut self.conn {
            Conn::Udp(s) => {
                let mut buf = vec![0u8; 65536];
                let (n, _) = s.recv_from(&mut buf).await.unwrap();
                buf.truncate(n);
                buf
            }
            Conn::Tcp(s) => {
                let mut header = [0u8; 4];
                s.read_exact(&mut header).await.unwrap();
                let len = stream_frame_len(header).expect("server framing");
                let mut frame = vec![0u8; len];
                frame[..4].copy_from_slice(&header);
                s.read_exact(&mut frame[4..]).await.unwrap();
                frame
            }
        };
        if bytes[0] >> 6 == 1 {
            let channel = u16::from_be_bytes([bytes[0], bytes[1]]);
            let len = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
            Incoming::ChannelData {
                channel,
                data: bytes[4..4 + len].to_vec(),
            }
        } else {
            Incoming::Stun(bytes)
        }
    }

    /// Sends a request and returns the response with the same transaction.
    /// Over UDP the request is retransmitted as RFC 8489 section 6.2.1 has
    /// a client do (RTO 500 ms, doubling), so a datagram the kernel drops
    /// under load costs a retransmission, not the test.
    pub async fn request(
        &mut self,
        method: Method,
        sign: bool,
        attrs: impl FnOnce(&mut MessageWriteVec, TransactionId),
    ) -> Vec<u8> {
        let txid = TransactionId::generate();
        let bytes = self.build(method, txid, sign, attrs);
        if matches!(self.conn, Conn::Tcp(_)) {
            self.send_raw(&bytes).await;
            return self.response(txid).await;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut rto = Duration::from_millis(500);
        loop {
            self.send_raw(&bytes).await;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Some(resp) = self.response_within(txid, rto.min(left)).await {
                return resp;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no response to {method:?} within {WAIT:?}"
            );
            rto *= 2;
        }
    }

    pub fn build(
        &self,
        method: Method,
        txid: TransactionId,
        sign: bool,
        attrs: impl FnOnce(&mut MessageWriteVec, TransactionId),
    ) -> Vec<u8> {
        let mut w = Message::builder(
            MessageType::from_class_method(MessageClass::Request, method),
            txid,
            MessageWriteVec::new(),
        );
        attrs(&mut w, txid);
        if sign {
            w.add_attribute(&Username::new(&self.username).unwrap()).unwrap();
            w.add_attribute(&Realm::new(&self.realm).unwrap()).unwrap();
            let nonce = self.nonce.clone().unwrap_or_else(|| "none".into());
            w.add_attribute(&Nonce::new(&nonce).unwrap()).unwrap();
            let creds =
                LongTermKeyCredentials::new(self.username.clone(), self.password.clone(), self.realm.clone());
            w.add_message_integrity(&creds.into(), IntegrityAlgorithm::Sha1)
                .unwrap();
        }
        w.add_fingerprint().unwrap();
        w.finish()
    }

    pub async fn response(&mut self, txid: TransactionId) -> Vec<u8> {
        self.response_within(txid, WAIT).await.expect("no response")
    }

    /// The response with transaction `txid`, or `None` after `wait`. Other
    /// arrivals are queued for `recv`, except answers to transactions
    /// already answered (a retransmission's second answer). Over TCP only
    /// a final wait is safe: a cancelled frame read loses its bytes.
    async fn response_within(&mut self, txid: TransactionId, wait: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.arrival(deadline, Some(txid)).await? {
                Incoming::Stun(bytes)
                    if Message::from_bytes(&bytes).is_ok_and(|m| m.transaction_id() == txid) =>
                {
                    self.answered.push(txid);
                    return Some(bytes);
                }
                other => self.pending.push(other),
            }
        }
    }

    /// Sends a signed request, doing the 401/438 nonce exchange as needed.
    pub async fn authed(
        &mut self,
        method: Method,
        attrs: impl Fn(&mut MessageWriteVec, TransactionId),
    ) -> Vec<u8> {
        for _ in 0..3 {
            let resp = self.request(method, self.nonce.is_some(), &attrs).await;
            match error_code(&resp) {
                Some(401) | Some(438) if self.take_nonce(&resp) => continue,
                _ => return resp,
            }
        }
        panic!("authentication did not converge");
    }

    /// Records the NONCE of a 401/438; false if it repeats the current one.
    pub fn take_nonce(&mut self, resp: &[u8]) -> bool {
        let msg = Message::from_bytes(resp).unwrap();
        let Ok(nonce) = msg.attribute::<Nonce>() else {
            return false;
        };
        let nonce = nonce.nonce().to_owned();
        let fresh = self.nonce.as_deref() != Some(nonce.as_str());
        self.nonce = Some(nonce);
        fresh
    }

    /// Allocates a UDP relay; panics on failure.
    pub async fn allocate(&mut self) -> SocketAddr {
        let resp = self.try_allocate().await;
        assert_eq!(error_code(&resp), None, "allocate failed: {resp:?}");
        relayed_addr(&resp)
    }

    pub async fn try_allocate(&mut self) -> Vec<u8> {
        self.authed(ALLOCATE, |w, _| {
            w.add_attribute(&RequestedTransport::new(RequestedTransport::UDP))
                .unwrap();
        })
        .await
    }

    pub async fn refresh(&mut self, lifetime: u32) -> Vec<u8> {
        self.authed(REFRESH, move |w, _| {
            w.add_attribute(&Lifetime::new(lifetime)).unwrap();
        })
        .await
    }

    pub async fn create_permission(&mut self, peers: &[SocketAddr]) -> Vec<u8> {
        let peers = peers.to_vec();
        self.authed(CREATE_PERMISSION, move |w, txid| {
            for p in &peers {
                w.add_attribute(&XorPeerAddress::new(*p, txid)).unwrap();
            }
        })
        .await
    }

    pub async fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Vec<u8> {
        self.authed(CHANNEL_BIND, move |w, txid| {
            w.add_attribute(&ChannelNumber::new(channel)).unwrap();
            w.add_attribute(&XorPeerAddress::new(peer, txid)).unwrap();
        })
        .await
    }

    pub async fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let txid = TransactionId::generate();
        let mut w = Message::builder(
            MessageType::from_class_method(MessageClass::Indication, SEND),
            txid,
            MessageWriteVec::new(),
        );
        w.add_attribute(&XorPeerAddress::new(peer, txid)).unwrap();
        w.add_attribute(&Data::new(data)).unwrap();
        let bytes = w.finish();
        self.send_raw(&bytes).await;
    }

    pub async fn send_channel_data(&mut self, channel: u16, data: &[u8]) {
        let pad = matches!(self.conn, Conn::Tcp(_));
        let bytes = turn_server::core::channel_data(channel, data, pad);
        self.send_raw(&bytes).await;
    }

    /// The next Data indication: (peer, data).
    pub async fn recv_data_indication(&mut self) -> (SocketAddr, Vec<u8>) {
        loop {
            if let Incoming::Stun(bytes) = self.recv().await {
                let msg = Message::from_bytes(&bytes).unwrap();
                if msg.method() == DATA && msg.class() == MessageClass::Indication {
                    let peer = msg
                        .attribute::<XorPeerAddress>()
                        .unwrap()
                        .addr(msg.transaction_id());
                    let data = msg.attribute::<Data<'_>>().unwrap().data().to_vec();
                    return (peer, data);
                }
            }
        }
    }
}

pub fn error_code(resp: &[u8]) -> Option<u16> {
    let msg = Message::from_bytes(resp).expect("response parses");
    msg.attribute::<ErrorCode>().ok().map(|e| e.code())
}

pub fn is_success(resp: &[u8]) -> bool {
    Message::from_bytes(resp).unwrap().class() == MessageClass::Success
}

pub fn relayed_addr(resp: &[u8]) -> SocketAddr {
    let msg = Message::from_bytes(resp).unwrap();
    msg.attribute::<XorRelayedAddress>()
        .expect("XOR-RELAYED-ADDRESS")
        .addr(msg.transaction_id())
}

pub fn mapped_addr(resp: &[u8]) -> SocketAddr {
    let msg = Message::from_bytes(resp).unwrap();
    msg.attribute::<XorMappedAddress>()
        .expect("XOR-MAPPED-ADDRESS")
        .addr(msg.transaction_id())
}

pub fn lifetime(resp: &[u8]) -> u32 {
    let msg = Message::from_bytes(resp).unwrap();
    msg.attribute::<Lifetime>().expect("LIFETIME").seconds()
}

/// A UDP peer on loopback that the test drives directly.
pub struct Peer {
    pub sock: UdpSocket,
}

impl Peer {
    pub async fn bind(ip: &str) -> Self {
        Self {
            sock: UdpSocket::bind(format!("{ip}:0")).await.unwrap(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    pub async fn recv(&self) -> (Vec<u8>, SocketAddr) {
        self.recv_within(WAIT).await.expect("peer got nothing")
    }

    pub async fn recv_within(&self, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; 65536];
        let (n, from) = tokio::time::timeout(wait, self.sock.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        buf.truncate(n);
        Some((buf, from))
    }

    pub async fn send(&self, to: SocketAddr, data: &[u8]) {
        self.sock.send_to(data, to).await.unwrap();
    }
}

/// Waits until the metric reaches `want` (metrics publish asynchronously).
pub async fn wait_metric(server: &TestServer, name: &str, want: impl Fn(u64) -> bool) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = server.metric(name).await;
        if want(v) || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Path of a coturn utility. A missing one fails the test (`scripts/setup.sh
/// --test` installs Debian's coturn package): an interop test that did not
/// run must not count as passed.
pub fn coturn_tool(name: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found on PATH: install Debian's coturn package (scripts/setup.sh --test)")
        })
}

/// A free UDP port on 127.0.0.1 (bound then released).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child when dropped, so a failing test leaves no process behind.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `turnutils_peer` (a UDP echo) on a free loopback port and waits
/// until it echoes.
pub async fn start_echo_peer(tool: &std::path::Path) -> (ChildGuard, u16) {
    for _ in 0..5 {
        let port = free_udp_port();
        let child = std::process::Command::new(tool)
            .args(["-L", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn turnutils_peer");
        let guard = ChildGuard(child);
        let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..50 {
            probe.send_to(b"ping", ("127.0.0.1", port)).await.unwrap();
            let mut buf = [0u8; 16];
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(100), probe.recv_from(&mut buf)).await
                && &buf[..n] == b"ping"
            {
                return (guard, port);
            }
        }
    }
    panic!("turnutils_peer never echoed");
}

/// The real `turn-server` binary, started with `args`; returns it with the
/// `turn-server listening ...` line it prints once bound.
pub fn spawn_server_binary<I, S>(args: I) -> (ChildGuard, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_turn-server"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn turn-server");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("listening line");
    (ChildGuard(child), line)
}
