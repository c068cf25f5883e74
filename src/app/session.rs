//! Socket.IO over an Engine.IO session: namespaces, the CONNECT handshake
//! (auth, connection limit), packet dispatch with binary attachments, acks,
//! and the clean-up that tells everyone else when a socket goes away.
//!
//! [`EngineSession`] is the Engine.IO handler: it owns the session's
//! outbox and one [`SocketSession`] per connected namespace.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::time::Instant;

use super::auth::Authenticator;
use super::rate_limit::{RateLimit, Verdict};
use super::errors::RequestError;
use super::namespace::{Ack, Namespace, Namespaces, Payload, Socket};
use super::timestamp;
use crate::protocol::socketio::{self, Packet, PacketType, Reassembler};
use crate::protocol::truncate_utf8;
use crate::protocol::wsframe::OutFrame;
use crate::shard::{Conn, Shard, SocketId};
use crate::transport::engine::{EngineHandler, Settings};
use crate::transport::outbox::Outbox;
use crate::transport::CloseReason;

/// What every Socket.IO session of the process shares.
pub struct AppContext {
    pub auth: Authenticator,
    pub namespaces: Namespaces,
    pub settings: AppSettings,
}

/// What the Socket.IO layer needs of the configuration.
#[derive(Debug, Clone)]
pub struct AppSettings {
    pub engine: Settings,
    /// `user-joined` / `user-left` are sent (`ROOM_EVENTS`).
    pub room_events: bool,
    /// `MAX_ROOMS_PER_SOCKET`.
    pub max_rooms_per_socket: Option<usize>,
    /// `RATE_LIMIT_PER_SEC` and the burst (`RATE_LIMIT_BURST`, default the rate).
    pub rate_limit: Option<(u32, u32)>,
}

/// The Socket.IO layer of one Engine.IO session.
pub struct EngineSession {
    shard: Rc<Shard>,
    context: Arc<AppContext>,
    outbox: Rc<Outbox>,
    transport: Cell<&'static str>,
    sockets: RefCell<Vec<Rc<SocketSession>>>,
    /// Binary packets wait here for their attachments.
    frames: RefCell<Reassembler>,
    ever_connected: Cell<bool>,
}

impl EngineHandler for EngineSession {
    async fn on_message(&self, text: &str) -> Result<(), CloseReason> {
        let packet = self.frames.borrow_mut().text(text).map_err(|e| protocol_error(&e.to_string()))?;
        match packet {
            Some(packet) => self.dispatch(&packet, Vec::new()).await,
            None => Ok(()),
        }
    }

    async fn on_binary(&self, data: Bytes) -> Result<(), CloseReason> {
        let complete = self.frames.borrow_mut().binary(data).map_err(|e| protocol_error(&e.to_string()))?;
        match complete {
            // Cloning the attachments clones at most 16 reference-counted handles.
            Some(complete) => self.dispatch(&complete.packet(), complete.attachments.clone()).await,
            None => Ok(()),
        }
    }

    fn is_established(&self) -> bool {
        self.ever_connected.get()
    }

    fn outbox(&self) -> &Rc<Outbox> {
        &self.outbox
    }

    fn on_upgraded(&self) {
        self.transport.set("websocket");
        for socket in self.sockets.borrow().iter() {
            socket.conn.transport.set("websocket");
        }
    }

    fn on_open(&self, transport: &'static str) {
        self.transport.set(transport);
    }

    /// Ends every socket of the session (the transport is gone).
    fn on_close(&self, _reason: &CloseReason) {
        for socket in self.sockets.take() {
            socket.close();
        }
    }
}

impl EngineSession {
    /// A session's Socket.IO layer; its transport is set when it opens (`on_open`).
    pub(crate) fn new(shard: Rc<Shard>, context: Arc<AppContext>) -> EngineSession {
        let outbox = Rc::new(Outbox::new(context.settings.engine.outbox_limit));
        EngineSession {
            shard,
            context,
            outbox,
            transport: Cell::new(""),
            sockets: RefCell::new(Vec::new()),
            frames: RefCell::new(Reassembler::default()),
            ever_connected: Cell::new(false),
        }
    }

    fn socket(&self, namespace: &str) -> Option<Rc<SocketSession>> {
        self.sockets.borrow().iter().find(|s| s.namespace == namespace).cloned()
    }

