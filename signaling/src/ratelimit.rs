//! Limits per client: token buckets for POSTs (RFC 9725 §6: rate-limit
//! POST; RFC 6585 §4: 429) and a cap on concurrent HTTP connections, both
//! keyed by [`client_key`] (an IPv6 client is its /64) and both bounded in
//! memory. Time is an input.
//!
//! Nothing config-ish is imported here: [`crate::config`] re-exports
//! [`RateLimit`], and the chat's moderation takes [`Bucket`] from here.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub burst: u32,
    pub per_second: f64,
}

impl Default for RateLimit {
    /// 20 at once, 10 per second sustained per client.
    fn default() -> Self {
        RateLimit {
            burst: 20,
            per_second: 10.0,
        }
    }
}

/// At most this many clients have a bucket; past it the one idle longest is
/// forgotten (it starts full again, which is what idling would give it).
pub const MAX_TRACKED_CLIENTS: usize = 16_384;

/// Idle buckets forgotten per request, so that pruning is amortised and a
/// request never scans the table.
const PRUNE_PER_CHECK: usize = 4;

/// The unit limits are counted in: an IPv4 address, or an IPv6 /64 (one
/// subscriber's allocation: RFC 6177 §2, RFC 8273), so a client cannot
/// multiply its quota by cycling through the addresses it owns. An
/// IPv4-mapped IPv6 address is its IPv4 address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// Token buckets per [`client_key`], at most [`MAX_TRACKED_CLIENTS`] of them.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    capacity: usize,
    buckets: HashMap<IpAddr, (Bucket, u64)>,
    /// `(last use, sequence)` of every bucket, oldest first.
    by_age: BTreeMap<(Instant, u64), IpAddr>,
    next_seq: u64,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self::with_capacity(limit, MAX_TRACKED_CLIENTS)
    }

    /// A limiter that tracks at most `capacity` clients (at least 1).
    pub fn with_capacity(limit: RateLimit, capacity: usize) -> Self {
        RateLimiter {
            limit,
            capacity: capacity.max(1),
            buckets: HashMap::new(),
            by_age: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// Takes one token for `ip`'s client; `Err(wait)` says when the next one is there.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let burst = f64::from(self.limit.burst.max(1));
        let rate = self.limit.per_second.max(f64::MIN_POSITIVE);
        self.prune_idle(now, rate, burst);
        let key = client_key(ip);
        let mut bucket = match self.buckets.remove(&key) {
            Some((bucket, seq)) => {
                self.by_age.remove(&(bucket.at, seq));
                bucket
            }
            None => {
                if self.buckets.len() >= self.capacity {
                    self.evict_oldest();
                }
                Bucket::full(burst, now)
            }
        };
        let taken = bucket.take(now, rate, burst);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_age.insert((bucket.at, seq), key);
        self.buckets.insert(key, (bucket, seq));
        taken
    }

    /// How many clients have a bucket.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// Forgets a few of the buckets that have been idle long enough to be full.
    fn prune_idle(&mut self, now: Instant, rate: f64, burst: f64) {
        for _ in 0..PRUNE_PER_CHECK {
            let Some((&(at, seq), &key)) = self.by_age.first_key_value() else {
                return;
            };
            let full = self
                .buckets
                .get(&key)
                .is_some_and(|(b, s)| *s == seq && b.is_full(now, rate, burst));
            if !full {
                return;
            }
            self.by_age.remove(&(at, seq));
            self.buckets.remove(&key);
        }
    }

    fn evict_oldest(&mut self) {
        if let Some((_, key)) = self.by_age.pop_first() {
            self.buckets.remove(&key);
        }
    }
}

