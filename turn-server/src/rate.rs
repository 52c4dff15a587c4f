//! Token buckets: bandwidth caps and the per-source-IP limit on
//! unauthenticated requests. Time is an input.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// A token bucket refilled at `rate` tokens per second up to `burst`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    /// Takes `cost` tokens if available.
    pub fn take(&mut self, now: Instant, rate: f64, burst: f64, cost: f64) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    fn is_full(&self, now: Instant, rate: f64, burst: f64) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * rate >= burst
    }
}

/// One bucket per source IP, at most `max_ips` of them; IPs beyond that
/// share one overflow bucket, so an attacker spraying source addresses
/// cannot grow the map or starve the clients already tracked.
#[derive(Debug)]
pub struct PerIpLimiter {
    rate: f64,
    burst: f64,
    max_ips: usize,
    buckets: HashMap<IpAddr, Bucket>,
    overflow: Bucket,
}

impl PerIpLimiter {
    pub fn new(rate: f64, burst: f64, max_ips: usize, now: Instant) -> Self {
        Self {
            rate,
            burst,
            max_ips,
            buckets: HashMap::new(),
            overflow: Bucket::full(burst, now),
        }
    }

    pub fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        let (rate, burst) = (self.rate, self.burst);
        if let Some(b) = self.buckets.get_mut(&ip) {
            return b.take(now, rate, burst, 1.0);
        }
        if self.buckets.len() >= self.max_ips {
            return self.overflow.take(now, rate, burst, 1.0);
        }
        let mut b = Bucket::full(burst, now);
        let ok = b.take(now, rate, burst, 1.0);
        self.buckets.insert(ip, b);
        ok
    }

    /// Forgets IPs whose bucket has refilled: they are indistinguishable
    /// from new ones.
    pub fn sweep(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets.retain(|_, b| !b.is_full(now, rate, burst));
    }

    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(2.0, t0);
        assert!(b.take(t0, 1.0, 2.0, 1.0));
        assert!(b.take(t0, 1.0, 2.0, 1.0));
        assert!(!b.take(t0, 1.0, 2.0, 1.0));
        assert!(b.take(t0 + Duration::from_secs(1), 1.0, 2.0, 1.0));
    }

    #[test]
    fn limiter_is_bounded_and_swept() {
        let t0 = Instant::now();
        let mut l = PerIpLimiter::new(1.0, 1.0, 2, t0);
        let ip = |n: u8| IpAddr::from([192, 0, 2, n]);
        assert!(l.allow(t0, ip(1)));
        assert!(!l.allow(t0, ip(1)));
        assert!(l.allow(t0, ip(2)));
        assert!(l.allow(t0, ip(3)), "overflow bucket serves the first");
        assert!(!l.allow(t0, ip(4)), "and then is empty");
        assert_eq!(l.tracked(), 2);
        l.sweep(t0 + Duration::from_secs(5));
        assert_eq!(l.tracked(), 0);
    }
}
