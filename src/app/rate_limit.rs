//! The per-connection rate limit (`RATE_LIMIT_PER_SEC`, `RATE_LIMIT_BURST`)
//! as token buckets that are told the time: no clock, so it is tested with
//! simulated time.

use std::time::Instant;

/// What the rate limit says about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit: handle it.
    Allow,
    /// Over the limit: refuse it (`RATE_LIMITED`).
    Refuse,
    /// Over the limit, and refused too often: refuse it and disconnect.
    Disconnect,
}

/// A connection's rate limit: events at `rate` per second with bursts of
/// `burst`; past that they are refused, and refusals are tolerated at the
/// same rate with bursts of [`REFUSAL_BURSTS`] × `burst` (a page that fires
/// a few bursts too many at once is refused, not cut off). A client that
/// goes on anyway — sending at more than twice the limit until those are
/// used up — is disconnected. So however a client floods, the work it
/// causes (handled events plus refusal answers) stays within twice the
/// limit, plus the bursts.
#[derive(Debug, Clone)]
pub struct RateLimit {
    events: TokenBucket,
    refusals: TokenBucket,
}

/// How many bursts' worth of refusals a client may collect before it is cut off.
pub const REFUSAL_BURSTS: f64 = 4.0;

impl RateLimit {
    /// Full buckets at `now`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> RateLimit {
        RateLimit {
            events: TokenBucket::new(rate, burst, now),
            refusals: TokenBucket::new(rate, REFUSAL_BURSTS * burst, now),
        }
    }

    /// The verdict on an event at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        if self.events.allow(now) {
            Verdict::Allow
        } else if self.refusals.allow(now) {
            Verdict::Refuse
        } else {
            Verdict::Disconnect
        }
    }
}

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

    fn verdicts(limit: &mut RateLimit, at: Instant, events: usize) -> Vec<Verdict> {
        (0..events).map(|_| limit.check(at)).collect()
    }

    #[test]
    fn a_flood_is_refused_then_disconnected() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(10.0, 5.0, t0);
        let seen = verdicts(&mut limit, t0, 26);
        assert_eq!(&seen[..5], &[Verdict::Allow; 5], "the burst");
        assert_eq!(&seen[5..25], &[Verdict::Refuse; 20], "four bursts' worth of refusals");
        assert_eq!(seen[25], Verdict::Disconnect);
    }

    #[test]
    fn twice_the_rate_is_refused_but_never_disconnected() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(10.0, 5.0, t0);
        // 20 events a second for a minute.
        let mut t = t0;
        let mut counts = [0usize; 3];
        for _ in 0..1200 {
            t += Duration::from_millis(50);
            let verdict = limit.check(t);
            counts[verdict as usize] += 1;
        }
        assert_eq!(counts[Verdict::Disconnect as usize], 0);
        assert!(counts[Verdict::Allow as usize] >= 600 && counts[Verdict::Refuse as usize] >= 590, "{counts:?}");
    }

    #[test]
    fn three_times_the_rate_is_disconnected_once_the_slack_is_used() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(10.0, 5.0, t0);
        let mut t = t0;
        // 30 a second: 10 allowed and 20 refused each second, the refusals'
        // bucket (20, +10/s) runs dry in about two seconds.
        let disconnected_after = (1..=300).find(|_| {
            t += Duration::from_micros(33_334);
            limit.check(t) == Verdict::Disconnect
        });
        let after = disconnected_after.expect("disconnected within 10 s");
        assert!((60..=90).contains(&after), "disconnected after {after} events");
    }

    #[test]
    fn a_pause_refills_both_buckets() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(10.0, 5.0, t0);
        verdicts(&mut limit, t0, 10);
        // Two seconds refill the refusals' 20 (10/s) and the events' 5.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(verdicts(&mut limit, later, 26).last(), Some(&Verdict::Disconnect));
        let mut limit = RateLimit::new(10.0, 5.0, t0);
        verdicts(&mut limit, t0, 10);
        assert_eq!(&verdicts(&mut limit, later, 10)[..5], &[Verdict::Allow; 5]);
    }

    #[test]
    fn time_going_backwards_changes_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut bucket = TokenBucket::new(1.0, 1.0, t0);
        assert!(bucket.allow(t0));
        assert!(!bucket.allow(t0 - Duration::from_secs(5)));
    }
}
