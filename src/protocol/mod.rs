//! Wire codecs: pure functions over bytes, no I/O, no shared state.
//!
//! Three layers, each usable (and fuzzable) on its own:
//! - [`wsframe`]: RFC 6455 frames — the server-side encoder that builds one
//!   shareable frame per message, and the client-frame decoder.
//! - [`engineio`]: Engine.IO v4 packets (open, ping/pong, message, close…).
//! - [`socketio`]: Socket.IO v5 packets (CONNECT, EVENT, ACK…) inside
//!   Engine.IO messages.

pub mod engineio;
pub mod socketio;
pub mod wsframe;
