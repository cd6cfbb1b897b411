//! A client-side limit on the agent's API writes (status patches, object creation): a token
//! bucket refilled at `qps` up to `burst`. Shared by every writer of one agent, so 1,000
//! routers changing at once never mean 1,000 requests in the same instant.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The write budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Sustained writes per second.
    pub qps: f64,
    /// Writes allowed at once after a quiet time.
    pub burst: u32,
}

/// The bucket itself; pure (time is an argument), so it is tested without sleeping.
#[derive(Debug)]
struct Bucket {
    limit: Limit,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(limit: Limit, now: Instant) -> Bucket {
        Bucket { limit, tokens: f64::from(limit.burst.max(1)), at: now }
    }

    /// Takes a token if there is one, else says how long until there is.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * self.limit.qps).min(f64::from(self.limit.burst.max(1)));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.limit.qps.max(0.001)))
        }
    }
}

/// A shared bucket.
#[derive(Debug, Clone)]
pub struct Throttle(Arc<Mutex<Bucket>>);

impl Throttle {
    pub fn new(limit: Limit) -> Throttle {
        Throttle(Arc::new(Mutex::new(Bucket::new(limit, Instant::now()))))
    }

    /// Waits for a write token.
    pub async fn acquire(&self) {
        loop {
            let wait = match self.0.lock().expect("throttle lock").take(Instant::now()) {
                Ok(()) => return,
                Err(wait) => wait,
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_writes_come_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(Limit { qps: 10.0, burst: 3 }, t0);
        for _ in 0..3 {
            assert_eq!(bucket.take(t0), Ok(()));
        }
        let wait = bucket.take(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert_eq!(bucket.take(t0 + Duration::from_millis(100)), Ok(()));
        assert!(bucket.take(t0 + Duration::from_millis(150)).is_err());
        // A long quiet time refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(bucket.take(later), Ok(()));
        }
        assert!(bucket.take(later).is_err());
    }
}
