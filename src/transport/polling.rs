//! Engine.IO over HTTP long-polling, and the switch to WebSocket.
//!
//! A polling session outlives the HTTP requests that carry it: a GET takes
//! everything queued in the outbox (waiting until there is something), a
//! POST brings packets from the client. Its owner task ([`PollingSession::run`])
//! keeps the heartbeat and ends the session when a deadline is missed or the
//! outbox closes. An upgrade ([`PollingSession::upgrade`]) hands the outbox
//! to a WebSocket; from then on polling requests are refused.
//!
//! Opening, closing and finding sessions by sid is the business of the
//! shard that owns them (`shard::sessions`).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use base64::Engine;
use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::engine::{on_text_packet, supervise, EngineHandler, LastPong, Settings};
use super::Traffic;
use super::websocket;
use super::CloseReason;
use crate::protocol::engineio::{self, PayloadPacket};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Polling,
    /// A WebSocket is probing; polling still carries the session.
    Upgrading,
    /// The WebSocket carries the session; polling requests are refused.
    Upgraded,
}

/// Why a polling request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollError {
    #[error("a GET is already waiting for this session")]
    OverlappingGet,
    #[error("a POST is already in progress for this session")]
    OverlappingPost,
    #[error("the session has moved to WebSocket")]
    Upgraded,
    #[error("request body over maxPayload")]
    TooLarge,
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("the session is closed")]
    Closed,
}

/// Packets in one GET response at most. python-engineio (python-socketio's
/// transport) refuses a payload of more than 16 packets (its
/// `max_decode_packets`) and drops the connection; the rest waits for the
/// next GET, which the client sends at once.
const MAX_PACKETS_PER_GET: usize = 16;

/// How long a closed session waits for its last reader: the one GET that
/// still gets the end of the session (see [`PollingSession::released`]), or
/// the WebSocket it moved to.
const CLOSED_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

pub struct PollingSession<H> {
    pub handler: H,
    pub settings: Settings,
    last_pong: LastPong,
    state: Cell<State>,
    /// Wakes a waiting GET when the session moves to WebSocket.
    state_changed: tokio::sync::Notify,
    get_pending: Cell<bool>,
    post_pending: Cell<bool>,
    /// The last GET of a closed session has been answered.
    final_get_served: Cell<bool>,
    final_get: tokio::sync::Notify,
    /// The WebSocket that took the session over has ended.
    upgrade_ended: tokio::sync::Notify,
}

