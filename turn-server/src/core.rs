//! The Sans-IO TURN server (RFC 8656 over RFC 8489 STUN).
//!
//! No sockets, no clock, no RNG: the driver feeds datagrams, stream frames
//! and the time in, and drains [`Transmit`]s and [`Event`]s out. Relay ports
//! are bound by the driver when asked ([`Event::BindRelay`]) and reported
//! back with [`Server::handle_relay_bound`].

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use stun_types::AddressFamily;
use stun_types::attribute::{
    ErrorCode, Fingerprint, MessageIntegrity, Nonce, Realm, Software, Username, XorMappedAddress,
};
use stun_types::message::{
    BINDING, IntegrityAlgorithm, IntegrityKey, LongTermKeyCredentials, Message, MessageClass, MessageType,
    MessageWriteVec, Method, TransactionId,
};
use stun_types::prelude::*;
use tracing::{debug, trace};
use turn_types::attribute::{
    ChannelNumber, Data, EvenPort, Lifetime, RequestedAddressFamily, RequestedTransport, XorPeerAddress,
    XorRelayedAddress,
};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND};

use crate::auth::{AuthError, Credentials, NonceCheck, NonceIssuer};
use crate::filter::PeerFilter;
use crate::rate::{Bucket, PerIpLimiter};

/// Channel numbers a client may bind (RFC 8656 §12: 0x4000 through 0x4FFF).
pub const CHANNEL_MIN: u16 = 0x4000;
pub const CHANNEL_MAX: u16 = 0x4FFF;
/// RFC 5766 §11 allowed up to 0x7FFF; older clients (Debian's coturn 4.6
/// `turnutils_uclient`) still pick from that range.
pub const CHANNEL_MAX_RFC5766: u16 = 0x7FFF;

/// Largest STUN message or ChannelData frame accepted on a stream: the
/// 16-bit length field plus its header.
pub const MAX_FRAME: usize = 4 + 0xFFFF + 3;

/// Time is an input: the monotonic clock for lifetimes and rates, and wall
/// time in unix seconds for REST credential expiry and nonces.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub unix_secs: u64,
}

/// How the client reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// The client-side 5-tuple that identifies an allocation (RFC 8656 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}

/// Identifies one allocation for the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocationId(pub u64);

impl std::fmt::Display for AllocationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a{}", self.0)
    }
}

/// Relayed address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn of(addr: SocketAddr) -> Self {
        if addr.ip().to_canonical().is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// Where a [`Transmit`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Back to a client over the transport it used.
    Client(FiveTuple),
    /// Out of a relay port to a peer.
    Peer { relay: SocketAddr, peer: SocketAddr },
}

/// A datagram or stream frame to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub destination: Destination,
    pub payload: Vec<u8>,
}

/// Side effects the driver performs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Bind a relay port for this allocation, then call
    /// [`Server::handle_relay_bound`].
    BindRelay {
        allocation: AllocationId,
        family: Family,
        even_port: bool,
    },
    /// Close this relay port: its allocation is gone.
    ReleaseRelay {
        allocation: AllocationId,
        relay: SocketAddr,
    },
}

/// Limits and timers. Defaults follow RFC 8656 and common deployments.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub realm: String,
    pub credentials: Credentials,
    pub peer_filter: PeerFilter,
    /// Whether relay ports of each family can be bound.
    pub relay_ipv4: bool,
    pub relay_ipv6: bool,
    /// RFC 8656 §3.2: 10 minutes.
    pub default_lifetime: Duration,
    /// RFC 8656 §7.2 recommends capping at 1 hour.
    pub max_lifetime: Duration,
    /// RFC 8656 §9: 300 s, fixed.
    pub permission_lifetime: Duration,
    /// RFC 8656 §12: 10 minutes.
    pub channel_lifetime: Duration,
    pub nonce_lifetime: Duration,
    /// Allocations per user (the user part of a REST username): 486 beyond.
    pub user_quota: u32,
    /// Allocations per client IP: 486 beyond.
    pub ip_quota: u32,
    /// Allocations in total: 508 beyond.
    pub max_allocations: u32,
    pub max_permissions: usize,
    pub max_channels: usize,
    /// Accept RFC 5766 channel numbers up to 0x7FFF (off: RFC 8656 range).
    pub rfc5766_channels: bool,
    /// Relayed bytes per second per allocation, both directions.
    pub allocation_bandwidth: Option<u64>,
    /// Relayed bytes per second for the whole server.
    pub total_bandwidth: Option<u64>,
    /// Requests per second per source IP that has no allocation.
    pub unauth_rate: f64,
    pub unauth_burst: f64,
    /// Source IPs tracked by the unauthenticated limiter.
    pub limiter_max_ips: usize,
    pub software: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            realm: "wave".to_owned(),
            credentials: Credentials::default(),
            peer_filter: PeerFilter::default(),
            relay_ipv4: true,
            relay_ipv6: false,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(600),
            user_quota: 12,
            ip_quota: 64,
            max_allocations: 16_000,
            max_permissions: 32,
            max_channels: 32,
            rfc5766_channels: false,
            allocation_bandwidth: None,
            total_bandwidth: None,
            unauth_rate: 20.0,
            unauth_burst: 50.0,
            limiter_max_ips: 65_536,
            software: None,
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub allocations: u64,
    pub allocations_created: u64,
    pub packets_relayed: u64,
    pub bytes_relayed: u64,
    pub auth_failures: u64,
    pub denied_peers: u64,
    pub rate_limited: u64,
    pub malformed: u64,
    pub dropped: u64,
    pub limiter_tracked_ips: u64,
}

