//! What every Engine.IO transport shares: the handler interface to the
//! layer above, session settings, byte counters, the handling of one
//! client packet, and the heartbeat supervisor.

use std::cell::Cell;
use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::heartbeat::{Heartbeat, Step, Timing};
use super::outbox::Outbox;
use super::CloseReason;
use crate::protocol::engineio;

/// The layer above Engine.IO (Socket.IO, or a bare Engine.IO echo).
pub trait EngineHandler {
    /// An Engine.IO message packet's data (text). An error ends the session.
    fn on_message(&self, text: &str) -> impl Future<Output = Result<(), CloseReason>>;
    /// A binary Engine.IO message.
    fn on_binary(&self, data: Bytes) -> impl Future<Output = Result<(), CloseReason>>;
    /// Whether the session above is established; until it is, the connect
    /// timeout applies.
    fn is_established(&self) -> bool;
    /// The session's outbound queue.
    fn outbox(&self) -> &Rc<Outbox>;
    /// The session moved from polling to WebSocket.
    fn on_upgraded(&self) {}
    /// The session is open on `transport` (`websocket` or `polling`): called
    /// once, by the shard that owns the session, before any packet.
    fn on_open(&self, transport: &'static str) {
        let _ = transport;
    }
    /// The session is over, for `reason`: called once, by the shard that
    /// owns the session, after the last packet.
    fn on_close(&self, reason: &CloseReason) {
        let _ = reason;
    }
}

/// An application of bare Engine.IO (no Socket.IO on top), such as the
/// echo server the official Engine.IO test suite expects. Object-safe and
/// synchronous: it reacts to messages by sending through the [`EngineSocket`].
pub trait EngineApp {
    /// A text message from the client.
    fn on_text(&self, socket: &EngineSocket<'_>, text: &str);
    /// A binary message from the client.
    fn on_binary(&self, socket: &EngineSocket<'_>, data: Bytes);
}

/// Creates one [`EngineApp`] per session (on the session's shard thread).
pub type EngineAppFactory = std::sync::Arc<dyn Fn() -> Box<dyn EngineApp> + Send + Sync>;

/// What an [`EngineApp`] can do with its session.
pub struct EngineSocket<'a> {
    outbox: &'a Rc<Outbox>,
}

impl EngineSocket<'_> {
    /// Sends a text message to the client.
    pub fn send_text(&self, text: &str) {
        self.outbox.push_or_close(engineio::control_frame(b'4', text));
    }

    /// Sends a binary message to the client.
    pub fn send_binary(&self, data: &[u8]) {
        self.outbox.push_or_close(crate::protocol::wsframe::OutFrame::new(fastwebsockets::OpCode::Binary, data));
    }
}

/// Runs an [`EngineApp`] as a session's handler.
pub struct AppSession {
    app: Box<dyn EngineApp>,
    outbox: Rc<Outbox>,
}

impl AppSession {
    pub fn new(app: Box<dyn EngineApp>, outbox_limit: usize) -> AppSession {
        AppSession { app, outbox: Rc::new(Outbox::new(outbox_limit)) }
    }
}

impl EngineHandler for AppSession {
    async fn on_message(&self, text: &str) -> Result<(), CloseReason> {
        self.app.on_text(&EngineSocket { outbox: &self.outbox }, text);
        Ok(())
    }

    async fn on_binary(&self, data: Bytes) -> Result<(), CloseReason> {
        self.app.on_binary(&EngineSocket { outbox: &self.outbox }, data);
        Ok(())
    }

    /// Bare Engine.IO has no handshake above it: no connect timeout.
    fn is_established(&self) -> bool {
        true
    }

    fn outbox(&self) -> &Rc<Outbox> {
        &self.outbox
    }
}

/// What an Engine.IO session needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_payload: usize,
    /// Frames a session's outbox holds (`OUTBOX_LIMIT`).
    pub outbox_limit: usize,
    /// What a polling session may upgrade to: `["websocket"]`, or nothing
    /// when WebSocket is not an offered transport.
    pub upgrades: &'static [&'static str],
}

impl Settings {
    pub fn open_info<'a>(&self, sid: &'a str, upgrades: &'a [&'a str]) -> engineio::OpenInfo<'a> {
        engineio::OpenInfo {
            sid,
            upgrades,
            ping_interval_ms: self.ping_interval.as_millis() as u64,
            ping_timeout_ms: self.ping_timeout.as_millis() as u64,
            max_payload: self.max_payload,
        }
    }

    /// What the heartbeat of every session of these settings shares; the
    /// ping grid's origin is the process's first session's opening.
    pub fn heartbeat_timing(&self) -> Timing {
        static PING_GRID_EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        Timing {
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            connect_timeout: self.connect_timeout,
            epoch: *PING_GRID_EPOCH.get_or_init(std::time::Instant::now),
        }
    }
}

