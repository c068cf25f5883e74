//! Transports: moving Engine.IO packets between a socket and the layers above.
//!
//! - [`engine`]: what all transports share — the [`engine::EngineHandler`]
//!   interface to the layer above, settings, the heartbeat supervisor.
//! - [`heartbeat`]: the ping and connect deadlines as a state machine that
//!   takes the time and says what to do (no clock, no I/O).
//! - [`outbox`]: the bounded per-session queue that every sender pushes
//!   encoded frames into, and the active transport drains; its flusher
//!   writes idle WebSocket connections' queues for the whole shard.
//! - [`websocket`]: Engine.IO over a WebSocket — a whole session, or the
//!   second half of one after an upgrade from polling.
//! - [`polling`]: Engine.IO over HTTP long-polling, and the switch to
//!   WebSocket.
//! - [`upgrade`]: the WebSocket side of that switch (`2probe`, `5`, its
//!   deadline) as a state machine told the time.
//!
//! [`CloseReason`] and [`Traffic`] (byte counters, the publish → written
//! latency) are shared by all of them.
//!
//! Transports know Engine.IO; Socket.IO is the business of whoever
//! implements [`engine::EngineHandler`].

use std::cell::{Cell, RefCell};
use std::time::Duration;

pub mod engine;
pub mod heartbeat;
pub mod outbox;
pub mod polling;
pub mod upgrade;
pub mod websocket;

/// Why a connection ended. Also the `reason` label of the closed-connections metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed: WebSocket close frame, Engine.IO close or Socket.IO DISCONNECT.
    ClientClose,
    /// The TCP connection ended or failed without a close handshake.
    TransportError,
    PingTimeout,
    ConnectTimeout,
    /// A malformed frame or packet, or a packet not allowed in this state.
    ProtocolError(String),
    /// A text message (or a close frame's reason) that is not UTF-8:
    /// counted as a protocol error, closed with 1007 as RFC 6455 asks.
    InvalidUtf8,
    PayloadTooLarge,
    /// The outbound queue stayed full: the client does not read fast enough.
    SlowConsumer,
    /// The client kept sending events past the rate limit.
    RateLimited,
    ServerShutdown,
}

impl CloseReason {
    /// Every value [`CloseReason::label`] can return.
    pub const LABELS: [&'static str; 9] = [
        "client_close",
        "transport_error",
        "ping_timeout",
        "connect_timeout",
        "protocol_error",
        "payload_too_large",
        "slow_consumer",
        "rate_limited",
        "server_shutdown",
    ];

    /// A short, bounded label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::ClientClose => "client_close",
            CloseReason::TransportError => "transport_error",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::ConnectTimeout => "connect_timeout",
            CloseReason::ProtocolError(_) | CloseReason::InvalidUtf8 => "protocol_error",
            CloseReason::PayloadTooLarge => "payload_too_large",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::ServerShutdown => "server_shutdown",
        }
    }

    /// The WebSocket close status and text sent to the client, if any.
    pub fn close_frame(&self) -> Option<(u16, &str)> {
        match self {
            CloseReason::ClientClose => Some((1000, "")),
            CloseReason::ProtocolError(detail) => Some((1002, detail.as_str())),
            CloseReason::InvalidUtf8 => Some((1007, "text message is not valid UTF-8")),
            CloseReason::PayloadTooLarge => Some((1009, "message too big")),
            CloseReason::ServerShutdown => Some((1001, "server shutting down")),
            CloseReason::ConnectTimeout => Some((1008, "no Socket.IO CONNECT in time")),
            CloseReason::SlowConsumer => Some((1008, "too slow to read")),
            CloseReason::RateLimited => Some((1008, "rate limit exceeded")),
            CloseReason::TransportError | CloseReason::PingTimeout => None,
        }
    }
}

/// Byte counters sessions add to (one per shard, read at scrape time).
#[derive(Default)]
pub struct Traffic {
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    /// Publish → written to the socket, per write that carried published
    /// frames (`shardcast_broadcast_written_seconds`).
    pub written_latency: LatencySamples,
}

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Sample runs kept between two scrapes; beyond this, further ones are only
/// counted in buckets (so the histogram still counts every sample).
const MAX_LATENCY_RUNS: usize = 20_000;

/// Latency samples gathered on one shard thread between two scrapes.
#[derive(Default)]
pub struct LatencySamples {
    /// (seconds, how many samples had that value).
    runs: RefCell<Vec<(f64, u32)>>,
    /// Samples past the cap, per bucket (the last slot is above every bound).
    overflow: RefCell<[u64; LATENCY_BUCKETS.len() + 1]>,
}

/// What a [`LatencySamples`] gathered, handed to the scraping thread.
#[derive(Debug, Default, Clone)]
pub struct LatencySnapshot {
    pub runs: Vec<(f64, u32)>,
    /// Per bucket of [`LATENCY_BUCKETS`] (plus one above them): samples past the cap.
    pub overflow: Vec<u64>,
}

impl LatencySamples {
    /// `count` samples of `latency`.
    pub fn record(&self, latency: Duration, count: u32) {
        let seconds = latency.as_secs_f64();
        let mut runs = self.runs.borrow_mut();
        if runs.len() < MAX_LATENCY_RUNS {
            runs.push((seconds, count));
        } else {
            let bucket = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound).unwrap_or(LATENCY_BUCKETS.len());
            self.overflow.borrow_mut()[bucket] += u64::from(count);
        }
    }

    /// The samples so far (forgotten here).
    pub fn take(&self) -> LatencySnapshot {
        LatencySnapshot {
            runs: std::mem::take(&mut *self.runs.borrow_mut()),
            overflow: std::mem::take(&mut *self.overflow.borrow_mut()).to_vec(),
        }
    }
}

impl Traffic {
    pub fn received(&self, n: usize) {
        self.bytes_in.set(self.bytes_in.get() + n as u64);
    }

    pub fn sent(&self, n: usize) {
        self.bytes_out.set(self.bytes_out.get() + n as u64);
    }
}
