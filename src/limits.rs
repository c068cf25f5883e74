//! Descriptor limits: the soft `RLIMIT_NOFILE` raised to the hard limit at
//! start, the connection capacity (descriptors minus a reserve), the
//! process-wide count of open TCP connections that new sessions are checked
//! against, and the accept loop's tools for the hard wall (`EMFILE`): a
//! spare descriptor and a bounded back-off.
//!
//! What happens at the limit:
//! - **At capacity** (open TCP connections above [`Capacity::connections`]): a
//!   new Engine.IO session (WebSocket upgrade or polling handshake without a
//!   sid) is answered `503` and the connection closed; plain HTTP (`/health`,
//!   `/ready`, `/metrics`, `/api`) and requests of existing sessions go on,
//!   in the reserve.
//! - **At the wall** (`accept` fails with `EMFILE`/`ENFILE`, the reserve used
//!   up too): the accept loop frees its spare descriptor, accepts what is
//!   waiting and answers each connection at once (`/health` with 200,
//!   anything else with 503) and closes it, so clients see an answer instead
//!   of hanging in the backlog; then it sleeps ([`Backoff`], 5 ms doubling to
//!   500 ms) before accepting again, and resumes by itself once descriptors
//!   are free. Each such round also tells the connections still sending
//!   their request head ([`ConnectionBudget::wall_notified`]): one that has
//!   taken [`SLOW_HEAD_AT_WALL`] since its accept is closed, handing its
//!   descriptor to the clients waiting in the backlog.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Descriptors set aside whatever the limit: stdin/stdout/stderr, the main
/// thread's runtime (epoll, eventfd, the signal pipe), HTTP requests beside
/// the sessions (`/health`, `/ready`, `/metrics`, `/api` calls), a polling
/// session's second request and an upgrade in flight, and a future Redis
/// connection (cluster mode).
pub const RESERVE_FIXED: u64 = 64;
/// Per shard: its listener, its runtime's epoll and eventfd, and the accept
/// loop's spare descriptor.
pub const RESERVE_PER_SHARD: u64 = 4;
/// Plus 1/64 (about 1.6 %) of the limit, so the room for HTTP and
/// connections in transit grows with the size of the deployment.
pub const RESERVE_FRACTION: u64 = 64;

/// How long a connection may take, from its accept, to send its request
/// head once the process has run out of descriptors (instead of
/// `REQUEST_TIMEOUT_MS`): at the wall a head this slow holds a descriptor
/// that a client waiting in the backlog needs. Browsers and apps send the
/// whole head in the first packet; what trickles it in (a slowloris) or
/// never sends it would otherwise keep the backlog waiting for the full
/// request timeout.
pub const SLOW_HEAD_AT_WALL: Duration = Duration::from_secs(1);

/// The `reason` labels of refused connections.
pub const REFUSAL_REASONS: [&str; 2] = ["capacity", "descriptors"];

/// The open-file limits before and after start-up raised the soft one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (services get a soft
/// limit of 1024 by default, and a much higher hard one). Process-wide;
/// idempotent. A hard limit of "unlimited" is taken as `fs.nr_open`, the
/// most Linux allows.
#[allow(clippy::unnecessary_cast)] // `rlim_t` is not 64 bits on every target
pub fn raise_nofile_limit() -> std::io::Result<NofileLimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let hard = if limit.rlim_max == libc::RLIM_INFINITY { nr_open() } else { limit.rlim_max as u64 };
    let soft_before = if limit.rlim_cur == libc::RLIM_INFINITY { hard } else { limit.rlim_cur as u64 };
    if soft_before >= hard {
        return Ok(NofileLimit { soft_before, soft: soft_before.min(hard), hard });
    }
    let raised = libc::rlimit { rlim_cur: hard as libc::rlim_t, rlim_max: limit.rlim_max };
    // SAFETY: a plain setrlimit with a struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(NofileLimit { soft_before, soft: hard, hard })
}

/// The soft `RLIMIT_NOFILE` as it is now.
#[allow(clippy::unnecessary_cast)] // `rlim_t` is not 64 bits on every target
pub fn current_nofile_limit() -> std::io::Result<NofileLimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let hard = if limit.rlim_max == libc::RLIM_INFINITY { nr_open() } else { limit.rlim_max as u64 };
    let soft = if limit.rlim_cur == libc::RLIM_INFINITY { hard } else { limit.rlim_cur as u64 };
    Ok(NofileLimit { soft_before: soft, soft, hard })
}

fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20)
}

/// How many connections the descriptors allow, after the reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// The open-file limit it was computed from.
    pub descriptors: u64,
    /// Descriptors kept for everything but client sessions.
    pub reserve: u64,
    /// TCP connections that may be open when a new session starts.
    pub connections: u64,
}

impl Capacity {
    /// `descriptors − (RESERVE_FIXED + RESERVE_PER_SHARD × shards + descriptors / RESERVE_FRACTION)`.
    pub fn new(descriptors: u64, shards: usize) -> Capacity {
        let reserve = RESERVE_FIXED + RESERVE_PER_SHARD * shards as u64 + descriptors / RESERVE_FRACTION;
        Capacity { descriptors, reserve, connections: descriptors.saturating_sub(reserve) }
    }
}

/// The open TCP connections of one broker (sessions and HTTP alike: each is
/// a descriptor), against its capacity. Touched at accept and close only.
#[derive(Debug)]
pub struct ConnectionBudget {
    pub capacity: Capacity,
    pub nofile: NofileLimit,
    open: AtomicUsize,
    /// Set while new sessions are being refused, for one log line per episode.
    refusing: AtomicBool,
    /// Woken by each round of an accept loop at the wall (`EMFILE`).
    wall: tokio::sync::Notify,
}

impl ConnectionBudget {
    pub fn new(capacity: Capacity, nofile: NofileLimit) -> ConnectionBudget {
        ConnectionBudget {
            capacity,
            nofile,
            open: AtomicUsize::new(0),
            refusing: AtomicBool::new(false),
            wall: tokio::sync::Notify::new(),
        }
    }

    /// An accept loop found no descriptor free: wakes every connection
    /// waiting in [`ConnectionBudget::wall_notified`], on any shard.
    pub fn wall_hit(&self) {
        self.wall.notify_waiters();
    }

    /// Completes at the next [`ConnectionBudget::wall_hit`] after this call
    /// (even if first polled later).
    pub fn wall_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wall.notified()
    }

    /// Counts an accepted connection until the slot is dropped.
    pub fn open_slot(self: &Arc<Self>) -> ConnectionSlot {
        let position = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        ConnectionSlot { budget: self.clone(), position }
    }

    /// Open TCP connections now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether a connection counted at `position` may start a new session.
    ///
    /// Yes if there was room when it was accepted, or if there is room now
    /// (both counts include the connection itself). The first makes a burst
    /// of connections accepted in one go before any of them is read admit
    /// exactly as many as fit (the later ones of the burst would all see the
    /// whole burst counted); the second lets a keep-alive connection accepted
    /// in a crowd open a session once the crowd has gone.
    pub fn admits(&self, position: usize) -> bool {
        let capacity = self.capacity.connections as usize;
        let admitted = admits(position, self.open_connections(), capacity);
        if admitted {
            if self.refusing.load(Ordering::Relaxed) && self.refusing.swap(false, Ordering::Relaxed) {
                tracing::info!(open = self.open_connections(), capacity, "below the connection capacity again: new sessions accepted");
            }
        } else if !self.refusing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                open = self.open_connections(),
                capacity,
                "connection capacity reached: refusing new sessions (503) until connections close; \
                 raise the open-file limit (LimitNOFILE, ulimit -n) to hold more"
            );
        }
        admitted
    }
}

/// The admission rule of [`ConnectionBudget::admits`].
pub fn admits(position: usize, open_now: usize, capacity: usize) -> bool {
    position.min(open_now) <= capacity
}

/// One open TCP connection, counted until dropped. `Send`: it travels with
/// a stream that moves to another shard on upgrade.
#[derive(Debug)]
pub struct ConnectionSlot {
    budget: Arc<ConnectionBudget>,
    /// Open connections, this one included, when it was accepted.
    position: usize,
}

impl ConnectionSlot {
    pub fn budget(&self) -> &Arc<ConnectionBudget> {
        &self.budget
    }

