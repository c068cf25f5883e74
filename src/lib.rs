//! shardcast: a sharded, Socket.IO-compatible real-time event broker.
//!
//! For programs that embed it: start a [`Server`] from a [`Config`] (with
//! your own [`Namespaces`] and [`EngineApp`]s through [`Extensions`]), and
//! publish and query through its [`Broker`] handle. [`client`] is a minimal
//! Socket.IO client for tests and load generators.
//!
//! The modules, in layer order (each imports only layers below it; the
//! order is written in ARCHITECTURE.md and checked by a test):
//! - leaves: `protocol` (codecs: WebSocket frames, Engine.IO, Socket.IO, the
//!   upgrade request — pure functions over bytes), `clock` (timestamps),
//!   `limits` (open-file limit, connection capacity), `http` (what the HTTP
//!   faces share), [`client`];
//! - `transport`: Engine.IO sessions over WebSocket and long-polling, the
//!   outbox, the flusher, the heartbeat;
//! - `shard`: per-core tables of connections, rooms and users, the inbox and
//!   its ordering rules, routing between shards;
//! - `app`: Socket.IO on an Engine.IO session, and the events of SPEC §2–§4;
//! - `broker`: the server-side handle ([`Broker`]);
//! - `config`: settings from the environment and the command line;
//!   `cluster`: cluster mode on Redis (the cluster thread, the wire formats);
//! - `api` (`/api`), `engine_http` (the HTTP side of Engine.IO), `metrics`
//!   (`/metrics`);
//! - `server`: listeners, shard threads, HTTP routing, shutdown.
//!
//! See ARCHITECTURE.md for the map, who owns what, and the life of a message.
#![warn(missing_docs)]

mod api;
mod app;
mod broker;
pub mod client;
mod clock;
mod cluster;
mod config;
mod engine_http;
mod http;
mod limits;
mod metrics;
mod prefetch;
mod protocol;
mod server;
mod shard;
mod transport;

#[cfg(test)]
mod tests;

pub use app::namespace::{Ack, Namespace, Namespaces, Payload, Socket};
pub use broker::{BroadcastOptions, Broker, ClusterStats, Publication, PublishError, Scope, Sent, Stats};
pub use clock::now_iso8601;
pub use config::{Config, LogFormat, Switch};
pub use server::{Extensions, Server, StartError};
pub use shard::{ConnectionInfo, RoomInfo};
pub use transport::engine::{EngineApp, EngineAppFactory, EngineSocket};

/// Entry points for the benchmarks in `benches/`. Not a stable API.
#[doc(hidden)]
pub mod bench;
/// The decoders a client reaches, with their properties, for `fuzz/` and
/// the property tests. Not a stable API.
#[doc(hidden)]
pub mod fuzzing;
