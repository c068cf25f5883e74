//! Namespaces and application event handlers, configured from Rust code.
//!
//! The binary serves one namespace with the built-in events of SPEC §2
//! ([`Namespace::builtin`]). A program embedding the broker can add
//! namespaces and handlers of its own — the conformance example serves the
//! echo namespaces the official Socket.IO test suite expects this way.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use crate::protocol::socketio;
use crate::transport::outbox::Outbox;

/// Arguments of an event: JSON values, and the binary attachments that
/// `{"_placeholder":true,"num":N}` values among them refer to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Payload {
    /// The event's arguments (after the name), with `{"_placeholder":true,"num":n}` where binary attachments go.
    pub args: Vec<Value>,
    /// The binary attachments, in order.
    pub attachments: Vec<Bytes>,
}

impl Payload {
    /// Arguments without binary attachments.
    pub fn json(args: Vec<Value>) -> Payload {
        Payload { args, attachments: Vec::new() }
    }
}

/// An ack the client asked for; answer it with [`Socket::ack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack(pub u64);

/// A connected socket, as handlers see it.
pub struct Socket<'a> {
    pub(super) outbox: &'a Rc<Outbox>,
    pub(super) namespace: &'a str,
    pub(super) id: &'a str,
}

impl Socket<'_> {
    /// The socket id (the sid of the CONNECT reply).
    pub fn id(&self) -> &str {
        self.id
    }

    /// The namespace this socket is connected to.
    pub fn namespace(&self) -> &str {
        self.namespace
    }

    /// Sends an event to this socket.
    pub fn emit(&self, event: &str, payload: &Payload) {
        for frame in socketio::payload_frames(self.namespace, socketio::Reply::Event(event), &payload.args, &payload.attachments) {
            self.outbox.push_or_close(frame);
        }
    }

    /// Answers the client's ack request.
    pub fn ack(&self, ack: Ack, payload: &Payload) {
        for frame in socketio::payload_frames(self.namespace, socketio::Reply::Ack(ack.0), &payload.args, &payload.attachments) {
            self.outbox.push_or_close(frame);
        }
    }
}

pub type ConnectHandler = Arc<dyn Fn(&Socket<'_>, &Value) + Send + Sync>;
pub type EventHandler = Arc<dyn Fn(&Socket<'_>, Payload, Option<Ack>) + Send + Sync>;

/// What a namespace does with its sockets.
#[derive(Clone, Default)]
pub struct Namespace {
    /// The events of SPEC §2–§4 (authenticate, rooms, private messages…),
    /// with the shard tables, the HTTP API and presence behind them.
    pub builtin_events: bool,
    pub(super) on_connect: Option<ConnectHandler>,
    pub(super) events: HashMap<String, EventHandler>,
}

impl Namespace {
    /// A namespace with only the handlers you add.
    pub fn new() -> Namespace {
        Namespace::default()
    }

    /// The namespace of SPEC §2–§4.
    pub fn builtin() -> Namespace {
        Namespace { builtin_events: true, ..Namespace::default() }
    }

    /// Runs `handler` after each CONNECT, with the client's auth payload (`{}` if none).
    pub fn on_connect(mut self, handler: impl Fn(&Socket<'_>, &Value) + Send + Sync + 'static) -> Namespace {
        self.on_connect = Some(Arc::new(handler));
        self
    }

    /// Runs `handler` for each `event` a client emits.
    pub fn on(mut self, event: &str, handler: impl Fn(&Socket<'_>, Payload, Option<Ack>) + Send + Sync + 'static) -> Namespace {
        self.events.insert(event.to_string(), Arc::new(handler));
        self
    }
}

/// Every namespace the server serves, by name (`/`, `/chat`…).
#[derive(Clone, Default)]
pub struct Namespaces {
    map: HashMap<String, Namespace>,
}

impl Namespaces {
    /// No namespaces at all (add them with [`Namespaces::with`]).
    pub fn new() -> Namespaces {
        Namespaces::default()
    }

    /// Only `name`, with the built-in events: what the binary serves.
    pub fn builtin(name: &str) -> Namespaces {
        Namespaces::new().with(name, Namespace::builtin())
    }

    /// Adds (or replaces) the namespace `name`, e.g. `"/chat"`.
    pub fn with(mut self, name: &str, namespace: Namespace) -> Namespaces {
        self.map.insert(name.to_string(), namespace);
        self
    }

    /// The namespace called `name`, if configured.
    pub fn get(&self, name: &str) -> Option<&Namespace> {
        self.map.get(name)
    }
}
