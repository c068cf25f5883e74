//! One Socket.IO socket over an Engine.IO session: the CONNECT handshake
//! (namespace, auth, connection limit), packet dispatch, acks, and the
//! clean-up that tells everyone else when the socket goes away.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::auth::Authenticator;
use super::errors::RequestError;
use super::timestamp;
use crate::protocol::socketio::{self, Packet, PacketType};
use crate::protocol::wsframe::OutFrame;
use crate::shard::{Conn, Shard, SocketId};
use crate::transport::engine::{EngineHandler, Settings};
use crate::transport::outbox::Outbox;
use crate::transport::polling::{PollError, PollingSession, State as PollingState};
use crate::transport::websocket;
use crate::transport::CloseReason;

fn engine_settings(shard: &Shard) -> Settings {
    let config = shard.config();
    Settings {
        ping_interval: config.ping_interval(),
        ping_timeout: config.ping_timeout(),
        connect_timeout: config.connect_timeout(),
        max_payload: config.max_payload_bytes as usize,
    }
}

fn log_close(socket: SocketId, reason: &CloseReason) {
    match reason {
        CloseReason::ProtocolError(detail) => {
            tracing::info!(socket = %socket, reason = reason.label(), %detail, "connection closed")
        }
        CloseReason::PayloadTooLarge | CloseReason::SlowConsumer => {
            tracing::info!(socket = %socket, reason = reason.label(), "connection closed")
        }
        _ => tracing::debug!(socket = %socket, reason = reason.label(), "connection closed"),
    }
}

/// Serves one WebSocket connection that opened a session (no `sid`) until it ends.
pub async fn serve_websocket(shard: Rc<Shard>, auth: Arc<Authenticator>, stream: TcpStream, already_read: Bytes) {
    let settings = engine_settings(&shard);
    let session = SocketSession::new(shard.clone(), auth, "websocket");
    let engine_sid = SocketId::generate(shard.index).to_string();
    shard.counters.connection_opened();
    let reason = websocket::run(stream, already_read, &engine_sid, &settings, &shard.counters.traffic, &session).await;
    shard.counters.connection_closed(reason.label());
    log_close(session.conn.id, &reason);
    session.close();
}

thread_local! {
    /// This shard thread's long-polling sessions, by Engine.IO sid (which
    /// names this shard, so requests for it are routed here).
    static POLLING: RefCell<HashMap<String, Rc<PollingSession<SocketSession>>>> = RefCell::new(HashMap::new());
}

fn polling_session(sid: &str) -> Option<Rc<PollingSession<SocketSession>>> {
    POLLING.with(|sessions| sessions.borrow().get(sid).cloned())
}

/// Opens a long-polling session on this shard; returns the handshake body.
pub fn open_polling(shard: &Rc<Shard>, auth: Arc<Authenticator>) -> Bytes {
    let websocket_enabled = shard.config().websocket_transports.websocket;
    let upgrades: &[&str] = if websocket_enabled { &["websocket"] } else { &[] };
    let session = SocketSession::new(shard.clone(), auth, "polling");
    let sid = SocketId::generate(shard.index).to_string();
    let polling = Rc::new(PollingSession::new(session, engine_settings(shard)));
    let open = polling.open_packet(&sid, upgrades);
    POLLING.with(|sessions| sessions.borrow_mut().insert(sid.clone(), polling.clone()));
    shard.counters.connection_opened();
    let shard = shard.clone();
    tokio::task::spawn_local(async move {
        let reason = polling.run().await;
        POLLING.with(|sessions| sessions.borrow_mut().remove(&sid));
        shard.counters.connection_closed(reason.label());
        log_close(polling.handler.conn.id, &reason);
        polling.handler.close();
    });
    open
}

/// The answer to a polling request, made on the session's shard and sent
/// to whichever shard holds the HTTP connection.
#[derive(Debug)]
pub enum PollReply {
    Payload(Bytes),
    Ok,
    UnknownSession,
    Refused(PollError),
}

pub async fn poll_get(shard: &Shard, sid: &str) -> PollReply {
    match polling_session(sid) {
        None => PollReply::UnknownSession,
        Some(session) => match session.get(&shard.counters.traffic).await {
            Ok(body) => PollReply::Payload(body),
            Err(error) => PollReply::Refused(error),
        },
    }
}

pub async fn poll_post(shard: &Shard, sid: &str, body: Bytes) -> PollReply {
    match polling_session(sid) {
        None => PollReply::UnknownSession,
        Some(session) => match session.post(&body, &shard.counters.traffic).await {
            Ok(()) => PollReply::Ok,
            Err(error) => PollReply::Refused(error),
        },
    }
}

/// Whether `sid` is a polling session that a WebSocket may take over now.
pub fn can_upgrade(sid: &str) -> bool {
    polling_session(sid).is_some_and(|session| session.state() == PollingState::Polling)
}

