//! shardcast: a sharded, Socket.IO-compatible real-time event broker.
//!
//! Layers, each depending only on those before it:
//! [`protocol`] (codecs, no I/O) → [`transport`] (WebSocket sessions) →
//! [`shard`] (per-core tables and routing) → [`app`] (the events of SPEC §2)
//! → [`broker`] (the server-side handle) → [`api`] (its HTTP face) and
//! [`metrics`] →
//! [`server`] (listeners, HTTP routing, shutdown). [`config`] and [`clock`]
//! are leaves read by all; [`limits`] (descriptor limits, connection
//! capacity) is read by the HTTP layers and the server. See ARCHITECTURE.md for the map and the life of a message.

pub mod api;
pub mod app;
pub mod broker;
pub mod client;
pub mod clock;
pub mod config;
pub mod engine_http;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod shard;
pub mod transport;

pub use config::Config;
pub use broker::{BroadcastOptions, Broker, Publication, Scope};
pub use server::Server;