    async fn dispatch(&self, packet: &Packet<'_>, attachments: Vec<Bytes>) -> Result<(), CloseReason> {
        // Whatever reached this shard before the packet was read takes effect
        // before it (the shard runtime's ordering rule 2).
        self.shard.catch_up();
        let socket = self.socket(packet.namespace);
        match packet.kind {
            PacketType::Connect => {
                if socket.is_some() {
                    return Err(protocol_error("CONNECT to a namespace already connected"));
                }
                let Some(handlers) = self.context.namespaces.get(packet.namespace) else {
                    self.outbox.push_or_close(socketio::connect_error_frame(packet.namespace, "Invalid namespace"));
                    return Ok(());
                };
                let socket = Rc::new(SocketSession::new(self, packet.namespace, handlers.clone()));
                if socket.connect(packet.data).await {
                    self.ever_connected.set(true);
                    self.sockets.borrow_mut().push(socket);
                }
                Ok(())
            }
            PacketType::Disconnect => {
                if let Some(socket) = socket {
                    self.sockets.borrow_mut().retain(|s| !Rc::ptr_eq(s, &socket));
                    socket.close();
                }
                Ok(())
            }
            PacketType::ConnectError => Err(protocol_error("CONNECT_ERROR is a server packet")),
            // Like socket.io: a packet for a namespace this session is not
            // connected to is a protocol violation.
            _ if socket.is_none() => Err(protocol_error("packet for a namespace that is not connected")),
            PacketType::Event | PacketType::BinaryEvent => {
                socket.expect("checked above").on_event(packet, attachments).await
            }
            // We never ask clients for acks, so there is nothing to match them with.
            PacketType::Ack | PacketType::BinaryAck => Ok(()),
        }
    }
}

/// One socket: a session's connection to one namespace.
pub struct SocketSession {
    pub(super) shard: Rc<Shard>,
    context: Arc<AppContext>,
    pub(super) conn: Rc<Conn>,
    namespace: String,
    handlers: Namespace,
    /// Registered in the shard's tables (built-in namespaces only).
    registered: Cell<bool>,
    rate: Option<RefCell<RateLimit>>,
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
    fn new(engine: &EngineSession, namespace: &str, handlers: Namespace) -> SocketSession {
        let shard = engine.shard.clone();
        let conn = Rc::new(Conn::new(SocketId::generate(shard.index), engine.outbox.clone(), engine.transport.get()));
        let rate = engine.context.settings.rate_limit.map(|(per_sec, burst)| {
            RefCell::new(RateLimit::new(per_sec as f64, burst as f64, Instant::now()))
        });
        SocketSession {
            shard,
            context: engine.context.clone(),
            conn,
            namespace: namespace.to_string(),
            handlers,
            registered: Cell::new(false),
            rate,
        }
    }

    pub(super) fn namespace(&self) -> &str {
        &self.namespace
    }

    pub(super) fn auth(&self) -> &Authenticator {
        &self.context.auth
    }

    pub(super) fn settings(&self) -> &AppSettings {
        &self.context.settings
    }