/// Serves the WebSocket that takes over the polling session `sid`.
pub async fn upgrade_polling(shard: Rc<Shard>, sid: String, stream: TcpStream, already_read: Bytes) {
    let Some(session) = polling_session(&sid) else { return };
    if !session.begin_upgrade() {
        return;
    }
    let reason = session.upgrade(stream, already_read, &shard.counters.traffic).await;
    if session.state() == PollingState::Upgraded {
        session.handler.conn.transport.set("websocket");
    }
    tracing::debug!(socket = %session.handler.conn.id, reason = reason.label(), "upgraded transport ended");
}

/// Per-socket state beyond the shard's [`Conn`].
pub struct SocketSession {
    pub(super) shard: Rc<Shard>,
    pub(super) auth: Arc<Authenticator>,
    pub(super) conn: Rc<Conn>,
    established: Cell<bool>,
    /// Binary frames still expected after a BINARY_EVENT / BINARY_ACK header.
    pending_attachments: Cell<usize>,
    rate: Option<RateLimiter>,
}

impl EngineHandler for SocketSession {
    async fn on_message(&self, text: &str) -> Result<(), CloseReason> {
        if self.pending_attachments.get() > 0 {
            return Err(protocol_error("expected a binary attachment"));
        }
        let packet = socketio::decode(text).map_err(|e| protocol_error(&e.to_string()))?;
        let namespace = &self.shard.config().websocket_namespace;
        if packet.namespace != namespace {
            if packet.kind == PacketType::Connect {
                self.conn.send(socketio::connect_error_frame(packet.namespace, "Invalid namespace"));
                return Ok(());
            }
            // Packets for a namespace that does not exist have no one to reach.
            return Ok(());
        }
        match packet.kind {
            PacketType::Connect if self.established.get() => Err(protocol_error("CONNECT on a connected socket")),
            PacketType::Connect => {
                self.connect(packet.data).await;
                Ok(())
            }
            PacketType::Disconnect => Err(CloseReason::ClientClose),
            _ if !self.established.get() => Err(protocol_error("packet before CONNECT")),
            PacketType::Event => self.on_event(&packet).await,
            // We never ask clients for acks, so there is nothing to match them with.
            PacketType::Ack => Ok(()),
            PacketType::BinaryEvent => {
                self.pending_attachments.set(packet.attachments);
                let name = socketio::parse_event(packet.data).map(|(name, _)| name).unwrap_or_default();
                let error = RequestError::Validation("binary payloads are not supported; send JSON".into());
                self.reply(&name, packet.ack_id, Err(error));
                Ok(())
            }
            PacketType::BinaryAck => {
                self.pending_attachments.set(packet.attachments);
                Ok(())
            }
            PacketType::ConnectError => Err(protocol_error("CONNECT_ERROR is a server packet")),
        }
    }

    async fn on_binary(&self, _data: Bytes) -> Result<(), CloseReason> {
        match self.pending_attachments.get() {
            0 => Err(protocol_error("binary frame without a binary packet")),
            n => {
                self.pending_attachments.set(n - 1);
                Ok(())
            }
        }
    }

    fn is_established(&self) -> bool {
        self.established.get()
    }

    fn outbox(&self) -> &Outbox {
        &self.conn.outbox
    }
}

fn protocol_error(detail: &str) -> CloseReason {
    CloseReason::ProtocolError(detail.to_string())
}

#[derive(Deserialize, Default)]
struct ConnectAuth<'a> {
    #[serde(borrow)]
    token: Option<&'a RawValue>,
    #[serde(borrow, rename = "userId")]
    user_id: Option<&'a RawValue>,
}

impl SocketSession {
    fn new(shard: Rc<Shard>, auth: Arc<Authenticator>, transport: &'static str) -> SocketSession {
        let config = shard.config();
        let conn = Rc::new(Conn::new(SocketId::generate(shard.index), config.outbox_limit as usize, transport));
        let rate = config.rate_limit_per_sec.map(|per_sec| {
            RateLimiter::new(per_sec as f64, config.rate_limit_burst.unwrap_or(per_sec) as f64)
        });
        SocketSession {
            shard,
            auth,
            conn,
            established: Cell::new(false),
            pending_attachments: Cell::new(0),
            rate,
        }
    }

    pub(super) fn namespace(&self) -> &str {
        &self.shard.config().websocket_namespace
    }

    /// Sends an event to this socket only.
    pub(super) fn emit(&self, event: &str, data: &impl Serialize) {
        self.conn.send(socketio::event_frame(self.namespace(), event, data));
    }

    /// Answers a request: the ack when the client asked for one, and on
    /// failure without an ack, an `error` event.
    pub(super) fn reply(&self, event: &str, ack_id: Option<u64>, result: Result<serde_json::Value, RequestError>) {
        match (ack_id, result) {
            (Some(id), Ok(body)) => {
                self.conn.send(socketio::ack_frame(self.namespace(), id, &body));
            }
            (Some(id), Err(error)) => {
                self.shard.counters.request_rejected(error.code());
                self.conn.send(socketio::ack_frame(self.namespace(), id, &error.ack_body()));
            }
            (None, Ok(_)) => {}
            (None, Err(error)) => {
                self.shard.counters.request_rejected(error.code());
                self.emit("error", &error.event_body(event));
            }
        }
    }