/// Clears a "request in progress" flag however the request ends (a client
/// that drops its GET must be able to poll again).
struct InProgress<'a>(&'a Cell<bool>);

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl<H: EngineHandler> PollingSession<H> {
    pub fn new(handler: H, settings: Settings) -> PollingSession<H> {
        PollingSession {
            handler,
            settings,
            last_pong: LastPong::new(Instant::now()),
            state: Cell::new(State::Polling),
            state_changed: tokio::sync::Notify::new(),
            get_pending: Cell::new(false),
            post_pending: Cell::new(false),
            final_get_served: Cell::new(false),
            final_get: tokio::sync::Notify::new(),
            upgrade_ended: tokio::sync::Notify::new(),
        }
    }

    fn set_state(&self, state: State) {
        self.state.set(state);
        self.state_changed.notify_waiters();
    }

    /// The body of the handshake response: the open packet.
    pub fn open_packet(&self, sid: &str) -> Bytes {
        engineio::open_frame(&self.settings.open_info(sid, self.settings.upgrades)).payload()
    }

    /// Keeps the heartbeat until the session ends; returns why it ended.
    pub async fn run(&self) -> CloseReason {
        let outbox = self.handler.outbox();
        let reason = tokio::select! {
            reason = supervise(&self.settings, &self.handler, &self.last_pong) => reason,
            reason = outbox.closed() => reason,
        };
        if !outbox.is_closing() {
            outbox.abort(reason.clone());
        }
        reason
    }

    /// After [`Self::run`] returned `reason`: waits (at most
    /// [`CLOSED_LINGER`]) until the session's transport has let go of it.
    /// Upgraded, that is the end of the WebSocket (which writes what is
    /// queued, a close frame last). On polling, a session the client closed,
    /// the server shut down or the rate limit cut off answers its last GETs
    /// with what is queued and its end (`6`, or the close packet `1`).
    pub async fn released(&self, reason: &CloseReason) {
        let graceful = matches!(reason, CloseReason::ClientClose | CloseReason::ServerShutdown | CloseReason::RateLimited);
        let last_reader = match self.state.get() {
            State::Upgraded => self.upgrade_ended.notified(),
            _ if graceful && !self.final_get_served.get() => {
                self.final_get.notified()
            }
            _ => return,
        };
        let _ = tokio::time::timeout(CLOSED_LINGER, last_reader).await;
    }

    /// A GET: waits for packets and returns them as one payload.
    pub async fn get(&self, traffic: &Traffic) -> Result<Bytes, PollError> {
        if self.state.get() == State::Upgraded {
            return Err(PollError::Upgraded);
        }
        let outbox = self.handler.outbox();
        if outbox.is_closing() && self.final_get_served.get() {
            return Err(PollError::Closed);
        }
        if self.get_pending.replace(true) {
            // As the reference server does: overlapping polls end the session.
            outbox.abort(CloseReason::ProtocolError("overlapping GET requests".into()));
            return Err(PollError::OverlappingGet);
        }
        let _in_progress = InProgress(&self.get_pending);
        loop {
            tokio::select! {
                _ = outbox.ready() => {}
                _ = self.state_changed.notified() => {}
            }
            // Upgraded while waiting: what is queued now belongs to the WebSocket.
            if self.state.get() == State::Upgraded {
                return Err(PollError::Upgraded);
            }
            if !outbox.is_empty() || outbox.is_closing() {
                break;
            }
        }
        let frames = outbox.take_up_to(MAX_PACKETS_PER_GET);
        outbox.progressed();
        // What did not fit goes with the next GET; only the last one closes.
        let drained = outbox.is_empty();
        let mut packets: Vec<Bytes> = Vec::with_capacity(frames.len() + 1);
        for frame in frames.iter() {
            match frame.wire()[0] {
                0x81 => packets.push(frame.payload()),
                // Binary messages travel base64-encoded behind a `b`.
                0x82 => {
                    let encoded = base64::engine::general_purpose::STANDARD.encode(frame.payload());
                    packets.push(Bytes::from(format!("b{encoded}")));
                }
                // Close frames and other WebSocket control frames mean nothing here.
                _ => {}
            }
        }
        match outbox.close_reason().filter(|_| drained) {
            // The client asked to close: end its pending poll cleanly.
            Some(CloseReason::ClientClose) if packets.is_empty() => packets.push(Bytes::from_static(b"6")),
            Some(CloseReason::ClientClose) => {}
            Some(_) => packets.push(Bytes::from_static(b"1")),
            None => {}
        }
        if outbox.is_closing() && drained {
            self.final_get_served.set(true);
            self.final_get.notify_one();
        }
        let body = engineio::encode_payload(&packets);
        traffic.sent(body.len());
        Ok(body)
    }

    /// A POST: hands each packet to the handler, in order.
    pub async fn post(&self, body: &[u8], traffic: &Traffic) -> Result<(), PollError> {
        traffic.received(body.len());
        if self.state.get() == State::Upgraded {
            return Err(PollError::Upgraded);
        }
        let outbox = self.handler.outbox();
        if outbox.is_closing() {
            return Err(PollError::Closed);
        }
        if body.len() > self.settings.max_payload {
            outbox.abort(CloseReason::PayloadTooLarge);
            return Err(PollError::TooLarge);
        }
        if self.post_pending.replace(true) {
            outbox.abort(CloseReason::ProtocolError("overlapping POST requests".into()));
            return Err(PollError::OverlappingPost);
        }
        let _in_progress = InProgress(&self.post_pending);
        let fail = |reason: CloseReason| {
            let error = PollError::Malformed(format!("{reason:?}"));
            outbox.abort(reason);
            error
        };
        let text = std::str::from_utf8(body).map_err(|_| fail(CloseReason::ProtocolError("body is not UTF-8".into())))?;
        let packets = engineio::decode_payload(text).map_err(|e| fail(CloseReason::ProtocolError(e.to_string())))?;
        for packet in packets {
            let result = match packet {
                PayloadPacket::Text(text) => on_text_packet(text, &self.handler, &self.last_pong).await,
                PayloadPacket::Binary(data) => self.handler.on_binary(Bytes::from(data)).await,
            };
            match result {
                Ok(()) => {}
                // Ends after what is queued (a rate-limited client gets its
                // refusals, then the close packet), as over WebSocket.
                Err(reason @ (CloseReason::ClientClose | CloseReason::RateLimited)) => {
                    outbox.close_after(None, reason);
                    return Ok(());
                }
                Err(reason) => return Err(fail(reason)),
            }
        }
        Ok(())
    }

    /// Reserves the session for a WebSocket that is being accepted; `false`
    /// if it is already upgrading or upgraded.
    pub fn begin_upgrade(&self) -> bool {
        if self.state.get() != State::Polling {
            return false;
        }
        self.set_state(State::Upgrading);
        true
    }

    /// The WebSocket reserved by [`Self::begin_upgrade`] never arrived.
    pub fn abandon_upgrade(&self) {
        if self.state.get() == State::Upgrading {
            self.set_state(State::Polling);
        }
    }

    /// Runs the WebSocket that took the session over (after [`Self::begin_upgrade`]).
    /// If the probe fails the session stays on polling; once upgraded, the
    /// end of the WebSocket is the end of the session.
    pub async fn upgrade(&self, stream: TcpStream, already_read: Bytes, traffic: &Rc<Traffic>) -> CloseReason {
        let reason = websocket::run_upgrade(
            stream,
            already_read,
            &self.settings,
            traffic,
            &self.handler,
            &self.last_pong,
            || {
                self.set_state(State::Upgraded);
                self.handler.on_upgraded();
            },
        )
        .await;
        if self.state.get() == State::Upgrading {
            self.set_state(State::Polling);
        } else {
            self.handler.outbox().abort(reason.clone());
            self.upgrade_ended.notify_one();
        }
        reason
    }
}