/// When the client's latest pong arrived (the session's opening until the
/// first), and the heartbeat to wake when the next one does. The reader that
/// records a pong may run in another task than the heartbeat (a polling
/// POST), or in the same one after the heartbeat was polled.
pub struct LastPong {
    at: Cell<Instant>,
    heartbeat: Cell<Option<Waker>>,
}

impl LastPong {
    pub fn new(opened: Instant) -> LastPong {
        LastPong { at: Cell::new(opened), heartbeat: Cell::new(None) }
    }

    pub fn get(&self) -> Instant {
        self.at.get()
    }

    /// A pong arrived at `now`.
    pub fn record(&self, now: Instant) {
        self.at.set(now);
        if let Some(waker) = self.heartbeat.take() {
            waker.wake();
        }
    }

    /// A heartbeat step is waiting: it asked to be woken by the next pong
    /// ([`supervise`]), and none has been recorded since.
    fn is_awaited(&self) -> bool {
        let waker = self.heartbeat.take();
        let awaited = waker.is_some();
        self.heartbeat.set(waker);
        awaited
    }

    fn wake_on_record(&self, cx: &Context<'_>) {
        let waker = self.heartbeat.take();
        self.heartbeat.set(match waker {
            Some(waker) if waker.will_wake(cx.waker()) => Some(waker),
            _ => Some(cx.waker().clone()),
        });
    }
}

/// Handles one text packet from the client, whatever carried it.
pub async fn on_text_packet<H: EngineHandler>(text: &str, handler: &H, last_pong: &LastPong) -> Result<(), CloseReason> {
    match engineio::decode(text) {
        Ok(engineio::Packet::Message(data)) => handler.on_message(data).await,
        Ok(engineio::Packet::Pong(_)) => {
            last_pong.record(Instant::now());
            Ok(())
        }
        // Clients ping only to probe a transport during an upgrade; the
        // upgrade code answers those before packets reach this point.
        Ok(engineio::Packet::Ping(data)) => {
            handler.outbox().push_or_close(engineio::control_frame(engineio::PONG, data));
            Ok(())
        }
        Ok(engineio::Packet::Close) => Err(CloseReason::ClientClose),
        Ok(engineio::Packet::Noop) => Ok(()),
        Ok(engineio::Packet::Open | engineio::Packet::Upgrade) => {
            Err(CloseReason::ProtocolError("unexpected Engine.IO packet".into()))
        }
        Err(e) => Err(CloseReason::ProtocolError(e.to_string())),
    }
}

/// Sends heartbeats and enforces the ping and connect deadlines; returns
/// only when one is missed. The decisions are [`Heartbeat`]'s; this only
/// sleeps and sends. Pings go through the outbox, so they travel on
/// whichever transport the session uses at the time.
///
/// A pong wakes it ([`LastPong::record`]), and the timer moves from the
/// pong's deadline to the next ping at once. Waiting for the deadline
/// instead would cost a second wake-up per interval, and would send the next
/// ping no sooner than that deadline: a ping every `PING_TIMEOUT_MS`, not
/// every `PING_INTERVAL_MS`, when the timeout is the longer of the two.
pub async fn supervise<H: EngineHandler>(settings: &Settings, handler: &H, last_pong: &LastPong) -> CloseReason {
    let opened = Instant::now();
    let mut heartbeat = Heartbeat::new(opened.into_std(), &settings.heartbeat_timing());
    let sleep = tokio::time::sleep_until(opened);
    tokio::pin!(sleep);
    std::future::poll_fn(|cx| {
        // A step that waits for the timer stands until the timer fires or a
        // pong is recorded (which takes the waker the step left): the
        // connection task's other wake-ups, which poll this future too
        // (every read and every write), return here without reading the
        // clock. The session becoming established can only move the
        // deadline later (the connect deadline stops counting), so a timer
        // set before that fires early at worst.
        if last_pong.is_awaited() && sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        loop {
            match heartbeat.step(&settings.heartbeat_timing(), Instant::now().into_std(), handler.is_established(), last_pong.get().into_std()) {
                Step::SleepUntil(deadline) => {
                    last_pong.wake_on_record(cx);
                    let deadline = Instant::from_std(deadline);
                    if sleep.deadline() != deadline {
                        sleep.as_mut().reset(deadline);
                    }
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                Step::SendPing => {
                    handler.outbox().push_or_close(engineio::control_frame(engineio::PING, ""));
                }
                Step::Close(reason) => return Poll::Ready(reason),
            }
        }
    })
    .await
}
