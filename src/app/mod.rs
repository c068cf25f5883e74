//! Application events: the Socket.IO socket and the client → server events
//! of SPEC §2–§4, on top of the shard runtime.
//!
//! - [`session`]: one Socket.IO socket — CONNECT (with auth), packet
//!   dispatch, acks and errors, clean-up on disconnect.
//! - [`events`]: the handlers of `authenticate`, `join-room`, `leave-room`,
//!   `private-message`, `custom-event` and `ping`.
//! - [`validate`], [`auth`], [`errors`]: payload rules, identities, error codes.
//! - [`rate_limit`]: the per-connection token bucket, told the time.

pub mod auth;
pub mod errors;
mod events;
pub mod namespace;
mod rate_limit;
pub mod session;
pub mod validate;

use crate::protocol::socketio;
use crate::protocol::wsframe::OutFrame;

pub use crate::clock::now_iso8601 as timestamp;

/// The `user-online` / `user-offline` event, for the shard runtime to
/// broadcast when a user's first socket arrives or last one leaves.
pub fn presence_frame(namespace: &str, user: &str, online: bool) -> OutFrame {
    let event = if online { "user-online" } else { "user-offline" };
    socketio::event_frame(namespace, event, &serde_json::json!({ "userId": user, "timestamp": timestamp() }))
}