    async fn connect(&self, data: &str) {
        let namespace = self.namespace().to_string();
        let user = match self.identify_at_connect(data) {
            Ok(user) => user,
            Err(error) => {
                tracing::debug!(code = error.code(), %error, "CONNECT refused");
                let message = format!("{}: {}", error.code(), error);
                self.conn.send(socketio::connect_error_frame(&namespace, &message));
                return;
            }
        };
        if !self.shard.reserve_connection() {
            let error = RequestError::LimitExceeded("the server is at MAX_CONNECTIONS".into());
            let message = format!("{}: {}", error.code(), error);
            self.conn.send(socketio::connect_error_frame(&namespace, &message));
            return;
        }
        // Registered before the CONNECT reply goes out, so that an event the
        // client sends the moment it sees the reply finds the socket in place.
        self.shard.add_conn(self.conn.clone());
        self.established.set(true);
        self.conn.send(socketio::connect_frame(&namespace, &self.conn.id_text));
        self.emit("connected", &serde_json::json!({ "socketId": &*self.conn.id_text, "timestamp": timestamp() }));
        if let Some(user) = user {
            self.bind_user(Arc::from(user)).await;
        }
    }

    /// The user named by the CONNECT auth payload, if any.
    fn identify_at_connect(&self, data: &str) -> Result<Option<String>, RequestError> {
        if data.is_empty() {
            return Ok(None);
        }
        let raw: &RawValue = serde_json::from_str(data)
            .map_err(|_| RequestError::Validation("the CONNECT auth payload is not valid JSON".into()))?;
        let fields: ConnectAuth = super::validate::object(Some(raw))?;
        let token = fields.token.map(|t| super::validate::string("token", Some(t))).transpose()?;
        let user_id = fields.user_id.map(|u| super::validate::string("userId", Some(u))).transpose()?;
        if token.is_none() && user_id.is_none() {
            return Ok(None);
        }
        self.auth.identify(token.as_deref(), user_id.as_deref()).map(Some)
    }

    /// Binds this socket to `user` and says so to the client.
    pub(super) async fn bind_user(&self, user: Arc<str>) {
        self.shard.attach_user(&self.conn, user.clone()).await;
        self.emit(
            "authenticated",
            &serde_json::json!({ "userId": &*user, "socketId": &*self.conn.id_text, "timestamp": timestamp() }),
        );
    }

    async fn on_event(&self, packet: &Packet<'_>) -> Result<(), CloseReason> {
        let (name, args) = socketio::parse_event(packet.data).map_err(|e| protocol_error(&e.to_string()))?;
        self.conn.last_activity.set(SystemTime::now());
        if let Some(rate) = &self.rate {
            if !rate.allow() {
                self.shard.counters.event_received(event_label(&name));
                self.reply(&name, packet.ack_id, Err(RequestError::RateLimited));
                return Ok(());
            }
        }
        self.shard.counters.event_received(event_label(&name));
        let payload = args.first().copied();
        let result = match name.as_str() {
            "authenticate" => self.authenticate(payload).await,
            "join-room" => self.join_room(payload).await,
            "leave-room" => self.leave_room(payload),
            "private-message" => self.private_message(payload).await,
            "custom-event" => self.custom_event(payload),
            "ping" => Ok(self.ping()),
            _ => Err(RequestError::UnknownEvent(truncate(&name, 128))),
        };
        self.reply(&name, packet.ack_id, result);
        Ok(())
    }

    /// Takes the socket out of every table; room members hear `user-left`.
    pub(super) fn close(&self) {
        if !self.established.replace(false) {
            return;
        }
        let user = self.conn.user();
        self.shard.remove_conn(&self.conn, |room| {
            user.as_ref().map(|user| self.room_change_frame("user-left", room, user))
        });
        self.shard.release_connection();
    }

    /// The `user-joined` / `user-left` event about this socket.
    pub(super) fn room_change_frame(&self, event: &str, room: &str, user: &str) -> OutFrame {
        socketio::event_frame(
            self.namespace(),
            event,
            &serde_json::json!({
                "roomName": room,
                "userId": user,
                "socketId": &*self.conn.id_text,
                "timestamp": timestamp(),
            }),
        )
    }
}

/// The metric label of a client event: its name if it is one of ours,
/// `other` for anything else (labels must stay a small, fixed set).
fn event_label(name: &str) -> &'static str {
    const KNOWN: [&str; 6] = ["authenticate", "join-room", "leave-room", "private-message", "custom-event", "ping"];
    KNOWN.into_iter().find(|known| *known == name).unwrap_or("other")
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// A token bucket: `rate` events per second, bursts of up to `burst`.
struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: Cell<f64>,
    refilled: Cell<Instant>,
}

impl RateLimiter {
    fn new(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter { rate, burst, tokens: Cell::new(burst), refilled: Cell::new(Instant::now()) }
    }

    fn allow(&self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled.get()).as_secs_f64();
        let tokens = (self.tokens.get() + elapsed * self.rate).min(self.burst);
        self.refilled.set(now);
        if tokens >= 1.0 {
            self.tokens.set(tokens - 1.0);
            true
        } else {
            self.tokens.set(tokens);
            false
        }
    }
}