/// One token bucket; the chat limits senders with these too.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    /// Takes one token; `Err(wait)` says when the next one is there.
    pub fn take(&mut self, now: Instant, rate: f64, burst: f64) -> Result<(), Duration> {
        let rate = rate.max(f64::MIN_POSITIVE);
        let tokens = self.refilled(now, rate, burst);
        self.at = now.max(self.at);
        if tokens >= 1.0 {
            self.tokens = tokens - 1.0;
            Ok(())
        } else {
            self.tokens = tokens;
            Err(Duration::from_secs_f64(((1.0 - tokens) / rate).min(3600.0)))
        }
    }

    /// Whether a bucket left alone this long would be full (safe to forget).
    pub fn is_full(&self, now: Instant, rate: f64, burst: f64) -> bool {
        self.refilled(now, rate, burst) >= burst
    }

    fn refilled(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }
}

/// Caps on concurrent HTTP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimit {
    /// Open connections from one client ([`client_key`]).
    pub per_client: usize,
    /// Open connections in total.
    pub total: usize,
    /// Whether `per_client` spares loopback peers: processes on this
    /// machine (a reverse proxy in front of the node, `loadtest hls` with
    /// thousands of players) are the operator's own, and every client
    /// behind a local proxy shares its address. `total` still counts them.
    pub loopback_exempt: bool,
}

