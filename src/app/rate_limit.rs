//! The per-connection rate limit (`RATE_LIMIT_PER_SEC`, `RATE_LIMIT_BURST`)
//! as a token bucket that is told the time: no clock, so it is tested with
//! simulated time.

use std::time::Instant;

/// `rate` events per second on average, bursts of up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket { rate, burst, tokens: burst, refilled: now }
    }

    /// Takes a token for an event at `now`; `false` if none is left.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn allowed(bucket: &mut TokenBucket, at: Instant, events: usize) -> usize {
        (0..events).filter(|_| bucket.allow(at)).count()
    }

    #[test]
    fn a_full_bucket_takes_a_burst_then_refuses() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5.0, t0);
        assert_eq!(allowed(&mut bucket, t0, 8), 5);
        assert!(!bucket.allow(t0 + Duration::from_millis(50)), "half a token is not a token");
        assert!(bucket.allow(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn refills_at_the_rate_and_never_beyond_the_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5.0, t0);
        allowed(&mut bucket, t0, 5);
        // One second refills 10 tokens' worth, capped at the burst of 5.
        assert_eq!(allowed(&mut bucket, t0 + Duration::from_secs(1), 10), 5);
        // A steady 10/s stream is always allowed.
        let mut t = t0 + Duration::from_secs(1);
        for _ in 0..50 {
            t += Duration::from_millis(100);
            assert!(bucket.allow(t));
        }
    }

    #[test]
    fn time_going_backwards_changes_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut bucket = TokenBucket::new(1.0, 1.0, t0);
        assert!(bucket.allow(t0));
        assert!(!bucket.allow(t0 - Duration::from_secs(5)));
    }
}
