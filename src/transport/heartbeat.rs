//! The heartbeat and connect deadlines of one Engine.IO session, as a plain
//! state machine: it is told the time and what happened, and says what to do
//! next. It reads no clock and sleeps on nothing; [`super::engine::supervise`]
//! is the async shell that sleeps, sends the pings and closes.

use std::time::{Duration, Instant};

use super::CloseReason;

/// How late a heartbeat timer may fire and still count as on time.
pub const TIMER_SLACK: Duration = Duration::from_millis(5);

/// Pings are due on a grid shared by every session of the process, one
/// interval / `GRID_DIVISOR` apart (at most [`GRID_MAX`]), each at most one
/// step before its time. Sessions opened at different moments then ping
/// together: a shard wakes ten times a second to send a batch, not once per
/// ping (760 times a second at 19,000 connections and 25 s), the flusher
/// writes each batch in one pass, and the pongs come back together to one
/// `epoll_wait`. A client takes any ping as on time (it only counts how long
/// it has gone without one), and an early ping gives it more time, not less.
const GRID_DIVISOR: u32 = 100;
const GRID_MAX: Duration = Duration::from_millis(100);

/// What the session must do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing is due before this instant.
    SleepUntil(Instant),
    /// Send a ping, then ask again.
    SendPing,
    /// A deadline was missed.
    Close(CloseReason),
}

/// The heartbeat's settings, the same for every session of an endpoint.
/// Kept apart from [`Heartbeat`] and passed to each step: a session holds
/// only its own three instants, not a copy of what all sessions share.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub connect_timeout: Duration,
    /// The origin of the ping grid (its step follows from the interval),
    /// the same for every session: any instant not after one opens.
    pub epoch: Instant,
}

impl Timing {
    /// `due`, moved back to the last grid point at or before it.
    fn on_grid(&self, due: Instant) -> Instant {
        let grid = (self.ping_interval / GRID_DIVISOR).min(GRID_MAX).as_nanos();
        if grid == 0 || due < self.epoch {
            return due;
        }
        let offset = (due - self.epoch).as_nanos();
        due - Duration::from_nanos((offset % grid) as u64)
    }
}

#[derive(Debug, Clone)]
pub struct Heartbeat {
    connect_deadline: Instant,
    next_ping: Instant,
    /// When the ping awaiting its pong counts as sent.
    ping_sent: Option<Instant>,
}

impl Heartbeat {
    /// A session opened at `opened`.
    pub fn new(opened: Instant, timing: &Timing) -> Heartbeat {
        Heartbeat {
            connect_deadline: opened + timing.connect_timeout,
            next_ping: timing.on_grid(opened + timing.ping_interval),
            ping_sent: None,
        }
    }