/// The TURN server state machine.
pub struct Server {
    cfg: ServerConfig,
    nonces: NonceIssuer,
    txid_seed: u128,
    txid_counter: u64,
    next_id: u64,
    allocations: HashMap<AllocationId, Allocation>,
    by_five: HashMap<FiveTuple, AllocationId>,
    by_relay: HashMap<SocketAddr, AllocationId>,
    per_user: HashMap<Box<str>, u32>,
    per_ip: HashMap<IpAddr, u32>,
    limiter: PerIpLimiter,
    total_bucket: Bucket,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    next_sweep: Instant,
    stats: Stats,
}

const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Attributes we understand; any other comprehension-required one gets 420
/// (RFC 8489 §6.3.1). DONT-FRAGMENT, RESERVATION-TOKEN, PASSWORD-ALGORITHM
/// and USERHASH are deliberately absent: we do not implement them.
const SUPPORTED: &[stun_types::attribute::AttributeType] = &[
    Username::TYPE,
    Realm::TYPE,
    Nonce::TYPE,
    MessageIntegrity::TYPE,
    XorMappedAddress::TYPE,
    ErrorCode::TYPE,
    RequestedTransport::TYPE,
    RequestedAddressFamily::TYPE,
    Lifetime::TYPE,
    XorPeerAddress::TYPE,
    XorRelayedAddress::TYPE,
    Data::TYPE,
    ChannelNumber::TYPE,
    EvenPort::TYPE,
];

struct Allocation {
    five: FiveTuple,
    username: Box<str>,
    user: Box<str>,
    key: IntegrityKey,
    txid: TransactionId,
    fingerprint: bool,
    family: Family,
    /// `None` while the driver binds the port.
    relay: Option<SocketAddr>,
    /// Lifetime granted at Allocate, repeated to retransmissions.
    granted: u32,
    expires: Instant,
    permissions: Vec<(IpAddr, Instant)>,
    channels: Vec<Channel>,
    bucket: Bucket,
}

#[derive(Clone, Copy)]
struct Channel {
    number: u16,
    peer: SocketAddr,
    expires: Instant,
}

struct Authed {
    username: String,
    user: String,
    key: IntegrityKey,
}