type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// A polling session as the HTTP layer sees it, whatever handler it has.
pub trait PollingEndpoint {
    fn get<'a>(&'a self, traffic: &'a Traffic) -> LocalFuture<'a, Result<Bytes, PollError>>;
    fn post<'a>(&'a self, body: Bytes, traffic: &'a Traffic) -> LocalFuture<'a, Result<(), PollError>>;
    fn begin_upgrade(&self) -> bool;
    fn abandon_upgrade(&self);
    /// Ends the session now (its HTTP side lost a response it could not resend).
    fn abort(&self, reason: CloseReason);
    fn upgrade<'a>(&'a self, stream: TcpStream, already_read: Bytes, traffic: &'a Rc<Traffic>) -> LocalFuture<'a, CloseReason>;
}

impl<H: EngineHandler + 'static> PollingEndpoint for PollingSession<H> {
    fn get<'a>(&'a self, traffic: &'a Traffic) -> LocalFuture<'a, Result<Bytes, PollError>> {
        Box::pin(PollingSession::get(self, traffic))
    }

    fn post<'a>(&'a self, body: Bytes, traffic: &'a Traffic) -> LocalFuture<'a, Result<(), PollError>> {
        Box::pin(async move { PollingSession::post(self, &body, traffic).await })
    }

    fn begin_upgrade(&self) -> bool {
        PollingSession::begin_upgrade(self)
    }

    fn abandon_upgrade(&self) {
        PollingSession::abandon_upgrade(self)
    }

    fn abort(&self, reason: CloseReason) {
        self.handler.outbox().abort(reason);
    }

    fn upgrade<'a>(&'a self, stream: TcpStream, already_read: Bytes, traffic: &'a Rc<Traffic>) -> LocalFuture<'a, CloseReason> {
        Box::pin(PollingSession::upgrade(self, stream, already_read, traffic))
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::engine::{AppSession, EngineApp, EngineSocket};
    use std::time::Duration;

    struct Silent;

    impl EngineApp for Silent {
        fn on_text(&self, _: &EngineSocket<'_>, _: &str) {}
        fn on_binary(&self, _: &EngineSocket<'_>, _: Bytes) {}
    }

    fn session() -> PollingSession<AppSession> {
        let settings = Settings {
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(45),
            max_payload: 1_000_000,
            outbox_limit: 1024,
            upgrades: &[],
        };
        PollingSession::new(AppSession::new(Box::new(Silent), 1024), settings)
    }

    fn texts(body: &Bytes) -> Vec<String> {
        let body = std::str::from_utf8(body).unwrap();
        engineio::decode_payload(body)
            .unwrap()
            .into_iter()
            .map(|p| match p {
                PayloadPacket::Text(t) => t.to_string(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    /// python-engineio drops a connection whose poll brings more than 16
    /// packets: a burst goes out 16 at a time, in order, nothing lost, and
    /// the close packet only after the last of it.
    #[test]
    fn a_burst_leaves_sixteen_packets_per_get_in_order_and_closes_last() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let session = session();
            let outbox = session.handler.outbox().clone();
            for i in 0..40 {
                outbox.push(engineio::control_frame(b'4', &i.to_string()));
            }
            let traffic = Traffic::default();
            let mut seen = Vec::new();
            for expected in [16, 16, 8] {
                let packets = texts(&session.get(&traffic).await.unwrap());
                assert_eq!(packets.len(), expected);
                seen.extend(packets);
            }
            assert_eq!(seen, (0..40).map(|i| format!("4{i}")).collect::<Vec<_>>());

            for i in 0..20 {
                outbox.push(engineio::control_frame(b'4', &i.to_string()));
            }
            outbox.close_for(CloseReason::ServerShutdown);
            let first = texts(&session.get(&traffic).await.unwrap());
            assert_eq!(first.len(), 16);
            assert!(!first.contains(&"1".to_string()), "no close before the rest");
            let last = texts(&session.get(&traffic).await.unwrap());
            assert_eq!(last, ["416", "417", "418", "419", "1"]);
        });
    }
}