    /// The step at `now`. `established`: the layer above completed its
    /// handshake (until then the connect deadline applies); `last_pong`:
    /// when the client's latest pong arrived (the session's opening if none).
    pub fn step(&mut self, timing: &Timing, now: Instant, established: bool, last_pong: Instant) -> Step {
        if !established && now >= self.connect_deadline {
            return Step::Close(CloseReason::ConnectTimeout);
        }
        match self.ping_sent {
            Some(sent) if last_pong >= sent => {
                self.ping_sent = None;
                self.next_ping = timing.on_grid(last_pong + timing.ping_interval);
            }
            Some(sent) if now >= sent + timing.ping_timeout => return Step::Close(CloseReason::PingTimeout),
            Some(_) => {}
            None if now >= self.next_ping => {
                // The pong is due `ping_timeout` after the ping's scheduled
                // time, as clients count it, not after the timer's own few
                // ms of lateness; a shard far behind still gives its clients
                // (almost) their whole timeout.
                self.ping_sent = Some(self.next_ping.max(now - TIMER_SLACK));
                return Step::SendPing;
            }
            None => {}
        }
        let mut deadline = match self.ping_sent {
            Some(sent) => sent + timing.ping_timeout,
            None => self.next_ping,
        };
        if !established {
            deadline = deadline.min(self.connect_deadline);
        }
        Step::SleepUntil(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Intervals of 300 ms: a grid of 3 ms, with `t0` on it.
    fn heartbeat(t0: Instant) -> (Heartbeat, Timing) {
        timed(t0, 300 * MS, 200 * MS, 1000 * MS, t0)
    }

    fn timed(opened: Instant, ping_interval: Duration, ping_timeout: Duration, connect_timeout: Duration, epoch: Instant) -> (Heartbeat, Timing) {
        let timing = Timing { ping_interval, ping_timeout, connect_timeout, epoch };
        (Heartbeat::new(opened, &timing), timing)
    }

    #[test]
    fn pings_every_interval_while_pongs_come_back() {
        let t0 = Instant::now();
        let (mut hb, timing) = heartbeat(t0);
        assert_eq!(hb.step(&timing, t0, true, t0), Step::SleepUntil(t0 + 300 * MS));
        assert_eq!(hb.step(&timing, t0 + 300 * MS, true, t0), Step::SendPing);
        assert_eq!(hb.step(&timing, t0 + 300 * MS, true, t0), Step::SleepUntil(t0 + 500 * MS), "the pong's deadline");
        // The pong arrived at 350 ms: the next ping is one interval later
        // (650 ms), back to the 3 ms grid.
        let pong = t0 + 350 * MS;
        assert_eq!(hb.step(&timing, t0 + 500 * MS, true, pong), Step::SleepUntil(t0 + 648 * MS));
        assert_eq!(hb.step(&timing, t0 + 648 * MS, true, pong), Step::SendPing);
    }

    #[test]
    fn a_missing_pong_closes_at_the_timeout_not_before() {
        let t0 = Instant::now();
        let (mut hb, timing) = heartbeat(t0);
        assert_eq!(hb.step(&timing, t0 + 300 * MS, true, t0), Step::SendPing);
        assert_eq!(hb.step(&timing, t0 + 499 * MS, true, t0), Step::SleepUntil(t0 + 500 * MS));
        assert_eq!(hb.step(&timing, t0 + 500 * MS, true, t0), Step::Close(CloseReason::PingTimeout));
    }

    /// The case of 04bae23: the ping timer fires late (a busy shard); the
    /// client counts its timeout from when the ping was due, and so must we
    /// — within the slack, then from the late send.
    #[test]
    fn a_late_timer_counts_the_timeout_from_the_scheduled_ping() {
        let t0 = Instant::now();
        let (mut hb, timing) = heartbeat(t0);
        assert_eq!(hb.step(&timing, t0 + 303 * MS, true, t0), Step::SendPing, "3 ms late");
        assert_eq!(hb.step(&timing, t0 + 303 * MS, true, t0), Step::SleepUntil(t0 + 500 * MS), "not 503 ms");

        let (mut hb, timing) = heartbeat(t0);
        assert_eq!(hb.step(&timing, t0 + 400 * MS, true, t0), Step::SendPing, "100 ms late");
        // Far behind: the client still gets all but the slack of its timeout.
        assert_eq!(hb.step(&timing, t0 + 400 * MS, true, t0), Step::SleepUntil(t0 + 595 * MS));
        assert_eq!(hb.step(&timing, t0 + 594 * MS, true, t0), Step::SleepUntil(t0 + 595 * MS));
        assert_eq!(hb.step(&timing, t0 + 595 * MS, true, t0), Step::Close(CloseReason::PingTimeout));
    }

    #[test]
    fn a_pong_just_before_the_deadline_keeps_the_session() {
        let t0 = Instant::now();
        let (mut hb, timing) = heartbeat(t0);
        assert_eq!(hb.step(&timing, t0 + 300 * MS, true, t0), Step::SendPing);
        let pong = t0 + 499 * MS;
        // One interval after the pong (799 ms), back to the 3 ms grid.
        assert_eq!(hb.step(&timing, t0 + 500 * MS, true, pong), Step::SleepUntil(t0 + 798 * MS));
    }

    #[test]
    fn the_connect_deadline_applies_until_the_session_is_established() {
        let t0 = Instant::now();
        let (mut hb, timing) = timed(t0, 300 * MS, 200 * MS, 450 * MS, t0);
        assert_eq!(hb.step(&timing, t0, false, t0), Step::SleepUntil(t0 + 300 * MS));
        assert_eq!(hb.step(&timing, t0 + 300 * MS, false, t0), Step::SendPing);
        let pong = t0 + 310 * MS;
        // The next ping would be at 610 ms, but the connect deadline is first.
        assert_eq!(hb.step(&timing, t0 + 310 * MS, false, pong), Step::SleepUntil(t0 + 450 * MS));
        assert_eq!(hb.step(&timing, t0 + 450 * MS, false, pong), Step::Close(CloseReason::ConnectTimeout));

        let (mut hb, timing) = timed(t0, 300 * MS, 200 * MS, 450 * MS, t0);
        assert_eq!(hb.step(&timing, t0 + 450 * MS, true, t0), Step::SendPing, "established: no connect deadline");
    }

    #[test]
    fn sessions_opened_apart_ping_on_one_grid_never_late_and_at_most_one_step_early() {
        let epoch = Instant::now();
        let interval = 25_000 * MS;
        // Grid: 100 ms (interval / 100 is 250 ms, over the 100 ms cap).
        for opened_ms in [0u32, 1, 37, 99, 100, 101, 4_321, 24_999] {
            let opened = epoch + opened_ms * MS;
            let (mut hb, timing) = timed(opened, interval, 20_000 * MS, 45_000 * MS, epoch);
            let Step::SleepUntil(first) = hb.step(&timing, opened, true, opened) else { panic!("a sleep first") };
            let due = opened + interval;
            assert!(first <= due && due - first < 100 * MS, "opened at {opened_ms} ms: first ping {:?} before its time", due - first);
            assert_eq!((first - epoch).as_millis() % 100, 0, "opened at {opened_ms} ms: off the grid");
            assert_eq!(hb.step(&timing, first, true, opened), Step::SendPing);
            // A pong 7 ms later: the next ping on the grid again, one interval after it at most.
            let pong = first + 7 * MS;
            let Step::SleepUntil(next) = hb.step(&timing, pong, true, pong) else { panic!("a sleep after the pong") };
            assert!(next <= pong + interval && pong + interval - next < 100 * MS);
            assert_eq!((next - epoch).as_millis() % 100, 0);
        }
    }
}