    fn handler_socket(&self) -> Socket<'_> {
        Socket { outbox: &self.conn.outbox, namespace: &self.namespace, id: &self.conn.id_text }
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
                // A name can be as long as a whole message: echo no more than a valid one.
                self.emit("error", &error.event_body(truncate_utf8(event, super::validate::MAX_NAME_BYTES)));
            }
        }
    }

    /// Answers a CONNECT; `false` if it was refused.
    async fn connect(&self, data: &str) -> bool {
        let namespace = self.namespace().to_string();
        if !self.handlers.builtin_events {
            let auth: Value = serde_json::from_str(data).unwrap_or_else(|_| serde_json::json!({}));
            self.conn.send(socketio::connect_frame(&namespace, &self.conn.id_text));
            if let Some(on_connect) = &self.handlers.on_connect {
                // The hook's packets follow the CONNECT reply in a write of
                // their own, a moment later: clients that take one packet per
                // read (the official test suite's, on ws 8.5, drops a second
                // packet that arrives in the same read) see the reply alone.
                self.conn.outbox.flushed().await;
                tokio::time::sleep(CONNECT_HOOK_DELAY).await;
                on_connect(&self.handler_socket(), &auth);
            }
            return true;
        }
        let user = match self.identify_at_connect(data) {
            Ok(user) => user,
            Err(error) => {
                tracing::info!(code = error.code(), %error, "CONNECT refused");
                self.refuse_connect(error);
                return false;
            }
        };
        if !self.shard.reserve_connection() {
            tracing::warn!("CONNECT refused: MAX_CONNECTIONS reached");
            self.refuse_connect(RequestError::LimitExceeded("the server is at MAX_CONNECTIONS".into()));
            return false;
        }
        // Registered before the CONNECT reply goes out, so that an event the
        // client sends the moment it sees the reply finds the socket in place.
        self.shard.add_conn(self.conn.clone());
        self.registered.set(true);
        self.conn.send(socketio::connect_frame(&namespace, &self.conn.id_text));
        self.emit("connected", &Connected { socket_id: &self.conn.id_text, timestamp: timestamp() });
        if let Some(on_connect) = &self.handlers.on_connect {
            let auth: Value = serde_json::from_str(data).unwrap_or_else(|_| serde_json::json!({}));
            on_connect(&self.handler_socket(), &auth);
        }
        if let Some(user) = user {
            self.bind_user(Arc::from(user)).await;
        }
        true
    }

    /// Answers a CONNECT with CONNECT_ERROR; the message starts with the code.
    fn refuse_connect(&self, error: RequestError) {
        self.shard.counters.request_rejected(error.code());
        let message = format!("{}: {}", error.code(), error);
        self.conn.send(socketio::connect_error_frame(self.namespace(), &message));
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
        self.auth().identify(token.as_deref(), user_id.as_deref()).map(Some)
    }

    /// Binds this socket to `user` and says so to the client.
    pub(super) async fn bind_user(&self, user: Arc<str>) {
        self.shard.attach_user(&self.conn, user.clone()).await;
        self.emit("authenticated", &Authenticated { socket_id: &self.conn.id_text, timestamp: timestamp(), user_id: &user });
    }

    async fn on_event(&self, packet: &Packet<'_>, attachments: Vec<Bytes>) -> Result<(), CloseReason> {
        let (name, args) = socketio::parse_event(packet.data).map_err(|e| protocol_error(&e.to_string()))?;
        self.conn.last_activity.set(SystemTime::now());
        let builtin = self.handlers.builtin_events && BUILTIN_EVENTS.contains(&name.as_str());
        if !builtin {
            if let Some(handler) = self.handlers.events.get(&name) {
                let args: Vec<Value> = args.iter().map(|raw| serde_json::from_str(raw.get()).unwrap_or(Value::Null)).collect();
                if packet.kind == PacketType::BinaryEvent {
                    // As socket.io-parser: a hole where the handler expects bytes ends the session.
                    socketio::check_placeholders(&args, attachments.len()).map_err(|e| protocol_error(&e.to_string()))?;
                }
                handler(&self.handler_socket(), Payload { args, attachments }, packet.ack_id.map(Ack));
                return Ok(());
            }
            if !self.handlers.builtin_events {
                // Like socket.io: an event nobody listens to is ignored.
                return Ok(());
            }
        }
        if !attachments.is_empty() {
            let error = RequestError::Validation("binary payloads are not supported; send JSON".into());
            self.reply(&name, packet.ack_id, Err(error));
            return Ok(());
        }
        if let Some(rate) = &self.rate {
            let verdict = rate.borrow_mut().check(Instant::now());
            if verdict != Verdict::Allow {
                self.shard.counters.event_received(event_label(&name));
                self.reply(&name, packet.ack_id, Err(RequestError::RateLimited));
                // The refusal goes out before the close frame.
                return if verdict == Verdict::Disconnect { Err(CloseReason::RateLimited) } else { Ok(()) };
            }
        }
        self.shard.counters.event_received(event_label(&name));
        let payload = args.first().copied();
        let result = match name.as_str() {
            "authenticate" => self.authenticate(payload).await,
            "join-room" => self.join_room(payload).await,
            "leave-room" => self.leave_room(payload).await,
            "private-message" => self.private_message(payload).await,
            "custom-event" => self.custom_event(payload).await,
            "ping" => Ok(self.ping()),
            _ => Err(RequestError::UnknownEvent(truncate_utf8(&name, 128).to_string())),
        };
        self.reply(&name, packet.ack_id, result);
        Ok(())
    }

    /// Takes the socket out of every table; room members hear `user-left`.
    pub(super) fn close(&self) {
        if !self.registered.replace(false) {
            return;
        }
        let user = self.conn.user().filter(|_| self.context.settings.room_events);
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

/// Pause between a CONNECT reply and what an application's connect hook sends.
const CONNECT_HOOK_DELAY: std::time::Duration = std::time::Duration::from_millis(2);

/// The events of SPEC §2.
pub const BUILTIN_EVENTS: [&str; 6] = ["authenticate", "join-room", "leave-room", "private-message", "custom-event", "ping"];

/// The metric label of a client event: its name if it is one of ours,
/// `other` for anything else (labels must stay a small, fixed set).
fn event_label(name: &str) -> &'static str {
    BUILTIN_EVENTS.into_iter().find(|known| *known == name).unwrap_or("other")
}

/// The `connected` event's payload. Structs rather than `json!` for the two
/// events of every handshake (no map built per connection); fields in the
/// order `json!` wrote them (alphabetical).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Connected<'a> {
    socket_id: &'a str,
    timestamp: String,
}

/// The `authenticated` event's payload.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Authenticated<'a> {
    socket_id: &'a str,
    timestamp: String,
    user_id: &'a str,
}
