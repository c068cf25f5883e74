//! Cluster mode: several shardcast nodes behave as one broker through Redis.
//!
//! One thread per node (`cluster`) owns the Redis connections and runs:
//! - the **writer** ([`node::Node::run_writer`]): takes the shards' and the
//!   broker's [`ClusterCmd`]s in the order they were queued and puts each
//!   batch on Redis as one pipeline on one connection — that order is the
//!   per-sender order other nodes see. Before a batch that makes a room's
//!   first local member, it subscribes to the room's channel;
//! - the **reader** ([`inbound`]): turns what the subscriber connection
//!   receives into deliveries on this node's shards (and counts, answers);
//! - the **heartbeat**: refreshes this node's key (with a TTL), sweeps the
//!   nodes whose key expired, notices Redis coming back and re-registers
//!   this node's rooms and users.
//!
//! Channels and formats: [`wire`]; atomic state changes: [`scripts`]. A
//! node subscribes only to what its connections need: the socket.io
//! adapter's broadcast channel, one channel per room with local members,
//! its own node channel and the shardcast-wide channel.

mod inbound;
mod node;
mod pending;
mod scripts;
pub mod wire;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::broker::Broker;
use crate::shard::{ClusterCmd, ClusterStatus, Shared};

/// What cluster mode needs of the configuration.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `REDIS_URL`.
    pub redis_url: String,
    /// `REDIS_PREFIX`: shardcast's own keys and channels.
    pub prefix: String,
    /// `REDIS_ADAPTER_KEY`: the socket.io adapter's channel prefix.
    pub adapter_key: String,
    /// The Socket.IO namespace broadcasts belong to (`WEBSOCKET_NAMESPACE`).
    pub namespace: String,
    /// `CLUSTER_NODE_TTL`: a node silent this long is dead.
    pub node_ttl: Duration,
    /// `CLUSTER_REQUEST_TIMEOUT`: how long to wait for other nodes' answers.
    pub request_timeout: Duration,
}

/// Cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("REDIS_URL is not a Redis URL: {0}")]
    Url(String),
    #[error("cannot start the cluster thread: {0}")]
    Thread(std::io::Error),
}

/// The running cluster thread.
pub struct Cluster {
    commands: mpsc::UnboundedSender<ClusterCmd>,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<JoinHandle<()>>,
}

impl Cluster {
    /// The queue the shards' [`crate::shard::ClusterLink`] feeds, made
    /// before the shards so that they can hold it.
    pub fn channel() -> (mpsc::UnboundedSender<ClusterCmd>, mpsc::UnboundedReceiver<ClusterCmd>) {
        mpsc::unbounded_channel()
    }

    /// Starts the cluster thread. It connects to Redis (waiting up to the
    /// request timeout for a first heartbeat, so a node with Redis up starts
    /// connected) and keeps reconnecting if Redis is down.
    pub fn start(
        settings: ClusterSettings,
        shared: Arc<Shared>,
        broker: Broker,
        commands: (mpsc::UnboundedSender<ClusterCmd>, mpsc::UnboundedReceiver<ClusterCmd>),
        status: Arc<ClusterStatus>,
    ) -> Result<Cluster, ClusterError> {
        let client = node::client(&settings.redis_url)?;
        let (sender, receiver) = commands;
        let stop = Arc::new(tokio::sync::Notify::new());
        let (started, ready) = std::sync::mpsc::channel();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cluster".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, node::run(settings, client, shared, broker, receiver, status, thread_stop, started));
            })
            .map_err(ClusterError::Thread)?;
        // The first heartbeat's outcome (or the timeout inside `run`).
        let _ = ready.recv();
        Ok(Cluster { commands: sender, stop, thread: Some(thread) })
    }

    /// Leaves the cluster: this node's key goes (the others sweep what is
    /// left at their next heartbeat) and the thread stops.
    pub fn stop(mut self) {
        self.stop.notify_one();
        drop(self.commands.clone());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
