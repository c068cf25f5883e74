//! Wire codecs: pure functions over bytes, no I/O, no shared state.
//!
//! Three layers, each usable (and fuzzable) on its own, and the HTTP head of
//! a WebSocket upgrade:
//! - [`wsframe`]: RFC 6455 frames — the server-side encoder that builds one
//!   shareable frame per message, and the client-frame decoder.
//! - [`engineio`]: Engine.IO v4 packets (open, ping/pong, message, close…).
//! - [`socketio`]: Socket.IO v5 packets (CONNECT, EVENT, ACK…) inside
//!   Engine.IO messages.
//! - [`http_upgrade`]: the WebSocket opening handshake the listener answers
//!   without hyper.

pub mod engineio;
pub mod http_upgrade;
pub mod socketio;
pub mod wsframe;

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary (close reasons and echoed names must stay valid UTF-8).
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
