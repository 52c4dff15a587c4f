//! Token buckets per client IP (RFC 9725 §6: rate-limit POST; RFC 6585 §4: 429).
//! Time is an input.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::RateLimit;

/// Above this many tracked addresses, full (idle) buckets are forgotten.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: HashMap<IpAddr, Bucket>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `ip`; `Err(wait)` says when the next one is there.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let burst = f64::from(self.limit.burst.max(1));
        let rate = self.limit.per_second.max(f64::MIN_POSITIVE);
        if self.buckets.len() > PRUNE_ABOVE {
            self.buckets.retain(|_, b| !b.is_full(now, rate, burst));
        }
        self.buckets
            .entry(ip)
            .or_insert_with(|| Bucket::full(burst, now))
            .take(now, rate, burst)
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
        self.at = now;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_per_ip() {
        let mut rl = RateLimiter::new(RateLimit {
            burst: 3,
            per_second: 2.0,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
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
}