impl Server {
    /// `seed` keys the stateless nonces and seeds indication transaction
    /// ids; the driver draws it from the OS RNG.
    pub fn new(cfg: ServerConfig, seed: [u8; 32], now: Instant) -> Self {
        let nonces = NonceIssuer::new(seed, cfg.nonce_lifetime.as_secs().max(1));
        let mut txid_seed = [0u8; 16];
        txid_seed.copy_from_slice(&seed[16..]);
        let limiter = PerIpLimiter::new(cfg.unauth_rate, cfg.unauth_burst, cfg.limiter_max_ips, now);
        let total_burst = cfg.total_bandwidth.unwrap_or(0) as f64;
        Self {
            cfg,
            nonces,
            txid_seed: u128::from_be_bytes(txid_seed),
            txid_counter: 0,
            next_id: 1,
            allocations: HashMap::new(),
            by_five: HashMap::new(),
            by_relay: HashMap::new(),
            per_user: HashMap::new(),
            per_ip: HashMap::new(),
            limiter,
            total_bucket: Bucket::full(total_burst, now),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_sweep: now + SWEEP_INTERVAL,
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    pub fn stats(&self) -> Stats {
        Stats {
            allocations: self.allocations.len() as u64,
            limiter_tracked_ips: self.limiter.tracked() as u64,
            ..self.stats
        }
    }

    /// A datagram (UDP) or one complete frame (TCP/TLS) from a client.
    pub fn handle_client(&mut self, now: Now, five: FiveTuple, bytes: &[u8]) {
        let Some(&first) = bytes.first() else {
            return;
        };
        match first >> 6 {
            0 => self.handle_stun(now, five, bytes),
            1 => self.handle_channel_data(now, five, bytes),
            _ => {
                trace!(client = ?five.client, "neither STUN nor ChannelData");
                self.stats.malformed += 1;
            }
        }
    }

    /// A datagram a peer sent to a relay port.
    pub fn handle_peer(&mut self, now: Now, relay: SocketAddr, peer: SocketAddr, data: &[u8]) {
        let Some(&id) = self.by_relay.get(&relay) else {
            self.stats.dropped += 1;
            return;
        };
        let t = now.instant;
        let Some(a) = self.allocations.get_mut(&id) else {
            return;
        };
        if a.expires <= t || !has_permission(a, peer.ip(), t) {
            trace!(allocation = %id, "peer data without permission");
            self.stats.dropped += 1;
            return;
        }
        // Permissions are per IP (RFC 8656 §9); the filter may be narrower
        // (exact ports), and a peer we would not send to does not reach
        // the client either.
        if let Err(why) = self.cfg.peer_filter.check_addr(peer) {
            trace!(allocation = %id, ?why, "data from a denied peer");
            self.stats.denied_peers += 1;
            return;
        }
        if !take_bandwidth(&self.cfg, &mut self.total_bucket, a, t, data.len()) {
            self.stats.dropped += 1;
            return;
        }
        let five = a.five;
        let channel = a
            .channels
            .iter()
            .find(|c| c.peer == peer && c.expires > t)
            .map(|c| c.number);
        let payload = match channel {
            Some(number) => channel_data(number, data, five.transport.is_stream()),
            None => {
                let txid = self.next_txid();
                let mut w = Message::builder(
                    MessageType::from_class_method(MessageClass::Indication, DATA),
                    txid,
                    MessageWriteVec::with_capacity(36 + data.len()),
                );
                add(&mut w, &XorPeerAddress::new(peer, txid));
                add(&mut w, &Data::new(data));
                w.finish()
            }
        };
        self.stats.packets_relayed += 1;
        self.stats.bytes_relayed += data.len() as u64;
        self.transmits.push_back(Transmit {
            destination: Destination::Client(five),
            payload,
        });
    }

    /// The driver bound (or failed to bind) the relay port it was asked for.
    pub fn handle_relay_bound(&mut self, now: Now, allocation: AllocationId, result: Result<SocketAddr, ()>) {
        let Some(a) = self.allocations.get_mut(&allocation) else {
            // Deleted while binding (its TCP connection closed).
            if let Ok(relay) = result {
                self.events.push_back(Event::ReleaseRelay { allocation, relay });
            }
            return;
        };
        match result {
            Ok(relay) => {
                a.relay = Some(relay);
                a.expires = now.instant + Duration::from_secs(u64::from(a.granted));
                self.by_relay.insert(relay, allocation);
                self.stats.allocations_created += 1;
                debug!(%allocation, %relay, "allocated");
                self.allocate_success(allocation);
            }
            Err(()) => {
                let (five, txid, key, fp) = (a.five, a.txid, a.key.clone(), a.fingerprint);
                self.remove_allocation(allocation);
                let mut w = Message::builder(
                    MessageType::from_class_method(MessageClass::Error, ALLOCATE),
                    txid,
                    MessageWriteVec::new(),
                );
                add_error(&mut w, ErrorCode::INSUFFICIENT_CAPACITY);
                self.finish(five, w, Some(&key), fp);
            }
        }
    }

    /// A stream transport closed: its allocation goes with it (RFC 8656 §3.1).
    pub fn handle_connection_closed(&mut self, five: FiveTuple) {
        if let Some(id) = self.by_five.get(&five).copied() {
            self.remove_allocation(id);
        }
    }

    pub fn handle_timeout(&mut self, now: Now) {
        let t = now.instant;
        if t < self.next_sweep {
            return;
        }
        self.next_sweep = t + SWEEP_INTERVAL;
        let mut expired: Vec<AllocationId> = Vec::new();
        for (id, a) in &mut self.allocations {
            if a.expires <= t {
                expired.push(*id);
                continue;
            }
            a.permissions.retain(|p| p.1 > t);
            a.channels.retain(|c| c.expires > t);
        }
        expired.sort_unstable();
        for id in expired {
            debug!(allocation = %id, "expired");
            self.remove_allocation(id);
        }
        self.limiter.sweep(t);
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_sweep)
    }

    fn handle_stun(&mut self, now: Now, five: FiveTuple, bytes: &[u8]) {
        let msg = match Message::from_bytes(bytes) {
            Ok(msg) => msg,
            Err(e) => {
                debug!(client = ?five.client, error = %e, "malformed STUN");
                self.stats.malformed += 1;
                return;
            }
        };
        if msg.as_bytes().len() != bytes.len() {
            debug!(client = ?five.client, "trailing bytes after STUN message");
            self.stats.malformed += 1;
            return;
        }
        match msg.class() {
            MessageClass::Request => self.handle_request(now, five, &msg),
            MessageClass::Indication if msg.method() == SEND => self.handle_send(now, five, &msg),
            _ => trace!(client = ?five.client, "ignored STUN message"),
        }
    }

    fn handle_request(&mut self, now: Now, five: FiveTuple, msg: &Message<'_>) {
        let t = now.instant;
        let has_allocation = self.live_allocation(five, t).is_some();
        if !has_allocation && !self.limiter.allow(t, five.client.ip()) {
            self.stats.rate_limited += 1;
            return;
        }
        let fp = msg.has_attribute(Fingerprint::TYPE);
        let unknown: Vec<_> = msg
            .iter_attributes()
            .map(|(_, a)| a.get_type())
            .filter(|t| t.comprehension_required() && !SUPPORTED.contains(t))
            .collect();
        if !unknown.is_empty() {
            debug!(client = ?five.client, ?unknown, "unknown comprehension-required attributes");
            let mut w = Message::builder_error(msg, MessageWriteVec::new());
            add_error(&mut w, ErrorCode::UNKNOWN_ATTRIBUTE);
            add(&mut w, &stun_types::attribute::UnknownAttributes::new(&unknown));
            self.finish(five, w, None, fp);
            return;
        }
        let method = msg.method();
        if method == BINDING {
            let mut w = Message::builder_success(msg, MessageWriteVec::new());
            add(&mut w, &XorMappedAddress::new(five.client, msg.transaction_id()));
            self.finish(five, w, None, fp);
            return;
        }
        if ![ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND].contains(&method) {
            self.error(five, msg, ErrorCode::BAD_REQUEST, None);
            return;
        }
        let Some(auth) = self.authenticate(now, five, msg, method) else {
            return;
        };
        match method {
            m if m == ALLOCATE => self.allocate(now, five, msg, auth),
            m if m == REFRESH => self.refresh(now, five, msg, &auth.key),
            m if m == CREATE_PERMISSION => self.create_permission(now, five, msg, &auth.key),
            _ => self.channel_bind(now, five, msg, &auth.key),
        }
    }

    /// RFC 8489 §9.2.4. Sends the error itself and returns `None` on failure.
    fn authenticate(
        &mut self,
        now: Now,
        five: FiveTuple,
        msg: &Message<'_>,
        method: Method,
    ) -> Option<Authed> {
        if !msg.has_attribute(MessageIntegrity::TYPE) {
            self.challenge(now, five, msg, ErrorCode::UNAUTHORIZED);
            return None;
        }
        let (Ok(username), Ok(realm), Ok(nonce)) = (
            msg.attribute::<Username>(),
            msg.attribute::<Realm>(),
            msg.attribute::<Nonce>(),
        ) else {
            self.error(five, msg, ErrorCode::BAD_REQUEST, None);
            return None;
        };
        if realm.realm() != self.cfg.realm {
            self.stats.auth_failures += 1;
            self.challenge(now, five, msg, ErrorCode::UNAUTHORIZED);
            return None;
        }
        if self.nonces.check(nonce.nonce(), now.unix_secs, five.client.ip()) == NonceCheck::Stale {
            self.challenge(now, five, msg, ErrorCode::STALE_NONCE);
            return None;
        }
        let username = username.username();
        let existing = self
            .live_allocation(five, now.instant)
            .filter(|_| method != ALLOCATE)
            .map(|id| &self.allocations[&id]);
        let authed = match existing {
            // Established allocations keep the key they were created with:
            // REST expiry is an Allocate-time check, or long calls die at
            // their first Refresh after the TTL.
            Some(a) if *a.username == *username => Authed {
                username: username.to_owned(),
                user: a.user.to_string(),
                key: a.key.clone(),
            },
            Some(a) => {
                if self.validate_as_user(msg, username).is_some() {
                    self.stats.auth_failures += 1;
                    let key = a.key.clone();
                    self.error(five, msg, ErrorCode::WRONG_CREDENTIALS, Some(&key));
                } else {
                    self.stats.auth_failures += 1;
                    self.challenge(now, five, msg, ErrorCode::UNAUTHORIZED);
                }
                return None;
            }
            None => match self.cfg.credentials.lookup(username) {
                Ok(id) => {
                    if method == ALLOCATE && id.expires.is_some_and(|exp| exp <= now.unix_secs) {
                        debug!(client = ?five.client, "expired REST credentials");
                        self.stats.auth_failures += 1;
                        self.challenge(now, five, msg, ErrorCode::UNAUTHORIZED);
                        return None;
                    }
                    Authed {
                        key: long_term_key(username, &self.cfg.realm, &id.password),
                        username: username.to_owned(),
                        user: id.user,
                    }
                }
                Err(AuthError::UnknownUser | AuthError::Expired) => {
                    self.stats.auth_failures += 1;
                    self.challenge(now, five, msg, ErrorCode::UNAUTHORIZED);
                    return None;
                }
            },
        };
        if msg.validate_integrity_with_key(&authed.key).is_err() {
            debug!(client = ?five.client, "bad MESSAGE-INTEGRITY");
            self.stats.auth_failures += 1;
            self.challenge(now, five, msg, ErrorCode::UNAUTHORIZED);
            return None;
        }
        Some(authed)
    }

    /// Whether the message verifies under `username`'s own credentials.
    fn validate_as_user(&self, msg: &Message<'_>, username: &str) -> Option<()> {
        let id = self.cfg.credentials.lookup(username).ok()?;
        let key = long_term_key(username, &self.cfg.realm, &id.password);
        msg.validate_integrity_with_key(&key).ok().map(|_| ())
    }

    fn allocate(&mut self, now: Now, five: FiveTuple, msg: &Message<'_>, auth: Authed) {
        let t = now.instant;
        let key = auth.key.clone();
        if let Some(id) = self.live_allocation(five, t) {
            let a = &self.allocations[&id];
            if a.txid == msg.transaction_id() {
                // A retransmission: answer again, or stay quiet while the
                // relay port is still being bound.
                if a.relay.is_some() {
                    self.allocate_success(id);
                }
                return;
            }
            self.error(five, msg, ErrorCode::ALLOCATION_MISMATCH, Some(&key));
            return;
        }
        let Ok(transport) = msg.attribute::<RequestedTransport>() else {
            self.error(five, msg, ErrorCode::BAD_REQUEST, Some(&key));
            return;
        };
        if transport.protocol() != RequestedTransport::UDP {
            self.error(five, msg, ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL, Some(&key));
            return;
        }
        let family = match msg.attribute::<RequestedAddressFamily>() {
            Ok(f) if f.family() == AddressFamily::IPV6 => Family::V6,
            _ => Family::V4,
        };
        let family_ok = match family {
            Family::V4 => self.cfg.relay_ipv4,
            Family::V6 => self.cfg.relay_ipv6,
        };
        if !family_ok {
            self.error(five, msg, ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED, Some(&key));
            return;
        }
        let even_port = msg.has_attribute(EvenPort::TYPE);
        let user_count = self.per_user.get(auth.user.as_str()).copied().unwrap_or(0);
        let ip = five.client.ip().to_canonical();
        let ip_count = self.per_ip.get(&ip).copied().unwrap_or(0);
        if user_count >= self.cfg.user_quota || ip_count >= self.cfg.ip_quota {
            debug!(client = ?five.client, user_count, ip_count, "allocation quota reached");
            self.error(five, msg, ErrorCode::ALLOCATION_QUOTA_REACHED, Some(&key));
            return;
        }
        if self.allocations.len() >= self.cfg.max_allocations as usize {
            self.error(five, msg, ErrorCode::INSUFFICIENT_CAPACITY, Some(&key));
            return;
        }
        let lifetime = self.lifetime(msg.attribute::<Lifetime>().ok().map(|l| l.seconds()));
        let id = AllocationId(self.next_id);
        self.next_id += 1;
        *self.per_user.entry(auth.user.clone().into()).or_default() += 1;
        *self.per_ip.entry(ip).or_default() += 1;
        let bucket_burst = self.cfg.allocation_bandwidth.unwrap_or(0) as f64;
        self.allocations.insert(
            id,
            Allocation {
                five,
                username: auth.username.into(),
                user: auth.user.into(),
                key: auth.key,
                txid: msg.transaction_id(),
                fingerprint: msg.has_attribute(Fingerprint::TYPE),
                family,
                relay: None,
                granted: lifetime.as_secs() as u32,
                expires: t + lifetime,
                permissions: Vec::new(),
                channels: Vec::new(),
                bucket: Bucket::full(bucket_burst, t),
            },
        );
        self.by_five.insert(five, id);
        self.events.push_back(Event::BindRelay {
            allocation: id,
            family,
            even_port,
        });
    }

    fn allocate_success(&mut self, id: AllocationId) {
        let a = &self.allocations[&id];
        let Some(relay) = a.relay else { return };
        let remaining = a.granted;
        let (five, txid, key, fp) = (a.five, a.txid, a.key.clone(), a.fingerprint);
        let mut w = Message::builder(
            MessageType::from_class_method(MessageClass::Success, ALLOCATE),
            txid,
            MessageWriteVec::new(),
        );
        add(&mut w, &XorRelayedAddress::new(relay, txid));
        add(&mut w, &Lifetime::new(remaining));
        add(&mut w, &XorMappedAddress::new(five.client, txid));
        self.finish(five, w, Some(&key), fp);
    }

    fn refresh(&mut self, now: Now, five: FiveTuple, msg: &Message<'_>, key: &IntegrityKey) {
        let Some(id) = self.live_allocation(five, now.instant) else {
            self.error(five, msg, ErrorCode::ALLOCATION_MISMATCH, Some(key));
            return;
        };
        if let Ok(f) = msg.attribute::<RequestedAddressFamily>() {
            let want = if f.family() == AddressFamily::IPV6 {
                Family::V6
            } else {
                Family::V4
            };
            if want != self.allocations[&id].family {
                self.error(five, msg, ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH, Some(key));
                return;
            }
        }
        let requested = msg.attribute::<Lifetime>().ok().map(|l| l.seconds());
        let granted = if requested == Some(0) {
            debug!(allocation = %id, "deleted by refresh");
            self.remove_allocation(id);
            0
        } else {
            let lifetime = self.lifetime(requested);
            if let Some(a) = self.allocations.get_mut(&id) {
                a.expires = now.instant + lifetime;
            }
            lifetime.as_secs() as u32
        };
        let mut w = Message::builder_success(msg, MessageWriteVec::new());
        add(&mut w, &Lifetime::new(granted));
        let fp = msg.has_attribute(Fingerprint::TYPE);
        self.finish(five, w, Some(key), fp);
    }

    fn create_permission(&mut self, now: Now, five: FiveTuple, msg: &Message<'_>, key: &IntegrityKey) {
        let t = now.instant;
        let Some(id) = self.live_allocation(five, t) else {
            self.error(five, msg, ErrorCode::ALLOCATION_MISMATCH, Some(key));
            return;
        };
        let family = self.allocations[&id].family;
        let txid = msg.transaction_id();
        // Every XOR-PEER-ADDRESS, not just the first (RFC 8656 §9.2).
        let mut peers: Vec<IpAddr> = Vec::new();
        for n in 0.. {
            match msg.nth_attribute::<XorPeerAddress>(n) {
                Ok(p) => peers.push(p.addr(txid).ip()),
                Err(stun_types::message::StunParseError::MissingAttribute(_)) => break,
                Err(_) => {
                    self.error(five, msg, ErrorCode::BAD_REQUEST, Some(key));
                    return;
                }
            }
            if peers.len() > self.cfg.max_permissions {
                self.error(five, msg, ErrorCode::INSUFFICIENT_CAPACITY, Some(key));
                return;
            }
        }
        if peers.is_empty() {
            self.error(five, msg, ErrorCode::BAD_REQUEST, Some(key));
            return;
        }
        for &ip in &peers {
            if Family::of(SocketAddr::new(ip, 0)) != family {
                self.error(five, msg, ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH, Some(key));
                return;
            }
            if let Err(why) = self.cfg.peer_filter.check_ip(ip) {
                debug!(allocation = %id, ?why, "denied peer");
                self.stats.denied_peers += 1;
                self.error(five, msg, ErrorCode::FORBIDDEN, Some(key));
                return;
            }
        }
        let a = self.allocations.get_mut(&id).expect("live_allocation found it");
        a.permissions.retain(|p| p.1 > t);
        let new = peers
            .iter()
            .filter(|ip| !a.permissions.iter().any(|p| p.0 == ip.to_canonical()))
            .count();
        if a.permissions.len() + new > self.cfg.max_permissions {
            self.error(five, msg, ErrorCode::INSUFFICIENT_CAPACITY, Some(key));
            return;
        }
        let expires = t + self.cfg.permission_lifetime;
        for ip in peers {
            install_permission(a, ip, expires);
        }
        let w = Message::builder_success(msg, MessageWriteVec::new());
        let fp = msg.has_attribute(Fingerprint::TYPE);
        self.finish(five, w, Some(key), fp);
    }

    fn channel_bind(&mut self, now: Now, five: FiveTuple, msg: &Message<'_>, key: &IntegrityKey) {
        let t = now.instant;
        let Some(id) = self.live_allocation(five, t) else {
            self.error(five, msg, ErrorCode::ALLOCATION_MISMATCH, Some(key));
            return;
        };
        let (Ok(number), Ok(peer)) = (
            msg.attribute::<ChannelNumber>(),
            msg.attribute::<XorPeerAddress>(),
        ) else {
            self.error(five, msg, ErrorCode::BAD_REQUEST, Some(key));
            return;
        };
        let number = number.channel();
        let peer = peer.addr(msg.transaction_id());
        trace!(allocation = %id, channel = number, %peer, "channel bind");
        let max = if self.cfg.rfc5766_channels {
            CHANNEL_MAX_RFC5766
        } else {
            CHANNEL_MAX
        };
        if !(CHANNEL_MIN..=max).contains(&number) {
            self.error(five, msg, ErrorCode::BAD_REQUEST, Some(key));
            return;
        }
        if Family::of(peer) != self.allocations[&id].family {
            self.error(five, msg, ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH, Some(key));
            return;
        }
        if let Err(why) = self.cfg.peer_filter.check_addr(peer) {
            debug!(allocation = %id, ?why, "denied peer");
            self.stats.denied_peers += 1;
            self.error(five, msg, ErrorCode::FORBIDDEN, Some(key));
            return;
        }
        let (max_channels, max_permissions) = (self.cfg.max_channels, self.cfg.max_permissions);
        let a = self.allocations.get_mut(&id).expect("live_allocation found it");
        a.channels.retain(|c| c.expires > t);
        a.permissions.retain(|p| p.1 > t);
        // RFC 8656 §11.2: a channel stays with one peer and a peer with one
        // channel for the binding's lifetime.
        let conflict = a
            .channels
            .iter()
            .any(|c| (c.number == number) != (c.peer == peer));
        let existing = a.channels.iter().position(|c| c.number == number);
        let new_permission = !a.permissions.iter().any(|p| p.0 == peer.ip().to_canonical());
        let over = (existing.is_none() && a.channels.len() >= max_channels)
            || (new_permission && a.permissions.len() >= max_permissions);
        if conflict {
            self.error(five, msg, ErrorCode::BAD_REQUEST, Some(key));
            return;
        }
        if over {
            self.error(five, msg, ErrorCode::INSUFFICIENT_CAPACITY, Some(key));
            return;
        }
        let expires = t + self.cfg.channel_lifetime;
        match existing {
            Some(i) => a.channels[i].expires = expires,
            None => a.channels.push(Channel {
                number,
                peer,
                expires,
            }),
        }
        install_permission(a, peer.ip(), t + self.cfg.permission_lifetime);
        let w = Message::builder_success(msg, MessageWriteVec::new());
        let fp = msg.has_attribute(Fingerprint::TYPE);
        self.finish(five, w, Some(key), fp);
    }

    fn handle_send(&mut self, now: Now, five: FiveTuple, msg: &Message<'_>) {
        let t = now.instant;
        let Some(id) = self.live_allocation(five, t) else {
            self.stats.dropped += 1;
            return;
        };
        let (Ok(peer), Ok(data)) = (msg.attribute::<XorPeerAddress>(), msg.attribute::<Data<'_>>()) else {
            self.stats.malformed += 1;
            return;
        };
        if msg
            .iter_attributes()
            .any(|(_, a)| a.get_type().comprehension_required() && !SUPPORTED.contains(&a.get_type()))
        {
            self.stats.malformed += 1;
            return;
        }
        let peer = peer.addr(msg.transaction_id());
        self.relay_to_peer(t, id, peer, data.data());
    }

    fn handle_channel_data(&mut self, now: Now, five: FiveTuple, bytes: &[u8]) {
        let Some(header) = bytes.get(..4) else {
            self.stats.malformed += 1;
            return;
        };
        let number = u16::from_be_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let Some(data) = bytes.get(4..4 + len) else {
            self.stats.malformed += 1;
            return;
        };
        let t = now.instant;
        let Some(id) = self.live_allocation(five, t) else {
            self.stats.dropped += 1;
            return;
        };
        let Some(peer) = self.allocations[&id]
            .channels
            .iter()
            .find(|c| c.number == number && c.expires > t)
            .map(|c| c.peer)
        else {
            self.stats.dropped += 1;
            return;
        };
        self.relay_to_peer(t, id, peer, data);
    }

    fn relay_to_peer(&mut self, t: Instant, id: AllocationId, peer: SocketAddr, data: &[u8]) {
        if let Err(why) = self.cfg.peer_filter.check_addr(peer) {
            trace!(allocation = %id, ?why, "denied peer");
            self.stats.denied_peers += 1;
            return;
        }
        let a = self.allocations.get_mut(&id).expect("caller looked it up");
        let Some(relay) = a.relay else { return };
        if !has_permission(a, peer.ip(), t) {
            trace!(allocation = %id, "no permission for peer");
            self.stats.dropped += 1;
            return;
        }
        if !take_bandwidth(&self.cfg, &mut self.total_bucket, a, t, data.len()) {
            self.stats.dropped += 1;
            return;
        }
        self.stats.packets_relayed += 1;
        self.stats.bytes_relayed += data.len() as u64;
        self.transmits.push_back(Transmit {
            destination: Destination::Peer { relay, peer },
            payload: data.to_vec(),
        });
    }

    fn live_allocation(&self, five: FiveTuple, t: Instant) -> Option<AllocationId> {
        let id = *self.by_five.get(&five)?;
        (self.allocations.get(&id)?.expires > t).then_some(id)
    }

    /// RFC 8656 §7.2: the smaller of the requested and the maximum lifetime,
    /// but never below the default.
    fn lifetime(&self, requested: Option<u32>) -> Duration {
        let requested = requested.map_or(self.cfg.default_lifetime, |s| Duration::from_secs(u64::from(s)));
        requested
            .min(self.cfg.max_lifetime)
            .max(self.cfg.default_lifetime)
    }

    fn remove_allocation(&mut self, id: AllocationId) {
        let Some(a) = self.allocations.remove(&id) else {
            return;
        };
        if self.by_five.get(&a.five) == Some(&id) {
            self.by_five.remove(&a.five);
        }
        if let Some(relay) = a.relay {
            self.by_relay.remove(&relay);
            self.events.push_back(Event::ReleaseRelay {
                allocation: id,
                relay,
            });
        }
        decrement(&mut self.per_user, &a.user);
        decrement(&mut self.per_ip, &a.five.client.ip().to_canonical());
    }

    fn next_txid(&mut self) -> TransactionId {
        self.txid_counter = self.txid_counter.wrapping_add(1);
        TransactionId::from(self.txid_seed ^ u128::from(self.txid_counter))
    }

    /// 401 or 438 with a fresh NONCE and our REALM.
    fn challenge(&mut self, now: Now, five: FiveTuple, msg: &Message<'_>, code: u16) {
        let mut w = Message::builder_error(msg, MessageWriteVec::new());
        add_error(&mut w, code);
        match Realm::new(&self.cfg.realm) {
            Ok(realm) => add(&mut w, &realm),
            Err(e) => debug!(error = %e, "realm does not fit STUN"),
        }
        let nonce = self.nonces.issue(now.unix_secs, five.client.ip());
        match Nonce::new(&nonce) {
            Ok(n) => add(&mut w, &n),
            Err(e) => debug!(error = %e, "nonce does not fit STUN"),
        }
        let fp = msg.has_attribute(Fingerprint::TYPE);
        self.finish(five, w, None, fp);
    }

    fn error(&mut self, five: FiveTuple, msg: &Message<'_>, code: u16, key: Option<&IntegrityKey>) {
        debug!(client = ?five.client, method = %msg.method(), code, "error response");
        let mut w = Message::builder_error(msg, MessageWriteVec::new());
        add_error(&mut w, code);
        let fp = msg.has_attribute(Fingerprint::TYPE);
        self.finish(five, w, key, fp);
    }

    fn finish(
        &mut self,
        five: FiveTuple,
        mut w: MessageWriteVec,
        key: Option<&IntegrityKey>,
        fingerprint: bool,
    ) {
        if let Some(software) = &self.cfg.software
            && let Ok(s) = Software::new(software)
        {
            add(&mut w, &s);
        }
        if let Some(key) = key
            && let Err(e) = w.add_message_integrity_with_key(key, IntegrityAlgorithm::Sha1)
        {
            debug!(error = %e, "cannot sign response");
        }
        if fingerprint && let Err(e) = w.add_fingerprint() {
            debug!(error = %e, "cannot add FINGERPRINT");
        }
        self.transmits.push_back(Transmit {
            destination: Destination::Client(five),
            payload: w.finish(),
        });
    }
}

fn long_term_key(username: &str, realm: &str, password: &str) -> IntegrityKey {
    LongTermKeyCredentials::new(username.to_owned(), password.to_owned(), realm.to_owned())
        .make_key(IntegrityAlgorithm::Sha1)
}

fn has_permission(a: &Allocation, ip: IpAddr, t: Instant) -> bool {
    let ip = ip.to_canonical();
    a.permissions.iter().any(|p| p.0 == ip && p.1 > t)
}

fn install_permission(a: &mut Allocation, ip: IpAddr, expires: Instant) {
    let ip = ip.to_canonical();
    match a.permissions.iter_mut().find(|p| p.0 == ip) {
        Some(p) => p.1 = expires,
        None => a.permissions.push((ip, expires)),
    }
}

fn take_bandwidth(
    cfg: &ServerConfig,
    total: &mut Bucket,
    a: &mut Allocation,
    t: Instant,
    len: usize,
) -> bool {
    let cost = len as f64;
    if let Some(rate) = cfg.allocation_bandwidth {
        let rate = rate as f64;
        if !a.bucket.take(t, rate, rate, cost) {
            return false;
        }
    }
    if let Some(rate) = cfg.total_bandwidth {
        let rate = rate as f64;
        if !total.take(t, rate, rate, cost) {
            return false;
        }
    }
    true
}

fn decrement<K: std::hash::Hash + Eq + ?Sized>(
    map: &mut HashMap<impl std::borrow::Borrow<K> + std::hash::Hash + Eq, u32>,
    key: &K,
) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// A ChannelData frame (RFC 8656 §12.4); padded to 4 bytes on streams.
pub fn channel_data(number: u16, data: &[u8], pad: bool) -> Vec<u8> {
    let padded = if pad { (data.len() + 3) & !3 } else { data.len() };
    let mut out = Vec::with_capacity(4 + padded);
    out.extend_from_slice(&number.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    out.resize(4 + padded, 0);
    out
}

/// Length of the frame a stream carries next, from its first 4 bytes: a STUN
/// message (20-byte header + length) or a padded ChannelData frame.
pub fn stream_frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    match header[0] >> 6 {
        0 => Ok(20 + len),
        1 => Ok(4 + ((len + 3) & !3)),
        _ => Err(FrameError),
    }
}

/// A stream carried bytes that start neither a STUN message nor ChannelData.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stream frame is neither STUN nor ChannelData")]
pub struct FrameError;

fn add(w: &mut MessageWriteVec, attr: &dyn AttributeWrite) {
    if let Err(e) = w.add_attribute(attr) {
        // Our own responses add each attribute once and stay far below the
        // size limit; failing here is a bug, not bad input.
        debug!(error = %e, "cannot add attribute");
    }
}

fn add_error(w: &mut MessageWriteVec, code: u16) {
    let reason = match code {
        ErrorCode::BAD_REQUEST => "Bad Request",
        ErrorCode::UNAUTHORIZED => "Unauthorized",
        ErrorCode::FORBIDDEN => "Forbidden",
        ErrorCode::UNKNOWN_ATTRIBUTE => "Unknown Attribute",
        ErrorCode::ALLOCATION_MISMATCH => "Allocation Mismatch",
        ErrorCode::STALE_NONCE => "Stale Nonce",
        ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED => "Address Family not Supported",
        ErrorCode::WRONG_CREDENTIALS => "Wrong Credentials",
        ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL => "Unsupported Transport Protocol",
        ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH => "Peer Address Family Mismatch",
        ErrorCode::ALLOCATION_QUOTA_REACHED => "Allocation Quota Reached",
        ErrorCode::INSUFFICIENT_CAPACITY => "Insufficient Capacity",
        _ => "Error",
    };
    match ErrorCode::new(code, reason) {
        Ok(e) => add(w, &e),
        Err(e) => debug!(error = %e, code, "cannot encode ERROR-CODE"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5769 §2.4: a request signed with long-term credentials
    /// (username "マトリックス", realm "example.org", password "TheMatrIX"
    /// after SASLprep).
    const RFC5769_LONG_TERM: [u8; 116] = [
        0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29,
        0xda, 0x41, 0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88, 0xe3, 0x83, 0xaa, 0xe3,
        0x83, 0x83, 0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9, 0x00, 0x00, 0x00, 0x15, 0x00, 0x1c, 0x66, 0x2f, 0x2f,
        0x34, 0x39, 0x39, 0x6b, 0x39, 0x35, 0x34, 0x64, 0x36, 0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46,
        0x53, 0x54, 0x76, 0x79, 0x36, 0x34, 0x73, 0x41, 0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d, 0x70,
        0x6c, 0x65, 0x2e, 0x6f, 0x72, 0x67, 0x00, 0x00, 0x08, 0x00, 0x14, 0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6,
        0x4a, 0x3e, 0x02, 0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2, 0x8c, 0xa8, 0x96, 0x66,
    ];

    #[test]
    fn long_term_key_verifies_the_rfc5769_sample() {
        let msg = Message::from_bytes(&RFC5769_LONG_TERM).expect("the RFC's sample parses");
        let user = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
        let key = long_term_key(user, "example.org", "TheMatrIX");
        assert!(msg.validate_integrity_with_key(&key).is_ok());
        for wrong in [
            long_term_key(user, "example.org", "TheMatrix"),
            long_term_key(user, "example.com", "TheMatrIX"),
            long_term_key("matrix", "example.org", "TheMatrIX"),
        ] {
            assert!(msg.validate_integrity_with_key(&wrong).is_err());
        }
    }
}
