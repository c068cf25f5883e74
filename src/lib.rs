//! shardcast: a sharded, Socket.IO-compatible real-time event broker.
//!
//! Layers, each depending only on those before it:
//! [`protocol`] (codecs, no I/O) → [`transport`] (WebSocket sessions) →
//! [`shard`] (per-core tables and routing) → [`app`] (the events of SPEC §2)
//! → [`server`] (listeners, HTTP routing, shutdown). [`config`] is plain data
//! read by all. See ARCHITECTURE.md for the map and the life of a message.

pub mod app;
pub mod config;
pub mod protocol;
pub mod server;
pub mod shard;
pub mod transport;

pub use config::Config;
pub use server::Server;