impl Default for ConnectionLimit {
    /// 256 per client (a whole office of players behind one NAT address
    /// holds a few each), 8,192 in all, loopback peers exempt per client.
    fn default() -> Self {
        ConnectionLimit {
            per_client: 256,
            total: 8_192,
            loopback_exempt: true,
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefused {
    PerClient,
    Total,
}

/// Counts open connections per client and in total. The table holds one
/// entry per client with an open connection, so it is bounded by
/// [`ConnectionLimit::total`].
#[derive(Debug, Clone)]
pub struct ConnectionGate {
    limit: ConnectionLimit,
    open: Arc<Mutex<OpenConnections>>,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionPermit {
    key: IpAddr,
    open: Arc<Mutex<OpenConnections>>,
}

impl ConnectionGate {
    pub fn new(limit: ConnectionLimit) -> Self {
        ConnectionGate {
            limit,
            open: Arc::default(),
        }
    }

    /// Admits a connection from `ip`, or says which cap it hit. A
    /// trusted `proxy` is spared the per-client cap, as loopback is.
    pub fn admit(&self, ip: IpAddr, proxy: bool) -> Result<ConnectionPermit, ConnectionRefused> {
        let key = client_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.limit.total {
            return Err(ConnectionRefused::Total);
        }
        let mine = open.per_client.entry(key).or_insert(0);
        let exempt = proxy || (self.limit.loopback_exempt && key.is_loopback());
        if *mine >= self.limit.per_client && !exempt {
            return Err(ConnectionRefused::PerClient);
        }
        *mine += 1;
        open.total += 1;
        Ok(ConnectionPermit {
            key,
            open: self.open.clone(),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_client.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.per_client.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_refill_per_ip() {
        let mut rl = RateLimiter::new(RateLimit {
            burst: 3,
            per_second: 2.0,
        });
        let a = ip("192.0.2.1");
        let b = ip("192.0.2.2");
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(rl.check(a, t0), Ok(()));
        }
        let wait = rl.check(a, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert_eq!(rl.check(b, t0), Ok(()), "another address has its own bucket");
        assert_eq!(rl.check(a, t0 + Duration::from_millis(500)), Ok(()));
        assert!(rl.check(a, t0 + Duration::from_millis(500)).is_err());
        assert_eq!(rl.check(a, t0 + Duration::from_secs(60)), Ok(()));
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let mut rl = RateLimiter::new(RateLimit {
            burst: 1,
            per_second: 0.01,
        });
        let t0 = Instant::now();
        assert_eq!(rl.check(ip("2001:db8:1:2::1"), t0), Ok(()));
        assert!(
            rl.check(ip("2001:db8:1:2:ffff:ffff:ffff:fffe"), t0).is_err(),
            "another address of the same /64 shares the bucket"
        );
        assert_eq!(
            rl.check(ip("2001:db8:1:3::1"), t0),
            Ok(()),
            "the next /64 is another client"
        );
        assert_eq!(rl.check(ip("::ffff:192.0.2.7"), t0), Ok(()));
        assert!(
            rl.check(ip("192.0.2.7"), t0).is_err(),
            "an IPv4-mapped address is its IPv4 address"
        );
    }

    #[test]
    fn the_table_stays_bounded_under_many_busy_clients() {
        let mut rl = RateLimiter::with_capacity(
            RateLimit {
                burst: 2,
                per_second: 0.001,
            },
            1_000,
        );
        let t0 = Instant::now();
        for i in 0..5_000u32 {
            let addr = IpAddr::V4((0x0a00_0000 + i).into());
            // Nobody's bucket refills in this time, so nothing is idle.
            let now = t0 + Duration::from_millis(u64::from(i));
            assert_eq!(rl.check(addr, now), Ok(()));
            assert!(rl.tracked() <= 1_000, "{} buckets at {i}", rl.tracked());
        }
        assert_eq!(rl.tracked(), 1_000);
        // The newest clients keep their (half-empty) buckets.
        let last = IpAddr::V4((0x0a00_0000 + 4_999u32).into());
        let later = t0 + Duration::from_secs(5);
        assert_eq!(rl.check(last, later), Ok(()));
        assert!(rl.check(last, later).is_err());
    }

    #[test]
    fn idle_clients_are_forgotten_without_a_scan() {
        let mut rl = RateLimiter::new(RateLimit {
            burst: 2,
            per_second: 10.0,
        });
        let t0 = Instant::now();
        for i in 0..100u32 {
            let _ = rl.check(IpAddr::V4((0x0a00_0000 + i).into()), t0);
        }
        assert_eq!(rl.tracked(), 100);
        // A second later every bucket is full again; each request forgets a few.
        for _ in 0..25 {
            let _ = rl.check(ip("192.0.2.1"), t0 + Duration::from_secs(1));
        }
        assert_eq!(rl.tracked(), 1);
    }

    #[test]
    fn connections_are_capped_per_client_and_in_total() {
        let gate = ConnectionGate::new(ConnectionLimit {
            per_client: 2,
            total: 3,
            loopback_exempt: true,
        });
        let a1 = gate.admit(ip("192.0.2.1"), false).unwrap();
        let _a2 = gate.admit(ip("192.0.2.1"), false).unwrap();
        assert_eq!(
            gate.admit(ip("192.0.2.1"), false).unwrap_err(),
            ConnectionRefused::PerClient
        );
        let _b1 = gate.admit(ip("2001:db8::1"), false).unwrap();
        assert_eq!(
            gate.admit(ip("192.0.2.9"), false).unwrap_err(),
            ConnectionRefused::Total
        );
        drop(a1);
        assert_eq!(gate.open(), 2);
        let _a3 = gate.admit(ip("192.0.2.1"), false).unwrap();
        assert_eq!(
            gate.admit(ip("2001:db8::2"), false).unwrap_err(),
            ConnectionRefused::Total
        );
    }

    #[test]
    fn loopback_peers_count_only_towards_the_total_when_exempt() {
        let limit = ConnectionLimit {
            per_client: 1,
            total: 3,
            loopback_exempt: true,
        };
        let gate = ConnectionGate::new(limit);
        let held: Vec<_> = (0..3)
            .map(|_| gate.admit(ip("127.0.0.1"), false).unwrap())
            .collect();
        assert_eq!(
            gate.admit(ip("::1"), false).unwrap_err(),
            ConnectionRefused::Total
        );
        drop(held);
        let strict = ConnectionGate::new(ConnectionLimit {
            loopback_exempt: false,
            ..limit
        });
        let _one = strict.admit(ip("127.0.0.1"), false).unwrap();
        assert_eq!(
            strict.admit(ip("127.0.0.1"), false).unwrap_err(),
            ConnectionRefused::PerClient
        );
        // A trusted proxy carries many clients: spared per client too.
        let _p1 = strict.admit(ip("10.0.0.1"), true).unwrap();
        let _p2 = strict.admit(ip("10.0.0.1"), true).unwrap();
        assert_eq!(
            strict.admit(ip("10.0.0.1"), true).unwrap_err(),
            ConnectionRefused::Total
        );
    }
}
