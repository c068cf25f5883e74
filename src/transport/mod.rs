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
//! [`CloseReason`] and [`Traffic`] (byte counters) are shared by all of them.
//!
//! Transports know Engine.IO; Socket.IO is the business of whoever
//! implements [`engine::EngineHandler`].

use std::cell::Cell;

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
}

impl Traffic {
    pub fn received(&self, n: usize) {
        self.bytes_in.set(self.bytes_in.get() + n as u64);
    }

    pub fn sent(&self, n: usize) {
        self.bytes_out.set(self.bytes_out.get() + n as u64);
    }
}