    /// Whether this connection may start a new session.
    pub fn admits_new_session(&self) -> bool {
        self.budget.admits(self.position)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.budget.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The accept loop's sleep after a failed `accept`: 5 ms, doubling up to
/// 500 ms, back to 5 ms after a successful one.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(5);
    pub const MAX: Duration = Duration::from_millis(500);

    pub fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    /// The sleep for this failure; the following one is twice as long.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(Self::MAX);
        delay
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether an `accept` error means the process (`EMFILE`) or the system
/// (`ENFILE`) is out of descriptors.
pub fn is_out_of_descriptors(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// A descriptor held in reserve, released to accept (and refuse) a
/// connection when `accept` fails with `EMFILE`.
pub fn open_spare_descriptor() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// What the accept loop answers, at the wall, to a connection it accepted
/// only to close: `/health` still gets its 200 (the process is alive and
/// serving its connections); everything else gets 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallAnswer<'a> {
    pub status: u16,
    /// The request's path, when its first line could be read.
    pub path: Option<&'a str>,
    pub response: &'static [u8],
}

const HEALTH_OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\nconnection: close\r\n\r\n{\"status\":\"ok\"}";
const ENGINE_UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 53\r\nconnection: close\r\n\r\n{\"code\":3,\"message\":\"Server out of file descriptors\"}";
const HTTP_UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 63\r\nconnection: close\r\n\r\n{\"error\":\"server out of file descriptors\",\"code\":\"UNAVAILABLE\"}";

/// The answer to `request` (whatever of it had arrived) at the wall.
pub fn wall_answer(request: &[u8]) -> WallAnswer<'_> {
    let (method, rest) = match request.iter().position(|b| *b == b' ') {
        Some(space) => (&request[..space], &request[space + 1..]),
        None => (request, &[][..]),
    };
    let path = rest
        .split(|b| *b == b' ' || *b == b'\r' || *b == b'\n')
        .next()
        .map(|target| target.split(|b| *b == b'?').next().unwrap_or(target))
        .filter(|path| path.starts_with(b"/"))
        .and_then(|path| std::str::from_utf8(path).ok());
    let (status, response) = match path {
        Some("/health") if method == b"GET" => (200, HEALTH_OK),
        Some(p) if p.starts_with("/socket.io") => (503, ENGINE_UNAVAILABLE),
        _ => (503, HTTP_UNAVAILABLE),
    };
    WallAnswer { status, path, response }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_the_limit_minus_a_fixed_per_shard_and_proportional_reserve() {
        // 512 descriptors, 2 shards: 64 + 2 × 4 + 512 / 64 = 80.
        assert_eq!(Capacity::new(512, 2), Capacity { descriptors: 512, reserve: 80, connections: 432 });
        // The usual default soft limit, one shard: 64 + 4 + 16.
        assert_eq!(Capacity::new(1024, 1).connections, 940);
        // This machine's hard limit with 2 shards: 64 + 8 + 312.
        assert_eq!(Capacity::new(20_000, 2).connections, 19_616);
        // Linux's default fs.nr_open, 16 shards: the reserve stays under 2 %.
        let big = Capacity::new(1 << 20, 16);
        assert_eq!(big.reserve, 64 + 64 + 16_384);
        assert!(big.reserve * 100 / big.descriptors < 2);
        // A limit below the reserve leaves no room for sessions at all.
        assert_eq!(Capacity::new(64, 4).connections, 0);
        assert_eq!(Capacity::new(0, 1).connections, 0);
    }

    #[test]
    fn capacity_grows_with_the_limit_and_shrinks_with_shards() {
        let mut previous = 0;
        for descriptors in (0..100_000).step_by(97) {
            let c = Capacity::new(descriptors, 2).connections;
            assert!(c >= previous, "{descriptors}");
            assert!(c + Capacity::new(descriptors, 2).reserve >= descriptors);
            previous = c;
        }
        assert!(Capacity::new(4096, 8).connections < Capacity::new(4096, 2).connections);
    }

    #[test]
    fn a_session_is_admitted_if_there_was_room_at_accept_or_is_room_now() {
        // Within capacity either way.
        assert!(admits(10, 10, 10));
        // A burst accepted in one go: the first ones fit by position, though
        // the count now includes the whole burst.
        assert!(admits(10, 600, 10));
        assert!(!admits(11, 600, 10));
        // Accepted in a crowd that has gone since.
        assert!(admits(600, 3, 10));
        assert!(!admits(11, 11, 10));
        // No capacity at all.
        assert!(!admits(1, 1, 0));
    }

    #[test]
    fn slots_count_open_connections_until_dropped() {
        let budget = Arc::new(ConnectionBudget::new(Capacity::new(512, 2), NofileLimit { soft_before: 512, soft: 512, hard: 512 }));
        let slots: Vec<_> = (0..432).map(|_| budget.open_slot()).collect();
        assert_eq!(budget.open_connections(), 432);
        assert!(slots.last().unwrap().admits_new_session());
        let extra = budget.open_slot();
        assert!(!extra.admits_new_session());
        drop(slots);
        assert_eq!(budget.open_connections(), 1);
        // Accepted in the crowd, asking again once it has gone.
        assert!(extra.admits_new_session());
        drop(extra);
        assert_eq!(budget.open_connections(), 0);
        fn is_send<T: Send>() {}
        is_send::<ConnectionSlot>();
    }

    #[test]
    fn backoff_doubles_from_5_ms_to_at_most_500_ms_and_resets() {
        let mut backoff = Backoff::new();
        let schedule: Vec<u64> = (0..10).map(|_| backoff.next_delay().as_millis() as u64).collect();
        assert_eq!(schedule, [5, 10, 20, 40, 80, 160, 320, 500, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(5));
        // Bounded: the sum over a long stretch at the wall is about 2 wake-ups a second.
        let mut backoff = Backoff::new();
        let total: Duration = (0..100).map(|_| backoff.next_delay()).sum();
        assert!(total > Duration::from_secs(45) && total < Duration::from_secs(50), "{total:?}");
    }

    #[test]
    fn out_of_descriptors_is_emfile_or_enfile_only() {
        assert!(is_out_of_descriptors(&std::io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_out_of_descriptors(&std::io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_out_of_descriptors(&std::io::Error::from_raw_os_error(libc::ECONNABORTED)));
        assert!(!is_out_of_descriptors(&std::io::Error::from(std::io::ErrorKind::WouldBlock)));
    }

    #[test]
    fn at_the_wall_health_answers_200_and_everything_else_503() {
        let health = wall_answer(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!((health.status, health.path), (200, Some("/health")));
        assert!(health.response.ends_with(b"{\"status\":\"ok\"}"));
        assert_eq!(wall_answer(b"GET /health?probe=1 HTTP/1.1\r\n").status, 200);
        let upgrade = wall_answer(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n");
        assert_eq!((upgrade.status, upgrade.path), (503, Some("/socket.io/")));
        assert!(upgrade.response.ends_with(b"\"message\":\"Server out of file descriptors\"}"));
        let api = wall_answer(b"POST /api/broadcast HTTP/1.1\r\n");
        assert_eq!((api.status, api.path), (503, Some("/api/broadcast")));
        assert!(api.response.ends_with(b"\"code\":\"UNAVAILABLE\"}"));
        assert_eq!(wall_answer(b"GET /ready HTTP/1.1\r\n").status, 503);
        assert_eq!(wall_answer(b"GET /healthz HTTP/1.1\r\n").status, 503);
        assert_eq!(wall_answer(b"POST /health HTTP/1.1\r\n").status, 503);
        // Only part of the request line arrived, or nothing, or not HTTP.
        assert_eq!(wall_answer(b"GET /hea").path, Some("/hea"));
        assert_eq!(wall_answer(b"").path, None);
        assert_eq!(wall_answer(b"\x16\x03\x01\x02").status, 503);
        // Every canned response is a well-formed HTTP answer with the right length.
        for response in [HEALTH_OK, ENGINE_UNAVAILABLE, HTTP_UNAVAILABLE] {
            let text = std::str::from_utf8(response).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap().parse().unwrap();
            assert_eq!(length, body.len(), "{head}");
            serde_json::from_str::<serde_json::Value>(body).unwrap();
        }
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        // Process-wide, but harmless: a test process may use the hard limit.
        let limit = raise_nofile_limit().unwrap();
        assert_eq!(limit.soft, limit.hard);
        assert!(limit.soft_before <= limit.soft);
        let now = current_nofile_limit().unwrap();
        assert_eq!((now.soft, now.hard), (limit.soft, limit.hard));
        assert_eq!(raise_nofile_limit().unwrap(), NofileLimit { soft_before: limit.soft, soft: limit.soft, hard: limit.hard });
    }
}
