//! `--limit-rate`: one token bucket for all the connections of an engine, on every worker.
//! A connection reads at most [`RateLimit::quantum`] bytes at a time, then pays for what it
//! read ([`RateLimit::spend`]); while the bucket is in debt it waits the time the debt takes to
//! repay at the rate. The debt is shared, so the connections together stay at the rate, however
//! many there are; the kernel's receive windows then hold the sender back (TCP flow control).
//!
//! The arithmetic is sans-IO ([`Bucket`], with the time passed in); this module neither sleeps
//! nor reads. Not limited: the Hub API's small requests, and what `ferry serve` sends.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The shared limit. Cheap to share (`Arc`); locked once per read.
#[derive(Debug)]
pub(crate) struct RateLimit {
    bytes_per_sec: u64,
    bucket: Mutex<Bucket>,
}

impl RateLimit {
    /// A limit of `bytes_per_sec` (at least 1), starting with a full bucket.
    pub(crate) fn new(bytes_per_sec: u64) -> RateLimit {
        let rate = bytes_per_sec.max(1);
        RateLimit {
            bytes_per_sec: rate,
            bucket: Mutex::new(Bucket::new(rate, Instant::now())),
        }
    }

    /// The most a connection should read at once: a twentieth of a second's worth, between
    /// 4 KiB and `most`, so that no single read overshoots by much.
    pub(crate) fn quantum(&self, most: usize) -> usize {
        let twentieth = usize::try_from(self.bytes_per_sec / 20).unwrap_or(usize::MAX);
        twentieth.clamp(4096.min(most), most.max(1))
    }

    /// Pays for `n` bytes read; returns how long to wait before the next read.
    pub(crate) fn spend(&self, n: u64) -> Duration {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        b.spend(n, Instant::now())
    }
}

/// A token bucket in bytes: refilled at `rate` per second up to `burst`, spent by reads; a
/// negative balance is debt.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket; its burst is a tenth of a second's worth (at least 16 KiB).
    pub(crate) fn new(rate: u64, now: Instant) -> Bucket {
        let rate = rate.max(1) as f64;
        let burst = (rate / 10.0).max(16_384.0);
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Refills for the time since the last call, takes `n`, and returns the wait until the
    /// balance is back to zero (none while there is no debt).
    pub(crate) fn spend(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections that read whenever they may: how many bytes the bucket lets through in
    /// `secs` seconds of simulated time.
    fn simulate(rate: u64, connections: usize, read: u64, secs: f64) -> u64 {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(rate, t0);
        let mut ready = vec![t0; connections];
        let end = t0 + Duration::from_secs_f64(secs);
        let mut total = 0;
        loop {
            let (i, &at) = ready
                .iter()
                .enumerate()
                .min_by_key(|(_, t)| **t)
                .expect("connections");
            if at >= end {
                return total;
            }
            total += read;
            ready[i] = at + bucket.spend(read, at);
        }
    }

    #[test]
    fn the_total_stays_at_the_rate_however_many_connections() {
        let rate = 10 << 20;
        for connections in [1, 4, 16, 64] {
            let got = simulate(rate, connections, 64 << 10, 10.0);
            let allowed = 10.0 * rate as f64 + Bucket::new(rate, Instant::now()).burst;
            // At most one read per connection beyond the budget (each read pays afterwards).
            let slack = (connections as u64 * (64 << 10)) as f64;
            assert!(
                (got as f64) <= allowed + slack,
                "{connections} connections: {got} bytes > {allowed} + {slack}"
            );
            assert!(
                got as f64 >= 10.0 * rate as f64 * 0.98,
                "{connections} connections: only {got} bytes of {}",
                10 * rate
            );
        }
    }

    #[test]
    fn no_debt_no_wait_and_idle_time_refills_only_to_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1 << 20, t0);
        assert_eq!(b.spend(1000, t0), Duration::ZERO);
        // An hour idle buys a tenth of a second's worth, not an hour's.
        let later = t0 + Duration::from_secs(3600);
        let burst = b.burst as u64;
        assert_eq!(b.spend(burst, later), Duration::ZERO);
        let wait = b.spend(1 << 20, later);
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn reads_are_cut_to_a_twentieth_of_a_second() {
        assert_eq!(RateLimit::new(20 << 20).quantum(1 << 20), 1 << 20);
        assert_eq!(RateLimit::new(20 << 20).quantum(256 << 10), 256 << 10);
        assert_eq!(RateLimit::new(2 << 20).quantum(1 << 20), (2 << 20) / 20);
        assert_eq!(RateLimit::new(1000).quantum(1 << 20), 4096);
        assert_eq!(RateLimit::new(1000).quantum(100), 100);
    }
}
